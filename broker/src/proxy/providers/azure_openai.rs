//! `azure-openai`: Azure OpenAI. Responses and Chat Completions are passed through, at `v1` URLs or
//! per-deployment URLs (the model names the deployment), with the `api-version` query when configured;
//! Messages requests (Claude Code) are translated to Chat Completions ([`translate::messages`]). The key
//! goes in `api-key`.

use super::{Endpoint, Outgoing, ProviderAdapter, UpstreamError, messages_via_chat};
use crate::config::{AzurePath, ProviderConfig};
use crate::translate::messages::ChatFlavor;
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};

pub struct AzureOpenai {
    base_url: String,
    api_version: Option<String>,
    path: AzurePath,
}

impl AzureOpenai {
    pub fn new(cfg: &ProviderConfig) -> Self {
        AzureOpenai {
            base_url: cfg.base_url.clone(),
            api_version: cfg.api_version.clone(),
            path: cfg.azure_path,
        }
    }
}

impl ProviderAdapter for AzureOpenai {
    fn name(&self) -> &'static str {
        "azure-openai"
    }

    fn url(&self, endpoint: Endpoint, model: &str) -> String {
        let endpoint = endpoint.chat_for_messages();
        let query = self
            .api_version
            .as_deref()
            .map(|v| format!("?api-version={}", urlencode(v)))
            .unwrap_or_default();
        match self.path {
            AzurePath::V1 => format!("{}/openai/v1{}{query}", self.base_url, endpoint.path()),
            AzurePath::Deployments => format!(
                "{}/openai/deployments/{}{}{query}",
                self.base_url,
                urlencode(model),
                endpoint.path()
            ),
        }
    }

    fn url_depends_on_model(&self) -> bool {
        self.path == AzurePath::Deployments
    }

    fn key_header(&self, key: &SecretString) -> (http::HeaderName, String) {
        const API_KEY: http::HeaderName = http::HeaderName::from_static("api-key");
        (API_KEY, key.expose_secret().to_string())
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

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::providers::tests::config;

    #[test]
    fn v1_and_deployment_urls() {
        let v1 = AzureOpenai::new(&config(
            "kind = \"azure-openai\"\nbase_url = \"https://r.openai.azure.com/\"\n",
        ));
        assert_eq!(
            v1.url(Endpoint::Responses, "dep"),
            "https://r.openai.azure.com/openai/v1/responses"
        );
        assert!(!v1.url_depends_on_model());
        let dep = AzureOpenai::new(&config(
            "kind = \"azure-openai\"\nbase_url = \"https://r.openai.azure.com\"\nazure_path = \"deployments\"\napi_version = \"2024-10-21\"\n",
        ));
        assert_eq!(
            dep.url(Endpoint::ChatCompletions, "gpt 4o/x"),
            "https://r.openai.azure.com/openai/deployments/gpt%204o%2Fx/chat/completions?api-version=2024-10-21"
        );
        assert!(dep.url_depends_on_model());
    }
}
