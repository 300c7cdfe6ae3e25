# Shared by bench/run.sh, bench/soak.sh and bench/compare.sh (sourced, not run): the scripts' frame,
# starting the processes, reading them from /proc, the broker's benchmark config, minting a token, and
# wrk's request script. The caller sets ROOT (the checkout) before sourcing.

# bench_init TAG [OUT_PREFIX]: the frame every script starts with. Sets TARGET_DIR, BIN (the release
# binaries), OUT (results: $BENCH_OUT, else target/bench/OUT_PREFIX<UTC timestamp>), WORK (scratch, removed
# on exit) and PIDS (everything started; killed on exit, then the caller's `on_exit` runs if it defines
# one); raises the open-files limit; `log` lines are tagged TAG.
bench_init() {
    LOG_TAG="$1"
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    BIN="$TARGET_DIR/release"
    OUT="${BENCH_OUT:-$TARGET_DIR/bench/${2:-}$(date -u +%Y%m%dT%H%M%SZ)}"
    mkdir -p "$OUT"
    WORK="$(mktemp -d "/tmp/tollgate-$1.XXXXXX")"
    PIDS=()
    trap bench_cleanup EXIT
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
}

bench_cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # The PostgreSQL schemas broker_config made for this run.
    for p in "${BENCH_SCHEMAS[@]}"; do
        psql -q "${TOLLGATE_DATABASE_URL:-}" -c "DROP SCHEMA IF EXISTS \"$p\" CASCADE" >/dev/null 2>&1 || true
    done
    if declare -F on_exit >/dev/null; then on_exit; fi
    rm -rf "$WORK"
}

# broker_args NAME=PATH...: the brokers a script compares, into NAMES and BINS (absolute paths); exits 2
# on an argument that is not NAME=PATH or a PATH that is not an executable.
broker_args() {
    NAMES=(); BINS=()
    local a
    for a in "$@"; do
        [[ "$a" == *=* ]] || { echo "expected NAME=PATH, got '$a'" >&2; exit 2; }
        [[ -x "${a#*=}" ]] || { echo "not an executable: ${a#*=}" >&2; exit 2; }
        NAMES+=("${a%%=*}"); BINS+=("$(realpath "${a#*=}")")
    done
}

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date -u +%H:%M:%S)" "$*" >&2; }

# start NAME CMD...: run CMD in the background, wait for its "listening http://127.0.0.1:PORT" line on
# stdout; sets ADDR and PID. Its stdout and stderr go to $WORK/NAME.out and $WORK/NAME.err.
start() {
    local name="$1"; shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID=$!
    PIDS+=("$PID")
    local i
    for i in $(seq 1 600); do
        ADDR="$(grep -m1 -o 'http://127\.0\.0\.1:[0-9]*' "$WORK/$name.out" 2>/dev/null || true)"
        [[ -n "$ADDR" ]] && return 0
        kill -0 "$PID" 2>/dev/null || { cat "$WORK/$name.err" >&2; echo "$name died" >&2; exit 1; }
        sleep 0.05
    done
    echo "$name did not start" >&2; exit 1
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
# Open sockets only: database files the store's pools open (up to their configured size, kept while
# idle) are not what leaks; connections are.
sockets() { find "/proc/$1/fd" -lname 'socket:*' 2>/dev/null | wc -l; }
# CPU time of a process so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# broker_config DIR UPSTREAM_URL: writes DIR/policy.toml and DIR/broker.toml — full governance on: a static
# credential, a policy granting every model, one OpenAI-kind provider at UPSTREAM_URL, the store
# ($BENCH_STORE, default SQLite in DIR/state) with three budgets, audit and metrics, 1-hour tokens.
# With BENCH_STORE=postgres ($TOLLGATE_DATABASE_URL), each broker gets a schema of its own, new for this
# run and dropped at exit: brokers sharing one would share signing keys and an issuer (a replica set,
# not a side-by-side) and start on another run's rows.
# BENCH_LOG_FORMAT=json: the brokers log JSON lines (`server.log_format`), as examples/production does.
# Sets CRED, the static credential to mint with. Needs $BIN/tollgate-broker.
BENCH_SCHEMAS=()
broker_config() {
    local dir="$1" up="$2" schema_line=""
    if [[ "${BENCH_STORE:-sqlite}" == postgres ]]; then
        : "${TOLLGATE_DATABASE_URL:?BENCH_STORE=postgres needs TOLLGATE_DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres}"
        local schema
        schema="bench_$(basename "$dir" | tr -c 'a-z0-9_\n' '_' | cut -c1-20)_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
        BENCH_SCHEMAS+=("$schema")
        schema_line="schema = \"$schema\""
    fi
    CRED="bench-credential-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    local sha
    sha="$(printf '%s' "$CRED" | "$BIN/tollgate-broker" hash-credential)"
    mkdir -p "$dir/state"
    cat >"$dir/policy.toml" <<EOF
[[rule]]
name = "bench"
match = { kind = "static", subject = "bench" }
principal = "{subject}"
team = "bench"
org = "bench"
models = ["*"]
max_ttl_secs = 3600
EOF
    cat >"$dir/broker.toml" <<EOF
policy_file = "policy.toml"
[server]
listen = "127.0.0.1:0"
state_dir = "state"
log_format = "${BENCH_LOG_FORMAT:-text}"
[tokens]
audience = "tollgate"
default_ttl_secs = 3600
max_ttl_secs = 3600
# Off: the mint benchmark and the helper's cold runs exchange from one address far faster than the
# default 600 a minute allows (they measure the mint, not the limiter, which answers 429).
exchanges_per_minute_per_address = 0
[[credentials]]
subject = "bench"
sha256 = "$sha"
[providers.bench]
kind = "openai"
base_url = "$up/v1"
api_key_env = "BENCH_UPSTREAM_KEY"
[[routes]]
model = "*"
targets = [{ provider = "bench" }]
[store]
kind = "${BENCH_STORE:-sqlite}"
$schema_line
[pricing]
unpriced = "charge"
unpriced_price = { input = "5", output = "30" }
[[budgets]]
id = "principal-daily"
scope = "principal"
amount_usd = "100000000"
window = "daily"
[[budgets]]
id = "team-monthly"
scope = "team"
amount_usd = "100000000"
window = "monthly"
[[budgets]]
id = "org-monthly"
scope = "org"
amount_usd = "100000000"
window = "monthly"
EOF
}

# mint BROKER_URL [CRED]: print an access token for the static credential.
mint() {
    curl -fsS "$1/oauth/token" \
        --data-urlencode "grant_type=urn:ietf:params:oauth:grant-type:token-exchange" \
        --data-urlencode "subject_token=${2:-$CRED}" \
        --data-urlencode "subject_token_type=urn:tollgate:params:token-type:static-credential" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

# The benchmark's request: a short Responses API call (BODY) and its streaming twin (SBODY).
BODY='{"model":"gpt-bench","instructions":"You are a helpful assistant.","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"Say hello to the benchmark."}]}],"stream":false,"store":false}'
SBODY="${BODY/\"stream\":false/\"stream\":true}"

# wrk_lua PATH BODY [BEARER]: a wrk script POSTing BODY to PATH that prints one line
# `JSON {...}` at the end (requests, rps, every error count, p50/p99 in µs).
wrk_lua() {
    local auth=""
    [[ -n "${3:-}" ]] && auth="wrk.headers[\"Authorization\"] = \"Bearer $3\""
    cat <<EOF
wrk.method = "POST"
wrk.path = "$1"
wrk.body = [[$2]]
wrk.headers["Content-Type"] = "application/json"
$auth
done = function(summary, latency, requests)
  io.write(string.format("JSON {\"requests\":%d,\"duration_us\":%d,\"rps\":%.1f,\"errors_status\":%d,\"errors_connect\":%d,\"errors_read\":%d,\"errors_write\":%d,\"errors_timeout\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6), summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
EOF
}
