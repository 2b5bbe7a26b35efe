#!/usr/bin/env bash
# Where the CPU goes: runs the upstream and one contender pinned as in the
# bench, loads it with wrk and records it with perf (Debian's linux-perf;
# installed when missing). Prints the top symbols and the user/kernel split.
#
#   bench/profile.sh [gateway|bare] [seconds]   (default: gateway 10)
#   PROFILE_BIN=/path/to/binary  PROFILE_SCENARIO=a|b|c  PROFILE_OUT=dir
#   PROFILE_EVENTS='perf record options' (default "-F 4999 -g"; e.g.
#   "-e probe_libc:clock_gettime --call-graph dwarf,8192" counts every call
#   of a function added with `perf probe`, with its callers)
set -euo pipefail
cd "$(dirname "$0")/.."
who=${1:-gateway}
secs=${2:-10}
command -v perf >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
out=${PROFILE_OUT:-bench/results/profile-$who}
mkdir -p "$out"
export PATH="$PATH:/usr/sbin"
python3 - "$who" "$secs" "$out" <<'PY'
import os, subprocess, sys, tempfile, time, json
sys.dont_write_bytecode = True
sys.path.insert(0, "bench")
import bench
who, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if os.environ.get("PROFILE_BIN"):
    if who.startswith("gateway"):
        bench.GATEWAY_BIN = os.environ["PROFILE_BIN"]
    else:
        bench.BARE_BIN = os.environ["PROFILE_BIN"]
bench.CONTENDERS = [who]
layout = bench.cpu_layout()
work = tempfile.mkdtemp(prefix="gateway-profile-")
scenario = os.environ.get("PROFILE_SCENARIO", "a")
config, paths, conns = bench.scenario_setup(scenario)
ocelot = os.path.join(work, "ocelot.json")
json.dump(config, open(ocelot, "w"))
script = bench.wrk_script(work, scenario, paths)
up = bench.Proc("upstream", ["nginx", "-c", bench.upstream_conf(work), "-p", work], layout["upstream"], bench.UPSTREAM_PORT, work)
p = bench.start_contender(who, layout, work, scenario, ocelot)
try:
    bench.run_wrk(layout, p.port, conns, 2, script)
    wrk = subprocess.Popen(["taskset", "-c", layout["wrk"], "wrk", "-t", "1", "-c", str(conns), "-d", f"{secs + 2:g}s", "-s", script,
                            f"http://127.0.0.1:{p.port}"], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    cpu0 = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    subprocess.run(["perf", "record", *os.environ.get("PROFILE_EVENTS", "-F 4999 -g").split(), "-p", str(p.pid), "-o", f"{out}/perf.data", "--", "sleep", f"{secs:g}"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    cpu1 = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    print(wrk.communicate()[0])
    u, s = int(cpu1[11]) - int(cpu0[11]), int(cpu1[12]) - int(cpu0[12])
    print(f"{who}: user {u / (u + s):.0%}, system {s / (u + s):.0%} of its CPU time")
finally:
    p.stop()
    up.stop()
PY
perf report -i "$out/perf.data" --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
perf report -i "$out/perf.data" --no-children --sort sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -${PROFILE_TOP:-40}
echo "perf data: $out/perf.data (perf report -i $out/perf.data)"
