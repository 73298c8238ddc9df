#!/usr/bin/env bash
# Sets up and runs a local Silt network on loopback: one supplier that is
# also the identity server, and more suppliers beside it, each a
# silt-supplier process with its own data directory under .silt-local/.
# Stop it with Ctrl-C. Data survives restarts; delete .silt-local/ to start over.
#
#   SUPPLIERS=4 BASE_PORT=7700 scripts/run-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/silt/target}"
cargo build --locked --workspace --all-targets --all-features
bin="$CARGO_TARGET_DIR/debug"
net="${SILT_LOCAL_NET:-$PWD/.silt-local}"
count="${SUPPLIERS:-4}"
base="${BASE_PORT:-7700}"
mkdir -p "$net"

pids=()
cleanup() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        echo "stopping ${#pids[@]} suppliers"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap cleanup INT TERM EXIT

for i in $(seq 0 $((count - 1))); do
    data="$net/supplier-$i"
    port=$((base + i))
    if [ ! -f "$data/node.key" ]; then
        "$bin/silt-supplier" init --data "$data" --name "supplier$i" --id-server "127.0.0.1:$base" >/dev/null
    fi
    args=(run --data "$data" --listen "127.0.0.1:$port")
    if [ "$i" -eq 0 ]; then
        args+=(--identity-server)
    else
        args+=(--bootstrap "127.0.0.1:$base")
    fi
    "$bin/silt-supplier" "${args[@]}" >"$data.log" 2>&1 &
    pids+=($!)
    echo "supplier $i on 127.0.0.1:$port (log: $data.log)"
done

cat <<EOT

The local network is up. In another terminal:

  export SILT_HOME=$net/alice
  $bin/silt init --name alice --id-server 127.0.0.1:$base
  $bin/silt identity show

Press Ctrl-C to stop.
EOT
wait
