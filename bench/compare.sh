#!/usr/bin/env bash
# Broker binaries side by side — before and after a change — behind one upstream, in one machine phase
# (on a VM whose speed drifts, numbers from different runs cannot be compared; these can).
#
#   bench/compare.sh before=/tmp/old-target/release/tollgate-broker after=target/release/tollgate-broker
#   ROUNDS=4 SECS=5 CONNS="16 64" STREAM=1 bench/compare.sh a=… b=… c=…
#
# An older revision builds beside the checkout:
#   git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p tollgate-broker)
#
# Starts the canned upstream, the floor proxy (bench/examples/floor_proxy.rs) and every broker (own state
# directory and token, bench/lib.sh's config: full governance on), then
#  1. latency at one connection: `tollgate-bench latency`, requests interleaved across direct, floor and
#     every broker (LAT_RUNS runs of LAT_N each);
#  2. throughput: ROUNDS rounds, in each the two floors and every broker in turn under `wrk -t1 -c C -d SECS`
#     for each C in CONNS: req/s, p50/p99 and the process's CPU per request (user + system time from
#     /proc/PID/stat), and each broker's req/s as a share of the same round's floor;
#     with STREAM=1 the same for streaming requests (and step 1 for a stream too).
# The latency step also writes every request (samples.txt) and the tail report of bench/tail.py (tail.txt).
# Results: $BENCH_OUT (default target/bench/compare-<timestamp>): latency[-stream].json/.txt, throughput.jsonl,
# and a table on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ $# -ge 1 && "$1" != -h && "$1" != --help ]] || { sed -n "2,/^set -euo/p" "$0" | sed "\$d"; exit 2; }
ROUNDS="${ROUNDS:-3}"; SECS="${SECS:-5}"; CONNS="${CONNS:-16 64}"; STREAM="${STREAM:-0}"
LAT_N="${LAT_N:-3000}"; LAT_RUNS="${LAT_RUNS:-3}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
broker_args "$@"
bench_init compare compare-

cargo build --release -q -p tollgate-broker -p tollgate-bench
cargo build --release -q -p tollgate-bench --example floor_proxy --example hyper_floor

start upstream "$BIN/tollgate-bench" upstream --threads 1
UP="$ADDR"
start floor "$BIN/examples/floor_proxy" "$UP"
FLOOR="$ADDR"; FLOOR_PID="$PID"
# The floor one layer down (hyper directly, bench/examples/hyper_floor.rs).
start hyperfloor "$BIN/examples/hyper_floor" "$UP"
HFLOOR="$ADDR"; HFLOOR_PID="$PID"
export BENCH_UPSTREAM_KEY="sk-bench-upstream"
URLS=(); BPIDS=(); TOKENS=()
for i in "${!NAMES[@]}"; do
    n="${NAMES[$i]}"
    mkdir -p "$WORK/$n"
    broker_config "$WORK/$n" "$UP"
    RUST_LOG="${RUST_LOG:-info}" start "broker-$n" "${BINS[$i]}" --config "$WORK/$n/broker.toml" --listen 127.0.0.1:0
    URLS+=("$ADDR"); BPIDS+=("$PID")
    TOKENS+=("$(mint "$ADDR")")
    log "$n: ${BINS[$i]} at $ADDR (pid $PID)"
done
sleep 1

log "latency at one connection ($LAT_RUNS runs of $LAT_N per target, interleaved)"
targets=(--target direct="$UP" --target floor="$FLOOR" --target hyperfloor="$HFLOOR")
for i in "${!NAMES[@]}"; do
    targets+=(--target "${NAMES[$i]}=${URLS[$i]}" --bearer "${NAMES[$i]}=${TOKENS[$i]}")
done
"$BIN/tollgate-bench" latency --runs "$LAT_RUNS" --warmup 300 --n "$LAT_N" "${targets[@]}" \
    --samples "$OUT/samples.txt" >"$OUT/latency.json" 2>"$OUT/latency.txt"
grep -v '^run ' "$OUT/latency.txt"
# The tail: every target's histogram and the spacing of its slow requests (bench/tail.py).
python3 "$ROOT/bench/tail.py" "$OUT/samples.txt" >"$OUT/tail.txt"
if [[ "$STREAM" == 1 ]]; then
    log "latency of a stream at one connection (total and first byte)"
    "$BIN/tollgate-bench" latency --stream --runs "$LAT_RUNS" --warmup 300 --n "$LAT_N" "${targets[@]}" \
        --samples "$OUT/samples-stream.txt" >"$OUT/latency-stream.json" 2>"$OUT/latency-stream.txt"
    grep -v '^run ' "$OUT/latency-stream.txt"
    python3 "$ROOT/bench/tail.py" --first-byte "$OUT/samples-stream.txt" >"$OUT/tail-stream.txt"
fi

: >"$OUT/throughput.jsonl"
kinds=(plain); [[ "$STREAM" == 1 ]] && kinds+=(stream)
tck="$(getconf CLK_TCK)"
for kind in "${kinds[@]}"; do
    for c in $CONNS; do
        log "throughput: $kind, $c connections, $ROUNDS rounds of ${SECS}s per broker"
        for r in $(seq 1 "$ROUNDS"); do
            # The floors too (non-streaming: they buffer a stream whole), in the same rounds: the ratio
            # of a broker to the bare forwarder is taken within one run.
            for i in floor hyperfloor "${!NAMES[@]}"; do
                body="$BODY"; [[ $kind == stream ]] && body="$SBODY"
                case "$i" in
                    floor) [[ $kind == stream ]] && continue; n=floor; url="$FLOOR"; pid="$FLOOR_PID"; tok="" ;;
                    hyperfloor) [[ $kind == stream ]] && continue; n=hyperfloor; url="$HFLOOR"; pid="$HFLOOR_PID"; tok="" ;;
                    *) n="${NAMES[$i]}"; url="${URLS[$i]}"; pid="${BPIDS[$i]}"; tok="${TOKENS[$i]}" ;;
                esac
                wrk_lua /v1/responses "$body" "$tok" >"$WORK/load.lua"
                c0="$(cpu_ticks "$pid")"
                line="$(wrk -t1 -c"$c" -d"${SECS}s" -s "$WORK/load.lua" "$url" | grep '^JSON ' | sed 's/^JSON //')"
                c1="$(cpu_ticks "$pid")"
                echo "{\"broker\":\"$n\",\"kind\":\"$kind\",\"connections\":$c,\"round\":$r,\"cpu_ticks\":$((c1 - c0)),\"clk_tck\":$tck,\"result\":$line}" \
                    >>"$OUT/throughput.jsonl"
            done
        done
    done
done

python3 - "$OUT/throughput.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    res = r["result"]
    errs = sum(v for k, v in res.items() if k.startswith("errors_"))
    cpu_us = r["cpu_ticks"] / r["clk_tck"] * 1e6 / max(res["requests"], 1)
    groups.setdefault((r["kind"], r["connections"], r["broker"]), []).append((res["rps"], cpu_us, res["p50_us"], res["p99_us"], errs))
print("\n| kind | conns | broker | req/s median [min–max] | CPU µs/req median [min–max] | p50 µs | p99 µs | errors |")
print("|---|---|---|---|---|---|---|---|")
for (kind, c, b), v in groups.items():
    rps = [x[0] for x in v]; cpu = [x[1] for x in v]
    print(f"| {kind} | {c} | {b} | {statistics.median(rps):,.0f} [{min(rps):,.0f}–{max(rps):,.0f}] | "
          f"{statistics.median(cpu):.1f} [{min(cpu):.1f}–{max(cpu):.1f}] | {statistics.median(x[2] for x in v):.0f} | "
          f"{statistics.median(x[3] for x in v):.0f} | {sum(x[4] for x in v)} |")
# Each broker against the floor, per round (the same round's floor run), then the median over rounds.
print()
for (kind, c, b), v in groups.items():
    if b in ("floor", "hyperfloor") or kind != "plain":
        continue
    for floor in ("floor", "hyperfloor"):
        rounds = {r["round"]: r["result"]["rps"] for r in rows
                  if r["broker"] == floor and r["connections"] == c and r["kind"] == kind}
        mine = {r["round"]: r["result"]["rps"] for r in rows
                if r["broker"] == b and r["connections"] == c and r["kind"] == kind}
        ratios = [mine[k] / rounds[k] for k in mine if k in rounds and rounds[k]]
        if ratios:
            print(f"- {b}, {c} connections: {100 * statistics.median(ratios):.0f}% of {floor} "
                  f"[{100 * min(ratios):.0f}–{100 * max(ratios):.0f}% over rounds]")
EOF
log "results in $OUT"
