//! A small Server-Sent Events parser for tests.
//!
//! Follows the WHATWG event-stream rules that matter for LLM APIs: frames end at a blank line,
//! `data:` lines are joined with `\n`, one leading space after the colon is dropped, `:` lines are
//! comments, and `\r\n` line endings are accepted. Bytes may be fed in arbitrary chunks.

use serde_json::Value;

/// One dispatched SSE frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the frame had one.
    pub event: Option<String>,
    /// All `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

impl SseEvent {
    /// The data parsed as JSON, or `None` if it is not JSON (e.g. `[DONE]`).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }

    /// The event name: the `event:` field, else the JSON `type` field of the data.
    pub fn name(&self) -> Option<String> {
        self.event.clone().or_else(|| {
            self.json()
                .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        })
    }

    /// True for the OpenAI Chat Completions terminator `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// Incremental parser: feed chunks with [`SseParser::push`], collect complete frames.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseEvent,
    has_field: bool,
    data_seen: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and returns every frame completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        out
    }

    /// Ends the stream: returns a final frame that was not followed by a blank line, if any.
    /// A well-formed stream returns `None`.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            let rest = rest.strip_suffix('\r').unwrap_or(&rest).to_owned();
            // A trailing line with no newline is a partial line: count it as a field.
            let _ = self.line(&rest);
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.cur.event = Some(value.to_owned()),
            "data" => {
                if self.data_seen {
                    self.cur.data.push('\n');
                }
                self.cur.data.push_str(value);
                self.data_seen = true;
            }
            "id" => self.cur.id = Some(value.to_owned()),
            _ => return None,
        }
        self.has_field = true;
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if !self.has_field {
            return None;
        }
        self.has_field = false;
        self.data_seen = false;
        Some(std::mem::take(&mut self.cur))
    }
}

/// Parses a complete SSE body into frames (including a final unterminated one).
pub fn parse(body: &[u8]) -> Vec<SseEvent> {
    let mut p = SseParser::new();
    let mut out = p.push(body);
    out.extend(p.finish());
    out
}

/// Event names in order (see [`SseEvent::name`]), for asserting on event order.
pub fn names(events: &[SseEvent]) -> Vec<String> {
    events.iter().filter_map(SseEvent::name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_frames_with_crlf_comments_and_multiline_data() {
        let body = b": keepalive\r\nevent: a\r\ndata: {\"x\":1}\r\n\r\ndata: one\ndata:two\n\ndata: [DONE]\n\n";
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for chunk in body.chunks(3) {
            out.extend(p.push(chunk));
        }
        assert_eq!(p.finish(), None);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].event.as_deref(), Some("a"));
        assert_eq!(out[0].json().and_then(|v| v["x"].as_i64()), Some(1));
        assert_eq!(out[1].data, "one\ntwo");
        assert_eq!(out[1].event, None);
        assert!(out[2].is_done());
    }

    #[test]
    fn unterminated_final_frame_is_returned_by_finish() {
        let ev = parse(b"data: {\"type\":\"t\"}\n\ndata: {\"type\":\"u\"}");
        assert_eq!(names(&ev), vec!["t", "u"]);
    }
}
