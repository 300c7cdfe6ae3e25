#!/usr/bin/env python3
"""A tiny MCP server (stdio, newline-delimited JSON-RPC 2.0), stdlib only, for the long-session test.

Usage: mcp_marker.py LOG_FILE
Offers one tool, `record_marker` ({"text": string}); each call appends `call <text>` to LOG_FILE and
answers `marker recorded: <text>`. Every method it receives is appended to LOG_FILE too (`method <name>`),
so the test sees the whole handshake.
"""
import json
import sys

log_path = sys.argv[1]


def log(line):
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


TOOL = {
    "name": "record_marker",
    "description": "Records a marker text in the test's log file and returns it.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The marker to record."}},
        "required": ["text"],
        "additionalProperties": False,
    },
}


def answer(msg):
    method = msg.get("method")
    params = msg.get("params") or {}
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "tollgate-test-marker", "version": "1.0.0"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [TOOL]}
    if method == "tools/call":
        if params.get("name") != TOOL["name"]:
            raise LookupError(f"unknown tool {params.get('name')!r}")
        text = str((params.get("arguments") or {}).get("text", ""))
        log(f"call {text}")
        return {"content": [{"type": "text", "text": f"marker recorded: {text}"}], "isError": False}
    raise LookupError(f"method not found: {method}")


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    log(f"method {msg.get('method')}")
    if "id" not in msg or "method" not in msg:
        continue  # a notification or a response to nothing we asked
    try:
        reply = {"jsonrpc": "2.0", "id": msg["id"], "result": answer(msg)}
    except LookupError as e:
        reply = {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": str(e)}}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
