//! Token usage as upstreams report it, and a side decoder that reads it from SSE without touching the bytes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// Usage of one upstream request, normalised across APIs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// All input tokens, including cached ones.
    pub input_tokens: u64,
    /// Of which served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Of which written to the provider's prompt cache (Anthropic).
    pub cache_write_tokens: u64,
    /// All output tokens, including reasoning.
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return 0,
        }
    }
    cur.as_u64().unwrap_or(0)
}

impl Usage {
    /// From a Responses API `usage` object.
    pub fn from_responses(v: &Value) -> Option<Self> {
        if !v.is_object() {
            return None;
        }
        Some(Usage {
            input_tokens: u(v, &["input_tokens"]),
            cached_input_tokens: u(v, &["input_tokens_details", "cached_tokens"]),
            cache_write_tokens: u(v, &["input_tokens_details", "cache_write_tokens"]),
            output_tokens: u(v, &["output_tokens"]),
            reasoning_tokens: u(v, &["output_tokens_details", "reasoning_tokens"]),
        })
    }

    /// From a Chat Completions `usage` object.
    pub fn from_chat(v: &Value) -> Option<Self> {
        if !v.is_object() {
            return None;
        }
        Some(Usage {
            input_tokens: u(v, &["prompt_tokens"]),
            cached_input_tokens: u(v, &["prompt_tokens_details", "cached_tokens"]),
            cache_write_tokens: 0,
            output_tokens: u(v, &["completion_tokens"]),
            reasoning_tokens: u(v, &["completion_tokens_details", "reasoning_tokens"]),
        })
    }

    /// From an Anthropic Messages `usage` object (`message`, `message_start`, `message_delta`): its
    /// `input_tokens` exclude cache reads and writes, ours include them.
    pub fn from_messages(v: &Value) -> Option<Self> {
        if !v.is_object() {
            return None;
        }
        let write = u(v, &["cache_creation_input_tokens"]);
        let read = u(v, &["cache_read_input_tokens"]);
        Some(Usage {
            input_tokens: u(v, &["input_tokens"])
                .saturating_add(write)
                .saturating_add(read),
            cached_input_tokens: read,
            cache_write_tokens: write,
            output_tokens: u(v, &["output_tokens"]),
            reasoning_tokens: 0,
        })
    }

    /// A `message_delta`'s usage over what `message_start` reported: the output count is the final one,
    /// and input counts replace the start's only where the delta carries them.
    fn merge_messages_delta(&mut self, v: &Value) {
        let has = |k: &str| v.get(k).is_some_and(Value::is_u64);
        if has("output_tokens") {
            self.output_tokens = u(v, &["output_tokens"]);
        }
        if has("input_tokens")
            || has("cache_creation_input_tokens")
            || has("cache_read_input_tokens")
        {
            let read = if has("cache_read_input_tokens") {
                u(v, &["cache_read_input_tokens"])
            } else {
                self.cached_input_tokens
            };
            let write = if has("cache_creation_input_tokens") {
                u(v, &["cache_creation_input_tokens"])
            } else {
                self.cache_write_tokens
            };
            let uncached = if has("input_tokens") {
                u(v, &["input_tokens"])
            } else {
                self.input_tokens
                    .saturating_sub(self.cached_input_tokens)
                    .saturating_sub(self.cache_write_tokens)
            };
            self.cached_input_tokens = read;
            self.cache_write_tokens = write;
            self.input_tokens = uncached.saturating_add(read).saturating_add(write);
        }
    }

    /// Input plus output tokens (what token rate limits charge). Saturates: the counts come from the
    /// upstream and an absurd pair must not overflow.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Usage from a whole (non-streamed) answer body. Only the `usage` member is materialised; the rest
/// of the body is skipped by the parser without building a `Value` tree (that tree was the largest
/// userspace cost per request in the proxy profile).
pub fn usage_from_body(body: &[u8], wire: Wire) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct UsageOnly {
        usage: Option<Value>,
    }
    let u = serde_json::from_slice::<UsageOnly>(body).ok()?.usage?;
    match wire {
        Wire::Responses => Usage::from_responses(&u),
        Wire::Chat => Usage::from_chat(&u),
        Wire::Messages => Usage::from_messages(&u),
    }
}

/// Which wire format a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Responses,
    Chat,
    /// Anthropic Messages (usage in `message_start` and `message_delta`).
    Messages,
}

/// How a stream ended, as far as the decoder saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEnd {
    /// `response.completed` / chat `[DONE]`.
    Completed,
    /// `response.incomplete`.
    Incomplete,
    /// `response.failed` or an `error` event.
    Failed,
    /// The stream stopped without a terminal event.
    Truncated,
    /// A non-streamed answer broke off mid-body: the provider generated (and bills) the whole answer, but
    /// its usage never arrived.
    Cut,
}

/// Watches SSE bytes on the side. Feed it every chunk exactly as forwarded; it never alters them.
///
/// Only events that can carry usage are JSON-parsed (a cheap substring test first), so the cost per delta is
/// a memchr, not a parse.
#[derive(Debug)]
pub struct SseUsageDecoder {
    wire: Wire,
    buf: crate::sse::EventBuffer,
    pub usage: Option<Usage>,
    pub end: Option<StreamEnd>,
    /// Bytes of streamed output text seen (for estimating output tokens if no usage arrives).
    pub output_text_bytes: u64,
    pub events: u64,
}

/// A Responses event read only for its type and text (`response.output_text.delta`), borrowed from the
/// bytes: unknown fields are skipped, nothing is allocated unless the text has escapes. Anything that does
/// not fit (a `delta` that is not a string, a duplicate field) goes the way of every other event, a full
/// parse.
#[derive(Deserialize)]
struct ResponsesText<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<Cow<'a, str>>,
}

/// A Messages event read only for its type and text (`content_block_delta` with a `text_delta`).
#[derive(Deserialize)]
struct MessagesText<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<TextOf<'a>>,
}

#[derive(Deserialize)]
struct TextOf<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

/// A Chat Completions chunk read for its choices' text; `usage` only for whether it is there (not null):
/// a chunk with usage gets the full parse.
#[derive(Deserialize)]
struct ChatText<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChatChoice<'a>>,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<ChatDelta<'a>>,
}

#[derive(Deserialize)]
struct ChatDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// Cap on one buffered SSE event; a larger one is skipped (it cannot be a usage event we need).
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

impl SseUsageDecoder {
    pub fn new(wire: Wire) -> Self {
        SseUsageDecoder {
            wire,
            buf: crate::sse::EventBuffer::default(),
            usage: None,
            end: None,
            output_text_bytes: 0,
            events: 0,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.feed(chunk, |event| self.on_event(event));
        if buf.pending() > MAX_EVENT_BYTES {
            buf.clear();
        }
        self.buf = buf;
    }

    fn on_event(&mut self, event: &[u8]) {
        self.events += 1;
        // The data: lines, joined by newlines; one line (the usual event) is used where it lies.
        let mut lines = crate::sse::data_lines(event);
        let Some(first) = lines.next() else {
            return;
        };
        let joined;
        let data = match lines.next() {
            None => first,
            Some(second) => {
                let mut v = first.to_vec();
                for l in std::iter::once(second).chain(lines) {
                    // As before: an empty first line adds no newline.
                    if !v.is_empty() {
                        v.push(b'\n');
                    }
                    v.extend_from_slice(l);
                }
                joined = v;
                &joined[..]
            }
        };
        if data.is_empty() {
            return;
        }
        match self.wire {
            Wire::Responses => self.on_responses(data),
            Wire::Chat => self.on_chat(data),
            Wire::Messages => self.on_messages(data),
        }
    }

    /// The whole event parsed; `None` when it is not JSON, and then an error event that cannot be
    /// parsed still ends the stream as failed.
    fn parse_or_fail(&mut self, data: &[u8]) -> Option<Value> {
        let v = serde_json::from_slice::<Value>(data).ok();
        if v.is_none()
            && (contains(data, b"\"type\":\"error\"") || contains(data, b"\"type\": \"error\""))
        {
            self.end = Some(StreamEnd::Failed);
        }
        v
    }

    fn on_messages(&mut self, data: &[u8]) {
        // Text deltas are counted without a parse tree beyond the event; only the few event kinds that
        // carry usage or end the stream matter otherwise.
        static NEEDLES: LazyLock<Needles> = LazyLock::new(|| {
            Needles::new(&[
                b"\"text_delta\"",
                b"\"message_start\"",
                b"\"message_delta\"",
                b"\"message_stop\"",
                b"\"error\"",
            ])
        });
        if !NEEDLES.any_in(data) {
            return;
        }
        // A text delta, the most frequent event, without a parse tree.
        if let Ok(e) = serde_json::from_slice::<MessagesText>(data)
            && e.kind == "content_block_delta"
        {
            self.output_text_bytes += e.delta.and_then(|d| d.text).map_or(0, |t| t.len() as u64);
            return;
        }
        let Some(v) = self.parse_or_fail(data) else {
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("content_block_delta") => {
                self.output_text_bytes += v
                    .pointer("/delta/text")
                    .and_then(Value::as_str)
                    .map_or(0, |s| s.len() as u64);
            }
            Some("message_start") => {
                if let Some(u) = v.pointer("/message/usage").and_then(Usage::from_messages) {
                    self.usage = Some(u);
                }
            }
            Some("message_delta") => {
                if let Some(d) = v.get("usage").filter(|d| d.is_object()) {
                    let mut u = self.usage.unwrap_or_default();
                    u.merge_messages_delta(d);
                    self.usage = Some(u);
                }
                if v.pointer("/delta/stop_reason").and_then(Value::as_str) == Some("max_tokens") {
                    self.end = Some(StreamEnd::Incomplete);
                }
            }
            Some("message_stop") if self.end.is_none() => self.end = Some(StreamEnd::Completed),
            Some("error") => self.end = Some(StreamEnd::Failed),
            _ => {}
        }
    }

    fn on_responses(&mut self, data: &[u8]) {
        // Cheap substring tests pick the events worth parsing; the parsed `type` decides what an event is.
        // (Deciding by substring alone misread a `response.completed` whose output text or tool name
        // happened to be "response.output_text.delta" as a delta, and lost the terminal event and usage.)
        static NEEDLES: LazyLock<Needles> = LazyLock::new(|| {
            Needles::new(&[
                b"\"response.output_text.delta\"",
                b"\"response.completed\"",
                b"\"response.incomplete\"",
                b"\"response.failed\"",
                b"\"error\"",
            ])
        });
        if !NEEDLES.any_in(data) {
            return;
        }
        // A text delta, the most frequent event, without a parse tree.
        if let Ok(e) = serde_json::from_slice::<ResponsesText>(data)
            && e.kind == "response.output_text.delta"
        {
            self.output_text_bytes += e.delta.map_or(0, |d| d.len() as u64);
            return;
        }
        let Some(v) = self.parse_or_fail(data) else {
            return;
        };
        let end = match v.get("type").and_then(Value::as_str) {
            Some("response.output_text.delta") => {
                self.output_text_bytes += v
                    .get("delta")
                    .and_then(Value::as_str)
                    .map_or(0, |s| s.len() as u64);
                return;
            }
            Some("response.completed") => StreamEnd::Completed,
            Some("response.incomplete") => StreamEnd::Incomplete,
            Some("response.failed" | "error") => StreamEnd::Failed,
            _ => return,
        };
        self.end = Some(end);
        if let Some(u) = v
            .get("response")
            .and_then(|r| r.get("usage"))
            .and_then(Usage::from_responses)
        {
            self.usage = Some(u);
        }
    }

    fn on_chat(&mut self, data: &[u8]) {
        if data == b"[DONE]" {
            self.end = Some(StreamEnd::Completed);
            return;
        }
        // One parse serves both: servers asked for `include_usage` send `"usage":null` on every content
        // chunk, and some send the usage together with the last content.
        static NEEDLES: LazyLock<Needles> =
            LazyLock::new(|| Needles::new(&[b"\"usage\"", b"\"content\""]));
        if !NEEDLES.any_in(data) {
            return;
        }
        // A content chunk (`"usage":null` or none), the most frequent event, without a parse tree.
        if let Ok(c) = serde_json::from_slice::<ChatText>(data)
            && c.usage.is_none()
        {
            let n: usize = c
                .choices
                .iter()
                .filter_map(|c| c.delta.as_ref()?.content.as_deref())
                .map(str::len)
                .sum();
            self.output_text_bytes += n as u64;
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(u) = v.get("usage").and_then(Usage::from_chat) {
            self.usage = Some(u);
        }
        let n = v.get("choices").and_then(Value::as_array).map_or(0, |cs| {
            cs.iter()
                .filter_map(|c| c.pointer("/delta/content").and_then(Value::as_str))
                .map(str::len)
                .sum::<usize>()
        });
        self.output_text_bytes += n as u64;
    }

    /// Call when the byte stream ends: an unterminated stream is truncated.
    pub fn finish(&mut self) -> StreamEnd {
        let rest = self.buf.take();
        if !rest.is_empty() {
            self.on_event(&rest);
        }
        *self.end.get_or_insert(StreamEnd::Truncated)
    }
}

use crate::sse::{Needles, contains};
use std::sync::LazyLock;

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\"}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":123,",
        "\"input_tokens_details\":{\"cached_tokens\":23},\"output_tokens\":45,\"output_tokens_details\":{\"reasoning_tokens\":5},\"total_tokens\":168}}}\n\n"
    );

    #[test]
    fn reads_usage_from_any_chunking() {
        for split in 1..STREAM.len() {
            let mut d = SseUsageDecoder::new(Wire::Responses);
            let (a, b) = STREAM.as_bytes().split_at(split);
            d.feed(a);
            d.feed(b);
            assert_eq!(d.finish(), StreamEnd::Completed, "split {split}");
            assert_eq!(
                d.usage,
                Some(Usage {
                    input_tokens: 123,
                    cached_input_tokens: 23,
                    cache_write_tokens: 0,
                    output_tokens: 45,
                    reasoning_tokens: 5
                })
            );
            assert_eq!(d.output_text_bytes, 5);
        }
    }

    #[test]
    fn usage_from_whole_bodies() {
        let r = br#"{"id":"r","output":[{"type":"message","content":[{"text":"hi \"usage\""}]}],"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":3}}"#;
        let u = usage_from_body(r, Wire::Responses).expect("usage");
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.output_tokens),
            (7, 2, 3)
        );
        let c = br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#;
        assert_eq!(usage_from_body(c, Wire::Chat).map(|u| u.total()), Some(6));
        assert_eq!(usage_from_body(br#"{"usage":null}"#, Wire::Chat), None);
        assert_eq!(usage_from_body(b"not json", Wire::Chat), None);
        assert_eq!(usage_from_body(br#"{"choices":[]}"#, Wire::Chat), None);
    }

    /// Anthropic's stream as the Messages API sends it: input and cache counts in `message_start`, the final
    /// output count in `message_delta` (which may repeat the input counts).
    const MESSAGES: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",",
        "\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn messages_usage_with_cache_reads_and_writes_from_any_chunking() {
        let want = Usage {
            input_tokens: 2112,
            cached_input_tokens: 2000,
            cache_write_tokens: 100,
            output_tokens: 42,
            reasoning_tokens: 0,
        };
        for split in 1..MESSAGES.len() {
            let mut d = SseUsageDecoder::new(Wire::Messages);
            let (a, b) = MESSAGES.as_bytes().split_at(split);
            d.feed(a);
            d.feed(b);
            assert_eq!(d.finish(), StreamEnd::Completed, "split {split}");
            assert_eq!(d.usage, Some(want), "split {split}");
            assert_eq!(d.output_text_bytes, 5);
        }
        // A delta that repeats the input counts (newer API versions) replaces them; one cut by max_tokens is
        // incomplete; an error event fails the stream.
        let mut d = SseUsageDecoder::new(Wire::Messages);
        d.feed(
            MESSAGES
                .split("event: message_delta")
                .next()
                .unwrap_or_default()
                .as_bytes(),
        );
        d.feed(b"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":7}}\n\n");
        d.feed(b"data: {\"type\":\"message_stop\"}\n\n");
        assert_eq!(d.finish(), StreamEnd::Incomplete);
        assert_eq!(
            d.usage.map(|u| (
                u.input_tokens,
                u.cached_input_tokens,
                u.cache_write_tokens,
                u.output_tokens
            )),
            Some((115, 5, 100, 7))
        );
        let mut d = SseUsageDecoder::new(Wire::Messages);
        d.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert_eq!(d.finish(), StreamEnd::Failed);
        let body = br#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":3,"cache_creation_input_tokens":4,"cache_read_input_tokens":5,"output_tokens":6}}"#;
        let u = usage_from_body(body, Wire::Messages).expect("usage");
        assert_eq!(
            (
                u.input_tokens,
                u.cached_input_tokens,
                u.cache_write_tokens,
                u.output_tokens
            ),
            (12, 5, 4, 6)
        );
    }

    #[test]
    fn crlf_and_truncation() {
        let mut d = SseUsageDecoder::new(Wire::Responses);
        d.feed(b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"abc\"}\r\n\r\ndata: {\"type\":\"resp");
        assert_eq!(d.finish(), StreamEnd::Truncated);
        assert_eq!(d.output_text_bytes, 3);
        assert_eq!(d.usage, None);
    }

    /// The text count as a full parse reads it (what the decoder did for every event before the borrowed
    /// reading of text deltas): the same substring tests, then a `Value`.
    fn text_bytes_by_full_parse(wire: Wire, data: &str) -> u64 {
        let d = data.as_bytes();
        let has = |n: &[u8]| contains(d, n);
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return 0;
        };
        let len = |x: Option<&Value>| x.and_then(Value::as_str).map_or(0, |s| s.len() as u64);
        match wire {
            Wire::Responses => {
                let picked = [
                    &b"\"response.output_text.delta\""[..],
                    b"\"response.completed\"",
                    b"\"response.incomplete\"",
                    b"\"response.failed\"",
                    b"\"error\"",
                ]
                .iter()
                .any(|n| has(n));
                if picked
                    && v.get("type").and_then(Value::as_str) == Some("response.output_text.delta")
                {
                    len(v.get("delta"))
                } else {
                    0
                }
            }
            Wire::Messages => {
                let picked = [
                    &b"\"message_start\""[..],
                    b"\"message_delta\"",
                    b"\"message_stop\"",
                    b"\"text_delta\"",
                    b"\"error\"",
                ]
                .iter()
                .any(|n| has(n));
                if picked && v.get("type").and_then(Value::as_str) == Some("content_block_delta") {
                    len(v.pointer("/delta/text"))
                } else {
                    0
                }
            }
            Wire::Chat => {
                if !has(b"\"usage\"") && !has(b"\"content\"") {
                    return 0;
                }
                v.get("choices").and_then(Value::as_array).map_or(0, |cs| {
                    cs.iter().map(|c| len(c.pointer("/delta/content"))).sum()
                })
            }
        }
    }

    /// Text: plain, with escapes, quotes, backslashes, non-ASCII, or one of the event names.
    fn text() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            "[a-z ]{0,12}".prop_map(Value::from),
            "[\"\\\\\n\t/é😀a]{0,6}".prop_map(Value::from),
            Just(Value::from("response.output_text.delta")),
            Just(Value::from("text_delta")),
            Just(Value::Null),
            Just(serde_json::json!(7)),
            Just(serde_json::json!({"text": "nested"})),
        ]
    }

    /// One event's data of each wire's shapes, text deltas most of all, with fields that may be missing,
    /// null, of another type, or given twice.
    fn event(wire: Wire) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let kinds: Vec<&'static str> = match wire {
            Wire::Responses => vec![
                "response.output_text.delta",
                "response.output_text.delta",
                "response.function_call_arguments.delta",
                "response.completed",
                "error",
            ],
            Wire::Messages => vec![
                "content_block_delta",
                "content_block_delta",
                "message_delta",
                "message_start",
                "error",
            ],
            Wire::Chat => vec!["chat.completion.chunk"],
        };
        (
            proptest::sample::select(kinds),
            text(),
            text(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(kind, t, t2, twice, with_usage)| {
                let mut s = match wire {
                    Wire::Responses => serde_json::json!({
                        "type": kind, "sequence_number": 3, "item_id": "msg_1", "output_index": 0,
                        "content_index": 0, "delta": t, "logprobs": []
                    })
                    .to_string(),
                    Wire::Messages => serde_json::json!({
                        "type": kind, "index": 0, "delta": {"type": "text_delta", "text": t}
                    })
                    .to_string(),
                    Wire::Chat => serde_json::json!({
                        "id": "chatcmpl-1", "object": kind, "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null},
                                    {"index": 1, "delta": {"role": "assistant", "content": t2}}],
                        "usage": if with_usage { serde_json::json!({"prompt_tokens": 3, "completion_tokens": 4}) } else { Value::Null }
                    })
                    .to_string(),
                };
                if twice {
                    // A field given twice: the full parse keeps the last one.
                    s.pop();
                    s.push_str(&format!(",\"delta\":{t2}}}"));
                }
                s
            })
    }

    proptest::proptest! {
        /// The borrowed reading of text deltas counts what the full parse counts, whatever the event.
        #[test]
        fn text_deltas_count_as_a_full_parse_counts(
            (wire, events) in proptest::strategy::Strategy::prop_flat_map(
                proptest::sample::select(vec![Wire::Responses, Wire::Messages, Wire::Chat]),
                |w| (proptest::strategy::Just(w), proptest::collection::vec(event(w), 1..12)),
            ),
        ) {
            let mut want = 0;
            let mut d = SseUsageDecoder::new(wire);
            for data in &events {
                want += text_bytes_by_full_parse(wire, data);
                d.feed(format!("data: {data}\n\n").as_bytes());
            }
            proptest::prop_assert_eq!(d.output_text_bytes, want);
        }
    }

    #[test]
    fn data_lines_join_as_before() {
        // Leading empty data lines add no newline; later ones join with one.
        let mut d = SseUsageDecoder::new(Wire::Chat);
        d.feed(b"data:\ndata: [DONE]\n\n");
        assert_eq!(d.finish(), StreamEnd::Completed);
        let mut d = SseUsageDecoder::new(Wire::Responses);
        d.feed(b"event: x\ndata: {\"type\":\"response.output_text.delta\",\ndata: \"delta\":\"abc\"}\n\n");
        assert_eq!(d.output_text_bytes, 3);
    }

    #[test]
    fn a_delta_mentioning_completed_is_not_terminal() {
        let mut d = SseUsageDecoder::new(Wire::Responses);
        d.feed(b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"\\\"response.completed\\\"\"}\n\n");
        assert_eq!(d.finish(), StreamEnd::Truncated);
    }

    #[test]
    fn usage_total_saturates_on_absurd_upstream_counts() {
        let u = Usage::from_chat(&serde_json::json!({
            "prompt_tokens": u64::MAX, "completion_tokens": 5
        }))
        .expect("usage");
        assert_eq!(u.total(), u64::MAX);
    }

    #[test]
    fn terminal_event_whose_text_is_a_delta_event_name_is_still_terminal() {
        // A completed response whose output text is exactly the delta event's name (found by the
        // translate_stream fuzz target's decoder-agreement property).
        let mut d = SseUsageDecoder::new(Wire::Responses);
        d.feed(b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"response.output_text.delta\"}\n\n");
        d.feed(b"data: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"response.output_text.delta\"}]}],\"usage\":{\"input_tokens\":4,\"output_tokens\":6}}}\n\n");
        assert_eq!(d.finish(), StreamEnd::Completed);
        assert_eq!(
            d.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((4, 6))
        );
        assert_eq!(d.output_text_bytes, 26);
    }

    #[test]
    fn chat_content_is_counted_when_chunks_carry_null_usage() {
        // `stream_options.include_usage` makes OpenAI send `"usage":null` on every content chunk; the
        // text must still count (it is the estimate when the stream is cut before the usage chunk).
        let mut d = SseUsageDecoder::new(Wire::Chat);
        d.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n");
        d.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n");
        assert_eq!(d.finish(), StreamEnd::Truncated);
        assert_eq!(d.output_text_bytes, 6);
        assert_eq!(d.usage.map(|u| u.total()), Some(5));
    }

    #[test]
    fn chat_usage_chunk_and_done() {
        let mut d = SseUsageDecoder::new(Wire::Chat);
        d.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        d.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\"total_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n");
        d.feed(b"data: [DONE]\n\n");
        assert_eq!(d.finish(), StreamEnd::Completed);
        assert_eq!(
            d.usage
                .map(|u| (u.input_tokens, u.cached_input_tokens, u.output_tokens)),
            Some((10, 4, 2))
        );
        assert_eq!(d.output_text_bytes, 2);
    }
}
