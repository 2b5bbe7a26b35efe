#!/usr/bin/env bash
# Builds .patched/<crate> at the repository root: the crates.io release of each
# patched Pingora crate with our patches/<crate>-<version>-*.patch applied in
# name order. The workspace uses them through [patch.crates-io] in Cargo.toml.
# What each patch does, and when to drop it: patches/README.md.
# Outside target/ so that `cargo clean` leaves them alone (gitignored).
# Idempotent: a crate whose patched copy matches its patches is left alone.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=0.9.1
crates=(pingora-proxy pingora-core pingora-timeout)

# Let cargo download the releases into its registry cache, then find them there.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fetched=0
fetch_sources() {
  [ "$fetched" = 1 ] && return
  local name
  mkdir -p "$scratch/src"
  : > "$scratch/src/lib.rs"
  {
    printf '[package]\nname = "fetch-pingora"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n'
    for name in "${crates[@]}"; do printf '%s = "=%s"\n' "$name" "$version"; done
    printf '\n[workspace]\n'
  } > "$scratch/Cargo.toml"
  cargo fetch --quiet --manifest-path "$scratch/Cargo.toml"
  cargo metadata --format-version 1 --manifest-path "$scratch/Cargo.toml" > "$scratch/metadata.json"
  fetched=1
}

for crate in "${crates[@]}"; do
  patches=("$root"/patches/"$crate-$version"-*.patch)
  [ -e "${patches[0]}" ] || { echo "no patches for $crate in patches/" >&2; exit 1; }
  dest="$root/.patched/$crate"
  stamp="$dest/.gateway-patched-$(cat "${patches[@]}" | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && continue

  fetch_sources
  manifest=$(python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(open(sys.argv[1]))["packages"] if p["name"] == sys.argv[2]))' \
    "$scratch/metadata.json" "$crate")
  rm -rf "$dest"
  mkdir -p "$(dirname "$dest")"
  cp -r "$(dirname "$manifest")" "$dest"
  chmod -R u+w "$dest"
  for patch_file in "${patches[@]}"; do
    patch --quiet -d "$dest" -p1 < "$patch_file"
  done
  touch "$stamp"
  echo "patched $crate $version into ${dest#"$root"/}"
done
