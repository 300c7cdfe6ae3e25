//! `openai`: the OpenAI API. Responses and Chat Completions are passed through; Messages requests
//! (Claude Code) are translated to Chat Completions and the answer back ([`translate::messages`]). The key
//! is a bearer token.

use super::{Endpoint, Outgoing, ProviderAdapter, UpstreamError, messages_via_chat};
use crate::config::ProviderConfig;
use crate::translate::messages::ChatFlavor;
use bytes::Bytes;

pub struct Openai {
    base_url: String,
}

impl Openai {
    pub fn new(cfg: &ProviderConfig) -> Self {
        Openai {
            base_url: cfg.base_url.clone(),
        }
    }
}

impl ProviderAdapter for Openai {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn url(&self, endpoint: Endpoint, _model: &str) -> String {
        format!("{}{}", self.base_url, endpoint.chat_for_messages().path())
    }

    fn outgoing(
        &self,
        endpoint: Endpoint,
        body: Bytes,
        model: &str,
    ) -> Result<Outgoing, UpstreamError> {
        match endpoint {
            Endpoint::Responses | Endpoint::ChatCompletions => Ok(Outgoing::Native(body)),
            Endpoint::Messages | Endpoint::CountTokens => {
                messages_via_chat(endpoint, &body, model, ChatFlavor::OpenAi)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::providers::tests::config;

    #[test]
    fn urls_are_the_base_and_the_endpoint() {
        let p = Openai::new(&config(
            "kind = \"openai\"\nbase_url = \"https://api.openai.com/v1/\"\n",
        ));
        assert_eq!(
            p.url(Endpoint::Responses, "m"),
            "https://api.openai.com/v1/responses"
        );
        assert_eq!(
            p.url(Endpoint::ChatCompletions, "m"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            p.url(Endpoint::Messages, "m"),
            "https://api.openai.com/v1/chat/completions"
        );
        let body = Bytes::from_static(br#"{"model":"claude","max_tokens":5,"messages":[]}"#);
        let Ok(Outgoing::Translated { body: out, .. }) =
            p.outgoing(Endpoint::Messages, body.clone(), "gpt")
        else {
            panic!("a Messages request is translated");
        };
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            (v["model"].as_str(), v["max_completion_tokens"].as_u64()),
            (Some("gpt"), Some(5))
        );
        assert!(matches!(
            p.outgoing(Endpoint::CountTokens, body, "gpt"),
            Err(UpstreamError::Unsupported)
        ));
    }
}
