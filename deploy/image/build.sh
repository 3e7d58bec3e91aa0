#!/usr/bin/env bash
# Builds the ferry image with no base image (deploy/image/Dockerfile, FROM scratch): the binary,
# stripped, plus the shared libraries `ldd` says it links and their loader, at their own paths.
#
#   bash deploy/image/build.sh [BINARY] [TAG]
#
# BINARY defaults to target/release/ferry (build it first: `cargo build --release --locked`),
# TAG to ferry:<version from Cargo.toml>. Prints the tag and the image size.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
binary="${1:-$root/target/release/ferry}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
tag="${2:-ferry:$version}"
if [ ! -x "$binary" ]; then
  echo "deploy/image/build.sh: $binary is not an executable (cargo build --release --locked first)" >&2
  exit 1
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/var-lib-ferry/agent" "$ctx/var-lib-ferry/aggregator"
cp "$binary" "$ctx/rootfs/usr/local/bin/ferry"
strip "$ctx/rootfs/usr/local/bin/ferry" 2>/dev/null || true
# Every library the dynamic loader would map, and the loader itself (`ldd` lists both).
libs="$(ldd "$binary" 2>/dev/null | grep -o '/[^ ]*' || true)"
for lib in $libs; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
# TLS to Elasticsearch trusts these besides the roots built into the binary.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  mkdir -p "$ctx/rootfs/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
fi
cp "$here/Dockerfile" "$ctx/Dockerfile"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
docker build -q -t "$tag" \
  --build-arg "VERSION=$version" \
  --build-arg "REVISION=$revision" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  "$ctx" >/dev/null
size="$(docker image inspect -f '{{.Size}}' "$tag")"
echo "built $tag ($size bytes)"
