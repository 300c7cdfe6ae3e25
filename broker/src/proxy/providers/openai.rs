//! `openai`: the OpenAI API. Both endpoints are passed through; the key is a bearer token.

use super::{Endpoint, ProviderAdapter};
use crate::config::ProviderConfig;

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
        format!("{}{}", self.base_url, endpoint.path())
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
    }
}
