#!/usr/bin/env bash
# Runs the unit tests our Pingora patches add (patches/README.md, "Tests"), in
# the patched crates under .patched/ that scripts/patch-pingora.sh made.
#
# The test names come from the patches themselves: every `#[test]` or
# `#[tokio::test]` function among a patch's added lines. Each patched crate
# with such tests is built standalone (it is excluded from our workspace, and
# its dev-dependencies are not in our Cargo.lock), starting from our
# workspace's Cargo.lock so that the dependencies it shares with the gateway
# are the versions we ship; only its library's tests run, filtered to ours.
# Fails if one of our tests fails or did not run (e.g. renamed upstream).
#
# It builds into the workspace's target/ (or $CARGO_TARGET_DIR) with the
# workspace's [profile.dev] settings, so that the dependencies it shares with
# the gateway's build (vendored OpenSSL, ring, ...) are reused, not rebuilt.
# CARGO_BUILD_JOBS limits the jobs.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo=${CARGO:-cargo}
version=0.9.1
target_dir=${CARGO_TARGET_DIR:-$root/target}

# The cargo features each crate's tests are built with: the ones the
# workspace enables (Cargo.toml, [workspace.dependencies]).
declare -A features=([pingora-core]=openssl [pingora-proxy]=openssl)

# The workspace's [profile.dev] settings as `--config KEY=VALUE` arguments (a
# standalone crate does not see them). Without tomllib (Python < 3.11) none:
# still correct, only less is reused.
profile_config() {
  python3 - "$root/Cargo.toml" <<'PY'
import json, sys
try:
    import tomllib
except ImportError:
    sys.exit(0)
dev = tomllib.load(open(sys.argv[1], "rb")).get("profile", {}).get("dev", {})

def emit(prefix, table):
    for key, value in table.items():
        if key == "package":
            for pkg, settings in value.items():
                emit(f"{prefix}.package.{json.dumps(pkg)}", settings)
        elif not isinstance(value, dict):
            print("--config")
            print(f"{prefix}.{key}={json.dumps(value)}")

emit("profile.dev", dev)
PY
}

# Names of the test functions that a patch's added lines define.
added_tests() {
  python3 - "$@" <<'PY'
import re, sys
for path in sys.argv[1:]:
    pending = False
    for line in open(path, encoding="utf-8"):
        if not line.startswith("+") or line.startswith("+++"):
            pending = False
            continue
        code = line[1:].strip()
        if re.match(r"#\[(tokio::)?test\b", code):
            pending = True
        elif pending and (m := re.match(r"(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?fn\s+([A-Za-z0-9_]+)", code)):
            print(m.group(1))
            pending = False
        elif pending and not code.startswith("#["):
            pending = False
PY
}

[ -d "$root/.patched" ] || { echo "test-patches: no .patched/: run make deps first" >&2; exit 1; }
mapfile -t config < <(profile_config)
status=0
for dir in "$root"/.patched/*/; do
  dir=${dir%/}
  crate=$(basename "$dir")
  patches=("$root"/patches/"$crate-$version"-*.patch)
  [ -e "${patches[0]}" ] || continue
  mapfile -t tests < <(added_tests "${patches[@]}")
  if [ "${#tests[@]}" -eq 0 ]; then
    echo "test-patches: $crate: its patches add no unit tests"
    continue
  fi
  echo "test-patches: $crate: ${#tests[@]} tests from its patches"
  # Seeded once per version of our Cargo.lock (cargo then adds the crate's
  # dev-dependencies), so that a re-run resolves and rebuilds nothing.
  seed="$dir/.seeded-lock-$(sha256sum < "$root/Cargo.lock" | cut -c1-16)"
  if [ ! -f "$seed" ]; then
    rm -f "$dir"/.seeded-lock-*
    cp "$root/Cargo.lock" "$dir/Cargo.lock"
    touch "$seed"
  fi
  mkdir -p "$target_dir"
  log="$target_dir/patch-tests-$crate.log"
  set +e
  "$cargo" test --manifest-path "$dir/Cargo.toml" --target-dir "$target_dir" "${config[@]}" \
    --features "${features[$crate]:-}" --lib -- "${tests[@]}" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "test-patches: $crate: cargo test failed" >&2
    status=1
    continue
  fi
  for t in "${tests[@]}"; do
    if ! grep -Eq "^test (.*::)?$t \.\.\. ok$" "$log"; then
      echo "test-patches: $crate: $t did not run and pass" >&2
      status=1
    fi
  done
done
exit "$status"
