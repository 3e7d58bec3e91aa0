#!/usr/bin/env bash
# Builds `ferry-test:latest` (busybox on scratch) for the tests that run real containers.
# Needs Debian's busybox-static (`apt-get install -y busybox-static`) and a Docker engine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
busybox="${BUSYBOX:-/bin/busybox}"
if ! (ldd "$busybox" 2>&1 || true) | grep -q "not a dynamic executable\|statically linked"; then
  echo "tests/image/build.sh: $busybox is not a static busybox (install busybox-static)" >&2
  exit 1
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$ctx/"
cp "$busybox" "$ctx/busybox"
docker build -q -t ferry-test:latest "$ctx" >/dev/null
echo "built ferry-test:latest"
