#!/usr/bin/env bash
# The cost of one request in counts that do not depend on how busy the machine is: each target runs under
# `valgrind --tool=callgrind` (same binary + same requests -> the same counts), the canned upstream drives
# it at one connection, and only the measured requests are collected (collection is switched on after the
# warm-up and off before the process stops: `--instr-atstart=no`, `callgrind_control -i`). Per request: instructions (Ir), heap allocations (calls into
# the allocator: mimalloc's mi_malloc_aligned/mi_zalloc_aligned/mi_realloc_aligned, or glibc's
# malloc/calloc/realloc for binaries that do not use mimalloc), and system calls made by the process
# (strace -c -f, a separate pass). Valgrind hides the CPU's SHA extensions, so the broker's SHA-256 (token
# cache key, audit chain) runs sha2's portable code under callgrind: the table shows those instructions
# apart, as they are a small fraction natively on a CPU with SHA-NI.
#
#   bench/cost.sh                                   # the floors and target/release/tollgate-broker
#   bench/cost.sh before=/path/to/old/tollgate-broker after=target/release/tollgate-broker
#   N=2000 STREAM=1 bench/cost.sh                   # more requests; streaming requests
#   FLOORS_ONLY=1 NO_BUILD=1 bench/cost.sh           # the floors alone, binaries as built
#
# Results: $BENCH_OUT (default target/bench/cost-<timestamp>)/cost.json and a table on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${N:-1000}"; WARM="${WARM:-300}"; STREAM="${STREAM:-0}"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init cost cost-

declare -A CREDS=()
broker_args "$@"
# FLOORS_ONLY=1: only the three floors (no broker). NO_BUILD=1: use the binaries already built.
if [[ ${#NAMES[@]} -eq 0 && "${FLOORS_ONLY:-0}" != 1 ]]; then
    [[ "${NO_BUILD:-0}" == 1 ]] || cargo build --release -q -p tollgate-broker -p tollgate-bench
    NAMES=(tollgate); BINS=("$BIN/tollgate-broker")
fi
[[ "${NO_BUILD:-0}" == 1 ]] || cargo build --release -q -p tollgate-bench --example floor_proxy --example hyper_floor --example axum_floor

start upstream "$BIN/tollgate-bench" upstream --threads 1
UP="$ADDR"
export BENCH_UPSTREAM_KEY="sk-bench-upstream"
stream_flag=(); [[ "$STREAM" == 1 ]] && stream_flag=(--stream)

# measure NAME URL BEARER PID OUTFILE: warm up, collect N requests, stop collecting.
measure() {
    local name="$1" url="$2" bearer="$3" pid="$4" out="$5" b=()
    [[ -n "$bearer" ]] && b=(--bearer "$name=$bearer")
    "$BIN/tollgate-bench" latency --runs 1 --warmup "$WARM" --n 1 "${stream_flag[@]}" --target "$name=$url" "${b[@]}" \
        >/dev/null 2>&1
    callgrind_control -i on "$pid" >/dev/null
    "$BIN/tollgate-bench" latency --runs 1 --warmup 0 --n "$N" "${stream_flag[@]}" --target "$name=$url" "${b[@]}" \
        >/dev/null 2>&1
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    true
}

: >"$OUT/cost.jsonl"
for i in floor axumfloor hyperfloor "${!NAMES[@]}"; do
    case "$i" in
        floor) name=floor; cmd=("$BIN/examples/floor_proxy" "$UP") ;;
        axumfloor) name=axumfloor; cmd=("$BIN/examples/axum_floor" "$UP") ;;
        hyperfloor) name=hyperfloor; cmd=("$BIN/examples/hyper_floor" "$UP") ;;
        *)
            name="${NAMES[$i]}"
            mkdir -p "$WORK/$name"
            broker_config "$WORK/$name" "$UP"
            CREDS[$name]="$CRED"
            cmd=("${BINS[$i]}" --config "$WORK/$name/broker.toml" --listen 127.0.0.1:0)
            ;;
    esac
    log "$name: callgrind, $N requests after $WARM warm-up"
    RUST_LOG="${RUST_LOG:-info}" start "cg-$name" valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$OUT/callgrind.$name.%p" "${cmd[@]}"
    tok=""; [[ "$i" =~ ^[0-9]+$ ]] && tok="$(mint "$ADDR")"
    measure "$name" "$ADDR" "$tok" "$PID" "$OUT/callgrind.$name"
    python3 "$ROOT/bench/callgrind_counts.py" "$name" "$N" "$OUT"/callgrind."$name".* >>"$OUT/cost.jsonl"
done

# System calls per request: strace -c over N and over 2N requests (a fresh process each); the difference
# divided by N leaves out start-up and the first requests.
if command -v strace >/dev/null; then
    for i in floor axumfloor hyperfloor "${!NAMES[@]}"; do
        case "$i" in
            floor) name=floor; cmd=("$BIN/examples/floor_proxy" "$UP") ;;
            axumfloor) name=axumfloor; cmd=("$BIN/examples/axum_floor" "$UP") ;;
            hyperfloor) name=hyperfloor; cmd=("$BIN/examples/hyper_floor" "$UP") ;;
            *) name="${NAMES[$i]}"; cmd=("${BINS[$i]}" --config "$WORK/$name/broker.toml" --listen 127.0.0.1:0) ;;
        esac
        tok=""
        declare -A sc=()
        for n in "$N" "$((2 * N))"; do
            RUST_LOG="${RUST_LOG:-info}" start "st-$name-$n" strace -f -c -o "$OUT/strace.$name.$n" "${cmd[@]}"
            # Each broker's own credential (its config was written with it in the pass above).
            [[ "$i" =~ ^[0-9]+$ ]] && tok="$(mint "$ADDR" "${CREDS[$name]}")"
            b=(); [[ -n "$tok" ]] && b=(--bearer "$name=$tok")
            "$BIN/tollgate-bench" latency --runs 1 --warmup 0 --n "$n" "${stream_flag[@]}" --target "$name=$ADDR" "${b[@]}" \
                >/dev/null 2>&1
            # Stop the traced process (strace's child); strace then writes its summary and exits.
            child="$(pgrep -P "$PID" | head -1 || true)"
            [[ -n "$child" ]] && kill "$child" 2>/dev/null
            wait "$PID" 2>/dev/null || true
            sc[$n]="$(awk '$NF == "total" {print $(NF-2)}' "$OUT/strace.$name.$n")"
        done
        echo "{\"target\":\"$name\",\"syscalls_per_request\":$(python3 -c "print(round(($((${sc[$((2 * N))]:-0})) - $((${sc[$N]:-0}))) / $N, 1))")}" \
            >>"$OUT/cost.jsonl"
        unset sc
    done
fi

python3 - "$OUT/cost.jsonl" <<'EOF'
import json, sys
rows = {}
for l in open(sys.argv[1]):
    if l.strip():
        r = json.loads(l)
        rows.setdefault(r["target"], {}).update(r)
# "portable SHA-256": instructions in sha2's portable block function, which only valgrind's CPU (no SHA
# extensions in its cpuid) makes the process take; natively, on SHA-NI, they are a small fraction.
print("\n| target | instructions / request | of which portable SHA-256 | allocations / request | reallocations / request | syscalls / request |")
print("|---|---|---|---|---|---|")
for t, r in rows.items():
    print(f"| {t} | {r.get('ir_per_request', 0):,.0f} | {r.get('sha256_portable_ir_per_request', 0):,.0f} | "
          f"{r.get('allocs_per_request', 0):.1f} | "
          f"{r.get('reallocs_per_request', 0):.1f} | {r.get('syscalls_per_request', '–')} |")
EOF
log "results in $OUT"
