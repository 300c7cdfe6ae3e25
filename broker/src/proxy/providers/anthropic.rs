//! `anthropic`: Anthropic Messages. Messages requests (Claude Code) and token counts pass through as they
//! are, the client's `anthropic-beta` included; Responses requests are translated to Messages and the
//! answer back ([`translate::anthropic`]); Chat Completions is not served (the next target is tried). The
//! key goes in `x-api-key`, with `anthropic-version`; error bodies are rewritten in OpenAI's shape (the
//! Messages ingress shapes them back).

use super::{AnswerTranslation, Endpoint, Outgoing, ProviderAdapter, UpstreamError, translated};
use crate::config::ProviderConfig;
use crate::translate::{RandomIds, StreamTranslator, ToolContext, anthropic};
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub struct Anthropic {
    base_url: String,
    options: anthropic::Options,
}

impl Anthropic {
    pub fn new(cfg: &ProviderConfig) -> Self {
        Anthropic {
            base_url: cfg.base_url.clone(),
            options: anthropic::Options {
                default_max_tokens: cfg
                    .max_tokens
                    .unwrap_or(anthropic::Options::default().default_max_tokens),
            },
        }
    }
}

impl ProviderAdapter for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn url(&self, endpoint: Endpoint, _model: &str) -> String {
        match endpoint {
            Endpoint::CountTokens => format!("{}/messages/count_tokens", self.base_url),
            _ => format!("{}/messages", self.base_url),
        }
    }

    fn key_header(&self, key: &SecretString) -> (http::HeaderName, String) {
        const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
        (X_API_KEY, key.expose_secret().to_string())
    }

    fn extra_headers(&self) -> &'static [(http::HeaderName, &'static str)] {
        static EXTRA: [(http::HeaderName, &str); 1] = [(
            http::HeaderName::from_static("anthropic-version"),
            anthropic::ANTHROPIC_VERSION,
        )];
        &EXTRA
    }

    fn outgoing(
        &self,
        endpoint: Endpoint,
        body: Bytes,
        model: &str,
    ) -> Result<Outgoing, UpstreamError> {
        match endpoint {
            Endpoint::ChatCompletions => Err(UpstreamError::Unsupported),
            Endpoint::Messages | Endpoint::CountTokens => Ok(Outgoing::Native(body)),
            Endpoint::Responses => translated(
                &body,
                |v| anthropic::request(v, model, self.options),
                MessagesAnswer,
            ),
        }
    }

    fn error_body(&self, body: Bytes) -> Bytes {
        match anthropic::error_body(&body) {
            Some(v) => Bytes::from(v.to_string()),
            None => body,
        }
    }
}

/// A Messages answer → a Responses answer.
struct MessagesAnswer(ToolContext);

impl AnswerTranslation for MessagesAnswer {
    fn response(&self, answer: &Value, created_at: u64) -> Value {
        anthropic::response(answer, &self.0, &mut RandomIds, created_at)
    }

    fn stream(self: Box<Self>, created_at: u64) -> Box<dyn StreamTranslator> {
        Box::new(anthropic::MessagesStream::new(
            self.0,
            Box::new(RandomIds),
            created_at,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::providers::tests::config;

    fn provider() -> Anthropic {
        Anthropic::new(&config(
            "kind = \"anthropic\"\nbase_url = \"https://api.anthropic.com/v1\"\n",
        ))
    }

    #[test]
    fn messages_url_and_chat_completions_unsupported() {
        let p = provider();
        assert_eq!(
            p.url(Endpoint::Responses, "m"),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(matches!(
            p.outgoing(Endpoint::ChatCompletions, Bytes::from_static(b"{}"), "m"),
            Err(UpstreamError::Unsupported)
        ));
        assert_eq!(
            p.url(Endpoint::CountTokens, "m"),
            "https://api.anthropic.com/v1/messages/count_tokens"
        );
        // Claude Code's requests pass through untouched.
        let body = Bytes::from_static(br#"{"model":"claude","max_tokens":5,"messages":[]}"#);
        for e in [Endpoint::Messages, Endpoint::CountTokens] {
            assert!(
                matches!(p.outgoing(e, body.clone(), "m"), Ok(Outgoing::Native(b)) if b == body)
            );
        }
    }

    #[test]
    fn error_bodies_become_openai_shaped() {
        let p = provider();
        let out = p.error_body(Bytes::from_static(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
        ));
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["error"]["message"], "busy");
        let raw = Bytes::from_static(b"not json");
        assert_eq!(p.error_body(raw.clone()), raw);
    }
}
