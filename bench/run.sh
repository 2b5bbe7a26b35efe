#!/usr/bin/env bash
# `make bench`: installs what the benchmark needs (nginx, HAProxy, wrk; perf
# with BENCH_PERF), builds the gateway and bench/bare-proxy in the release
# profile, and runs bench/bench.py. See bench/README.md for the knobs
# (BENCH_QUICK=1, BENCH_DURATION, BENCH_ROUNDS, BENCH_SCENARIOS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v taskset >/dev/null 2>&1 || missing="$missing util-linux"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
command -v cmake >/dev/null 2>&1 || missing="$missing cmake"
case ",${BENCH_CONTENDERS:-caddy}," in *,caddy,*) command -v caddy >/dev/null 2>&1 || missing="$missing caddy" ;; esac
if [ -n "${BENCH_PERF:-}" ]; then command -v perf >/dev/null 2>&1 || missing="$missing linux-perf"; fi
if [ -n "$missing" ]; then
  echo "bench: installing$missing"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "bench: cargo build --release -p gateway -p bare-proxy"
  ${CARGO:-cargo} build --release -p gateway -p bare-proxy
fi

# 1,000 connections need more descriptors than the usual 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py "$@"
