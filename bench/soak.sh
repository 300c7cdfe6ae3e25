#!/usr/bin/env bash
# Bounded soak of the broker on loopback: sustained mixed load (non-streaming and streaming requests,
# plus waves of long-held streams that open and close), while RSS and open fds are sampled.
# Passes when: zero unexpected errors (wrk errors and timeouts, failed stream waves, WARN/ERROR lines in
# the broker's log), RSS flat (last fifth vs second fifth of the run), open sockets back to the idle
# count once the load stops (after the upstream connection pool's 90 s idle timeout, reaped on a 90 s interval). Total fds are
# reported too; they also count the database files the store's pools keep open while idle.
#
#   bench/soak.sh            # 5 minutes
#   SOAK_SECS=60 bench/soak.sh
#
# Results: $BENCH_OUT (default target/bench/soak-<timestamp>): samples.csv, wrk outputs, verdict.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SOAK_SECS="${SOAK_SECS:-300}"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
# Keep the broker's log with the results.
on_exit() { [[ -f "$WORK/broker.err" ]] && cp "$WORK/broker.err" "$OUT/broker.log"; return 0; }
bench_init soak soak-

cargo build --release -q -p tollgate-broker -p tollgate-bench

start upstream "$BIN/tollgate-bench" upstream --threads 1
UP="$ADDR"
broker_config "$WORK" "$UP"
export BENCH_UPSTREAM_KEY="sk-soak-upstream"
RUST_LOG=warn start broker "$BIN/tollgate-broker" --config "$WORK/broker.toml" --listen 127.0.0.1:0
BROKER="$ADDR"; BROKER_PID="$PID"
TOKEN="$(mint "$BROKER")"
sleep 1
IDLE_FDS="$(fds "$BROKER_PID")"; IDLE_RSS="$(rss_kb "$BROKER_PID")"; IDLE_SOCKETS="$(sockets "$BROKER_PID")"
log "broker $BROKER pid $BROKER_PID: idle ${IDLE_RSS} kB, ${IDLE_FDS} fds (${IDLE_SOCKETS} sockets); soaking ${SOAK_SECS}s"

for kind in plain stream; do
    b="$BODY"; [[ $kind == stream ]] && b="$SBODY"
    wrk_lua /v1/responses "$b" "$TOKEN" >"$WORK/$kind.lua"
    # Closed-loop load: 16 connections each, as fast as the broker answers. A reply slower than 10 s
    # counts as an error (wrk's default 2 s measures the shared machine's scheduler, not the broker).
    wrk -t1 -c16 -d"${SOAK_SECS}s" --timeout 10s -s "$WORK/$kind.lua" "$BROKER" >"$OUT/wrk-$kind.txt" 2>&1 &
    PIDS+=("$!")
done
# Waves of 200 long-held streams (open, hold 3 s, close) for the whole run.
(
    end=$((SECONDS + SOAK_SECS - 5)); waves=0; failed=0
    while (( SECONDS < end )); do
        if "$BIN/tollgate-bench" streams --url "$BROKER" --bearer "$TOKEN" --n 200 --hold-ms 3000 \
            --pid "$BROKER_PID" --settle-secs 1 >>"$OUT/waves.jsonl" 2>>"$OUT/waves.err"; then
            waves=$((waves + 1))
        else
            failed=$((failed + 1))
        fi
        sleep 2
    done
    echo "{\"waves\":$waves,\"failed\":$failed}" >"$OUT/waves-summary.json"
) &
WAVES_PID=$!; PIDS+=("$WAVES_PID")

echo "t_secs,rss_kb,fds,sockets,threads,load1" >"$OUT/samples.csv"
t0=$SECONDS
while (( SECONDS - t0 < SOAK_SECS )); do
    echo "$((SECONDS - t0)),$(rss_kb "$BROKER_PID"),$(fds "$BROKER_PID"),$(sockets "$BROKER_PID"),$(awk '/^Threads:/{print $2}' "/proc/$BROKER_PID/status"),$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/samples.csv"
    sleep 5
done
wait "$WAVES_PID" 2>/dev/null || true
sleep 3
# Let in-flight streams end and idle keep-alive sockets close: the broker's pooled upstream connections
# close after the pool's 90 s idle timeout.
# hyper's pool reaps idle connections on an interval as long as the idle timeout, so one can live up to
# twice that: wait up to 200 s.
for _ in $(seq 1 200); do
    [[ "$(sockets "$BROKER_PID")" -le "$((IDLE_SOCKETS + 2))" ]] && break
    sleep 1
done
# What is still open, by peer port (the upstream's, the broker's own listener, or other).
ss -tnp 2>/dev/null | grep "pid=$BROKER_PID," >"$OUT/sockets-end.txt" || true
END_FDS="$(fds "$BROKER_PID")"; END_RSS="$(rss_kb "$BROKER_PID")"; END_SOCKETS="$(sockets "$BROKER_PID")"
kill -0 "$BROKER_PID" || { echo "broker died" >&2; exit 1; }

cp "$WORK/broker.err" "$OUT/broker.log"
python3 - "$OUT" "$IDLE_RSS" "$IDLE_FDS" "$END_RSS" "$END_FDS" "$SOAK_SECS" "$IDLE_SOCKETS" "$END_SOCKETS" <<'EOF' | tee "$OUT/verdict.json"
import csv, json, re, statistics, sys, os
out, idle_rss, idle_fds, end_rss, end_fds, secs, idle_sockets, end_sockets = sys.argv[1], *map(int, sys.argv[2:])
rows = list(csv.DictReader(open(os.path.join(out, "samples.csv"))))
rss = [int(r["rss_kb"]) for r in rows]
n = len(rss)
second = rss[n // 5: 2 * n // 5] or rss
last = rss[4 * n // 5:] or rss
growth = statistics.median(last) - statistics.median(second)
errors, requests = 0, 0
for kind in ("plain", "stream"):
    text = open(os.path.join(out, f"wrk-{kind}.txt")).read()
    m = re.search(r"^JSON (.*)$", text, re.M)
    d = json.loads(m.group(1)) if m else {}
    requests += d.get("requests", 0)
    errors += sum(v for k, v in d.items() if k.startswith("errors_")) if m else 1
waves = json.load(open(os.path.join(out, "waves-summary.json")))
log_errors = sum(1 for line in open(os.path.join(out, "broker.log"), errors="replace")
                 if re.search(r"\b(WARN|ERROR)\b", line))
# Trend of the second half: least-squares slope of RSS over time, kB per minute (0 when flat).
half = rows[n // 2:]
xs = [int(r["t_secs"]) / 60 for r in half]
ys = [int(r["rss_kb"]) for r in half]
mx, my = statistics.mean(xs), statistics.mean(ys)
slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sum((x - mx) ** 2 for x in xs) or 1)
loads = [float(r["load1"]) for r in rows]
ok = (errors == 0 and log_errors == 0 and waves["failed"] == 0
      and growth < max(2048, 0.10 * statistics.median(second)) and end_sockets <= idle_sockets + 2)
print(json.dumps({
    "ok": ok, "secs": secs, "requests": requests, "rps": round(requests / secs), "errors": errors,
    "broker_log_warn_error_lines": log_errors, "rss_second_half_slope_kb_per_min": round(slope),
    "load1_median": statistics.median(loads), "load1_max": max(loads),
    "stream_waves": waves, "rss_idle_kb": idle_rss, "rss_second_fifth_median_kb": statistics.median(second),
    "rss_last_fifth_median_kb": statistics.median(last), "rss_growth_kb": growth, "rss_max_kb": max(rss),
    "rss_end_kb": end_rss, "fds_idle": idle_fds, "fds_max": max(int(r["fds"]) for r in rows), "fds_end": end_fds,
    "sockets_idle": idle_sockets, "sockets_max": max(int(r["sockets"]) for r in rows), "sockets_end": end_sockets,
}, indent=1))
sys.exit(0 if ok else 1)
EOF
