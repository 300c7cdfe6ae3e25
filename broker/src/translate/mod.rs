//! Protocol translations between the OpenAI Responses API (what Codex speaks) and the upstream APIs that
//! do not speak it: Chat Completions ([`chat`]) and Anthropic Messages ([`anthropic`]); and between
//! Anthropic Messages (what Claude Code speaks) and Chat Completions ([`messages`]).
//!
//! Everything here is pure: request translation is a function over `serde_json::Value`, and a streamed
//! response is translated by a state machine that takes upstream SSE bytes and returns Responses SSE bytes.
//! No I/O, no clock, no randomness beyond id generation, so golden fixtures and fuzzing cover it.
//!
//! Codex-specific tool handling (codex-client.md §5; details in [`tools`]):
//! - `function` tools map to the upstream's function tools.
//! - `custom` tools (Codex's `apply_patch`, free-form text with a grammar) become a function with one string
//!   argument `input`; calls to it come back as `custom_tool_call` items with that string as `input`.
//! - `namespace` tools (sub-agents, MCP servers) are flattened to functions with reversible names; calls
//!   come back with Codex's `namespace` and `name`. Tools in `additional_tools` input items (what Codex
//!   sends instead of `tools` for responses-lite models) and in `tool_search_output` items count as tools.
//! - Codex's client-executed `tool_search` is a function whose calls come back as `tool_search_call`.
//! - `web_search` and any other hosted tool cannot be executed by these upstreams: they are removed, the
//!   model is told so in the system prompt (and it is logged at debug), never answered with a 400.

pub mod anthropic;
pub mod chat;
pub mod messages;
mod tools;

pub use tools::{CodexTool, ToolKind};

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Why a request cannot be translated. The message is safe to show to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error("request body is not a JSON object")]
    NotAnObject,
    #[error("'input' must be a string or an array of items")]
    BadInput,
    #[error("'messages' must be an array of user and assistant messages")]
    BadMessages,
}

/// What request translation learned that response translation needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolContext {
    /// Upstream names of top-level `custom` tools (their calls come back as `custom_tool_call`).
    pub custom_tools: BTreeSet<String>,
    /// Every tool of the request by its upstream name: which Codex tool (kind, namespace, name) it is.
    pub tools: BTreeMap<String, CodexTool>,
    /// The model name to report in translated responses (the client's, not the upstream's).
    pub model: String,
}

/// The parameter schema of a `custom` tool presented as a function: one required string, `input`.
pub(crate) fn custom_tool_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The raw tool input (free-form text)."}},
        "required": ["input"],
        "additionalProperties": false
    })
}

/// The description of a `custom` tool presented as a function: its own description plus its grammar, so a
/// model that never saw the tool natively still knows the input format (apply_patch's patch syntax).
pub(crate) fn custom_tool_description(tool: &Value) -> String {
    let mut d = tool
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(fmt) = tool.get("format")
        && let Some(def) = fmt.get("definition").and_then(Value::as_str)
    {
        let syntax = fmt
            .get("syntax")
            .and_then(Value::as_str)
            .unwrap_or("grammar");
        d.push_str(&format!(
            "\n\nPass the raw input as the single string argument `input`. It must follow this {syntax} grammar:\n{def}"
        ));
    } else {
        d.push_str("\n\nPass the raw input as the single string argument `input`.");
    }
    d
}

/// The string a `custom` tool was called with, from the function-call arguments we asked for. Lenient: a
/// model that sent a bare string or other JSON still gets its text through.
pub(crate) fn custom_input_from_arguments(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(o)) => match o.get("input") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => o
                .values()
                .find_map(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        },
        Ok(Value::String(s)) => s,
        _ => arguments.to_string(),
    }
}

/// Log (at debug) a tool the upstream cannot take, and drop it.
pub(crate) fn drop_tool(provider_api: &str, tool: &Value) {
    let tool_type = tool.get("type").and_then(Value::as_str).unwrap_or("?");
    let tool_name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
    tracing::debug!(
        api = provider_api,
        tool_type,
        tool_name,
        "dropping a tool this upstream API cannot take"
    );
}

/// Text of a Responses message content (a string or an array of parts), text parts only, joined.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A tool output (`function_call_output.output`): a string, or an array of content items.
pub(crate) fn output_text(output: Option<&Value>) -> String {
    match output {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(_)) => content_text(output),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Normalised usage of one translated response, in Responses terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponsesUsage {
    /// All input tokens, cache reads and writes included.
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

impl ResponsesUsage {
    /// The Responses `usage` object, complete enough for Codex (`cached_tokens` and `total_tokens` present).
    pub fn to_json(self) -> Value {
        let mut details = json!({"cached_tokens": self.cached_tokens});
        if self.cache_write_tokens > 0 {
            details["cache_write_tokens"] = json!(self.cache_write_tokens);
        }
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": details,
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            // Upstream counts are untrusted: absurd ones saturate rather than overflow (a panic in a
            // debug build, a wrapped total in release).
            "total_tokens": self.input_tokens.saturating_add(self.output_tokens)
        })
    }
}

/// A short random id with a prefix, like the providers' own (`msg_…`, `fc_…`).
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Ids used in a translated response. Injected so golden tests are deterministic.
pub trait IdSource: Send {
    fn id(&mut self, prefix: &str) -> String;
}

/// Random ids (production).
#[derive(Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn id(&mut self, prefix: &str) -> String {
        new_id(prefix)
    }
}

/// Sequential ids (`msg_1`, `fc_2`, …) for tests.
#[derive(Default)]
pub struct SeqIds(u64);

impl IdSource for SeqIds {
    fn id(&mut self, prefix: &str) -> String {
        self.0 += 1;
        format!("{prefix}{}", self.0)
    }
}

/// Builds the Responses SSE event stream: numbered events, the response envelope, and the list of finished
/// output items that `response.completed` repeats.
pub(crate) struct Emitter {
    seq: u64,
    pub(crate) response_id: String,
    model: String,
    created_at: u64,
    pub(crate) output: Vec<Value>,
    out: Vec<u8>,
}

impl Emitter {
    pub(crate) fn new(response_id: String, model: String, created_at: u64) -> Self {
        Emitter {
            seq: 0,
            response_id,
            model,
            created_at,
            output: Vec::new(),
            out: Vec::new(),
        }
    }

    pub(crate) fn envelope(&self, status: &str) -> Value {
        json!({
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": [],
        })
    }

    pub(crate) fn event(&mut self, kind: &str, mut data: Map<String, Value>) {
        data.insert("type".into(), Value::String(kind.into()));
        data.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        self.out.extend_from_slice(
            format!("event: {kind}\ndata: {}\n\n", Value::Object(data)).as_bytes(),
        );
    }

    pub(crate) fn created(&mut self) {
        let r = self.envelope("in_progress");
        self.event("response.created", obj(json!({"response": r})));
        let r = self.envelope("in_progress");
        self.event("response.in_progress", obj(json!({"response": r})));
    }

    pub(crate) fn item_added(&mut self, output_index: usize, item: &Value) {
        self.event(
            "response.output_item.added",
            obj(json!({"output_index": output_index, "item": item})),
        );
    }

    pub(crate) fn item_done(&mut self, output_index: usize, item: Value) {
        self.event(
            "response.output_item.done",
            obj(json!({"output_index": output_index, "item": item})),
        );
        self.output.push(item);
    }

    /// `response.completed`, or `response.incomplete` with a reason.
    pub(crate) fn finished(&mut self, usage: Option<ResponsesUsage>, incomplete: Option<&str>) {
        let mut r = self.envelope(if incomplete.is_some() {
            "incomplete"
        } else {
            "completed"
        });
        r["output"] = Value::Array(self.output.clone());
        if let Some(u) = usage {
            r["usage"] = u.to_json();
        }
        match incomplete {
            Some(reason) => {
                r["incomplete_details"] = json!({"reason": reason});
                self.event("response.incomplete", obj(json!({"response": r})));
            }
            None => self.event("response.completed", obj(json!({"response": r}))),
        }
    }

    pub(crate) fn failed(&mut self, message: &str) {
        let mut r = self.envelope("failed");
        r["error"] = json!({"code": "server_error", "message": message});
        self.event("response.failed", obj(json!({"response": r})));
    }

    pub(crate) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

pub(crate) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Splits an SSE byte stream into events (`event:` name, joined `data:`), across any chunking.
#[derive(Default)]
pub(crate) struct SseSplitter {
    buf: crate::sse::EventBuffer,
}

/// Cap on one buffered upstream event.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) event: Option<String>,
    pub(crate) data: String,
}

impl SseSplitter {
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, StreamError> {
        let mut out = Vec::new();
        self.buf.feed(chunk, |raw| {
            if let Some(e) = parse_event(raw) {
                out.push(e);
            }
        });
        if self.buf.pending() > MAX_EVENT_BYTES {
            return Err(StreamError::Protocol("an upstream SSE event is too large"));
        }
        Ok(out)
    }

    /// The trailing event of a stream that ended without a blank line.
    pub(crate) fn finish(&mut self) -> Option<SseEvent> {
        let raw = self.buf.take();
        parse_event(&raw)
    }
}

fn parse_event(raw: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(raw);
    let mut event = None;
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim_start().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(v.to_string()),
            }
        }
    }
    data.map(|data| SseEvent { event, data })
}

/// A translated stream that cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("upstream protocol error: {0}")]
    Protocol(&'static str),
    #[error("upstream stream ended before completion")]
    Truncated,
}

/// A streaming translation: upstream SSE bytes in, Responses SSE bytes out.
pub trait StreamTranslator: Send {
    /// Feed one upstream chunk; returns the Responses bytes to forward (possibly empty).
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, StreamError>;
    /// The upstream ended cleanly; returns the last bytes, or an error if the response never completed.
    fn finish(&mut self) -> Result<Vec<u8>, StreamError>;
}

/// One upstream protocol's half of a streamed translation: what each upstream SSE event means. The rest
/// (splitting bytes into events, ignoring what follows the end, the end of the upstream stream) is the
/// shared driver, [`SseTranslator`].
pub trait EventMapper: Send {
    /// Map one upstream event (its `data`), emitting Responses events.
    fn on_event(&mut self, data: &str) -> Result<(), StreamError>;
    /// The translated response has ended (completed or failed): later upstream events are ignored.
    fn done(&self) -> bool;
    /// The upstream stream ended before [`done`](Self::done): end the response if what arrived allows it,
    /// else fail with [`StreamError::Truncated`] (the default).
    fn on_eof(&mut self) -> Result<(), StreamError> {
        Err(StreamError::Truncated)
    }
    /// The Responses bytes emitted since the last call.
    fn take_output(&mut self) -> Vec<u8>;
}

/// The one SSE driver of every stream translator: upstream bytes → events → an [`EventMapper`] → bytes.
pub struct SseTranslator<M> {
    sse: SseSplitter,
    mapper: M,
}

impl<M: EventMapper> SseTranslator<M> {
    pub fn with_mapper(mapper: M) -> Self {
        SseTranslator {
            sse: SseSplitter::default(),
            mapper,
        }
    }
}

impl<M: EventMapper> StreamTranslator for SseTranslator<M> {
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, StreamError> {
        for ev in self.sse.push(chunk)? {
            if self.mapper.done() {
                break;
            }
            self.mapper.on_event(&ev.data)?;
        }
        Ok(self.mapper.take_output())
    }

    fn finish(&mut self) -> Result<Vec<u8>, StreamError> {
        if let Some(ev) = self.sse.finish()
            && !self.mapper.done()
        {
            self.mapper.on_event(&ev.data)?;
        }
        if !self.mapper.done() {
            self.mapper.on_eof()?;
        }
        Ok(self.mapper.take_output())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_handles_any_chunking_and_crlf() {
        let s = b"event: a\r\ndata: {\"x\":1}\r\n\r\ndata: line1\ndata: line2\n\n: comment\n\n";
        for cut in 0..s.len() {
            let mut sp = SseSplitter::default();
            let mut ev = sp.push(&s[..cut]).expect("ok");
            ev.extend(sp.push(&s[cut..]).expect("ok"));
            assert_eq!(ev.len(), 2, "cut {cut}");
            assert_eq!(ev[0].event.as_deref(), Some("a"));
            assert_eq!(ev[0].data, "{\"x\":1}");
            assert_eq!(ev[1].data, "line1\nline2");
        }
    }

    #[test]
    fn usage_total_tokens_saturate_instead_of_overflowing() {
        let u = ResponsesUsage {
            input_tokens: u64::MAX,
            output_tokens: 1,
            ..ResponsesUsage::default()
        };
        assert_eq!(u.to_json()["total_tokens"], json!(u64::MAX));
    }

    #[test]
    fn custom_input_is_recovered_leniently() {
        assert_eq!(
            custom_input_from_arguments(r#"{"input":"*** Begin Patch"}"#),
            "*** Begin Patch"
        );
        assert_eq!(custom_input_from_arguments(r#""raw""#), "raw");
        assert_eq!(custom_input_from_arguments("not json"), "not json");
        assert_eq!(custom_input_from_arguments(r#"{"patch":"p"}"#), "p");
    }
}
