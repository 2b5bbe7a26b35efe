#!/usr/bin/env bash
# Smoke test of the benchmark: runs bench/run.sh end to end on a tiny duration
# (BENCH_QUICK=1: one round of 1 s per contender and scenario, two to three
# minutes for every scenario and contender) and checks that every contender
# answered every scenario without errors, or was skipped in it with a reason
# the results give (bare-proxy built without its TLS listener, in (f) and (g)).
# Results go to a temporary folder, not bench/results/.
#
# Not part of `make test`: it needs the release build (minutes) and nginx,
# HAProxy, Caddy, wrk, h2load and pingap (bench/run.sh installs them; pingap
# is a ~20-minute cargo build the first time). Set BENCH_NO_BUILD=1 with
# BENCH_GATEWAY_BIN/BENCH_BARE_BIN to reuse binaries (e.g. the dev ones:
# target/debug/gateway); BENCH_SCENARIOS and BENCH_CONTENDERS narrow it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
BENCH_QUICK=1 BENCH_SCENARIOS=${BENCH_SCENARIOS:-a,b,c,d,e,f,g,t,h} BENCH_RESULTS="$out" bash bench/run.sh >/dev/null
python3 - "$out/latest.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
wanted_scenarios = report["settings"]["scenarios"]
wanted = report["settings"]["contenders"]
results = {r["scenario"]: r for r in report["results"]}
bad, skipped = [], []
for scenario in wanted_scenarios:
    res = results.get(scenario)
    if res is None:
        bad.append(f"({scenario}): no results")
        continue
    for name in wanted:
        s = res["contenders"].get(name)
        if s is None:
            reason = res.get("skipped", {}).get(name)
            if reason:
                skipped.append(f"({scenario}) {name}: skipped: {reason}")
            else:
                bad.append(f"({scenario}) {name}: neither ran nor was skipped")
            continue
        if not s["requests"] or s["non2xx"] or s["socket_errors"] or not s["cpu_us_per_req"]:
            bad.append(f"({scenario}) {name}: {s['requests']} requests, {s['non2xx']} non-2xx, {s['socket_errors']} errors")
        if scenario == "e" and s.get("idle_conn_kib") is None:
            bad.append(f"({scenario}) {name}: no memory per idle connection")
        if scenario == "f" and s.get("protocol") != "h2":
            bad.append(f"({scenario}) {name}: h2load negotiated {s.get('protocol')}, not h2")
for line in skipped:
    print(line)
if bad or not results:
    sys.exit("bench smoke: FAILED\n" + "\n".join(bad))
print(f"bench smoke: OK ({len(results)} scenarios, {len(wanted)} contenders, {len(skipped)} skipped)")
print("1 passed, 0 failed")
PY
