//! The Codex session a request belongs to, read from the headers Codex sends with every request.
//!
//! Codex 0.171 sends `session-id`, `thread-id`, `originator`, `x-codex-window-id` and
//! `x-codex-turn-metadata` (a small JSON object: `session_id`, `thread_id`, `turn_id`, `window_id`,
//! `request_kind` = `turn` | `compaction`, …) on every `POST /v1/responses`, and `x-openai-subagent`
//! (`review`, `compact`, `thread_spawn`, `memory_consolidation` or a free label) on a sub-agent's requests
//! (seen in the 0.171.0 binary next to `x-codex-parent-thread-id`; the recorded fixtures in
//! `broker/tests/testdata/codex-0.171/` are all root-agent requests and carry none).
//!
//! Claude Code (2.1.332, observed) sends `X-Claude-Code-Session-Id` (a UUID) on every `POST /v1/messages`:
//! it is the session id when `session-id` is absent, so a Claude Code session's spend is one query too and
//! its requests keep their target (session affinity, the provider's prompt cache).
//!
//! Every value is untrusted input. Each is kept only when it is short and made of a strict character set
//! (`request_kind` only from its fixed vocabulary); anything else is dropped, never an error — a request is
//! never refused for its session headers. The values go to the spend record, the audit record and the log
//! line, never to a metric label (their cardinality is unbounded). Only headers are read: the body is not
//! touched, and the turn metadata is parsed only when it is at most [`MAX_METADATA_BYTES`].

use axum::http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};

/// The longest id kept (session, thread, turn, window): Codex's are UUIDs (36) and `<uuid>:<n>`.
pub const MAX_ID_CHARS: usize = 128;
/// The longest `originator` or sub-agent kind kept.
pub const MAX_NAME_CHARS: usize = 64;
/// A larger `x-codex-turn-metadata` is not parsed (Codex's is about 1 KiB).
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

/// What kind of request Codex says this is (`request_kind` in its turn metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// An ordinary model call of a turn.
    Turn,
    /// Codex summarising its history (automatic or `/compact`).
    Compaction,
}

impl RequestKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "turn" => Some(RequestKind::Turn),
            "compaction" => Some(RequestKind::Compaction),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Turn => "turn",
            RequestKind::Compaction => "compaction",
        }
    }
}

/// The validated session context of one request. Every field is optional: only what was sent and valid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CodexSession {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_kind: Option<RequestKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub originator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subagent: Option<String>,
}

/// The fields of `x-codex-turn-metadata` that are kept; every other key is skipped unread. A field of the
/// wrong type is dropped on its own.
#[derive(Deserialize, Default)]
struct TurnMetadata {
    #[serde(default)]
    session_id: Loose,
    #[serde(default)]
    thread_id: Loose,
    #[serde(default)]
    turn_id: Loose,
    #[serde(default)]
    window_id: Loose,
    #[serde(default)]
    request_kind: Loose,
}

/// A JSON value kept only when it is a string.
#[derive(Default)]
struct Loose(Option<String>);

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Loose;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Loose, E> {
                // Anything longer is dropped anyway: do not copy it.
                Ok(Loose((v.len() <= MAX_ID_CHARS).then(|| v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Loose, E> {
                Ok(Loose(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Loose, E> {
                Ok(Loose(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Loose, E> {
                Ok(Loose(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Loose, E> {
                Ok(Loose(None))
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose(None))
            }
            fn visit_none<E>(self) -> Result<Loose, E> {
                Ok(Loose(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Loose, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Loose(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// An id: 1 to [`MAX_ID_CHARS`] of `A-Z a-z 0-9 - _ . :`.
fn valid_id(s: &str) -> Option<String> {
    valid(s, MAX_ID_CHARS, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':')
    })
}

/// A name (`codex_exec`, `thread_spawn`): 1 to [`MAX_NAME_CHARS`] of `A-Z a-z 0-9 - _ .`.
fn valid_name(s: &str) -> Option<String> {
    valid(s, MAX_NAME_CHARS, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
    })
}

/// Whether `s` is a session id as the broker records it (the admin API checks the id it is asked about).
pub fn is_valid_id(s: &str) -> bool {
    valid_id(s).is_some_and(|v| v == s)
}

fn valid(s: &str, max: usize, allowed: impl Fn(u8) -> bool) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= max && s.bytes().all(allowed)).then(|| s.to_string())
}

// The header names, parsed once (a lookup by `&str` parses the name on every request).
const TURN_METADATA: HeaderName = HeaderName::from_static("x-codex-turn-metadata");
const SESSION_ID: HeaderName = HeaderName::from_static("session-id");
const CLAUDE_SESSION_ID: HeaderName = HeaderName::from_static("x-claude-code-session-id");
const THREAD_ID: HeaderName = HeaderName::from_static("thread-id");
const WINDOW_ID: HeaderName = HeaderName::from_static("x-codex-window-id");
const ORIGINATOR: HeaderName = HeaderName::from_static("originator");
const SUBAGENT: HeaderName = HeaderName::from_static("x-openai-subagent");

fn header<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl CodexSession {
    /// Read the session context from a request's headers; `None` when none of it is there (or valid).
    /// The `session-id` and `thread-id` headers win over the same fields of the turn metadata.
    pub fn from_headers(h: &HeaderMap) -> Option<CodexSession> {
        let meta = header(h, &TURN_METADATA)
            .filter(|m| m.len() <= MAX_METADATA_BYTES)
            .and_then(|m| serde_json::from_str::<TurnMetadata>(m).ok())
            .unwrap_or_default();
        let id = |hdr: &HeaderName, field: Option<String>| {
            header(h, hdr)
                .and_then(valid_id)
                .or_else(|| field.as_deref().and_then(valid_id))
        };
        let s = CodexSession {
            session_id: id(&SESSION_ID, meta.session_id.0)
                .or_else(|| header(h, &CLAUDE_SESSION_ID).and_then(valid_id)),
            thread_id: id(&THREAD_ID, meta.thread_id.0),
            turn_id: meta.turn_id.0.as_deref().and_then(valid_id),
            window_id: id(&WINDOW_ID, meta.window_id.0),
            request_kind: meta.request_kind.0.as_deref().and_then(RequestKind::parse),
            originator: header(h, &ORIGINATOR).and_then(valid_name),
            subagent: header(h, &SUBAGENT).and_then(valid_name),
        };
        (s != CodexSession::default()).then_some(s)
    }

    pub fn request_kind_str(&self) -> Option<&'static str> {
        self.request_kind.map(RequestKind::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    /// The headers of a recorded Codex 0.171.0 request (`testdata/codex-0.171/`).
    fn fixture(name: &str) -> HeaderMap {
        let path = format!(
            "{}/tests/testdata/codex-0.171/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json");
        let mut h = HeaderMap::new();
        for (k, val) in v["request"]["headers"].as_object().expect("headers") {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(val.as_str().expect("str")).expect("value"),
            );
        }
        h
    }

    #[test]
    fn reads_what_codex_0_171_sends_on_a_turn_and_a_compaction() {
        let s = CodexSession::from_headers(&fixture("plain_turn")).expect("session");
        assert_eq!(
            s,
            CodexSession {
                session_id: Some("01a24d31-07fe-7a73-9dc6-007c5593c4d5".into()),
                thread_id: Some("01a24d31-07fe-7a73-9dc6-007c5593c4d5".into()),
                turn_id: Some("01a24d31-0856-7c93-a7f4-b94ab4019615".into()),
                window_id: Some("01a24d31-07fe-7a73-9dc6-007c5593c4d5:0".into()),
                request_kind: Some(RequestKind::Turn),
                originator: Some("codex_exec".into()),
                subagent: None,
            }
        );
        let c = CodexSession::from_headers(&fixture("compaction")).expect("session");
        assert_eq!(c.request_kind, Some(RequestKind::Compaction));
        assert_eq!(
            c.turn_id.as_deref(),
            Some("01a24d31-161e-7ce0-8b64-70316f7b0cc2")
        );
    }

    #[test]
    fn claude_codes_session_header_is_the_session_when_codexs_is_absent() {
        let s = CodexSession::from_headers(&headers(&[(
            "x-claude-code-session-id",
            "54f2b08d-54bd-41dc-ba9f-a04458f055af",
        )]))
        .expect("session");
        assert_eq!(
            s.session_id.as_deref(),
            Some("54f2b08d-54bd-41dc-ba9f-a04458f055af")
        );
        let both = CodexSession::from_headers(&headers(&[
            ("session-id", "codex-session"),
            ("x-claude-code-session-id", "claude-session"),
        ]))
        .expect("session");
        assert_eq!(both.session_id.as_deref(), Some("codex-session"));
        assert!(
            CodexSession::from_headers(&headers(&[("x-claude-code-session-id", "a b")])).is_none(),
            "an invalid id is dropped"
        );
    }

    #[test]
    fn a_subagent_kind_is_kept_and_metadata_fills_in_missing_headers() {
        let s = CodexSession::from_headers(&headers(&[
            ("x-openai-subagent", "thread_spawn"),
            (
                "x-codex-turn-metadata",
                r#"{"session_id":"s-1","thread_id":"t-2","turn_id":"u-3","request_kind":"turn","window_number":4}"#,
            ),
        ]))
        .expect("session");
        assert_eq!(s.subagent.as_deref(), Some("thread_spawn"));
        assert_eq!(s.session_id.as_deref(), Some("s-1"));
        assert_eq!(s.thread_id.as_deref(), Some("t-2"));
        assert_eq!(s.request_kind_str(), Some("turn"));
        // The header wins over the metadata.
        let s = CodexSession::from_headers(&headers(&[
            ("session-id", "from-header"),
            ("x-codex-turn-metadata", r#"{"session_id":"from-meta"}"#),
        ]))
        .expect("session");
        assert_eq!(s.session_id.as_deref(), Some("from-header"));
    }

    #[test]
    fn oversized_values_are_dropped() {
        let long = "a".repeat(MAX_ID_CHARS + 1);
        let just = "a".repeat(MAX_ID_CHARS);
        let s = CodexSession::from_headers(&headers(&[
            ("session-id", &long),
            ("thread-id", &just),
            ("originator", &"o".repeat(MAX_NAME_CHARS + 1)),
            (
                "x-codex-turn-metadata",
                &format!(r#"{{"turn_id":"{long}","request_kind":"turn"}}"#),
            ),
        ]))
        .expect("session");
        assert_eq!(s.session_id, None);
        assert_eq!(s.thread_id.as_deref(), Some(just.as_str()));
        assert_eq!((s.originator, s.turn_id), (None, None));
        assert_eq!(s.request_kind, Some(RequestKind::Turn));
        // Metadata over the size limit is not parsed at all.
        let big = format!(
            r#"{{"request_kind":"turn","pad":"{}"}}"#,
            "x".repeat(MAX_METADATA_BYTES)
        );
        assert_eq!(
            CodexSession::from_headers(&headers(&[("x-codex-turn-metadata", &big)])),
            None
        );
    }

    #[test]
    fn bad_characters_and_unknown_kinds_are_dropped() {
        let s = CodexSession::from_headers(&headers(&[
            ("session-id", "abc def"),
            ("thread-id", "t\"; DROP TABLE spend;--"),
            ("originator", "codex/exec"),
            ("x-openai-subagent", "review"),
            (
                "x-codex-turn-metadata",
                r#"{"turn_id":"ok\nno","request_kind":"Turn","thread_id":"a/b","window_id":"w\u00e9"}"#,
            ),
        ]))
        .expect("session");
        assert_eq!(
            s,
            CodexSession {
                subagent: Some("review".into()),
                ..Default::default()
            }
        );
        // A header that is not visible ASCII is dropped too.
        let mut h = HeaderMap::new();
        h.insert(
            "session-id",
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque bytes"),
        );
        assert_eq!(CodexSession::from_headers(&h), None);
        for kind in ["", "turn ", "compact", "TURN", "other"] {
            let m = format!(r#"{{"request_kind":"{kind}"}}"#);
            assert_eq!(
                CodexSession::from_headers(&headers(&[("x-codex-turn-metadata", &m)])),
                None,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn malformed_metadata_is_ignored_never_an_error() {
        for m in [
            "{",
            "not json",
            "[]",
            "null",
            r#"{"session_id":"s","session_id":"t"}"#,
        ] {
            let s = CodexSession::from_headers(&headers(&[
                ("x-codex-turn-metadata", m),
                ("originator", "codex_exec"),
            ]))
            .expect("the valid header survives");
            assert_eq!(s.session_id, None, "{m}");
            assert_eq!(s.originator.as_deref(), Some("codex_exec"));
        }
        // Fields of the wrong type are dropped one by one; the rest is kept.
        let s = CodexSession::from_headers(&headers(&[(
            "x-codex-turn-metadata",
            r#"{"session_id":{"a":[1,2]},"thread_id":7,"turn_id":"u","request_kind":["turn"]}"#,
        )]))
        .expect("session");
        assert_eq!(
            (s.session_id, s.thread_id, s.turn_id, s.request_kind),
            (None, None, Some("u".into()), None)
        );
        assert_eq!(CodexSession::from_headers(&HeaderMap::new()), None);
    }
}
