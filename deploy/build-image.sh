#!/usr/bin/env bash
# Builds the `silt` image (both binaries; the supplier is the entrypoint)
# from binaries built here: no base image is pulled.
#
#   deploy/build-image.sh            # then: docker-compose -f deploy/docker-compose.yml up
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
if ! command -v busybox >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq busybox-static >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/silt/target}"
cargo build --locked --workspace --all-targets --all-features
bin="$CARGO_TARGET_DIR/debug"

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc" "$root/tmp" "$context/owned/data"
cp "$bin/silt-supplier" "$bin/silt" "$root/usr/local/bin/"
strip --strip-debug "$root/usr/local/bin/silt-supplier" "$root/usr/local/bin/silt"
cp deploy/entrypoint.sh "$root/usr/local/bin/silt-entrypoint"
cp "$(command -v busybox)" "$root/bin/busybox"
for tool in sh cat ls mkdir wget; do ln -s busybox "$root/bin/$tool"; done
# The shared libraries the binaries link, at the paths the loader expects.
for lib in $(ldd "$bin/silt-supplier" "$bin/silt" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
echo "silt:x:10001:10001:silt:/data:/bin/sh" >>"$root/etc/passwd"
printf 'root:x:0:\nsilt:x:10001:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
cp deploy/Dockerfile "$context/Dockerfile"
docker build -q -t silt:latest "$context"
echo "built image silt:latest"
