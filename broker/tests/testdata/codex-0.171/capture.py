#!/usr/bin/env python3
"""A capturing mock Responses provider, for recording what Codex sends (record.sh drives it).

Usage: capture.py OUT_DIR [SCRIPT]
Listens on 127.0.0.1 (ephemeral port), prints "port N", and writes every request as OUT_DIR/NNN.json
({method, path, query, headers, body}). GET .../models answers {"models":[]}. SCRIPT is a JSON list of
answers for the POSTs in order (the last one repeats): {"text": "..."} or {"call": {item fields}}, each
streamed as output_item.done + response.completed with usage.
"""
import itertools, json, os, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

out = sys.argv[1]
script = json.loads(sys.argv[2]) if len(sys.argv) > 2 else [{"text": "captured"}]
os.makedirs(out, exist_ok=True)
lock = threading.Lock()
counter = itertools.count()
posts = itertools.count()

def sse(events):
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def record(self, body):
        with lock:
            n = next(counter)
        path, _, query = self.path.partition("?")
        try:
            parsed = json.loads(body) if body else None
        except Exception:
            parsed = body.decode("utf-8", "replace")
        with open(os.path.join(out, f"{n:03d}.json"), "w") as f:
            json.dump({"method": self.command, "path": path, "query": query or None,
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": parsed}, f, indent=1)
    def send(self, code, ctype, data):
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.record(b"")
        if self.path.split("?")[0].endswith("/models"):
            self.send(200, "application/json", b'{"models":[]}')
        else:
            self.send(404, "application/json", b'{"error":{"message":"not found"}}')
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n)
        self.record(body)
        i = next(posts)
        step = script[min(i, len(script) - 1)]
        rid = f"resp_cap{i}"
        if "call" in step:
            item = dict(step["call"])
            item.setdefault("id", f"fc_cap{i}")
            item.setdefault("call_id", f"call_cap{i}")
            item.setdefault("status", "completed")
        else:
            item = {"type": "message", "id": f"msg_cap{i}", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": step["text"], "annotations": []}]}
        usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 110}
        data = sse([
            {"type": "response.created", "response": {"id": rid, "status": "in_progress", "output": []}},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": {"id": rid, "status": "completed", "output": [item], "usage": usage}},
        ])
        self.send(200, "text/event-stream", data)

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"port {srv.server_address[1]}", flush=True)
srv.serve_forever()
