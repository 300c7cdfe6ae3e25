//! Upstream providers behind one trait: a [`ProviderAdapter`] says what is particular to a provider kind
//! (its URLs, how its key is sent, whether and how a request is translated, how its errors read), and
//! `upstream::Provider` does the rest the same way for every kind (headers, sending, failure
//! classification, the first-byte deadline, the translated stream). This module imports neither
//! `upstream` nor the router: the dependency runs one way, `router` → `upstream` → `providers`.
//!
//! Adding a kind: one file here implementing [`ProviderAdapter`], its line in [`adapter`] (and its `mod`
//! line), and the `ProviderKind` variant that names it in the config. See ARCHITECTURE.md.

mod anthropic;
mod azure_openai;
mod demo;
mod openai;
mod openai_chat;

use crate::config::{ProviderConfig, ProviderKind};
use crate::translate::{RandomIds, StreamTranslator, TranslateError, messages};
use bytes::Bytes;
use futures::stream::BoxStream;
use http::{HeaderMap, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// The adapter of a configured provider, chosen once from its kind: the one registration point.
pub fn adapter(cfg: &ProviderConfig) -> Box<dyn ProviderAdapter> {
    match cfg.kind {
        ProviderKind::Demo => Box::new(demo::Demo),
        ProviderKind::Openai => Box::new(openai::Openai::new(cfg)),
        ProviderKind::AzureOpenai => Box::new(azure_openai::AzureOpenai::new(cfg)),
        ProviderKind::OpenaiChat => Box::new(openai_chat::OpenaiChat::new(cfg)),
        ProviderKind::Anthropic => Box::new(anthropic::Anthropic::new(cfg)),
    }
}

/// What is particular to one provider kind. Everything else about an attempt is common
/// (`upstream::Provider`).
pub trait ProviderAdapter: Send + Sync {
    /// The kind's name as written in the config (`openai-chat`): metric labels, spans, logs.
    fn name(&self) -> &'static str;

    /// The URL of `endpoint` on this provider for `model` (the client's model, or the target's).
    fn url(&self, endpoint: Endpoint, model: &str) -> String;

    /// Whether [`url`](Self::url) depends on the model; if not, it is parsed once, not per request.
    fn url_depends_on_model(&self) -> bool {
        false
    }

    /// The header that carries the upstream key, and its value. (Header names are constants: a name made
    /// from a `&str` at run time is parsed on every request.)
    fn key_header(&self, key: &SecretString) -> (http::HeaderName, String) {
        (
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose_secret()),
        )
    }

    /// Headers this provider always gets (after the forwarded or translation headers, before the key).
    fn extra_headers(&self) -> &'static [(http::HeaderName, &'static str)] {
        &[]
    }

    /// The body to send for a request to `endpoint`: the client's as it is, or translated (with what
    /// translates the answer back). [`UpstreamError::Unsupported`] when this provider cannot serve it.
    fn outgoing(
        &self,
        endpoint: Endpoint,
        body: Bytes,
        model: &str,
    ) -> Result<Outgoing, UpstreamError> {
        let _ = (endpoint, model);
        Ok(Outgoing::Native(body))
    }

    /// An upstream error body (at most 64 KiB) as the client should see it: OpenAI-shaped (the Messages
    /// ingress reshapes it into Anthropic's, `error::anthropic_shape`).
    fn error_body(&self, body: Bytes) -> Bytes {
        body
    }

    /// An answer made here, without any upstream (the demo provider).
    fn answer_locally(&self, endpoint: Endpoint, body: &[u8]) -> Option<UpstreamResponse> {
        let _ = (endpoint, body);
        None
    }
}

/// What goes upstream.
pub enum Outgoing {
    /// The client's body, and its headers less ours and hop-by-hop ones.
    Native(Bytes),
    /// A translated JSON body; the answer comes back through `answer`.
    Translated {
        body: Bytes,
        answer: Box<dyn AnswerTranslation>,
    },
}

/// How a translated request's answer becomes an answer in the client's protocol (Responses, or Messages
/// on the Messages ingress), holding what the request translation learned, e.g. the tool names.
pub trait AnswerTranslation: Send {
    /// A whole (non-streamed) upstream answer.
    fn response(&self, answer: &Value, created_at: u64) -> Value;
    /// The translator for a streamed upstream answer.
    fn stream(self: Box<Self>, created_at: u64) -> Box<dyn StreamTranslator>;
}

/// The client's body, translated by `translate`, with the answer translation built from what it
/// learned. Errors are the client's (`BadRequest`).
fn translated<C, A: AnswerTranslation + 'static>(
    body: &[u8],
    translate: impl FnOnce(&Value) -> Result<(Value, C), TranslateError>,
    answer: impl FnOnce(C) -> A,
) -> Result<Outgoing, UpstreamError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| UpstreamError::BadRequest("request body is not valid JSON".into()))?;
    let (out, ctx) = translate(&v).map_err(|e| UpstreamError::BadRequest(e.to_string()))?;
    let bytes = serde_json::to_vec(&out)
        .map_err(|e| UpstreamError::Transport(format!("serialize: {e}")))?;
    Ok(Outgoing::Translated {
        body: Bytes::from(bytes),
        answer: Box::new(answer(ctx)),
    })
}

/// The Messages ingress on an OpenAI-family provider: the request as Chat Completions, the answer back as
/// Messages ([`messages`]). Token counting has no Chat equivalent: the next target is tried (and, when
/// none can count, the broker estimates).
fn messages_via_chat(
    endpoint: Endpoint,
    body: &[u8],
    model: &str,
    flavor: messages::ChatFlavor,
) -> Result<Outgoing, UpstreamError> {
    match endpoint {
        Endpoint::CountTokens => Err(UpstreamError::Unsupported),
        _ => translated(
            body,
            |v| messages::request(v, model, flavor),
            ChatAsMessages,
        ),
    }
}

/// A Chat Completions answer → a Messages answer.
struct ChatAsMessages(messages::MessagesContext);

impl AnswerTranslation for ChatAsMessages {
    fn response(&self, answer: &Value, _created_at: u64) -> Value {
        messages::response(answer, &self.0, &mut RandomIds)
    }

    fn stream(self: Box<Self>, _created_at: u64) -> Box<dyn StreamTranslator> {
        Box::new(messages::ChatToMessagesStream::new(
            self.0,
            Box::new(RandomIds),
        ))
    }
}

/// Which API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Responses,
    ChatCompletions,
    /// Anthropic Messages (`/v1/messages`: Claude Code).
    Messages,
    /// Anthropic's `/v1/messages/count_tokens` (served only by `anthropic` providers; not accounted).
    CountTokens,
}

impl Endpoint {
    /// Every endpoint, in the order of their discriminants (per-endpoint tables index by `as usize`).
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Responses,
        Endpoint::ChatCompletions,
        Endpoint::Messages,
        Endpoint::CountTokens,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Responses => "/responses",
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Messages => "/messages",
            Endpoint::CountTokens => "/messages/count_tokens",
        }
    }

    /// The broker's own route for this API.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::Responses => "/v1/responses",
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
        }
    }

    /// Whether requests to this endpoint are admitted against a grant and accounted (`count_tokens` is
    /// neither: Anthropic does not bill it).
    pub fn accounted(self) -> bool {
        self != Endpoint::CountTokens
    }

    /// The accounted endpoint served on this broker route, if any (what the HTTP middleware counts by
    /// model and provider).
    pub fn accounted_at(route: &str) -> Option<Endpoint> {
        Endpoint::ALL
            .into_iter()
            .find(|e| e.accounted() && e.route() == route)
    }

    /// The endpoint an OpenAI-family provider serves this one on: Messages as Chat Completions.
    pub fn chat_for_messages(self) -> Endpoint {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Endpoint::ChatCompletions,
            e => e,
        }
    }

    /// Whether the client speaks Anthropic's protocol on this endpoint (its errors, its stream ends).
    pub fn is_anthropic(self) -> bool {
        matches!(self, Endpoint::Messages | Endpoint::CountTokens)
    }
}

/// Why an attempt failed before any byte reached the client. The message is for logs only: it may name
/// upstream hosts but never keys (reqwest errors carry the URL, and our URLs carry no secrets).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("timeout")]
    Timeout,
    #[error("upstream status {status}")]
    Status {
        status: StatusCode,
        retry_after_secs: Option<u64>,
        body: Bytes,
    },
    #[error("transport: {0}")]
    Transport(String),
    /// This provider cannot serve this endpoint (e.g. Chat Completions on Anthropic): try the next target.
    #[error("endpoint not supported by this provider")]
    Unsupported,
    /// The provider's key is not loaded (yet): try the next target.
    #[error("upstream key unavailable")]
    KeyUnavailable,
    /// The request cannot be translated for this provider.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl UpstreamError {
    /// Whether this failure counts against the target's circuit breaker.
    pub fn is_target_fault(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Timeout | UpstreamError::Transport(_) => {
                true
            }
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// A low-cardinality label for metrics (`tollgate_failovers_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Status { status, .. } if status.as_u16() == 429 => "status_429",
            UpstreamError::Status { .. } => "status_5xx",
            UpstreamError::Transport(_) => "transport",
            UpstreamError::Unsupported => "unsupported",
            UpstreamError::KeyUnavailable => "key_unavailable",
            UpstreamError::BadRequest(_) => "bad_request",
        }
    }

    /// Connect errors, timeouts, 429 and 5xx move to the next target; other 4xx do not.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::Timeout
            | UpstreamError::Transport(_)
            | UpstreamError::Unsupported
            | UpstreamError::KeyUnavailable => true,
            UpstreamError::BadRequest(_) => false,
            UpstreamError::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
        }
    }
}

/// A successful upstream answer, body still streaming.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Config, Source};

    /// Every accounted ingress, and only those, is recognised by its route: the list the request metric
    /// counts by model and provider (it once left `/v1/messages` out).
    #[test]
    fn accounted_routes_are_the_three_ingresses() {
        for e in Endpoint::ALL {
            assert_eq!(
                Endpoint::accounted_at(e.route()),
                e.accounted().then_some(e),
                "{e:?}"
            );
        }
        let accounted: Vec<&str> = Endpoint::ALL
            .into_iter()
            .filter(|e| e.accounted())
            .map(Endpoint::route)
            .collect();
        assert_eq!(
            accounted,
            ["/v1/responses", "/v1/chat/completions", "/v1/messages"]
        );
        for other in [
            "/v1/messages/count_tokens",
            "/v1/models",
            "/healthz",
            "unmatched",
        ] {
            assert_eq!(Endpoint::accounted_at(other), None, "{other}");
        }
    }

    /// The validated config of one provider `p` given its TOML body.
    pub(crate) fn config(toml: &str) -> ProviderConfig {
        let cfg = Config::from_source(
            Source {
                path: "/etc/t/broker.toml".into(),
                text: format!("policy_file = \"p.toml\"\n[providers.p]\n{toml}"),
            },
            &std::collections::BTreeMap::<String, String>::new(),
        )
        .expect("config");
        cfg.providers["p"].clone()
    }

    #[test]
    fn every_kind_has_an_adapter_named_as_in_the_config() {
        // A new variant stops this match compiling; then it must be in `ALL` too.
        let listed = |k: ProviderKind| match k {
            ProviderKind::Demo
            | ProviderKind::Openai
            | ProviderKind::AzureOpenai
            | ProviderKind::OpenaiChat
            | ProviderKind::Anthropic => ProviderKind::ALL.contains(&k),
        };
        for kind in ProviderKind::ALL {
            assert!(listed(kind));
            let name = kind.name();
            let cfg = config(&format!(
                "kind = \"{name}\"\nbase_url = \"https://example.test/v1\"\n"
            ));
            assert_eq!(cfg.kind, kind, "`kind = \"{name}\"` parses to {kind:?}");
            assert_eq!(adapter(&cfg).name(), name, "{kind:?}");
        }
    }
}
