#!/usr/bin/env python3
"""A capturing mock Responses provider, for recording what Codex sends (record.sh drives it).

Usage: capture.py OUT_DIR [SCRIPT]
Listens on 127.0.0.1 (ephemeral port), prints "port N", and writes every request as OUT_DIR/NNN.json
({method, path, query, headers, body}). GET .../models answers {"models":[]}. SCRIPT is a JSON list of
answers for the POSTs in order (the last one repeats): {"text": "..."} or {"call": {item fields}}, each
streamed as output_item.done + response.completed with usage.
A GET .../responses with a WebSocket upgrade (Codex's `supports_websockets = true`) is accepted: every
client frame is recorded as {method: "WS", path, headers (the handshake's), frame} and a `response.create`
is answered with the same events as text frames (a warm-up, `generate: false`, with an empty response).
"""
import base64, hashlib, itertools, json, os, struct, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

out = sys.argv[1]
script = json.loads(sys.argv[2]) if len(sys.argv) > 2 else [{"text": "captured"}]
os.makedirs(out, exist_ok=True)
lock = threading.Lock()
counter = itertools.count()
posts = itertools.count()
warm = itertools.count()

def sse(events):
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def record(self, body, method=None, key="body"):
        with lock:
            n = next(counter)
        path, _, query = self.path.partition("?")
        try:
            parsed = json.loads(body) if body else None
        except Exception:
            parsed = body.decode("utf-8", "replace")
        with open(os.path.join(out, f"{n:03d}.json"), "w") as f:
            json.dump({"method": method or self.command, "path": path, "query": query or None,
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       key: parsed}, f, indent=1)
    def ws_read(self):
        """One client frame's payload (text or binary), or None at close."""
        head = self.rfile.read(2)
        if len(head) < 2:
            return None
        op, n = head[0] & 0x0F, head[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", self.rfile.read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
        if op == 8:
            return None
        if op in (9, 10):
            return self.ws_read()
        return data
    def ws_send(self, obj):
        data = json.dumps(obj).encode()
        n = len(data)
        head = bytes([0x81, n]) if n < 126 else (bytes([0x81, 126]) + struct.pack(">H", n) if n < 65536 else bytes([0x81, 127]) + struct.pack(">Q", n))
        self.wfile.write(head + data)
        self.wfile.flush()
    def websocket(self):
        accept = base64.b64encode(hashlib.sha1((self.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.wfile.flush()
        while (data := self.ws_read()) is not None:
            self.record(data, method="WS", key="frame")
            try:
                frame = json.loads(data)
            except Exception:
                continue
            if frame.get("type") != "response.create":
                continue
            if frame.get("generate") is False:
                rid = f"resp_warm{next(warm)}"
                self.ws_send({"type": "response.created", "response": {"id": rid, "status": "in_progress", "output": []}})
                self.ws_send({"type": "response.completed", "response": {"id": rid, "status": "completed", "output": [], "usage": None}})
                continue
            for e in self.events():
                self.ws_send(e)
        self.close_connection = True
    def send(self, code, ctype, data):
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.headers.get("upgrade", "").lower() == "websocket":
            return self.websocket()
        self.record(b"")
        if self.path.split("?")[0].endswith("/models"):
            self.send(200, "application/json", b'{"models":[]}')
        else:
            self.send(404, "application/json", b'{"error":{"message":"not found"}}')
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n)
        self.record(body)
        self.send(200, "text/event-stream", sse(self.events()))
    def events(self):
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
        return [
            {"type": "response.created", "response": {"id": rid, "status": "in_progress", "output": []}},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": {"id": rid, "status": "completed", "output": [item], "usage": usage}},
        ]

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"port {srv.server_address[1]}", flush=True)
srv.serve_forever()
