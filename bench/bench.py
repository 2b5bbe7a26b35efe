#!/usr/bin/env python3
"""The gateway against nginx, HAProxy, Caddy, pingap and a bare Pingora proxy, on loopback.

Started by `bench/run.sh` (which installs the tools and builds the binaries);
see bench/README.md. Standard library only.

For every scenario all contenders run side by side, each pinned to the same
CPU, and wrk loads them in turn, A B C D A B C D ..., so that drift on a shared
machine hits all of them alike. Per run of one contender it records requests/s
and latency from wrk, and the contender's own CPU time (utime + stime of all
its threads, /proc/PID/stat) over the measured window divided by the
requests wrk completed. The table shows the median over the rounds.
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
ABP = os.path.join(ROOT, "tests/fixtures/ocelot-corpus/abp-next-admin/merged/ocelot.json")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def env_num(name, default, kind=float):
    value = os.environ.get(name)
    return kind(value) if value not in (None, "") else default


QUICK = os.environ.get("BENCH_QUICK") == "1"
DURATION = env_num("BENCH_DURATION", 1.0 if QUICK else 10.0)
WARMUP = env_num("BENCH_WARMUP", 0.5 if QUICK else 2.0)
ROUNDS = env_num("BENCH_ROUNDS", 1 if QUICK else 3, int)
CONNECTIONS = env_num("BENCH_CONNECTIONS", 50, int)
SCENARIOS = [s for s in os.environ.get("BENCH_SCENARIOS", "a,b,c,d,e,f,g").split(",") if s]
CONTENDERS = [c for c in os.environ.get("BENCH_CONTENDERS", "gateway,nginx,haproxy,bare,caddy,pingap").split(",") if c]
RESULTS = os.environ.get("BENCH_RESULTS", os.path.join(BENCH, "results"))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
GATEWAY_BIN = os.environ.get("BENCH_GATEWAY_BIN", os.path.join(TARGET, "release/gateway"))
BARE_BIN = os.environ.get("BENCH_BARE_BIN", os.path.join(TARGET, "release/bare-proxy"))
# pingap: BENCH_PINGAP_BIN, else `pingap` on PATH, else what bench/run.sh
# installs under BENCH_TOOLS (cargo install --root).
TOOLS = os.environ.get("BENCH_TOOLS") or os.path.join(os.path.expanduser("~"), ".cache/gateway-bench")
PINGAP_BIN = (os.environ.get("BENCH_PINGAP_BIN") or shutil.which("pingap")
              or os.path.join(TOOLS, "bin/pingap"))
# Extra gateway settings (YAML lines) for experiments, e.g. "work_stealing: false".
GATEWAY_EXTRA = os.environ.get("BENCH_GATEWAY_SETTINGS", "")
PERF = os.environ.get("BENCH_PERF", "")  # contender name: perf record it in scenario a

UPSTREAM_PORT = env_num("BENCH_UPSTREAM_PORT", 18080, int)
UPSTREAM_PORT2 = UPSTREAM_PORT + 1  # the same upstream; scenario (b) balances over both ports
PORTS = {"gateway": 18091, "nginx": 18092, "haproxy": 18093, "bare": 18094, "caddy": 18095, "pingap": 18096}
# Scenarios (f) and (g) load each contender's TLS listener, on its port + 200.
TLS_SCENARIOS = ("f", "g")
TLS_PORT_OFFSET = 200
# The one TLS 1.3 cipher suite the load generators offer, so that every
# contender encrypts alike (left to themselves, some pick AES-256 and Go picks
# AES-128); h2load takes it as an option, wrk from an OpenSSL configuration.
TLS13_SUITE = "TLS_AES_128_GCM_SHA256"
# Scenario (f): h2load's concurrent streams per connection.
H2_STREAMS = env_num("BENCH_H2_STREAMS", 10, int)
# Scenario (e): idle keep-alive connections opened to measure memory per connection.
IDLE_CONNECTIONS = env_num("BENCH_IDLE_CONNECTIONS", 1000, int)
ADMIN_PORT = 18099
SMALL_BODY = "Hello from the bench upstream\n"  # 30 bytes
BIG_BODY_SIZE = 100 * 1024
# Every request carries a client id, so that rate limiting (Ocelot 25 answers
# 503 without one) counts one client. All contenders get the same headers.
CLIENT_HEADERS = ["Oc-Client: bench", "ClientId: bench"]
# Scenario (b) validates a JWT (HS256, a static secret) on every route unless
# BENCH_JWT=0; every contender gets the same Authorization header.
JWT = os.environ.get("BENCH_JWT", "1") != "0"
JWT_SECRET = "bench-secret-bench-secret-bench-secret-0123456789"


def jwt_token():
    import base64, hashlib, hmac
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"iss": "bench", "aud": "bench", "sub": "bench-user", "scope": "bench", "exp": int(time.time()) + 86400}
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(JWT_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def scenario_headers(scenario):
    if scenario == "b" and JWT:
        return CLIENT_HEADERS + [f"Authorization: Bearer {jwt_token()}"]
    return CLIENT_HEADERS

SCENARIO_INFO = {
    "a": "one route, tiny body",
    "b": "abp table (60 routes), round robin, rate limiting" + (", JWT" if JWT else ""),
    "c": "10,000 generated routes",
    "d": "100 KiB response body",
    "e": "1,000 connections",
    "t": "one route, tiny body, every request traced (OpenTelemetry, ratio 1.0, OTLP/HTTP to a sink)",
    "h": "one route, tiny body, 2 threads or workers each, sharing both CPUs with the upstream and wrk",
    "f": f"one route, tiny body, HTTP/2 over TLS (h2load, {H2_STREAMS} streams per connection)",
    "g": "one route, tiny body, HTTP/1.1 over TLS (wrk, keep-alive)",
}

# Worker threads (or processes) of each contender: 1, or 2 in scenario (h).
def workers(scenario):
    return 2 if scenario == "h" else 1


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- CPU layout


def cpu_layout():
    """Which CPUs the contenders, the upstream and wrk run on ("all": the
    contenders' in scenario (h))."""
    cpus = sorted(os.sched_getaffinity(0))
    return dict(_layout(cpus), all=",".join(map(str, cpus)))


def _layout(cpus):
    if len(cpus) == 1:
        one = str(cpus[0])
        return {"contender": one, "upstream": one, "wrk": one, "wrk_threads": 1}
    if len(cpus) == 2:
        return {"contender": str(cpus[0]), "upstream": str(cpus[1]), "wrk": str(cpus[1]), "wrk_threads": 1}
    if len(cpus) == 3:
        return {"contender": str(cpus[0]), "upstream": str(cpus[1]), "wrk": str(cpus[2]), "wrk_threads": 1}
    wrk = cpus[2:min(len(cpus), 6)]
    return {
        "contender": str(cpus[0]),
        "upstream": str(cpus[1]),
        "wrk": ",".join(map(str, wrk)),
        "wrk_threads": len(wrk),
    }


# ---------------------------------------------------------------- processes


def proc_cpu_seconds(pid):
    """utime + stime of every thread of the process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid):
    """CPU seconds of a process and its live descendants (nginx's workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += proc_cpu_seconds(current)
        except OSError:
            continue
        todo.extend(children.get(current, []))
    return total


def proc_status(pid, key):
    """A kB value from /proc/PID/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def wait_port(port, proc, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


class Proc:
    """A started server, pinned with taskset; stopped by its own pid."""

    def __init__(self, name, argv, cpus, port, workdir, env=None):
        self.name = name
        self.port = port
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpus] + argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        try:
            wait_port(port, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"{name} did not start; its log:\n{open(self.log_path).read()[-3000:]}")
        # nginx and HAProxy fork no workers here (master_process off,
        # no daemon): the pid we measure is the one that serves.
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- configurations


def nginx_common(workdir, name, workers=1):
    # With one worker, no master: the measured pid is the one that serves.
    # Two workers need the master; their CPU is summed over the process tree.
    return f"""
daemon off;
master_process {"on" if workers > 1 else "off"};
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
"""


def upstream_conf(workdir):
    big = os.path.join(workdir, "www")
    os.makedirs(big, exist_ok=True)
    with open(os.path.join(big, "big"), "wb") as f:
        f.write((b"0123456789abcdef" * (BIG_BODY_SIZE // 16 + 1))[:BIG_BODY_SIZE])
    conf = nginx_common(workdir, "upstream") + f"""
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    tcp_nodelay on;
    sendfile on;
    open_file_cache max=16;
    client_body_temp_path {workdir}/upstream-body;
    proxy_temp_path {workdir}/upstream-proxy;
    fastcgi_temp_path {workdir}/upstream-fastcgi;
    uwsgi_temp_path {workdir}/upstream-uwsgi;
    scgi_temp_path {workdir}/upstream-scgi;
    server {{
        listen 127.0.0.1:{UPSTREAM_PORT} backlog=4096;
        listen 127.0.0.1:{UPSTREAM_PORT2} backlog=4096;
        location = /big {{ root {big}; default_type application/octet-stream; }}
        # Scenario (t): the gateway's OTLP/HTTP exports; an empty 200 is an
        # empty ExportTraceServiceResponse.
        location = /v1/traces {{ return 200; }}
        location / {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
    }}
}}
"""
    path = os.path.join(workdir, "upstream.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def nginx_proxy_conf(workdir, workers=1, tls=None):
    port = PORTS["nginx"]
    location = """
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Enough buffers for a 100 KiB body in memory: by default nginx
            # spills it to a temporary file, which doubled its CPU in (d).
            proxy_buffers 32 8k;
            proxy_max_temp_file_size 0;
        }"""
    tls_server = ""
    if tls:
        # Session resumption both ways: a shared session cache and tickets.
        # nginx 1.22 leaves TLS 1.3 off unless named (1.23.4 turned it on).
        tls_server = f"""
    server {{
        listen 127.0.0.1:{tls['port']} ssl http2 backlog=4096;
        ssl_certificate {tls['cert']};
        ssl_certificate_key {tls['key']};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        {location.strip()}
    }}"""
    conf = nginx_common(workdir, "nginx", workers) + f"""
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    tcp_nodelay on;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    upstream bench_upstream {{
        server 127.0.0.1:{UPSTREAM_PORT};
        keepalive 1024;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        {location.strip()}
    }}{tls_server}
}}
"""
    path = os.path.join(workdir, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def haproxy_conf(workdir, workers=1, tls=None):
    port = PORTS["haproxy"]
    # HAProxy's TLS session cache (tune.ssl.cachesize) and tickets are on by default.
    tls_frontend = f"""
frontend bench_tls
    bind 127.0.0.1:{tls['port']} ssl crt {tls['pem']} alpn h2,http/1.1
    default_backend upstream
""" if tls else ""
    conf = f"""
global
    nbthread {workers}
    maxconn 8000
    pidfile {workdir}/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    maxconn 8000

frontend bench
    bind 127.0.0.1:{port}
    default_backend upstream
{tls_frontend}
backend upstream
    server up 127.0.0.1:{UPSTREAM_PORT} maxconn 4000
"""
    path = os.path.join(workdir, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return path


def caddy_conf(workdir, tls=None):
    """Caddy as a plain reverse proxy with upstream keep-alive: the closest it
    comes to every scenario (no Ocelot table, no rate limiting, no JWT)."""
    port = PORTS["caddy"]
    proxy = f"""reverse_proxy 127.0.0.1:{UPSTREAM_PORT} {{
        transport http {{
            keepalive 300s
            keepalive_idle_conns 1024
            keepalive_idle_conns_per_host 1024
        }}
    }}"""
    # Go's TLS server resumes sessions with tickets by default.
    tls_site = f"""
https://127.0.0.1:{tls['port']} {{
    tls {tls['cert']} {tls['key']}
    {proxy}
}}
""" if tls else ""
    conf = f"""{{
    admin off
    auto_https off
    servers {{
        protocols {"h1 h2" if tls else "h1"}
    }}
}}

http://127.0.0.1:{port} {{
    {proxy}
}}
{tls_site}"""
    path = os.path.join(workdir, "Caddyfile")
    with open(path, "w") as f:
        f.write(conf)
    return path


def pingap_conf(workdir, scenario, workers=1, tls=None):
    """pingap (a Pingora gateway) as a plain reverse proxy: one upstream with
    pooled keep-alive connections, one location for every path, one server;
    no plugins, no access log (a server without `access_log` logs nothing),
    no admin server (only with --admin). With TLS the server takes its
    certificate from the certificate store (`global_certificates`), where the
    bench certificate is the default one (clients connect to an IP address,
    so no SNI is sent)."""
    port = tls["port"] if tls else PORTS["pingap"]
    # Pingora's no-steal runtime, as the gateway and bare Pingora run; an
    # upstream pool large enough for the 1,000 connections of (e).
    text = f"""[basic]
name = "bench"
pid_file = "{workdir}/pingap-{scenario}.pid"
upgrade_sock = "{workdir}/pingap-{scenario}.sock"
threads = {workers}
work_stealing = false
upstream_keepalive_pool_size = 1024
log_level = "warn"

[upstreams.bench]
addrs = ["127.0.0.1:{UPSTREAM_PORT}"]
idle_timeout = "300s"

[locations.bench]
path = "/"
upstream = "bench"

[servers.bench]
addr = "127.0.0.1:{port}"
locations = ["bench"]
"""
    if tls:
        # Only the TLS server: each pingap server is a Pingora service with
        # threads of its own.
        text += f"""global_certificates = true
enabled_h2 = true

[certificates.bench]
tls_cert = "{tls['cert']}"
tls_key = "{tls['key']}"
is_default = true
"""
    path = os.path.join(workdir, f"pingap-{scenario}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def make_certificate(workdir):
    """A self-signed P-256 certificate for 127.0.0.1, made for this run; HAProxy
    wants the certificate and key in one file."""
    cert, key, pem = (os.path.join(workdir, n) for n in ("tls-cert.pem", "tls-key.pem", "tls-both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "365", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    with open(pem, "w") as out:
        for part in (cert, key):
            with open(part) as f:
                out.write(f.read())
    # OPENSSL_CONF for wrk, which has no option for TLS 1.3 cipher suites.
    client_conf = os.path.join(workdir, "openssl-client.cnf")
    with open(client_conf, "w") as f:
        f.write(f"""openssl_conf = bench_conf
[bench_conf]
ssl_conf = bench_ssl
[bench_ssl]
system_default = bench_tls
[bench_tls]
Ciphersuites = {TLS13_SUITE}
""")
    return {"cert": cert, "key": key, "pem": pem, "client_conf": client_conf}


def route(up, down, methods=None, extra=None):
    r = {
        "UpstreamPathTemplate": up,
        "DownstreamPathTemplate": down,
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": UPSTREAM_PORT}],
    }
    if methods:
        r["UpstreamHttpMethod"] = methods
    r.update(extra or {})
    return r


RATE_LIMIT = {
    "EnableRateLimiting": True,
    "ClientWhitelist": [],
    "Period": "1s",
    "PeriodTimespan": 1,
    "Limit": 1_000_000_000,
}


def abp_config():
    """The abp corpus table, every route pointed at the bench upstream with
    round robin over the upstream's two ports and a rate limit too high to
    trigger. The corpus' authentication options name no provider; they are
    replaced by a JWT bearer provider `bench` (HS256) unless BENCH_JWT=0."""
    with open(ABP, encoding="utf-8-sig") as f:
        config = json.load(f)
    for r in config["Routes"]:
        r["DownstreamHostAndPorts"] = [{"Host": "127.0.0.1", "Port": UPSTREAM_PORT}, {"Host": "127.0.0.1", "Port": UPSTREAM_PORT2}]
        r["DownstreamScheme"] = "http"
        r["LoadBalancerOptions"] = {"Type": "RoundRobin", "Key": None, "Expiry": 0}
        r["RateLimitOptions"] = dict(RATE_LIMIT)
        r.pop("AuthenticationOptions", None)
        r.pop("AuthenticationProviderKey", None)
        if JWT:
            r["AuthenticationOptions"] = {"AuthenticationProviderKey": "bench", "AllowedScopes": []}
    g = config.setdefault("GlobalConfiguration", {})
    g["BaseUrl"] = "http://127.0.0.1"
    g.pop("ServiceDiscoveryProvider", None)
    return config


# Requests spread over several abp routes: literal and {everything} routes of
# different services, all GET.
ABP_PATHS = [
    "/api/abp/backend-admin/application-configuration",
    "/api/identity/users/3a0b1c2d",
    "/api/setting-management/settings/by-global/app",
    "/api/abp/localization/application-configuration",
    "/api/platform/menus/by-current-user",
    "/api/task-management/background-jobs",
    "/api/webhooks/subscriptions",
    "/.well-known/openid-configuration",
]


def generated_config(count=10_000):
    """count routes of three shapes: literal, one placeholder, catch-all."""
    routes = []
    for i in range(count):
        shape = i % 3
        if shape == 0:
            routes.append(route(f"/svc{i}/status", f"/status/{i}", ["GET"]))
        elif shape == 1:
            routes.append(route(f"/svc{i}/items/{{id}}", f"/items/{{id}}", ["GET", "POST"]))
        else:
            routes.append(route(f"/svc{i}/files/{{everything}}", f"/files/{{everything}}", None))
    return {"Routes": routes, "GlobalConfiguration": {"BaseUrl": "http://127.0.0.1"}}


def generated_paths(count=10_000, n=16):
    paths = []
    for k in range(n):
        i = (k * 7919 + 13) % count
        shape = i % 3
        paths.append([f"/svc{i}/status", f"/svc{i}/items/{k}", f"/svc{i}/files/a/b{k}.txt"][shape])
    return paths


def scenario_setup(scenario):
    """(ocelot config, request paths, wrk connections) for a scenario."""
    one_route = {"Routes": [route("/{everything}", "/{everything}")], "GlobalConfiguration": {"BaseUrl": "http://127.0.0.1"}}
    if scenario == "a":
        return one_route, ["/hello"], CONNECTIONS
    if scenario == "b":
        return abp_config(), ABP_PATHS, CONNECTIONS
    if scenario == "c":
        return generated_config(), generated_paths(), CONNECTIONS
    if scenario == "d":
        return one_route, ["/big"], CONNECTIONS
    if scenario == "e":
        return one_route, ["/hello"], env_num("BENCH_MANY_CONNECTIONS", 1000, int)
    if scenario == "t":
        return one_route, ["/hello"], CONNECTIONS
    if scenario in ("f", "g", "h"):
        return one_route, ["/hello"], CONNECTIONS
    raise ValueError(f"unknown scenario {scenario}")


def gateway_settings(workdir, scenario, ocelot_path, name, port, extra, tls=None):
    admin = ADMIN_PORT if name == "gateway" else port + 100
    tls_listen = f"""tls_listen: [{{addr: "127.0.0.1:{tls['port']}", cert: "{tls['cert']}", key: "{tls['key']}", h2: true}}]
""" if tls else ""
    text = f"""ocelot: {ocelot_path}
listen: ["127.0.0.1:{port}"]
{tls_listen}
admin_listen: 127.0.0.1:{admin}
access_log: false
threads: {workers(scenario)}
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 1
drain_seconds: 0
upgrade_sock: {workdir}/{name}-{scenario}.sock
pid_file: {workdir}/{name}-{scenario}.pid
"""
    if scenario == "t":
        # Every request sampled; exported every second, as a busy gateway would.
        text += f"""tracing:
  endpoint: http://127.0.0.1:{UPSTREAM_PORT}
  sampler_ratio: 1.0
  export_interval_ms: 1000
"""
    if scenario == "b" and JWT:
        text += f"""auth_providers:
  bench:
    keys:
      - secret: "{JWT_SECRET}"
    issuers: [bench]
    audiences: [bench]
    algorithms: [HS256]
"""
    if extra:
        extra = extra.replace("\\n", "\n")
        # A key given in the extra settings replaces the default line.
        keys = {line.split(":", 1)[0].strip() for line in extra.splitlines() if ":" in line and not line.startswith(" ")}
        text = "".join(line for line in text.splitlines(True) if line.split(":", 1)[0] not in keys)
        text += extra + "\n"
    path = os.path.join(workdir, f"{name}-{scenario}.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def wrk_script(workdir, scenario, paths):
    """A wrk Lua script cycling through the paths with the client headers."""
    headers = "\n".join(f'wrk.headers["{h.split(": ")[0]}"] = "{h.split(": ")[1]}"' for h in scenario_headers(scenario))
    lua_paths = ", ".join(f'"{p}"' for p in paths)
    if len(paths) == 1:  # wrk's static request, no Lua per request
        text = f'{headers}\nwrk.path = "{paths[0]}"\n'
    else:
        text = f"""{headers}
local paths = {{ {lua_paths} }}
local reqs = {{}}
local n = 0
-- Built in init(), once wrk has set the Host header.
init = function(args)
  for i, p in ipairs(paths) do reqs[i] = wrk.format("GET", p) end
end
request = function()
  n = n % #reqs + 1
  return reqs[n]
end
"""
    path = os.path.join(workdir, f"wrk-{scenario}.lua")
    with open(path, "w") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------- wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return round(float(m.group(1)) * UNITS[m.group(2)], 4) if m else None


def run_wrk(layout, port, connections, duration, script, scheme="http", env=None):
    cmd = [
        "taskset", "-c", layout["wrk"],
        "wrk", "--latency", "-t", str(layout["wrk_threads"]), "-c", str(max(connections, layout["wrk_threads"])),
        "-d", f"{max(duration, 1):g}s", "--timeout", "5s", "-s", script,
        f"{scheme}://127.0.0.1:{port}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ, **(env or {})))
    text = out.stdout
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}{text}")
    result = {"requests": 0, "non2xx": 0, "socket_errors": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if m:
        result["requests"] = int(m.group(1))
        result["elapsed_s"] = float(m.group(2)) * UNITS[m.group(3)] / 1e3
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    result["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        result[f"p{pct}_ms"] = to_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        result["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        result["socket_errors"] = sum(int(x) for x in m.groups())
    return result


def run_h2load(layout, port, connections, duration, path, headers, log_file=None):
    """h2load over TLS (ALPN h2), pinned like wrk, for `duration` seconds.
    h2load 1.52 prints min/max/mean/sd of the request time but no
    percentiles; with log_file it writes every request's time, from which
    p50 and p99 are computed here."""
    cmd = ["taskset", "-c", layout["wrk"],
           "h2load", "-t", str(layout["wrk_threads"]), "-c", str(max(connections, layout["wrk_threads"])),
           "-m", str(H2_STREAMS), "-D", str(max(int(round(duration)), 1)), f"--tls13-ciphers={TLS13_SUITE}"]
    for h in headers:
        cmd += ["-H", h]
    if log_file:
        cmd += ["--log-file", log_file]
    cmd.append(f"https://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = out.stdout
    if out.returncode != 0 or "finished in" not in text:
        raise RuntimeError(f"h2load failed: {out.stderr}{text}")
    result = {"requests": 0, "non2xx": 0, "socket_errors": 0, "p50_ms": None, "p99_ms": None}
    m = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", text)
    if m:
        result["elapsed_s"] = float(m.group(1)) * UNITS[m.group(2)] / 1e3
        result["rps"] = float(m.group(3))
    else:
        result["rps"] = 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = map(int, m.groups())
        result.update(requests=done, succeeded=ok, failed=failed, errored=errored, timeout=timeout)
        # h2load's `failed` includes non-2xx/3xx answers; `errored` (a subset of
        # it) is the network-level failures and reset streams.
        result["socket_errors"] = errored + timeout
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        result["status_2xx"] = int(m.group(1))
        result["non2xx"] = sum(int(x) for x in m.groups()[1:])
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if m:
        result["min_ms"], result["max_ms"], result["mean_ms"], result["sd_ms"] = (to_ms(x) for x in m.groups())
    m = re.search(r"Application protocol: (\S+)", text)
    result["protocol"] = m.group(1) if m else None
    m = re.search(r"TLS Protocol: (\S+)\s+Cipher: (\S+)", text)
    result["tls"] = f"{m.group(1)} {m.group(2)}" if m else None
    if log_file:
        times = []
        with open(log_file) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3 and cols[1] != "-1":
                    times.append(int(cols[2]))
        os.unlink(log_file)
        if times:
            times.sort()
            for pct in (50, 99):
                # nearest rank
                result[f"p{pct}_ms"] = round(times[min(len(times) - 1, max(0, -(-len(times) * pct // 100) - 1))] / 1e3, 4)
    return result


def check_h2(layout, port, path, headers):
    """A few requests over HTTP/2 with TLS: every one a 2xx, ALPN h2."""
    cmd = ["h2load", "-n", "20", "-c", "2", "-m", "2", f"--tls13-ciphers={TLS13_SUITE}"] + [a for h in headers for a in ("-H", h)] + [f"https://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    m = re.search(r"status codes: (\d+) 2xx", out.stdout)
    if "Application protocol: h2" not in out.stdout or not m or int(m.group(1)) != 20:
        raise RuntimeError(f"h2load against {port} (HTTP/2 over TLS) did not get 20 answers 2xx over h2:\n{out.stdout}{out.stderr}")


def tls_handshake(port, client_conf, workdir):
    """The TLS version and cipher suite a contender agrees on with openssl
    s_client under wrk's OpenSSL configuration (no ALPN, as wrk), and whether
    it resumes that session on a second connection."""
    session = os.path.join(workdir, f"tls-session-{port}.pem")

    def s_client(*extra):
        proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *extra],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, OPENSSL_CONF=client_conf))
        time.sleep(0.3)  # long enough to receive the TLS 1.3 session ticket
        out, _ = proc.communicate(input="", timeout=10)
        m = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", out, re.M)
        if not m:
            raise RuntimeError(f"openssl s_client against {port}: no TLS handshake:\n{out}")
        return m.groups()

    _, version, suite = s_client("-sess_out", session)
    reused, _, _ = s_client("-sess_in", session)
    return {"tls": f"{version} {suite}", "tls_resumption": reused == "Reused"}


def check_route(port, path, expect_len=None, headers=CLIENT_HEADERS, scheme="http"):
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}", headers=dict(h.split(": ", 1) for h in headers))
    context = None
    if scheme == "https":
        import ssl
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(req, timeout=5, context=context) as resp:
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} on {port}: {resp.status}")
        if expect_len is not None and len(body) != expect_len:
            raise RuntimeError(f"GET {path} on {port}: {len(body)} bytes, expected {expect_len}")
        return dict(resp.headers)


def read_response(sock):
    """Reads one HTTP/1.1 response (Content-Length or chunked) off a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    if "content-length" in fields:
        need = int(fields["content-length"])
        while len(body) < need:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed before the end of the body")
            body += chunk
    elif fields.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed before the end of the body")
            body += chunk
    return status


def idle_connection_memory(pid, port, count, headers, path="/hello"):
    """Memory per idle keep-alive connection: VmRSS with `count` client
    connections open, each after one request and response, against VmRSS
    just before they were opened; KiB per connection. The connections are
    closed afterwards."""
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()
    time.sleep(1.0)  # earlier connections closed, their memory released (or not)
    before = proc_status(pid, "VmRSS")
    socks, failures = [], 0
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            s.sendall(request)
            if read_response(s) != 200:
                failures += 1
        time.sleep(1.0)
        after = proc_status(pid, "VmRSS")
    finally:
        for s in socks:
            s.close()
    return {"connections": count, "rss_before_kib": before, "rss_after_kib": after, "non200": failures,
            "kib_per_connection": round((after - before) / count, 2)}


# ---------------------------------------------------------------- one scenario


def variant(name, key, default):
    """Experiments: a contender named e.g. `gateway-mi` or `bare-ws` is a
    variant whose binary, extra settings, Pingora conf or arguments come from
    BENCH_GATEWAY_MI_BIN, _SETTINGS, _CONF, BENCH_BARE_WS_ARGS..."""
    return os.environ.get("BENCH_" + name.upper().replace("-", "_") + "_" + key, default)


def port_of(name):
    if name in PORTS:
        return PORTS[name]
    return 18100 + CONTENDERS.index(name)


def tls_port(name):
    return port_of(name) + TLS_PORT_OFFSET


_TLS_SUPPORT = {}


def bare_has_tls(binary):
    """Whether this bare-proxy build has the --tls listener (its usage line
    names it); an older build is skipped in (f) and (g), and the results say so."""
    if binary not in _TLS_SUPPORT:
        try:
            out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
            _TLS_SUPPORT[binary] = "--tls" in out.stdout + out.stderr
        except OSError:
            _TLS_SUPPORT[binary] = False
    return _TLS_SUPPORT[binary]


def skip_reason(name, scenario):
    """Why a contender sits out a scenario, or None."""
    if scenario in TLS_SCENARIOS and name.startswith("bare") and not bare_has_tls(variant(name, "BIN", BARE_BIN)):
        return "this bare-proxy build has no TLS listener (--tls): rebuild it (bench/run.sh without BENCH_NO_BUILD)"
    return None


def start_contender(name, layout, workdir, scenario, ocelot_path, certificate=None):
    """Starts one contender; in (f) and (g) with a TLS listener, which is the
    port the returned Proc waits for and the load goes to."""
    cpus = layout["all"] if scenario == "h" else layout["contender"]
    n = workers(scenario)
    port = port_of(name)
    tls = dict(certificate, port=tls_port(name)) if scenario in TLS_SCENARIOS else None
    serve = tls["port"] if tls else port
    if name.startswith("gateway"):
        extra = variant(name, "SETTINGS", GATEWAY_EXTRA if name == "gateway" else "")
        settings = gateway_settings(workdir, scenario, ocelot_path, name, port, extra, tls)
        argv = [variant(name, "BIN", GATEWAY_BIN), "--settings", settings]
        conf = variant(name, "CONF", "")
        if conf:
            argv += ["-c", conf]
        return Proc(name, argv, cpus, serve, workdir, {"RUST_LOG": "warn"})
    if name.startswith("bare"):
        args = variant(name, "ARGS", "").split()
        if tls:
            args += ["--tls", f"127.0.0.1:{tls['port']}", tls["cert"], tls["key"]]
        return Proc(name, [variant(name, "BIN", BARE_BIN), f"127.0.0.1:{port}", f"127.0.0.1:{UPSTREAM_PORT}", "--threads", str(n)] + args,
                    cpus, serve, workdir)
    if name == "nginx":
        return Proc(name, ["nginx", "-c", nginx_proxy_conf(workdir, n, tls), "-p", workdir], cpus, serve, workdir)
    if name == "haproxy":
        return Proc(name, ["haproxy", "-db", "-f", haproxy_conf(workdir, n, tls)], cpus, serve, workdir)
    if name == "caddy":
        # One OS thread running Go code, as the others get one worker.
        return Proc(name, ["caddy", "run", "--adapter", "caddyfile", "--config", caddy_conf(workdir, tls)],
                    cpus, serve, workdir, {"GOMAXPROCS": str(n), "HOME": workdir, "XDG_DATA_HOME": workdir,
                                           "XDG_CONFIG_HOME": workdir})
    if name == "pingap":
        # PINGAP_DISABLE_ACME: no Let's Encrypt task (it has no certificates
        # to renew here anyway).
        return Proc(name, [PINGAP_BIN, "-c", pingap_conf(workdir, scenario, n, tls)], cpus, serve, workdir,
                    {"PINGAP_DISABLE_ACME": "1", "RUST_LOG": "warn"})
    raise ValueError(name)


PLAIN_PROXIES = ("nginx", "haproxy", "caddy", "pingap")


def run_scenario(scenario, layout, workdir, certificate=None):
    config, paths, connections = scenario_setup(scenario)
    ocelot_path = os.path.join(workdir, f"ocelot-{scenario}.json")
    with open(ocelot_path, "w") as f:
        json.dump(config, f)
    script = wrk_script(workdir, scenario, paths)
    expect = BIG_BODY_SIZE if scenario == "d" else len(SMALL_BODY)
    headers = scenario_headers(scenario)
    scheme = "https" if scenario in TLS_SCENARIOS else "http"
    h2_log = os.path.join(workdir, "h2load-requests.log")

    def load(p, duration, measured):
        if scenario == "f":
            return run_h2load(layout, p.port, connections, duration, paths[0], headers, h2_log if measured else None)
        env = {"OPENSSL_CONF": certificate["client_conf"]} if scenario == "g" else None
        return run_wrk(layout, p.port, connections, duration, script, scheme, env)

    procs = {}
    skipped = {}
    handshakes = {}
    notes = []
    try:
        for name in CONTENDERS:
            reason = skip_reason(name, scenario)
            if reason:
                skipped[name] = reason
                notes.append(f"{name}: skipped ({reason})")
                continue
            procs[name] = start_contender(name, layout, workdir, scenario, ocelot_path, certificate)
        time.sleep(0.5)
        idle = {name: proc_status(p.pid, "VmRSS") for name, p in procs.items()}
        for name, p in procs.items():
            for path in paths:
                got = check_route(p.port, path, expect, headers, scheme)
            if scenario == "f":
                check_h2(layout, p.port, paths[0], headers)
            if scenario == "g":
                handshakes[name] = tls_handshake(p.port, certificate["client_conf"], workdir)
            if name in PLAIN_PROXIES and scenario in ("b", "c"):
                notes.append(f"{name}: a plain proxy to the upstream here (no route table, rate limiting or JWT): the closest it can express")
            if name.startswith("gateway") and scenario == "b":
                limited = any(k.lower().startswith(("x-ratelimit", "x-rate-limit")) for k in got)
                notes.append("rate limiting: " + ("on (X-RateLimit headers seen)" if limited else "NOT active in this gateway build (no rate-limit headers)"))
                if JWT:
                    try:
                        check_route(p.port, paths[0], None, CLIENT_HEADERS)
                        notes.append("JWT: NOT enforced (a request without a token got 200)")
                    except urllib.error.HTTPError as e:
                        notes.append(f"JWT: validated on every request (without a token: {e.code})")
        idle_conn = {}
        if scenario == "e":
            # Memory per idle keep-alive connection, one contender at a time,
            # before the load: after the load rounds the allocators still hold
            # the memory of the 1,000 connections just closed, and new ones
            # reuse it (every contender measured 0 or less there).
            for name, p in procs.items():
                idle_conn[name] = idle_connection_memory(p.pid, p.port, IDLE_CONNECTIONS, CLIENT_HEADERS)
                if not p.alive():
                    raise RuntimeError(f"{name} died holding {IDLE_CONNECTIONS} idle connections; log {p.log_path}")
                log(f"  [{scenario}] {name:8s} {idle_conn[name]['kib_per_connection']:.1f} KiB per idle keep-alive connection "
                    f"(VmRSS {idle_conn[name]['rss_before_kib']} → {idle_conn[name]['rss_after_kib']} KiB with {IDLE_CONNECTIONS} open)")
        runs = {name: [] for name in procs}
        rss_trace = {name: [] for name in procs}
        for name, p in procs.items():  # warm-up: fills the upstream pools, faults in memory
            load(p, WARMUP, False)
        for rnd in range(ROUNDS):
            order = list(procs) if rnd % 2 == 0 else list(reversed(procs))
            for name in order:
                p = procs[name]
                if PERF and PERF == name and scenario == "a" and rnd == 0:
                    perf = subprocess.Popen(["perf", "record", "-g", "-p", str(p.pid), "-o", os.path.join(RESULTS, f"perf-{name}.data"), "--", "sleep", f"{DURATION:g}"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                else:
                    perf = None
                cpu0 = tree_cpu_seconds(p.pid)
                w = load(p, DURATION, True)
                cpu1 = tree_cpu_seconds(p.pid)
                if perf:
                    perf.wait()
                if not p.alive():
                    raise RuntimeError(f"{name} died during scenario {scenario}; log {p.log_path}")
                w["cpu_s"] = cpu1 - cpu0
                w["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / w["requests"] if w["requests"] else None
                w["rss_kib"] = proc_status(p.pid, "VmRSS")
                runs[name].append(w)
                rss_trace[name].append(w["rss_kib"])
                log(f"  [{scenario}] round {rnd + 1}/{ROUNDS} {name:8s} {w['rps']:>9.0f} req/s  "
                    f"p50 {w['p50_ms']} ms  p99 {w['p99_ms']} ms  {w['cpu_us_per_req'] or 0:.1f} µs CPU/req  "
                    f"non-2xx {w['non2xx']}  errors {w['socket_errors']}")
        summary = {}
        for name, rs in runs.items():
            def med(key):
                vals = [r[key] for r in rs if r.get(key) is not None]
                return statistics.median(vals) if vals else None
            summary[name] = {
                "rps": med("rps"),
                "p50_ms": med("p50_ms"),
                "p99_ms": med("p99_ms"),
                "cpu_us_per_req": med("cpu_us_per_req"),
                "idle_rss_kib": idle[name],
                "peak_rss_kib": proc_status(procs[name].pid, "VmHWM"),
                "rss_trace_kib": rss_trace[name],
                "non2xx": sum(r["non2xx"] for r in rs),
                "socket_errors": sum(r["socket_errors"] for r in rs),
                "requests": sum(r["requests"] for r in rs),
                "runs": rs,
            }
            if scenario == "f":
                summary[name]["mean_ms"] = med("mean_ms")
                summary[name]["protocol"] = rs[0].get("protocol") if rs else None
                summary[name]["tls"] = rs[0].get("tls") if rs else None
            if name in handshakes:
                summary[name].update(handshakes[name])
            if name in idle_conn:
                summary[name]["idle_conn_kib"] = idle_conn[name]["kib_per_connection"]
                summary[name]["idle_conn"] = idle_conn[name]
                summary[name]["non2xx"] += idle_conn[name]["non200"]
        if scenario in TLS_SCENARIOS:
            client = "h2load" if scenario == "f" else "openssl s_client configured as wrk"
            def resumption(v):
                if "tls_resumption" not in v:
                    return ""
                return ", resumes sessions" if v["tls_resumption"] else ", does NOT resume sessions"
            notes.append(f"TLS with {client}: " + "; ".join(f"{n} {v.get('tls')}{resumption(v)}" for n, v in summary.items()))
        for name, s in summary.items():
            if s["non2xx"] or s["socket_errors"]:
                notes.append(f"WARNING: {name} had {s['non2xx']} non-2xx responses and {s['socket_errors']} socket errors")
        return {"scenario": scenario, "description": SCENARIO_INFO[scenario], "connections": connections,
                "load": "h2load" if scenario == "f" else "wrk", "tls": scenario in TLS_SCENARIOS,
                "paths": paths, "contenders": summary, "skipped": skipped, "notes": notes}
    finally:
        for p in procs.values():
            p.stop()


# ---------------------------------------------------------------- report


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def table(results):
    lines = []
    head = ["scen", "contender", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "peak RSS MiB", "idle RSS MiB",
            "req/s ×nginx", "p99 ×nginx", "CPU ×nginx", "RSS ×nginx", "idle conn KiB", "non-2xx", "errors"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for res in results:
        ref = res["contenders"].get("nginx", {})
        for name, s in res["contenders"].items():
            row = [
                res["scenario"], name, fmt(s["rps"], ".0f"), fmt(s["p50_ms"], ".3f"), fmt(s["p99_ms"], ".3f"),
                fmt(s["cpu_us_per_req"], ".1f"), fmt(s["peak_rss_kib"] / 1024, ".1f"), fmt(s["idle_rss_kib"] / 1024, ".1f"),
                fmt(ratio(s["rps"], ref.get("rps")), ".2f"), fmt(ratio(s["p99_ms"], ref.get("p99_ms")), ".2f"),
                fmt(ratio(s["cpu_us_per_req"], ref.get("cpu_us_per_req")), ".2f"),
                fmt(ratio(s["peak_rss_kib"], ref.get("peak_rss_kib")), ".2f"),
                fmt(s.get("idle_conn_kib"), ".1f"),
                str(s["non2xx"]), str(s["socket_errors"]),
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets(results):
    """The issue's targets, checked on this run's medians."""
    by = {r["scenario"]: r["contenders"] for r in results}
    out = []

    def get(s, c, k):
        return by.get(s, {}).get(c, {}).get(k)

    def check(label, value, limit):
        if value is None:
            out.append({"target": label, "value": None, "limit": limit, "met": None})
        else:
            out.append({"target": label, "value": round(value, 3), "limit": limit, "met": value <= limit})

    def cpu(s, c):
        return get(s, c, "cpu_us_per_req")

    def p99(s, c):
        return get(s, c, "p99_ms")

    # Issue #17.
    check("(e) gateway CPU/req ÷ nginx", ratio(cpu("e", "gateway"), cpu("e", "nginx")), 1.5)
    check("(e) gateway p99 ÷ nginx", ratio(p99("e", "gateway"), p99("e", "nginx")), 1.5)
    check("(e) gateway memory per idle keep-alive connection, KiB", get("e", "gateway", "idle_conn_kib"), 12.0)
    check("(a) gateway CPU/req ÷ nginx", ratio(cpu("a", "gateway"), cpu("a", "nginx")), 1.25)
    check("(a) gateway p99 ÷ nginx", ratio(p99("a", "gateway"), p99("a", "nginx")), 1.3)
    check("(a) gateway CPU/req ÷ bare Pingora", ratio(cpu("a", "gateway"), cpu("a", "bare")), 1.05)
    # Every peer beaten: each Pingora or Go gateway that ran a scenario.
    for res in results:
        s = res["scenario"]
        for peer in ("pingap", "caddy"):
            if peer in res["contenders"] and "gateway" in res["contenders"]:
                check(f"({s}) gateway CPU/req ÷ {peer}", ratio(cpu(s, "gateway"), cpu(s, peer)), 1.0)
                check(f"({s}) gateway p99 ÷ {peer}", ratio(p99(s, "gateway"), p99(s, peer)), 1.0)
    # What the pipeline costs (issue #6, kept): the abp table's features over
    # one route, and 10,000 routes over the abp table and over one route.
    check("(b) gateway CPU/req ÷ (a)", ratio(cpu("b", "gateway"), cpu("a", "gateway")), 1.15)
    check("(c) gateway CPU/req ÷ (b)", ratio(cpu("c", "gateway"), cpu("b", "gateway")), 1.05)
    check("(c) gateway CPU/req ÷ (a), route count alone", ratio(cpu("c", "gateway"), cpu("a", "gateway")), 1.05)
    for s in ("d", "e"):
        trace = get(s, "gateway", "rss_trace_kib") or []
        if len(trace) >= 2:
            # Flat memory: RSS after the last round against after the first.
            check(f"({s}) gateway RSS, last round ÷ first", trace[-1] / trace[0], 1.10)
    return out


def ports_in_use():
    """The bench's ports that something already listens on: a leftover
    server there would answer in place of the bench's own (the wait for a
    port only sees that something accepts connections)."""
    ports = {UPSTREAM_PORT, UPSTREAM_PORT2}
    tls = any(s in TLS_SCENARIOS for s in SCENARIOS)
    for name in CONTENDERS:
        ports.add(port_of(name))
        if tls:
            ports.add(tls_port(name))
        if name.startswith("gateway"):
            ports.add(ADMIN_PORT if name == "gateway" else port_of(name) + 100)
    busy = []
    for port in sorted(ports):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def main():
    tls = any(s in TLS_SCENARIOS for s in SCENARIOS)
    for tool in ("wrk", "nginx", "haproxy", "caddy", "taskset", "h2load", "openssl"):
        needed = (tool in ("wrk", "taskset", "nginx") or tool in CONTENDERS or (tool == "h2load" and "f" in SCENARIOS)
                  or (tool == "openssl" and tls))
        if needed and not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing (bench/run.sh installs it)")
    for name, path in (("gateway", GATEWAY_BIN), ("bare", BARE_BIN), ("pingap", PINGAP_BIN)):
        if name in CONTENDERS and not os.access(path, os.X_OK):
            sys.exit(f"bench: {path} is missing (bench/run.sh {'installs' if name == 'pingap' else 'builds'} it)")
    busy = ports_in_use()
    if busy:
        who = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        lines = [l for l in who.splitlines() if any(f"127.0.0.1:{p} " in l or f"*:{p} " in l for p in busy)]
        sys.exit(f"bench: something already listens on 127.0.0.1 port(s) {', '.join(map(str, busy))}; stop it first"
                 + (" (or set BENCH_UPSTREAM_PORT)" if UPSTREAM_PORT in busy or UPSTREAM_PORT2 in busy else "")
                 + ":\n" + "\n".join(lines))
    os.makedirs(RESULTS, exist_ok=True)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    layout = cpu_layout()
    load_before = os.getloadavg()
    started = datetime.now(timezone.utc)
    log(f"bench: scenarios {','.join(SCENARIOS)}; contenders {','.join(CONTENDERS)}; {ROUNDS} round(s) of {DURATION:g} s "
        f"(+{WARMUP:g} s warm-up); contenders on CPU {layout['contender']}, upstream on {layout['upstream']}, "
        f"wrk on {layout['wrk']}; load average {load_before[0]:.2f}")
    workdir = tempfile.mkdtemp(prefix="gateway-bench-")
    upstream = None
    results = []
    try:
        certificate = make_certificate(workdir) if tls else None
        upstream = Proc("upstream", ["nginx", "-c", upstream_conf(workdir), "-p", workdir], layout["upstream"], UPSTREAM_PORT, workdir)
        for scenario in SCENARIOS:
            log(f"bench: scenario ({scenario}) {SCENARIO_INFO[scenario]}")
            results.append(run_scenario(scenario, layout, workdir, certificate))
    finally:
        if upstream:
            upstream.stop()
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    report = {
        "started": started.isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release, "load_before": load_before, "load_after": load_after},
        "layout": layout,
        "settings": {"duration_s": DURATION, "warmup_s": WARMUP, "rounds": ROUNDS, "connections": CONNECTIONS,
                     "h2_streams": H2_STREAMS, "idle_connections": IDLE_CONNECTIONS,
                     "scenarios": SCENARIOS, "contenders": CONTENDERS,
                     "quick": QUICK, "gateway_extra_settings": GATEWAY_EXTRA},
        "versions": versions(),
        "results": results,
    }
    report["targets"] = targets(results)
    md = markdown(report)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    for name in (f"bench-{stamp}", "latest"):
        with open(os.path.join(RESULTS, name + ".json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(RESULTS, name + ".md"), "w") as f:
            f.write(md)
    print(md)
    log(f"bench: wrote {RESULTS}/bench-{stamp}.json and .md (and latest.*)")


def versions():
    def first_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except Exception:
            return None
    found = {"nginx": first_line(["nginx", "-v"]), "haproxy": first_line(["haproxy", "-v"]),
             "wrk": first_line(["wrk", "-v"]), "git": first_line(["git", "-C", ROOT, "describe", "--always", "--dirty"])}
    if "caddy" in CONTENDERS:
        found["caddy"] = first_line(["caddy", "version"])
    if "pingap" in CONTENDERS:
        found["pingap"] = first_line([PINGAP_BIN, "--version"])
    if "f" in SCENARIOS:
        found["h2load"] = first_line(["h2load", "--version"])
    return found


def markdown(report):
    s = report["settings"]
    h = report["host"]
    lay = report["layout"]
    lines = [
        f"# Bench {report['started']}",
        "",
        f"{h['cpus']} CPUs, kernel {h['kernel']}; load average {h['load_before'][0]:.2f} before, {h['load_after'][0]:.2f} after. "
        f"Contenders on CPU {lay['contender']}, upstream nginx on CPU {lay['upstream']}, wrk ({lay['wrk_threads']} thread(s)) on CPU {lay['wrk']}. "
        f"{s['rounds']} round(s) × {s['duration_s']:g} s per contender, A B C D order alternating, medians shown; "
        f"{s['connections']} connections unless the scenario says otherwise.",
        "",
        table(report["results"]),
        "",
    ]
    for res in report["results"]:
        notes = list(res["notes"])
        if res["scenario"] == "f":
            notes.insert(0, "p50/p99: each request's time from start to end of response as h2load logs it "
                         "(--log-file), nearest rank; h2load's own summary has min/max/mean/sd only")
        if res["scenario"] == "e":
            notes.insert(0, f"idle conn KiB: (VmRSS with {report['settings'].get('idle_connections')} idle keep-alive "
                         "connections open, after one request each − VmRSS before) ÷ connections, measured before the load rounds")
        note = f"; {'; '.join(notes)}" if notes else ""
        lines.append(f"- ({res['scenario']}) {res['description']}, {res['connections']} connections{note}")
    lines += ["", "| target | value | limit | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | {fmt(t['value'], '.3f')} | {t['limit']} | {met} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
