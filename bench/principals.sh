#!/usr/bin/env bash
# Brokers under load from many principals at once, as a company's developers use one: each broker gets
# PRINCIPALS static credentials (subjects dev001…, each its own principal, with its own three budget
# counters and allotment pool) and wrk sends every request with the next principal's token. The other
# scripts use one principal, where a settlement batch touches three counters whatever its size.
#
#   bench/principals.sh before=/path/to/old/tollgate-broker after=target/release/tollgate-broker
#   PRINCIPALS=50 CONNS=16 SECS=5 ROUNDS=3 bench/principals.sh a=… b=…
#
# Brokers run one at a time, in turn, ROUNDS rounds (on a VM whose speed drifts, compare within a round).
# For each: req/s and p50/p99 (wrk -t1), and the CPU per request of the broker's threads by name — the
# runtime's workers and SQLite's connection threads — with their voluntary context switches per request
# (/proc/PID/task/*/stat and status, before and after the run), and the bytes the broker wrote and its write
# calls per request (/proc/PID/io wchar and syscw: the responses, the audit and the store's WAL; unlike the
# CPU figures, these barely move with the VM's speed). NO_BUILD=1: use target/release as built.
# Results: $BENCH_OUT (default target/bench/principals-<timestamp>)/principals.jsonl and a table on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ $# -ge 1 && "$1" != -h && "$1" != --help ]] || { sed -n "2,/^set -euo/p" "$0" | sed "\$d"; exit 2; }
PRINCIPALS="${PRINCIPALS:-50}"; CONNS="${CONNS:-16}"; SECS="${SECS:-5}"; ROUNDS="${ROUNDS:-3}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 2; }
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
broker_args "$@"
bench_init principals principals-
[[ "${NO_BUILD:-0}" == 1 ]] || cargo build --release -q -p tollgate-broker -p tollgate-bench

start upstream "$BIN/tollgate-bench" upstream --threads 1
UP="$ADDR"
export BENCH_UPSTREAM_KEY="sk-bench-upstream"

# principals_config DIR BROKER: bench/lib.sh's config with the policy matching every static credential and
# PRINCIPALS credentials added; writes their secrets to DIR/creds, one a line.
principals_config() {
    local dir="$1" bin="$2" i c sha
    broker_config "$dir" "$UP"
    sed -i 's/match = { kind = "static", subject = "bench" }/match = { kind = "static" }/' "$dir/policy.toml"
    : >"$dir/creds"
    for i in $(seq 1 "$PRINCIPALS"); do
        c="bench-$i-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
        sha="$(printf '%s' "$c" | "$bin" hash-credential)"
        printf '[[credentials]]\nsubject = "dev%03d"\nsha256 = "%s"\n' "$i" "$sha" >>"$dir/broker.toml"
        echo "$c" >>"$dir/creds"
    done
}

# wrk's script: BODY to /v1/responses, each request with the next token of DIR/tokens.
principals_lua() {
    local dir="$1"
    echo 'wrk.method = "POST"'
    echo 'wrk.path = "/v1/responses"'
    echo "wrk.body = [[$BODY]]"
    echo 'wrk.headers["Content-Type"] = "application/json"'
    echo 'toks = {'
    sed 's/.*/"&",/' "$dir/tokens"
    echo '}'
    cat <<'EOF'
n = 0
request = function()
  n = n + 1
  wrk.headers["Authorization"] = "Bearer " .. toks[(n % #toks) + 1]
  return wrk.format()
end
done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\":%d,\"rps\":%.1f,\"errors_status\":%d,\"errors_connect\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.requests / (summary.duration / 1e6), summary.errors.status,
    summary.errors.connect, latency:percentile(50), latency:percentile(99)))
end
EOF
}

# Each thread of PID: name, CPU ticks, voluntary context switches.
threads() {
    local t
    for t in /proc/"$1"/task/*; do
        echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat") $(awk '/^voluntary_ctxt/{print $2}' "$t/status")"
    done
}

: >"$OUT/principals.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    for i in "${!NAMES[@]}"; do
        n="${NAMES[$i]}"
        dir="$WORK/$n-$round"
        mkdir -p "$dir"
        principals_config "$dir" "${BINS[$i]}"
        RUST_LOG="${RUST_LOG:-info}" start "broker-$n-$round" "${BINS[$i]}" --config "$dir/broker.toml" --listen 127.0.0.1:0
        while read -r c; do mint "$ADDR" "$c"; done <"$dir/creds" >"$dir/tokens"
        principals_lua "$dir" >"$dir/r.lua"
        # Warm-up: every principal's pool and counters exist before the measured run.
        wrk -t1 -c"$CONNS" -d2 -s "$dir/r.lua" "$ADDR" >/dev/null
        threads "$PID" >"$dir/t0"; grep -E '^(wchar|syscw)' /proc/"$PID"/io >"$dir/io0"
        wrk -t1 -c"$CONNS" -d"$SECS" -s "$dir/r.lua" "$ADDR" | grep '^JSON' | cut -c6- >"$dir/wrk.json"
        threads "$PID" >"$dir/t1"; grep -E '^(wchar|syscw)' /proc/"$PID"/io >"$dir/io1"
        kill "$PID"; wait "$PID" 2>/dev/null || true
        python3 - "$n" "$round" "$dir" >>"$OUT/principals.jsonl" <<'EOF'
import collections, json, sys
name, rnd, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
w = json.load(open(f"{d}/wrk.json"))
def read(p):
    return [(c, int(t), int(v)) for c, t, v in (l.split() for l in open(p))]
per = collections.defaultdict(lambda: [0, 0])
for sign, p in ((-1, "t0"), (1, "t1")):
    for c, t, v in read(f"{d}/{p}"):
        # Threads by kind: tokio-rt-worker, sqlx-sqlite-worker-N; the main thread under its own name.
        k = c.rstrip("0123456789-_")
        per[k][0] += sign * t
        per[k][1] += sign * v
n = max(w["requests"], 1)
tick_us = 1e6 / 100  # USER_HZ
out = {"name": name, "round": rnd, **w,
       "threads": {k: {"cpu_us_per_request": round(t * tick_us / n, 1), "vcs_per_request": round(v / n, 3)}
                   for k, (t, v) in per.items() if t or v}}
io = [dict(l.split(": ") for l in open(f"{d}/{p}").read().splitlines()) for p in ("io0", "io1")]
out["written_bytes_per_request"] = round((int(io[1]["wchar"]) - int(io[0]["wchar"])) / n)
out["write_calls_per_request"] = round((int(io[1]["syscw"]) - int(io[0]["syscw"])) / n, 2)
out["cpu_us_per_request"] = round(sum(t for t, _ in per.values()) * tick_us / n, 1)
print(json.dumps(out))
EOF
        log "$n round $round: $(tail -1 "$OUT/principals.jsonl" | cut -c1-160)"
    done
done

python3 - "$OUT/principals.jsonl" "$PRINCIPALS" "$CONNS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n{sys.argv[2]} principals, {sys.argv[3]} connections\n")
print("| round | broker | req/s | p50 / p99 µs | CPU µs/req | runtime workers µs/req | SQLite threads µs/req (switches/req) | bytes written/req (write calls) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    t = r["threads"]
    rt = t.get("tokio-rt-worker", {})
    sq = t.get("sqlx-sqlite-worker", t.get("sqlx-sqlite-wor", {}))
    print(f"| {r['round']} | {r['name']} | {r['rps']:,.0f} | {r['p50_us']} / {r['p99_us']} | {r['cpu_us_per_request']} | "
          f"{rt.get('cpu_us_per_request', '–')} | {sq.get('cpu_us_per_request', '–')} ({sq.get('vcs_per_request', '–')}) | "
          f"{r['written_bytes_per_request']:,} ({r['write_calls_per_request']}) |")
EOF
log "results in $OUT"
