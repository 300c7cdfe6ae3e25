//! The WebSocket mode of `/v1/responses` (Codex with `supports_websockets = true`): `GET /v1/responses` with
//! an upgrade, then one `{"type": "response.create", ...}` frame per turn, answered with the same events as
//! the SSE stream, one per text frame.
//!
//! Every turn goes through the HTTP path ([`super::proxy`]): admission, budgets, rate limits, routing with
//! failover and affinity, accounting and audit are those of a `POST /v1/responses`. What the connection adds:
//! - **State.** Later turns send only their new input with `previous_response_id`; the broker keeps, per
//!   connection, the whole conversation behind each response it answered (input and output items) and sends
//!   the upstream the full input, so this works for every upstream kind (Chat and Anthropic upstreams keep
//!   no state). An unknown id is an error frame `previous_response_not_found`.
//! - **Warm-up.** `generate: false` stores the turn's input under a new response id and answers
//!   `response.created` and `response.completed` without calling an upstream (nothing generated, nothing
//!   charged).
//! - **Auth.** The token is verified at the handshake (the bearer layer) and again before every turn with the
//!   broker's clock: an expired or revoked token, or a grant the policy no longer gives, ends the connection
//!   with an error frame of status 401 (Codex reconnects with a fresh token).
//! - **Limit.** A connection lives at most 60 minutes ([`CONNECTION_LIMIT_SECS`]): a turn after that gets
//!   the error `websocket_connection_limit_reached` and the connection is closed (Codex opens a new one).
//! - **Turn state.** `x-codex-turn-state` from the handshake is echoed on the upgrade response (a sticky
//!   routing token for Codex); without one the broker gives one.
//! - **Per-turn session headers.** The handshake's `x-codex-turn-metadata` describes the connection's
//!   warm-up (`request_kind: "prewarm"`, no turn id); Codex sends each request's own metadata and window id
//!   in the frame's `client_metadata` (the values it sends as headers over HTTP). Those replace the
//!   handshake's for that turn ([`turn_headers`]), so the session record (turn, request kind, window) is
//!   the same over WebSocket as over HTTP; the frame's `client_metadata` itself is not sent upstream (the
//!   HTTP API has no such parameter). Replayed from Codex 0.171.0's own frames in
//!   `broker/tests/websocket.rs` (`testdata/codex-0.171/websocket_session.json`).

use super::{authenticate, proxy};
use crate::app::AppState;
use crate::error::ApiError;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tollgate::Claims;

/// The longest a connection is served, seconds (OpenAI's limit, which Codex handles by reconnecting).
pub const CONNECTION_LIMIT_SECS: u64 = 60 * 60;

/// Responses remembered per connection (the oldest is forgotten first; Codex refers to the latest).
const MAX_REMEMBERED: usize = 8;

/// The per-request headers Codex sends in a frame's `client_metadata` over WebSocket (as headers over HTTP).
const PER_TURN_HEADERS: &[&str] = &["x-codex-turn-metadata", "x-codex-window-id"];

/// Headers of the handshake that are not passed on with each turn.
const HANDSHAKE_ONLY: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "content-length",
];

/// `GET /v1/responses`: the WebSocket upgrade, or (a plain GET) an OpenAI-shaped 405.
pub async fn responses_ws(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Arc<Claims>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return ApiError::MethodNotAllowed(
            "GET /v1/responses is the WebSocket mode (an upgrade); send turns as POST /v1/responses otherwise",
        )
        .into_response();
    };
    let turn_state = headers
        .get("x-codex-turn-state")
        .cloned()
        .filter(|v| v.len() <= 512)
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("tg-{}", uuid::Uuid::new_v4().simple()))
                .unwrap_or(HeaderValue::from_static("tg"))
        });
    let mut turn_headers = headers.clone();
    for h in HANDSHAKE_ONLY {
        turn_headers.remove(*h);
    }
    let max = app.max_body_bytes();
    let opened = app.clock().now_secs();
    let mut resp = ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            Connection {
                app,
                claims,
                headers: turn_headers,
                opened,
                responses: HashMap::new(),
                order: VecDeque::new(),
            }
            .run(socket)
        });
    resp.headers_mut().insert("x-codex-turn-state", turn_state);
    resp
}

/// One client's connection and the conversations it may continue.
struct Connection {
    app: Arc<AppState>,
    claims: Arc<Claims>,
    /// The handshake's headers (its token, Codex's session headers), sent with every turn.
    headers: HeaderMap,
    /// When the connection was opened (clock seconds).
    opened: u64,
    /// Response id → every item of the conversation up to and including that response's output.
    responses: HashMap<String, Arc<Vec<Value>>>,
    order: VecDeque<String>,
}

/// How a turn ended for the connection.
enum After {
    Continue,
    Close,
}

impl Connection {
    async fn run(mut self, mut socket: WebSocket) {
        while let Some(Ok(msg)) = socket.recv().await {
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => match String::from_utf8(b.to_vec()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = send(
                            &mut socket,
                            &error_frame(
                                400,
                                "invalid_request_error",
                                "invalid_request",
                                "frames are UTF-8 JSON",
                            ),
                        )
                        .await;
                        continue;
                    }
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            match self.turn(&mut socket, &text).await {
                Ok(After::Continue) => {}
                Ok(After::Close) | Err(_) => break,
            }
        }
        let _ = socket.send(Message::Close(None)).await;
    }

    /// Whether the connection may serve another turn: its age, and its token as of now.
    fn check(&self) -> Result<(), Value> {
        if self.app.clock().now_secs().saturating_sub(self.opened) >= CONNECTION_LIMIT_SECS {
            return Err(error_frame(
                400,
                "invalid_request_error",
                "websocket_connection_limit_reached",
                "Responses websocket connection limit reached (60 minutes). Create a new websocket connection to continue.",
            ));
        }
        match authenticate(&self.app, &self.headers) {
            Ok(claims) if self.app.grant_outdated(&claims) => Err(error_frame(
                401,
                "invalid_request_error",
                "policy_changed",
                "Tollgate: the policy changed since this token was issued; reconnect with a new token.",
            )),
            Ok(claims) if claims.jti != self.claims.jti => Err(error_frame(
                401,
                "invalid_request_error",
                "invalid_token",
                "Tollgate: the connection's token changed.",
            )),
            Ok(_) => Ok(()),
            Err(e) => {
                let code = match &e {
                    ApiError::Unauthorized(reason) => *reason,
                    ApiError::SignInEnded { .. } => "sign_in_revoked",
                    _ => "invalid_token",
                };
                Err(error_frame(
                    401,
                    "invalid_request_error",
                    code,
                    "Tollgate: the connection's token is no longer valid; reconnect with a new token.",
                ))
            }
        }
    }

    async fn turn(&mut self, socket: &mut WebSocket, text: &str) -> Result<After, axum::Error> {
        if let Err(frame) = self.check() {
            send(socket, &frame).await?;
            return Ok(After::Close);
        }
        let mut frame: serde_json::Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(o)) => o,
            _ => {
                send(
                    socket,
                    &error_frame(
                        400,
                        "invalid_request_error",
                        "invalid_request",
                        "a frame is a JSON object",
                    ),
                )
                .await?;
                return Ok(After::Continue);
            }
        };
        if frame.get("type").and_then(Value::as_str) != Some("response.create") {
            send(
                socket,
                &error_frame(
                    400,
                    "invalid_request_error",
                    "invalid_request",
                    "the only client frame is {\"type\": \"response.create\", ...}",
                ),
            )
            .await?;
            return Ok(After::Continue);
        }
        frame.remove("type");
        // The whole conversation: what the previous response had, then this turn's input.
        let mut items: Vec<Value> = match frame.remove("previous_response_id") {
            Some(Value::String(id)) => match self.responses.get(&id) {
                Some(prior) => prior.as_ref().clone(),
                None => {
                    send(
                        socket,
                        &error_frame(
                            400,
                            "invalid_request_error",
                            "previous_response_not_found",
                            &format!(
                                "Previous response with id '{}' not found on this connection.",
                                id.chars().take(64).collect::<String>()
                            ),
                        ),
                    )
                    .await?;
                    return Ok(After::Continue);
                }
            },
            _ => Vec::new(),
        };
        match frame.remove("input") {
            Some(Value::Array(a)) => items.extend(a),
            Some(Value::String(s)) => items.push(json!({"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": s}]})),
            _ => {}
        }
        if frame.remove("generate") == Some(Value::Bool(false)) {
            return self.warm_up(socket, &frame, items).await;
        }
        frame.insert("input".into(), Value::Array(items.clone()));
        frame.insert("stream".into(), Value::Bool(true));
        let headers = turn_headers(&self.headers, &frame);
        // `client_metadata` is WebSocket-only (the HTTP API has no such parameter): its values went into
        // this turn's headers above; the POST the upstream gets is the one Codex would have sent over HTTP.
        frame.remove("client_metadata");
        let body = match serde_json::to_vec(&frame) {
            Ok(b) => Bytes::from(b),
            Err(_) => return Ok(After::Continue),
        };
        let resp = match proxy(
            self.app.clone(),
            self.claims.clone(),
            headers,
            Ok(body),
            super::Endpoint::Responses,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        self.relay(socket, resp, items).await
    }

    /// `generate: false`: remember the input under a new response id; nothing goes upstream.
    async fn warm_up(
        &mut self,
        socket: &mut WebSocket,
        frame: &serde_json::Map<String, Value>,
        items: Vec<Value>,
    ) -> Result<After, axum::Error> {
        let id = format!("resp_tg_{}", uuid::Uuid::new_v4().simple());
        let created_at = self.app.clock().now_secs();
        let response = |status: &str| {
            json!({"id": id, "object": "response", "created_at": created_at, "status": status,
                "model": frame.get("model").cloned().unwrap_or(Value::Null), "output": [],
                "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                    "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}})
        };
        send(socket, &json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress")})).await?;
        send(socket, &json!({"type": "response.completed", "sequence_number": 1, "response": response("completed")})).await?;
        self.remember(id, items);
        Ok(After::Continue)
    }

    /// Send the answer of one turn as frames: its SSE events one by one, or an error frame for a refusal.
    async fn relay(
        &mut self,
        socket: &mut WebSocket,
        resp: Response,
        mut items: Vec<Value>,
    ) -> Result<After, axum::Error> {
        let status = resp.status();
        if !status.is_success() {
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let mut frame = json!({"type": "error", "status": status.as_u16(),
                "error": body.get("error").cloned().unwrap_or_else(|| json!({"message": status.to_string()}))});
            if let Some(ra) = body.pointer("/error/retry_after_secs") {
                frame["retry_after_secs"] = ra.clone();
            }
            send(socket, &frame).await?;
            return Ok(After::Continue);
        }
        let mut stream = resp.into_body().into_data_stream();
        let mut events = crate::sse::EventBuffer::default();
        let mut ready: Vec<String> = Vec::new();
        let mut output: Vec<Value> = Vec::new();
        let mut finished: Option<String> = None;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            events.feed(&chunk, |event| ready.extend(event_data(event)));
            for data in ready.drain(..) {
                if let Ok(v) = serde_json::from_str::<Value>(&data) {
                    match v.get("type").and_then(Value::as_str) {
                        Some("response.output_item.done") => {
                            if let Some(item) = v.get("item") {
                                output.push(item.clone());
                            }
                        }
                        Some(
                            "response.completed"
                            | "response.incomplete"
                            | "response.failed"
                            | "response.done",
                        ) => {
                            finished = v
                                .pointer("/response/id")
                                .and_then(Value::as_str)
                                .map(str::to_string);
                        }
                        _ => {}
                    }
                }
                socket.send(Message::Text(data.into())).await?;
            }
        }
        if let Some(id) = finished {
            items.extend(output);
            self.remember(id, items);
        }
        Ok(After::Continue)
    }

    fn remember(&mut self, id: String, items: Vec<Value>) {
        if self.responses.insert(id.clone(), Arc::new(items)).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.responses.remove(&old);
            }
        }
    }
}

/// One turn's headers: the handshake's, with each of [`PER_TURN_HEADERS`] that the frame's
/// `client_metadata` carries (a string that is a valid header value, at most
/// [`crate::session::MAX_METADATA_BYTES`]) in place of the handshake's. The values stay untrusted: the
/// session module validates them as it does a POST's headers.
fn turn_headers(handshake: &HeaderMap, frame: &serde_json::Map<String, Value>) -> HeaderMap {
    let mut headers = handshake.clone();
    let Some(meta) = frame.get("client_metadata").and_then(Value::as_object) else {
        return headers;
    };
    for name in PER_TURN_HEADERS {
        if let Some(v) = meta
            .get(*name)
            .and_then(Value::as_str)
            .filter(|v| v.len() <= crate::session::MAX_METADATA_BYTES)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(*name, v);
        }
    }
    headers
}

/// An SSE event's `data` (its `data:` lines joined), or `None` for an event without data or `[DONE]`.
/// The events are cut by [`crate::sse::EventBuffer`], which keeps the part of a chunk after the last
/// complete event and scans each byte once.
fn event_data(event: &[u8]) -> Option<String> {
    let mut lines = crate::sse::data_lines(event);
    let mut data = lines.next()?.to_vec();
    for line in lines {
        data.push(b'\n');
        data.extend_from_slice(line);
    }
    (data != b"[DONE]").then(|| String::from_utf8_lossy(&data).into_owned())
}

fn error_frame(status: u16, kind: &str, code: &str, message: &str) -> Value {
    json!({"type": "error", "status": status,
        "error": {"type": kind, "code": code, "message": message}})
}

async fn send(socket: &mut WebSocket, v: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(v.to_string().into())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{CodexSession, RequestKind};

    /// Codex 0.171.0 over WebSocket (observed): the handshake's metadata is the warm-up's, each frame's
    /// `client_metadata` has the request's own. The turn is recorded by the frame's, as over HTTP.
    #[test]
    fn a_turn_is_recorded_by_its_frame_metadata_not_the_handshake() {
        let mut handshake = HeaderMap::new();
        handshake.insert("session-id", HeaderValue::from_static("s-1"));
        handshake.insert("x-codex-window-id", HeaderValue::from_static("s-1:0"));
        handshake.insert(
            "x-codex-turn-metadata",
            HeaderValue::from_static(
                r#"{"session_id":"s-1","window_id":"s-1:0","request_kind":"prewarm"}"#,
            ),
        );
        let frame = |meta: Value| match json!({"model": "gpt-5.5", "client_metadata": meta}) {
            Value::Object(o) => o,
            _ => unreachable!(),
        };
        let compaction = frame(json!({
            "x-codex-window-id": "s-1:1",
            "x-codex-turn-metadata": r#"{"session_id":"s-1","turn_id":"t-7","window_id":"s-1:1","request_kind":"compaction"}"#,
        }));
        let s =
            CodexSession::from_headers(&turn_headers(&handshake, &compaction)).expect("session");
        assert_eq!(s.session_id.as_deref(), Some("s-1"));
        assert_eq!(s.turn_id.as_deref(), Some("t-7"));
        assert_eq!(s.window_id.as_deref(), Some("s-1:1"));
        assert_eq!(s.request_kind, Some(RequestKind::Compaction));

        // Without client_metadata, or with values that cannot be headers or are too long, the
        // handshake's stay.
        for f in [
            frame(Value::Null),
            frame(json!({"x-codex-window-id": "bad
value"})),
            frame(
                json!({"x-codex-turn-metadata": "x".repeat(crate::session::MAX_METADATA_BYTES + 1)}),
            ),
            frame(json!({"x-codex-window-id": 7})),
        ] {
            assert_eq!(turn_headers(&handshake, &f), handshake);
        }
    }

    #[test]
    fn sse_events_are_cut_at_blank_lines_with_their_data_joined() {
        let stream: &[u8] = b"event: response.created\ndata: {\"a\":1}\n\ndata: x\ndata: y\r\n\r\ndata: [DONE]\n\n: comment\n\ndata: \xff\n\npartial";
        let want = [
            Some("{\"a\":1}".to_string()),
            Some("x\ny".to_string()),
            None,
            None,
            Some("\u{fffd}".to_string()),
        ];
        // Whole, and cut at every byte: the same events.
        for cut in 0..=stream.len() {
            let mut buf = crate::sse::EventBuffer::default();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                buf.feed(part, |e| got.push(event_data(e)));
            }
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(buf.pending(), b"partial".len());
        }
    }
}
