#!/usr/bin/env bash
# Builds target/patched/<crate>: the crates.io release of each patched Pingora
# crate with our patches from patches/<crate>-<version>-*.patch applied in name
# order. The workspace uses them through [patch.crates-io]; drop a crate from
# both once a Pingora release carries its fixes.
#   pingora-proxy: the WebSocket upgrade race (cloudflare/pingora#946, fix
#                  proposed upstream in #947); a client that closes before its
#                  request head is complete logged at debug, not ERROR.
#   pingora-core:  HTTP/1 body buffers (bench/README.md, issue #6): no 64 KiB
#                  buffer for a body that came with its header, large body
#                  chunks passed on without a copy, the body chunks gathered
#                  for one downstream write sent with vectored writes instead
#                  of being joined into one buffer first; and an L4
#                  write buffer that sends what it holds together with a
#                  write that does not fit, in one vectored write (a response
#                  header and a large body leave in one system call); and
#                  pooled upstream connections taken out of their slot rather
#                  than unwrapped, so a connection whose idle watcher (on
#                  another thread) still holds its handle is reused instead of
#                  being dropped with "ERROR failed to acquire reusable stream"
#                  (cloudflare/pingora#201).
# Idempotent: a crate whose patched copy matches its patches is left alone.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=0.9.1
crates=(pingora-proxy pingora-core)

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
  dest="$root/target/patched/$crate"
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
