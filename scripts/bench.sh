#!/usr/bin/env bash
# Benchmark: starts 6 suppliers on loopback (4+2), then measures with the
# real binaries:
#   - upload and download MiB/s of 1 MiB, 64 MiB and 1 GiB files;
#   - 1000 files of 4 KiB per second, up and down, and how long `ls` of
#     them takes;
#   - peak RSS of the customer (per command) and of each supplier;
#   - the in-process pipeline (encrypt + hash + erasure-code, no network)
#     as the local limit.
# Prints figures; asserts nothing. Needs about 4 GiB of free disk.
#
#   scripts/bench.sh            # all sizes
#   SIZES_MIB="1 64" scripts/bench.sh
#   BENCH_BIN=/some/dir scripts/bench.sh   # silt and silt-supplier from there
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/silt/target}"
if [ -n "${BENCH_BIN:-}" ]; then
    bin="$BENCH_BIN" # other binaries, e.g. an older build to compare with
else
    cargo build --locked --workspace --all-targets --all-features >/dev/null
    bin="$CARGO_TARGET_DIR/debug"
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/silt-bench.XXXXXX")"
sizes="${SIZES_MIB:-1 64 1024}"
base="${BASE_PORT:-17700}"
pids=()
cleanup() {
    trap - EXIT INT TERM
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

addrs=()
for i in 0 1 2 3 4 5; do
    port=$((base + i))
    "$bin/silt-supplier" init --data "$work/s$i" --name "bench$i" --id-server "127.0.0.1:$base" --capacity "64 GiB" >/dev/null
    extra=()
    [ "$i" -eq 0 ] && extra=(--identity-server)
    "$bin/silt-supplier" run --data "$work/s$i" --listen "127.0.0.1:$port" "${extra[@]}" >"$work/s$i.log" 2>&1 &
    pids+=($!)
    addrs+=(--supplier "127.0.0.1:$port")
done
for i in 0 1 2 3 4 5; do
    for _ in $(seq 100); do
        grep -q "supplier listening" "$work/s$i.log" && break
        sleep 0.1
    done
done

export SILT_HOME="$work/customer"
"$bin/silt" init --name bench --id-server "127.0.0.1:$base" >/dev/null
"$bin/silt" suppliers hire "${addrs[@]}" --quota "10 GiB" >/dev/null
cd "$work"

measure() { # label bytes command...
    local label=$1 bytes=$2
    shift 2
    local out
    out=$( { /usr/bin/time -f "%e %M" "$@" >/dev/null; } 2>&1 | tail -n 1)
    local secs=${out% *} rss=${out#* }
    awk -v l="$label" -v b="$bytes" -v s="$secs" -v r="$rss" \
        'BEGIN { printf "%-28s %8.1f MiB/s  %7.2f s  customer peak RSS %6.1f MiB\n", l, b / 1048576 / s, s, r / 1024 }'
}

echo "== 6 suppliers, scheme 4+2, 4 MiB blocks, all processes on this machine ($(nproc) cores)"
for mib in $sizes; do
    head -c $((mib * 1048576)) /dev/urandom >"f$mib"
    # On disk before it is measured, as a user's files are: otherwise the
    # kernel writes this input back during the upload, on the same cores.
    sync "f$mib"
    measure "upload ${mib} MiB" $((mib * 1048576)) "$bin/silt" put "f$mib"
    measure "download ${mib} MiB" $((mib * 1048576)) "$bin/silt" get "f$mib" "out$mib"
    cmp -s "f$mib" "out$mib" || echo "download of ${mib} MiB differs!"
    rm -f "f$mib" "out$mib"
done

mkdir small
for i in $(seq 1000); do head -c 4096 /dev/urandom >"small/f$i"; done
for dir in up down; do
    start=$(date +%s.%N)
    if [ "$dir" = up ]; then
        out=$( { /usr/bin/time -f "%M" "$bin/silt" put small >/dev/null; } 2>&1 | tail -n 1)
    else
        out=$( { /usr/bin/time -f "%M" "$bin/silt" get small small-out >/dev/null; } 2>&1 | tail -n 1)
    fi
    end=$(date +%s.%N)
    awk -v d="$dir" -v s="$start" -v e="$end" -v r="$out" \
        'BEGIN { printf "%-28s %8.1f files/s %6.2f s  customer peak RSS %6.1f MiB\n", "1000 x 4 KiB " d, 1000 / (e - s), e - s, r / 1024 }'
done

start=$(date +%s.%N)
listed=$("$bin/silt" ls | wc -l)
end=$(date +%s.%N)
awk -v n="$listed" -v s="$start" -v e="$end" \
    'BEGIN { printf "%-28s %8.2f s  (%d lines)\n", "ls of the location", e - s, n }'

for i in 0 1 2 3 4 5; do
    awk -v i="$i" '/VmHWM/ { printf "supplier %d peak RSS %6.1f MiB\n", i, $2 / 1024 }' "/proc/${pids[$i]}/status"
done

echo "== in-process pipeline (no network): the local limit"
cd - >/dev/null
SILT_BENCH_MIB="${PIPELINE_MIB:-256}" cargo bench --locked -p customer --bench pipeline --profile dev 2>/dev/null
