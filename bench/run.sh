#!/usr/bin/env bash
# Tollgate benchmark harness. Loopback only, release builds, load from separate processes.
# See docs/benchmarks.md for what each number means and the results on the reference machine.
#
#   bench/run.sh                 # everything (about 6-8 minutes)
#   bench/run.sh --quick         # tiny counts: checks the harness works (about 1 minute)
#   bench/run.sh latency throughput   # only some sections
#
# Sections: latency stream pad peers throughput memory mint helper (default: all; `litellm` = `peers`).
# Needs: wrk, hyperfine (Debian), curl, python3. The side-by-side (optional): LiteLLM in a venv at
# .test-tools/litellm-venv (bench/install-litellm.sh) and Portkey's gateway at .test-tools/portkey
# (bench/install-portkey.sh, needs node).
# Results: JSON files and summary.md under $BENCH_OUT (default target/bench/<timestamp>).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
SECTIONS=()
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n 2,13p "$0"; exit 0 ;;
        *) SECTIONS+=("$a") ;;
    esac
done
[[ ${#SECTIONS[@]} -eq 0 ]] && SECTIONS=(latency stream pad peers throughput memory mint helper)
want() { local s; for s in "${SECTIONS[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init bench

if [[ $QUICK -eq 1 ]]; then
    LAT_N=200; LAT_RUNS=2; LAT_WARM=50; SLOW_N=30; TP_SECS=2; TP_RUNS=1; STREAMS=100; HF_RUNS=20
else
    LAT_N=3000; LAT_RUNS=5; LAT_WARM=300; SLOW_N=300; TP_SECS=10; TP_RUNS=3; STREAMS=1000; HF_RUNS=300
fi

log "building release binaries"
# The helper only for its section (a release build is long on a busy machine).
cargo build --release -q -p tollgate-broker -p tollgate-bench
if want helper; then cargo build --release -q -p tollgate-token -p tollgate-testkit; fi
cargo build --release -q -p tollgate-bench --example floor_proxy --example hyper_floor

# --- processes --------------------------------------------------------------------------------
start upstream "$BIN/tollgate-bench" upstream --threads 1
UP="$ADDR"; UP_PID="$PID"
log "canned upstream at $UP"
# The floor: the smallest forwarder on the broker's own HTTP stack (axum + reqwest + tokio), no governance.
# What it adds over "direct" is what any proxy on this stack pays on this machine (bench/examples/floor_proxy.rs).
start floor "$BIN/examples/floor_proxy" "$UP"
FLOOR="$ADDR"
log "floor proxy at $FLOOR"
# The floor one layer down: the same forwarder on hyper directly (bench/examples/hyper_floor.rs).
start hyperfloor "$BIN/examples/hyper_floor" "$UP"
HFLOOR="$ADDR"
log "hyper floor at $HFLOOR"

# Full governance on: token verification, model check, budgets (three, SQLite by default), audit,
# metrics (bench/lib.sh, broker_config).
broker_config "$WORK" "$UP"
export BENCH_UPSTREAM_KEY="sk-bench-upstream"
RUST_LOG="${RUST_LOG:-info}" start broker "$BIN/tollgate-broker" --config "$WORK/broker.toml" --listen 127.0.0.1:0
BROKER="$ADDR"; BROKER_PID="$PID"
log "broker at $BROKER (pid $BROKER_PID)"
sleep 1
IDLE_RSS_FRESH="$(rss_kb "$BROKER_PID")"

TOKEN="$(mint "$BROKER")"

lat() { # label args...
    local label="$1"; shift
    log "latency: $label"
    "$BIN/tollgate-bench" latency --label "$label" --runs "$LAT_RUNS" --warmup "${WARM:-$LAT_WARM}" "$@" \
        >"$OUT/latency-$label.json" 2> >(tee "$OUT/latency-$label.txt" >&2)
}

if want latency; then
    lat responses --n "$LAT_N" --target direct="$UP" --target floor="$FLOOR" --target hyperfloor="$HFLOOR" --target tollgate="$BROKER" --bearer tollgate="$TOKEN"
    lat chat --n "$LAT_N" --path /v1/chat/completions --target direct="$UP" --target floor="$FLOOR" --target hyperfloor="$HFLOOR" --target tollgate="$BROKER" --bearer tollgate="$TOKEN"
fi
if want stream; then
    lat responses-stream --stream --n "$LAT_N" --target direct="$UP" --target floor="$FLOOR" --target hyperfloor="$HFLOOR" --target tollgate="$BROKER" --bearer tollgate="$TOKEN"
fi
if want pad; then
    # A Codex-sized request (~40 KB of instructions, tools and history).
    lat responses-40k --pad-bytes 40000 --n "$((LAT_N / 3))" --target direct="$UP" --target tollgate="$BROKER" --bearer tollgate="$TOKEN"
fi

# --- LiteLLM and Portkey's gateway side by side -----------------------------------------------------
# Both peers (whichever is installed) in the same interleaved runs as direct, the two floors and
# Tollgate, so every ratio comes from one run. LiteLLM: bench/install-litellm.sh; Portkey:
# bench/install-portkey.sh (needs node).
LITELLM_VENV="${LITELLM_VENV:-$ROOT/.test-tools/litellm-venv}"
PORTKEY_DIR="${PORTKEY_DIR:-$ROOT/.test-tools/portkey}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL PID NAME: until URL answers (PID must stay alive).
wait_http() {
    local i
    for i in $(seq 1 240); do
        curl -fsS "$1" >/dev/null 2>&1 && return 0
        kill -0 "$2" 2>/dev/null || { tail -20 "$WORK/$3.err" >&2; echo "$3 died" >&2; exit 1; }
        sleep 0.5
    done
    echo "$3 did not start" >&2; exit 1
}
if want peers || want litellm; then
    PEERS=(); PEER_ARGS=(); LL_PID=""; PK_PID=""; LL_VERSION=""; PK_VERSION=""
    if [[ -x "$LITELLM_VENV/bin/litellm" ]]; then
        LPORT="$(free_port)"
        MASTER="sk-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
        cat >"$WORK/litellm.yaml" <<EOF
model_list:
  - model_name: gpt-bench
    litellm_params:
      model: openai/gpt-bench
      api_base: $UP/v1
      api_key: sk-bench-upstream
      num_retries: 0
litellm_settings:
  num_retries: 0
  request_timeout: 30
general_settings:
  master_key: $MASTER
EOF
        LL_VERSION="$("$LITELLM_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
        log "starting LiteLLM $LL_VERSION on 127.0.0.1:$LPORT"
        LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR LITELLM_TELEMETRY=False \
            "$LITELLM_VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$LPORT" --num_workers 1 \
            >"$WORK/litellm.out" 2>"$WORK/litellm.err" &
        LL_PID=$!; PIDS+=("$LL_PID")
        wait_http "http://127.0.0.1:$LPORT/health/liveliness" "$LL_PID" litellm
        PEERS+=(litellm); PEER_ARGS+=(--target litellm="http://127.0.0.1:$LPORT" --bearer litellm="$MASTER")
    else
        log "no LiteLLM: no $LITELLM_VENV (run bench/install-litellm.sh)"
    fi
    PK_JS="$PORTKEY_DIR/node_modules/@portkey-ai/gateway/build/start-server.js"
    if [[ -f "$PK_JS" ]] && command -v node >/dev/null; then
        PPORT="$(free_port)"
        PK_VERSION="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$PORTKEY_DIR/node_modules/@portkey-ai/gateway/package.json")"
        log "starting Portkey's gateway $PK_VERSION on 127.0.0.1:$PPORT"
        # Loopback only (bench/portkey-loopback.mjs); no UI, no log console.
        NODE_ENV=production node --import "$ROOT/bench/portkey-loopback.mjs" "$PK_JS" --headless --port="$PPORT" \
            >"$WORK/portkey.out" 2>"$WORK/portkey.err" &
        PK_PID=$!; PIDS+=("$PK_PID")
        wait_http "http://127.0.0.1:$PPORT/" "$PK_PID" portkey
        # Portkey routes by headers: the OpenAI provider at the canned upstream, the upstream's key as bearer.
        PEERS+=(portkey); PEER_ARGS+=(--target portkey="http://127.0.0.1:$PPORT" --bearer portkey=sk-bench-upstream
            --header "portkey=x-portkey-provider:openai" --header "portkey=x-portkey-custom-host:$UP/v1")
    else
        log "no Portkey: no $PK_JS (run bench/install-portkey.sh)"
    fi
    if [[ ${#PEERS[@]} -gt 0 ]]; then
        log "side by side: ${PEERS[*]}"
        common=(--target direct="$UP" --target floor="$FLOOR" --target hyperfloor="$HFLOOR" --target tollgate="$BROKER"
            --bearer tollgate="$TOKEN" "${PEER_ARGS[@]}")
        WARM=30 lat peers-responses --n "$SLOW_N" "${common[@]}"
        WARM=30 lat peers-chat --n "$SLOW_N" --path /v1/chat/completions "${common[@]}"
        # Portkey's gateway answers every streamed request here with 500 ("TypeError: immutable" in its
        # responseService.updateHeaders under Node's fetch: Portkey-AI/gateway#1550, open; pinning
        # @hono/node-server 1.14.2 as #1389 suggests does not help), so the stream runs without it.
        stream_common=(--target direct="$UP" --target floor="$FLOOR" --target hyperfloor="$HFLOOR"
            --target tollgate="$BROKER" --bearer tollgate="$TOKEN")
        [[ -n "$LL_PID" ]] && stream_common+=(--target litellm="http://127.0.0.1:$LPORT" --bearer litellm="$MASTER")
        WARM=30 lat peers-chat-stream --stream --n "$SLOW_N" --path /v1/chat/completions "${stream_common[@]}"
        ll_rss=null; pk_rss=null
        [[ -n "$LL_PID" ]] && ll_rss="$(rss_kb "$LL_PID")"
        [[ -n "$PK_PID" ]] && pk_rss="$(rss_kb "$PK_PID")"
        echo "{\"litellm_version\": \"$LL_VERSION\", \"portkey_version\": \"$PK_VERSION\", \"litellm_rss_kb\": $ll_rss, \"portkey_rss_kb\": $pk_rss}" \
            >"$OUT/peers.json"
        [[ -n "$LL_PID" ]] && kill "$LL_PID" 2>/dev/null
        [[ -n "$PK_PID" ]] && kill "$PK_PID" 2>/dev/null
        true
    fi
fi

# --- throughput --------------------------------------------------------------------------------
if want throughput; then
    wrk_lua /v1/responses "$BODY" "" >"$WORK/direct.lua"
    cp "$WORK/direct.lua" "$WORK/floor.lua"
    cp "$WORK/direct.lua" "$WORK/hyperfloor.lua"
    wrk_lua /v1/responses "$BODY" "$TOKEN" >"$WORK/proxy.lua"
    wrk_lua /v1/responses "$SBODY" "$TOKEN" >"$WORK/proxy-stream.lua"
    : >"$OUT/throughput.jsonl"
    for c in 16 64; do
        for r in $(seq 1 "$TP_RUNS"); do
            for t in direct floor hyperfloor proxy proxy-stream; do
                url="$BROKER"; [[ $t == direct ]] && url="$UP"; [[ $t == floor ]] && url="$FLOOR"; [[ $t == hyperfloor ]] && url="$HFLOOR"
                line="$(wrk -t1 -c"$c" -d"${TP_SECS}s" -s "$WORK/$t.lua" "$url" | grep '^JSON ' | sed 's/^JSON //')"
                echo "{\"target\":\"$t\",\"connections\":$c,\"run\":$r,\"result\":$line}" | tee -a "$OUT/throughput.jsonl" >&2
            done
        done
    done
fi

# --- memory ----------------------------------------------------------------------------------
if want memory; then
    sleep 2
    IDLE_RSS_AFTER="$(rss_kb "$BROKER_PID")"
    log "open streams: $STREAMS"
    "$BIN/tollgate-bench" streams --url "$BROKER" --bearer "$TOKEN" --n "$STREAMS" --hold-ms 60000 --pid "$BROKER_PID" \
        >"$OUT/streams.json"
    cat "$OUT/streams.json" >&2
    sleep 3
    echo "{\"idle_fresh_kb\": $IDLE_RSS_FRESH, \"idle_after_load_kb\": $IDLE_RSS_AFTER, \"after_streams_closed_kb\": $(rss_kb "$BROKER_PID"), \"fds_after\": $(fds "$BROKER_PID")}" \
        | tee "$OUT/memory.json" >&2
fi

# --- mint throughput -------------------------------------------------------------------------
if want mint; then
    FORM="grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=$CRED&subject_token_type=urn%3Atollgate%3Aparams%3Atoken-type%3Astatic-credential"
    cat >"$WORK/mint.lua" <<EOF
wrk.method = "POST"
wrk.path = "/oauth/token"
wrk.body = "$FORM"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\":%d,\"rps\":%.1f,\"errors_status\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.requests / (summary.duration / 1e6), summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
EOF
    : >"$OUT/mint.jsonl"
    for r in $(seq 1 "$TP_RUNS"); do
        line="$(wrk -t1 -c16 -d"${TP_SECS}s" -s "$WORK/mint.lua" "$BROKER" | grep '^JSON ' | sed 's/^JSON //')"
        echo "{\"run\":$r,\"result\":$line}" | tee -a "$OUT/mint.jsonl" >&2
    done
fi

# --- the helper ------------------------------------------------------------------------------
if want helper; then
    printf '%s' "$CRED" >"$WORK/cred"; chmod 600 "$WORK/cred"
    export TOLLGATE_BROKER="$BROKER" TOLLGATE_CREDENTIAL_FILE="$WORK/cred" TOLLGATE_CACHE_DIR="$WORK/cache" \
        XDG_CONFIG_HOME="$WORK/xdg-config" TOLLGATE_RERUN_WINDOW_SECS=0
    "$BIN/tollgate-token" >/dev/null
    log "helper warm (cached)"
    hyperfine -N --warmup 20 --runs "$HF_RUNS" --export-json "$OUT/helper-warm.json" "$BIN/tollgate-token" >&2
    log "helper cold (mint every run)"
    hyperfine -N --warmup 5 --runs "$((HF_RUNS / 3))" --prepare "rm -rf $WORK/cache" --export-json "$OUT/helper-cold.json" "$BIN/tollgate-token" >&2
fi

python3 "$ROOT/bench/summarize.py" "$OUT" "$IDLE_RSS_FRESH" >"$OUT/summary.md"
cat "$OUT/summary.md"
log "results in $OUT"
