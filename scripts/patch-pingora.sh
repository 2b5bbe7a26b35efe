#!/usr/bin/env bash
# Builds target/patched/pingora-proxy: the crates.io release of pingora-proxy
# 0.9.1 with our fix for the WebSocket upgrade race (cloudflare/pingora#946,
# fix proposed upstream in #947) applied from patches/. The workspace uses it
# through [patch.crates-io]; drop both once a Pingora release has the fix.
# Idempotent: does nothing when the patched copy is already there.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=0.9.1
patch_file="$root/patches/pingora-proxy-$version-websocket-upgrade.patch"
dest="$root/target/patched/pingora-proxy"
stamp="$dest/.gateway-patched-$(sha256sum "$patch_file" | cut -c1-16)"
[ -f "$stamp" ] && exit 0

# Let cargo download the release into its registry cache, then find it there.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/src"
: > "$scratch/src/lib.rs"
cat > "$scratch/Cargo.toml" <<TOML
[package]
name = "fetch-pingora-proxy"
version = "0.0.0"
edition = "2021"

[dependencies]
pingora-proxy = "=$version"

[workspace]
TOML
cargo fetch --quiet --manifest-path "$scratch/Cargo.toml"
manifest=$(cargo metadata --format-version 1 --manifest-path "$scratch/Cargo.toml" |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "pingora-proxy"))')
src=$(dirname "$manifest")

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -r "$src" "$dest"
chmod -R u+w "$dest"
patch --quiet -d "$dest" -p1 < "$patch_file"
touch "$stamp"
echo "patched pingora-proxy $version into ${dest#"$root"/}"
