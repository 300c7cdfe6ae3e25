//! `openai-chat`: any OpenAI-compatible Chat Completions server. Chat Completions requests are passed
//! through; Responses requests are translated to Chat Completions and the answer back
//! ([`translate::chat`]), and so are Messages requests (Claude Code; [`translate::messages`]). The key is a
//! bearer token.

use super::{
    AnswerTranslation, Endpoint, Outgoing, ProviderAdapter, UpstreamError, messages_via_chat,
    translated,
};
use crate::config::ProviderConfig;
use crate::translate::messages::ChatFlavor;
use crate::translate::{RandomIds, StreamTranslator, ToolContext, chat};
use bytes::Bytes;
use serde_json::Value;

pub struct OpenaiChat {
    base_url: String,
}

impl OpenaiChat {
    pub fn new(cfg: &ProviderConfig) -> Self {
        OpenaiChat {
            base_url: cfg.base_url.clone(),
        }
    }
}

impl ProviderAdapter for OpenaiChat {
    fn name(&self) -> &'static str {
        "openai-chat"
    }

    fn url(&self, _endpoint: Endpoint, _model: &str) -> String {
        format!("{}/chat/completions", self.base_url)
    }

    fn outgoing(
        &self,
        endpoint: Endpoint,
        body: Bytes,
        model: &str,
    ) -> Result<Outgoing, UpstreamError> {
        match endpoint {
            Endpoint::ChatCompletions => Ok(Outgoing::Native(body)),
            Endpoint::Messages | Endpoint::CountTokens => {
                messages_via_chat(endpoint, &body, model, ChatFlavor::Compatible)
            }
            Endpoint::Responses => translated(&body, |v| chat::request(v, model), ChatAnswer),
        }
    }
}

/// A Chat Completions answer → a Responses answer.
struct ChatAnswer(ToolContext);

impl AnswerTranslation for ChatAnswer {
    fn response(&self, answer: &Value, created_at: u64) -> Value {
        chat::response(answer, &self.0, &mut RandomIds, created_at)
    }

    fn stream(self: Box<Self>, created_at: u64) -> Box<dyn StreamTranslator> {
        Box::new(chat::ChatStream::new(
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

    #[test]
    fn both_endpoints_go_to_chat_completions_and_only_responses_is_translated() {
        let p = OpenaiChat::new(&config(
            "kind = \"openai-chat\"\nbase_url = \"http://127.0.0.1:11434/v1\"\n",
        ));
        assert_eq!(
            p.url(Endpoint::Responses, "m"),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
        let body = Bytes::from_static(br#"{"model":"m","input":"hi"}"#);
        assert!(matches!(
            p.outgoing(Endpoint::ChatCompletions, body.clone(), "m"),
            Ok(Outgoing::Native(b)) if b == body
        ));
        let Ok(Outgoing::Translated { body: out, .. }) =
            p.outgoing(Endpoint::Responses, body, "up")
        else {
            panic!("a Responses request is translated");
        };
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["model"], "up");
        assert_eq!(v["messages"][0]["content"], "hi");
        assert!(matches!(
            p.outgoing(Endpoint::Responses, Bytes::from_static(b"{"), "m"),
            Err(UpstreamError::BadRequest(_))
        ));
    }
}
