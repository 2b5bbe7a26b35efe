"""Checks for the rendered Kubernetes manifests, the alert rules and the dashboard.

Run by k8s/validate.sh (inside its venv, which has kubernetes-validate and
PyYAML); see that script for what is checked. Prints one line per problem and
exits 1 if there is any.
"""

import argparse
import copy
import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

# Kinds kubernetes-validate has no schema for (CRDs); checked here instead.
CRD_KINDS = {"PrometheusRule", "ServiceMonitor", "PodMonitor"}
# The gateway's defaults (gateway/src/main.rs) when gateway.yaml leaves them out.
DEFAULT_GRACE_PERIOD = 10
DEFAULT_SHUTDOWN_TIMEOUT = 5
DEFAULT_DRAIN = 5  # drain_seconds: serving with /readyz failing after SIGTERM
# terminationGracePeriodSeconds must leave at least this much after the sum.
SHUTDOWN_MARGIN = 5

errors = []


def error(where, message):
    errors.append(f"{where}: {message}")
    print(f"ERROR {where}: {message}", flush=True)


def info(message):
    print(f"  {message}", flush=True)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- schemas ---------------------------------------------------------------------


def schema_check(name, docs, versions):
    for doc in docs:
        kind = doc.get("kind", "?")
        ident = f"{name}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                error(ident, f"invalid for Kubernetes {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                if kind not in CRD_KINDS:
                    error(ident, e.message)
    info(f"{name}: {len(docs)} documents valid against Kubernetes {', '.join(versions)} (strict)")


def schema_canary(deployment, version):
    """A misspelt field must fail: proves the strict schemas are in use."""
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    try:
        kubernetes_validate.validate(broken, version, strict=True)
    except kubernetes_validate.ValidationError:
        return
    error("kubernetes-validate", "accepted a Deployment with a misspelt field (readinesProbe): not validating")


# --- the gateway's own rules ---------------------------------------------------------


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def selects(selector, labels):
    match = (selector or {}).get("matchLabels", selector or {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def prestop_seconds(container):
    pre = container.get("lifecycle", {}).get("preStop")
    if not pre:
        return 0
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    if len(cmd) == 1 or (len(cmd) >= 3 and cmd[0].endswith("sh") and cmd[1] == "-c"):
        cmd = shlex.split(cmd[-1])
    if len(cmd) == 2 and cmd[0].endswith("sleep"):
        return int(float(cmd[1]))
    return None


def gateway_checks(name, docs, gateway_bin):
    where = name
    deployments = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "gateway"]
    if len(deployments) != 1:
        error(where, "expected one Deployment named gateway")
        return
    dep = deployments[0]
    where = f"{name}: Deployment/gateway"
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    containers = [c for c in pod["containers"] if c["name"] == "gateway"]
    if not containers:
        error(where, "no container named gateway")
        return
    c = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    if not selects(spec["selector"], pod_labels):
        error(where, "selector does not select the pod template's labels")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    if str(ru.get("maxUnavailable")) != "0":
        error(where, "rolling update must keep maxUnavailable: 0")

    # Security.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not psc.get("runAsNonRoot") or not isinstance(psc.get("runAsUser"), int) or psc.get("runAsUser") == 0:
        error(where, "pod must run as a fixed non-root uid (runAsNonRoot, runAsUser)")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault" and csc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        error(where, "seccompProfile must be RuntimeDefault")
    if csc.get("readOnlyRootFilesystem") is not True:
        error(where, "readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        error(where, "allowPrivilegeEscalation must be false")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        error(where, "capabilities must drop ALL")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(kind, {}):
                error(where, f"resources.{kind}.{r} is missing")

    # Volumes: the config as a folder, /tmp writable.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    for m in c.get("volumeMounts", []):
        if m.get("subPath") or m.get("subPathExpr"):
            error(where, f"volume {m['name']} mounted with subPath: never updated, so no hot reload")
    tmp = mounts.get("/tmp")
    if not tmp or "emptyDir" not in volumes.get(tmp["name"], {}):
        error(where, "/tmp must be an emptyDir (Pingora's pid file and upgrade socket)")
    args = c.get("args", []) + c.get("command", [])
    settings_path = args[args.index("--settings") + 1] if "--settings" in args[:-1] else "/etc/gateway/gateway.yaml"
    settings_dir, settings_file = settings_path.rsplit("/", 1)
    mount = mounts.get(settings_dir)
    cm_name = volumes.get(mount["name"], {}).get("configMap", {}).get("name") if mount else None
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    if cm_name not in configmaps:
        error(where, f"{settings_dir} must be a ConfigMap volume of this kustomization (found {cm_name})")
        return
    data = configmaps[cm_name].get("data", {})
    if settings_file not in data:
        error(where, f"ConfigMap {cm_name} has no {settings_file}")
        return
    try:
        settings = yaml.safe_load(data[settings_file]) or {}
    except yaml.YAMLError as e:
        error(where, f"{settings_file}: {e}")
        return

    # Listeners and probes.
    admin = port_of(settings.get("admin_listen", "0.0.0.0:9901"))
    listens = [port_of(a) for a in settings.get("listen", ["0.0.0.0:8080"])]
    if ports.get("admin") != admin:
        error(where, f"container port `admin` is {ports.get('admin')}, gateway.yaml admin_listen is {admin}")
    if ports.get("http") not in listens:
        error(where, f"container port `http` ({ports.get('http')}) is not a gateway.yaml listen port {listens}")
    for probe, path in (("startupProbe", None), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        p = c.get(probe)
        if not p or "httpGet" not in p:
            error(where, f"{probe} (httpGet on the admin port) is missing")
            continue
        port = p["httpGet"]["port"]
        if ports.get(port, port) != admin:
            error(where, f"{probe} is not on the admin port {admin}")
        if path and p["httpGet"].get("path") != path:
            error(where, f"{probe} must GET {path}")

    # Shutdown budget.
    pre = prestop_seconds(c)
    if pre is None:
        error(where, "preStop must be a sleep (exec [sleep, N] or sleep.seconds) for the budget check")
        pre = 0
    grace = int(settings.get("grace_period_seconds", DEFAULT_GRACE_PERIOD))
    timeout = int(settings.get("graceful_shutdown_timeout_seconds", DEFAULT_SHUTDOWN_TIMEOUT))
    drain = int(settings.get("drain_seconds", DEFAULT_DRAIN))
    need = pre + drain + grace + timeout + SHUTDOWN_MARGIN
    tgps = int(pod.get("terminationGracePeriodSeconds", 30))
    budget = (f"preStop {pre} + " if pre else "") + f"drain {drain} + grace {grace} + shutdown {timeout} + margin {SHUTDOWN_MARGIN} = {need}"
    if tgps < need:
        error(where, f"terminationGracePeriodSeconds {tgps} < {budget}")
    else:
        info(f"{name}: shutdown budget {budget} <= terminationGracePeriodSeconds {tgps}")

    # The objects around the Deployment.
    replicas = spec.get("replicas", 1)
    for svc in by_kind(docs, "Service"):
        w = f"{name}: Service/{svc['metadata']['name']}"
        if not selects(svc["spec"].get("selector"), pod_labels):
            error(w, "selector does not select the gateway pods")
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if (isinstance(tp, str) and tp not in ports) or (isinstance(tp, int) and tp not in ports.values()):
                error(w, f"targetPort {tp} is not a container port")
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        w = f"{name}: PodDisruptionBudget/{pdb['metadata']['name']}"
        if not selects(pdb["spec"].get("selector"), pod_labels):
            error(w, "selector does not select the gateway pods")
        if pdb["spec"].get("minAvailable") is not None and int(pdb["spec"]["minAvailable"]) >= replicas:
            error(w, f"minAvailable {pdb['spec']['minAvailable']} with {replicas} replicas blocks every node drain")
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        w = f"{name}: HorizontalPodAutoscaler/{hpa['metadata']['name']}"
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
            error(w, f"scales {ref['kind']}/{ref['name']}, not the gateway Deployment")
        lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        if not lo <= replicas <= hi:
            error(w, f"Deployment replicas {replicas} outside minReplicas..maxReplicas {lo}..{hi}: every apply would fight the HPA")
        if any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])) and "cpu" not in res.get("requests", {}):
            error(w, "CPU utilisation needs a CPU request")
    for ing in by_kind(docs, "Ingress"):
        w = f"{name}: Ingress/{ing['metadata']['name']}"
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                s = p["backend"]["service"]
                svc = services.get(s["name"])
                if not svc:
                    error(w, f"backend Service {s['name']} is not in this kustomization")
                elif not any(sp.get("name") == s["port"].get("name") or sp["port"] == s["port"].get("number") for sp in svc["spec"]["ports"]):
                    error(w, f"backend port {s['port']} is not a port of Service {s['name']}")

    # The configuration itself.
    ocelot = settings.get("ocelot")
    if ocelot and not str(ocelot).startswith("/") and "/" not in str(ocelot) and str(ocelot) not in data:
        error(where, f"gateway.yaml names ocelot: {ocelot}, which is not in ConfigMap {cm_name}")
    for key, text in data.items():
        if key.endswith(".json"):
            try:
                json.loads(strip_json_comments(text))
            except ValueError as e:
                error(f"{name}: ConfigMap {cm_name}", f"{key} is not JSON: {e}")
    if gateway_bin:
        with tempfile.TemporaryDirectory() as d:
            for key, text in data.items():
                Path(d, key).write_text(text)
            run = subprocess.run(
                [gateway_bin, "--check", "--settings", str(Path(d, settings_file))],
                capture_output=True, text=True, timeout=60)
            out = (run.stdout + run.stderr).strip().replace(d + "/", "")
            if run.returncode != 0:
                error(f"{name}: ConfigMap {cm_name}", f"gateway --check failed:\n{out}")
            else:
                info(f"{name}: gateway --check: {out.splitlines()[-1] if out else 'OK'}")


def strip_json_comments(text):
    """Ocelot's reader allows // and /* */ comments and trailing commas."""
    out, i, n, in_str = [], 0, len(text), False
    while i < n:
        ch = text[i]
        if in_str:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
            out.append(ch)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(ch)
        i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out).lstrip("\ufeff"))


# --- monitoring ------------------------------------------------------------------------


def metric_names(expr):
    """gateway_* metric names an expression uses, histogram suffixes removed."""
    names = set()
    for m in re.findall(r"\bgateway_[a-z0-9_]+", expr):
        names.add(re.sub(r"_(bucket|count|sum)$", "", m))
    return names


def known_metrics(source):
    if not source or not Path(source).is_file():
        return None
    return set(re.findall(r'"(gateway_[a-z0-9_]+)"', Path(source).read_text()))


def promtool_check_rules(promtool, path, label):
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    if run.returncode != 0:
        error(label, f"promtool check rules:\n{(run.stdout + run.stderr).strip()}")
        return False
    return True


def monitoring_checks(k8s_dir, rendered, promtool, known):
    mon = Path(k8s_dir, "monitoring")
    rules_file = mon / "gateway.rules.yml"
    if not rules_file.is_file():
        return
    used = set()
    try:
        plain = yaml.safe_load(rules_file.read_text())
    except yaml.YAMLError as e:
        error(str(rules_file), str(e))
        return
    groups = plain.get("groups") if isinstance(plain, dict) else None
    if not groups:
        error(str(rules_file), "no rule groups")
        return
    count = 0
    for g in groups:
        for r in g.get("rules", []):
            count += 1
            if not r.get("expr") or not (r.get("alert") or r.get("record")):
                error(str(rules_file), f"rule {r} needs alert (or record) and expr")
            used |= metric_names(r.get("expr", ""))
    if promtool:
        if promtool_check_rules(promtool, rules_file, "gateway.rules.yml"):
            info(f"monitoring: gateway.rules.yml: promtool check rules: {count} rules OK")
        tests = mon / "gateway.rules.test.yml"
        if tests.is_file():
            run = subprocess.run([promtool, "test", "rules", tests.name], cwd=mon, capture_output=True, text=True)
            if run.returncode != 0:
                error("gateway.rules.test.yml", f"promtool test rules:\n{(run.stdout + run.stderr).strip()}")
            else:
                info("monitoring: gateway.rules.test.yml: promtool test rules: SUCCESS")
    else:
        info(f"monitoring: gateway.rules.yml: {count} rules (YAML only: no promtool)")

    # The PrometheusRule and ServiceMonitor, as rendered.
    docs = load_docs(Path(rendered, "monitoring.yaml")) if Path(rendered, "monitoring.yaml").is_file() else []
    prs = by_kind(docs, "PrometheusRule")
    if not prs:
        error("monitoring", "no PrometheusRule rendered")
    for pr in prs:
        if pr["spec"].get("groups") != groups:
            error("monitoring: PrometheusRule/" + pr["metadata"]["name"],
                  "spec.groups differ from gateway.rules.yml: edit both files together")
        else:
            info("monitoring: PrometheusRule carries the same groups as gateway.rules.yml")
    base = load_docs(Path(rendered, "base.yaml"))
    svc_ports = {p.get("name") for s in by_kind(base, "Service") for p in s["spec"]["ports"]}
    svc_labels = [s["metadata"].get("labels", {}) for s in by_kind(base, "Service")]
    for sm in by_kind(docs, "ServiceMonitor"):
        w = "monitoring: ServiceMonitor/" + sm["metadata"]["name"]
        if not any(selects(sm["spec"].get("selector"), labels) for labels in svc_labels):
            error(w, "selector matches no Service of k8s/base")
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") not in svc_ports:
                error(w, f"endpoint port {ep.get('port')} is not a named port of the gateway Service")

    # The dashboard.
    dash_file = mon / "grafana-dashboard.json"
    if dash_file.is_file():
        try:
            dash = json.loads(dash_file.read_text())
        except ValueError as e:
            error(str(dash_file), f"not valid JSON: {e}")
            return
        exprs, ids = [], set()

        def walk(panels):
            for p in panels:
                if p.get("id") in ids:
                    error("grafana-dashboard.json", f"duplicate panel id {p.get('id')}")
                ids.add(p.get("id"))
                if "gridPos" not in p:
                    error("grafana-dashboard.json", f"panel {p.get('title')} has no gridPos")
                if p.get("type") != "row" and not p.get("targets"):
                    error("grafana-dashboard.json", f"panel {p.get('title')} has no queries")
                for t in p.get("targets", []):
                    if not t.get("expr"):
                        error("grafana-dashboard.json", f"panel {p.get('title')} has a query without expr")
                    else:
                        exprs.append((p.get("title"), t["expr"]))
                walk(p.get("panels", []))

        for key in ("title", "uid", "panels"):
            if key not in dash:
                error("grafana-dashboard.json", f"no {key}")
        walk(dash.get("panels", []))
        for _, e in exprs:
            used |= metric_names(e)
        if promtool and exprs:
            subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
            rules = []
            for i, (_, e) in enumerate(exprs):
                for k, v in subst.items():
                    e = e.replace(k, v)
                e = re.sub(r"\$\{?[A-Za-z_]+\}?", ".*", e)
                rules.append({"record": f"dashboard:query_{i}", "expr": e})
            with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
                yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
                f.flush()
                if promtool_check_rules(promtool, f.name, "grafana-dashboard.json queries"):
                    info(f"monitoring: grafana-dashboard.json: {len(ids)} panels, {len(exprs)} queries parse")
        else:
            info(f"monitoring: grafana-dashboard.json: {len(ids)} panels, valid JSON")

    if known is not None:
        for m in sorted(used - known):
            error("monitoring", f"metric {m} is not defined in gateway/src/metrics.rs")
        if not used - known:
            info(f"monitoring: all {len(used)} gateway_* metrics used are defined in gateway/src/metrics.rs")


# --- Dockerfile ------------------------------------------------------------------------


def dockerfile_checks(path, rendered):
    """The image's user, ports and settings path agree with the Deployment."""
    if not path or not Path(path).is_file():
        return
    before = len(errors)
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    stage = lines[last_from:]

    def instr(name):
        return [l.split(None, 1)[1] if " " in l else "" for l in stage if l.split(None, 1)[0].upper() == name]

    dep = [d for d in load_docs(Path(rendered, "base.yaml")) if d.get("kind") == "Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    user = (instr("USER") or ["root"])[-1]
    uid, _, gid = user.partition(":")
    psc = pod.get("securityContext", {})
    if not uid.isdigit() or int(uid) == 0:
        error("Dockerfile", f"USER {user}: the runtime stage must run as a numeric non-root uid (runAsNonRoot)")
    elif int(uid) != psc.get("runAsUser") or (gid and int(gid) != psc.get("runAsGroup")):
        error("Dockerfile", f"USER {user} differs from the Deployment's runAsUser/runAsGroup {psc.get('runAsUser')}:{psc.get('runAsGroup')}")
    exposed = {int(p.split("/")[0]) for e in instr("EXPOSE") for p in e.split()}
    for p in c.get("ports", []):
        if p["containerPort"] not in exposed:
            error("Dockerfile", f"container port {p['containerPort']} ({p.get('name')}) is not EXPOSEd")
    try:
        entry = json.loads((instr("ENTRYPOINT") or ["[]"])[-1]) + json.loads((instr("CMD") or ["[]"])[-1])
    except ValueError:
        error("Dockerfile", "ENTRYPOINT and CMD must use the JSON (exec) form")
        return
    args = c.get("args", [])
    if "--settings" in args and "--settings" in entry and entry[entry.index("--settings") + 1] != args[args.index("--settings") + 1]:
        error("Dockerfile", "CMD's --settings path differs from the Deployment's")
    if len(errors) == before:
        info(f"Dockerfile: USER {user}, EXPOSE {sorted(exposed)}, {' '.join(entry)}: match the Deployment")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-dir", required=True)
    ap.add_argument("--rendered", required=True)
    ap.add_argument("--kube-versions", default="1.37")
    ap.add_argument("--promtool", default="")
    ap.add_argument("--gateway", default="")
    ap.add_argument("--metrics-source", default="")
    ap.add_argument("--dockerfile", default="")
    a = ap.parse_args()
    versions = a.kube_versions.split()

    print("k8s-validate: kubernetes-validate", kubernetes_validate.__version__ if hasattr(kubernetes_validate, "__version__") else "",
          "| promtool:", a.promtool or "none", "| gateway --check:", a.gateway or "skipped (no built gateway)", flush=True)
    canary_done = False
    for path in sorted(Path(a.rendered).glob("*.yaml")):
        name = path.stem.replace("_", "/")
        try:
            docs = load_docs(path)
        except yaml.YAMLError as e:
            error(name, f"rendered YAML does not parse: {e}")
            continue
        schema_check(name, docs, versions)
        if name != "monitoring":
            gateway_checks(name, docs, a.gateway or None)
            deps = by_kind(docs, "Deployment")
            if deps and not canary_done:
                schema_canary(deps[0], versions[-1])
                canary_done = True
    monitoring_checks(a.k8s_dir, a.rendered, a.promtool or None, known_metrics(a.metrics_source))
    dockerfile_checks(a.dockerfile, a.rendered)

    if errors:
        print(f"k8s-validate: {len(errors)} error(s)", flush=True)
        return 1
    print("k8s-validate: OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
