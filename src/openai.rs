//! OpenAI's error body, which Codex and the OpenAI SDKs parse and show to the user.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAiError {
    pub error: OpenAiErrorBody,
}

/// The inner object. `param` is always present (null when unknown), as OpenAI sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAiErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl OpenAiError {
    pub fn new(message: impl Into<String>, kind: &str, code: Option<&str>) -> Self {
        OpenAiError {
            error: OpenAiErrorBody {
                message: message.into(),
                kind: kind.to_string(),
                param: None,
                code: code.map(str::to_string),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_openai() {
        let e = OpenAiError::new(
            "bad token",
            "invalid_request_error",
            Some("invalid_api_key"),
        );
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"error":{"message":"bad token","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#
        );
    }
}
