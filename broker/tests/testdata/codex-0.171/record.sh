#!/usr/bin/env bash
# Records the golden Codex request fixtures in this folder from a real Codex CLI.
#
#   broker/tests/testdata/codex-0.171/record.sh [CODEX_BIN] [OUT_DIR]
#
# Each scenario runs one `codex exec` in a fresh CODEX_HOME against capture.py (a scripted Responses mock
# on 127.0.0.1, ephemeral port) configured as a custom provider with command auth, and keeps one request:
# headers and body, with the bearer token, the loopback port, temp paths and the installation id replaced.
# Offline; needs python3. Defaults: the 0.171.0 pin from the test tools, this folder. ONLY="websocket …"
# records just those scenarios (the others' fixtures stay as they are).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="${TOLLGATE_TEST_TOOLS:-$HERE/../../../../.test-tools}"
CODEX="${1:-$TOOLS/codex/0.171.0/node_modules/.bin/codex}"
OUT="${2:-$HERE}"
VERSION="$("$CODEX" --version | awk '{print $2}')"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

# run NAME MODEL("" = none) SCRIPT_JSON EXTRA_TOML PROMPT [PROVIDER_TOML]
run() {
    local name="$1" model="$2" script="$3" extra="$4" prompt="$5" provider="${6:-}"
    [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || return 0
    local home="$SCRATCH/$name" port
    mkdir -p "$home/codex" "$home/work"
    python3 "$HERE/capture.py" "$home/req" "$script" >"$home/port" &
    local cap=$!
    for _ in $(seq 100); do [[ -s "$home/port" ]] && break; sleep 0.05; done
    port="$(awk '{print $2}' "$home/port")"
    {
        [[ -n "$model" ]] && echo "model = \"$model\""
        echo 'model_provider = "capture"'
        printf '%s\n' "$extra"
        echo '[model_providers.capture]'
        echo 'name = "Capture"'
        echo "base_url = \"http://127.0.0.1:$port/v1\""
        echo 'wire_api = "responses"'
        [[ -n "$provider" ]] && printf '%s\n' "$provider"
        echo 'request_max_retries = 0'
        echo 'stream_max_retries = 0'
        echo '[model_providers.capture.auth]'
        echo 'command = "echo"'
        echo 'args = ["capture-token"]'
    } >"$home/codex/config.toml"
    local rc=0
    (cd "$home/work" && timeout -k 5 120 env -i PATH="$PATH" HOME="$home" CODEX_HOME="$home/codex" \
        RUST_LOG=error "$CODEX" exec --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox \
        --color never -C "$home/work" "$prompt" </dev/null >"$home/stdout" 2>"$home/stderr") || rc=$?
    kill "$cap" 2>/dev/null || true
    wait "$cap" 2>/dev/null || true
    [[ $rc == 0 ]] || { cat "$home/stderr" >&2; echo "record.sh: scenario $name failed ($rc)" >&2; exit 1; }
}

js='const r = await tools.exec_command({cmd: "echo tool-ran-ok > proof.txt; echo tool-ran-ok"}); text(r);'
exec_call="$(python3 -c 'import json,sys; print(json.dumps([{"call":{"type":"custom_tool_call","name":"exec","namespace":"functions","input":sys.argv[1]}},{"text":"done"}]))' "$js")"

run lite_default "" '[{"text":"captured"}]' "" "say hi"
run lite_exec gpt-5.6-sol "$exec_call" "" "please USE_TOOL now"
run lite_namespace gpt-5.6-sol \
    '[{"call":{"type":"function_call","name":"list_agents","namespace":"collaboration","arguments":"{}"}},{"text":"done"}]' \
    "" "list the agents"
run plain acme-coder '[{"text":"captured"}]' "" "say hi"
run gpt55 gpt-5.5 '[{"text":"captured"}]' "" "say hi"
run tool_search gpt-5.5 \
    '[{"call":{"type":"tool_search_call","execution":"client","arguments":{"query":"spawn agent"}}},{"text":"done"}]' \
    "" "find the agent tools"
run compaction gpt-5.5 \
    '[{"call":{"type":"function_call","name":"exec_command","arguments":"{\"cmd\":\"echo tool-ran-ok\"}"}},{"text":"summary of the work so far"},{"text":"done"}]' \
    "model_auto_compact_token_limit = 50" "please USE_TOOL now"
run websocket gpt-5.5 \
    '[{"call":{"type":"function_call","name":"exec_command","arguments":"{\"cmd\":\"echo tool-ran-ok\"}"}},{"text":"done"}]' \
    "" "please USE_TOOL now" "supports_websockets = true"

python3 - "$SCRATCH" "$OUT" "$VERSION" <<'PY'
import glob, json, os, re, sys
scratch, out, version = sys.argv[1:]
# name -> (scenario, what it shows, which POST to keep: index or "compaction")
keep = {
    "lite_default": ("lite_turn", "default model (responses-lite): no top-level tools, all tools in an additional_tools input item", 0),
    "lite_exec": ("lite_exec_followup", "responses-lite follow-up: custom_tool_call to `exec` in namespace `functions` and its output", 1),
    "lite_namespace": ("lite_namespace_followup", "responses-lite follow-up: function_call with namespace `collaboration` and its output", 1),
    "plain": ("plain_turn", "unknown model (fallback metadata): functions, namespace multi_agent_v1, web_search", 0),
    "gpt55": ("gpt55_turn", "bundled gpt-5.5: apply_patch (custom), tool_search (client), web_search", 0),
    "tool_search": ("tool_search_followup", "gpt-5.5 follow-up: tool_search_call and tool_search_output with a namespace", 1),
    "compaction": ("compaction", "auto-compaction mid-turn: request_kind compaction, no tools", "compaction"),
    "websocket": ("websocket_session", "WebSocket mode: the handshake's headers and every response.create frame (warm-up, turn, tool follow-up)", "ws"),
}
for name, (scenario, what, which) in keep.items():
    if not os.path.isdir(os.path.join(scratch, name)):
        continue
    posts, frames = [], []
    for f in sorted(glob.glob(os.path.join(scratch, name, "req", "*.json"))):
        r = json.load(open(f))
        if r["method"] == "POST":
            posts.append(r)
        elif r["method"] == "WS":
            frames.append(r)
    if which == "ws":
        r = {"method": "GET", "path": frames[0]["path"], "query": frames[0]["query"],
             "headers": frames[0]["headers"], "frames": [f["frame"] for f in frames]}
    elif which == "compaction":
        r = next(p for p in posts if '"request_kind":"compaction"' in p["headers"].get("x-codex-turn-metadata", ""))
    else:
        r = posts[which]
    h = r["headers"]
    h["authorization"] = "Bearer REDACTED"
    h["host"] = "127.0.0.1:PORT"
    h.pop("content-length", None)
    text = json.dumps({"codex_version": version, "scenario": scenario, "shows": what, "request": r})
    ids = set(re.findall(r'installation_id\\?":\\?"([0-9a-f-]{36})', text))
    for i in ids:
        text = text.replace(i, "00000000-0000-0000-0000-000000000000")
    text = re.sub(r"/tmp/tmp\.[A-Za-z0-9]+/" + name, "/tmp/codex-fixture", text)
    with open(os.path.join(out, scenario + ".json"), "w") as f:
        json.dump(json.loads(text), f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{scenario}.json  {what}")
PY
