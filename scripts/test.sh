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

echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-features --locked --profile ci
else
    cargo test --workspace --all-features --locked
fi
cargo test --workspace --all-features --locked --doc
