#!/usr/bin/env bash
# The test command: installs what is missing, then checks formatting, lints
# with warnings as errors, and runs every test. Uses one cargo target
# directory outside the clone so RocksDB is built once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/silt/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all --check

# One build of every target: RocksDB's C++ is compiled here, once, and the
# tests, doc tests and scripts/bench.sh reuse it.
echo "== cargo build"
cargo build --workspace --all-targets --all-features --locked

# `cargo clippy` would otherwise compile RocksDB's C++ a second time (about
# half an hour on two cores): its build script units differ from the build's.
# A check never links, so pointing librocksdb-sys at a library directory
# skips that compile; the bindings are still generated from the headers.
echo "== cargo clippy"
no_link="$CARGO_TARGET_DIR/clippy-rocksdb-not-linked"
mkdir -p "$no_link"
ROCKSDB_LIB_DIR="$no_link" \
    cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-features --locked --profile ci
else
    cargo test --workspace --all-features --locked
fi
cargo test --workspace --all-features --locked --doc
