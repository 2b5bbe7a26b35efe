#!/usr/bin/env bash
# `make bench`: installs what the benchmark needs (nginx, HAProxy, wrk,
# Caddy, h2load and openssl for the TLS scenarios, pingap; perf with
# BENCH_PERF), builds the gateway and bench/bare-proxy in the release profile,
# and runs bench/bench.py. See bench/README.md for the knobs (BENCH_QUICK=1,
# BENCH_DURATION, BENCH_ROUNDS, BENCH_SCENARIOS, BENCH_CONTENDERS, ...).
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
# The defaults here must match bench.py's.
contenders=",${BENCH_CONTENDERS:-gateway,nginx,haproxy,bare,caddy,pingap},"
scenarios=",${BENCH_SCENARIOS:-a,b,c,d,e,f,g},"
case "$contenders" in *,caddy,*) command -v caddy >/dev/null 2>&1 || missing="$missing caddy" ;; esac
case "$scenarios" in *,f,*) command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client" ;; esac
case "$scenarios" in *,f,*|*,g,*) command -v openssl >/dev/null 2>&1 || missing="$missing openssl" ;; esac
if [ -n "${BENCH_PERF:-}" ]; then command -v perf >/dev/null 2>&1 || missing="$missing linux-perf"; fi
if [ -n "$missing" ]; then
  echo "bench: installing$missing"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

# pingap (a Pingora gateway): BENCH_PINGAP_BIN, else `pingap` on PATH, else
# built once with cargo into BENCH_TOOLS (about 20 minutes on 2 cores; it needs
# protoc) and reused from there afterwards.
case "$contenders" in
  *,pingap,*)
    if [ -z "${BENCH_PINGAP_BIN:-}" ] && ! command -v pingap >/dev/null 2>&1; then
      tools="${BENCH_TOOLS:-$HOME/.cache/gateway-bench}"
      if [ ! -x "$tools/bin/pingap" ]; then
        if ! command -v protoc >/dev/null 2>&1; then
          echo "bench: installing protobuf-compiler (pingap's build needs protoc)"
          $SUDO apt-get update -qq
          $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null
        fi
        echo "bench: cargo install pingap 0.13.1 into $tools (about 20 minutes on 2 cores, once)"
        ${CARGO:-cargo} install pingap --version 0.13.1 --locked --root "$tools"
      fi
      export BENCH_PINGAP_BIN="$tools/bin/pingap"
    fi
    ;;
esac

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  echo "bench: cargo build --release -p gateway -p bare-proxy"
  ${CARGO:-cargo} build --release -p gateway -p bare-proxy
fi

# 1,000 connections need more descriptors than the usual 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py "$@"
