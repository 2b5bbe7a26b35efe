#!/usr/bin/env bash
# Smoke test of the benchmark: runs bench/run.sh end to end on a tiny duration
# (BENCH_QUICK=1: one round of 1 s per contender and scenario, about a minute
# in all) and checks that every contender answered every scenario without
# errors. Results go to a temporary folder, not bench/results/.
#
# Not part of `make test`: it needs the release build (minutes) and nginx,
# HAProxy and wrk. Set BENCH_NO_BUILD=1 with BENCH_GATEWAY_BIN/BENCH_BARE_BIN
# to reuse binaries (e.g. the dev ones: target/debug/gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
BENCH_QUICK=1 BENCH_SCENARIOS=${BENCH_SCENARIOS:-a,b,c,d,e,t} BENCH_RESULTS="$out" bash bench/run.sh >/dev/null
python3 - "$out/latest.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
bad = []
for res in report["results"]:
    for name, s in res["contenders"].items():
        if not s["requests"] or s["non2xx"] or s["socket_errors"] or not s["cpu_us_per_req"]:
            bad.append(f"({res['scenario']}) {name}: {s['requests']} requests, {s['non2xx']} non-2xx, {s['socket_errors']} errors")
scenarios = {r["scenario"] for r in report["results"]}
if bad or not scenarios:
    sys.exit("bench smoke: FAILED\n" + "\n".join(bad))
print(f"bench smoke: OK ({len(scenarios)} scenarios, {len(report['results'][0]['contenders'])} contenders)")
print("1 passed, 0 failed")
PY
