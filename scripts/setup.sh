#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Silt:
# libclang (RocksDB's bindgen needs it). Idempotent and quiet when nothing
# is missing.
set -euo pipefail

need=()
# Only libclang itself counts: libclang-cpp (present with plain llvm) is not
# what bindgen loads.
if ! ldconfig -p 2>/dev/null | grep -Eq '\blibclang(-[0-9.]+)?\.so' \
    && ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
if ! command -v c++ >/dev/null 2>&1; then
    need+=(g++)
fi

if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is missing; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
