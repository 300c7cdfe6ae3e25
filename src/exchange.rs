//! RFC 8693 token exchange on the wire, and RFC 6749 error bodies.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `grant_type` for token exchange.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// A JWT subject token (OIDC, Vault identity tokens, Kubernetes, Azure).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// An access token (what we issue).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Our own: a bootstrap credential configured on the broker.
pub const TOKEN_TYPE_STATIC: &str = "urn:tollgate:params:token-type:static-credential";
/// Our own: a base64url JSON document holding a SigV4-signed `sts:GetCallerIdentity` request.
pub const TOKEN_TYPE_AWS_SIGV4: &str =
    "urn:tollgate:params:token-type:aws-sigv4-get-caller-identity";

/// The form body of `POST /oauth/token`.
#[derive(Clone, Deserialize, Serialize)]
pub struct TokenExchangeRequest {
    pub grant_type: String,
    pub subject_token: String,
    pub subject_token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Space-separated scopes; we accept `models:<glob>` to narrow the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_token_type: Option<String>,
    /// Requested lifetime in seconds (an extension; the broker clamps it to the policy maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_ttl_secs: Option<u64>,
}

impl fmt::Debug for TokenExchangeRequest {
    /// The subject token is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchangeRequest")
            .field("grant_type", &self.grant_type)
            .field("subject_token", &"[redacted]")
            .field("subject_token_type", &self.subject_token_type)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("requested_token_type", &self.requested_token_type)
            .field("requested_ttl_secs", &self.requested_ttl_secs)
            .finish()
    }
}

/// The JSON answer of a successful exchange.
#[derive(Clone, Deserialize, Serialize)]
pub struct TokenExchangeResponse {
    pub access_token: String,
    pub issued_token_type: String,
    pub token_type: String,
    pub expires_in: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl fmt::Debug for TokenExchangeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchangeResponse")
            .field("access_token", &"[redacted]")
            .field("issued_token_type", &self.issued_token_type)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// RFC 6749 §5.2 error codes (plus RFC 8693's `invalid_target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    /// Not in RFC 6749 §5.2 but widely used (RFC 6749 §4.1.2.1) for a broker-side failure.
    ServerError,
    TemporarilyUnavailable,
    /// RFC 8628 §3.5: the person has not finished signing in on the other device yet.
    AuthorizationPending,
    /// RFC 8628 §3.5: polling too fast; the interval grows by 5 seconds.
    SlowDown,
    /// RFC 8628 §3.5 (and RFC 6749 §4.1.2.1): the person declined.
    AccessDenied,
    /// RFC 8628 §3.5: the device code ran out; start again.
    ExpiredToken,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::UnauthorizedClient => "unauthorized_client",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::InvalidTarget => "invalid_target",
            OAuthErrorCode::ServerError => "server_error",
            OAuthErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthErrorCode::AuthorizationPending => "authorization_pending",
            OAuthErrorCode::SlowDown => "slow_down",
            OAuthErrorCode::AccessDenied => "access_denied",
            OAuthErrorCode::ExpiredToken => "expired_token",
        }
    }
}

/// An RFC 6749 error body: `{"error": "...", "error_description": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthError {
    pub error: OAuthErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let r = TokenExchangeRequest {
            grant_type: GRANT_TYPE_TOKEN_EXCHANGE.into(),
            subject_token: "s3cret-proof".into(),
            subject_token_type: TOKEN_TYPE_STATIC.into(),
            audience: None,
            scope: None,
            requested_token_type: None,
            requested_ttl_secs: None,
        };
        assert!(!format!("{r:?}").contains("s3cret"));
        let t = TokenExchangeResponse {
            access_token: "eyJsecret".into(),
            issued_token_type: TOKEN_TYPE_ACCESS_TOKEN.into(),
            token_type: "Bearer".into(),
            expires_in: 1,
            scope: None,
        };
        assert!(!format!("{t:?}").contains("eyJsecret"));
    }

    #[test]
    fn error_shape() {
        let e = OAuthError {
            error: OAuthErrorCode::InvalidGrant,
            error_description: Some("no".into()),
        };
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"error":"invalid_grant","error_description":"no"}"#
        );
    }
}
