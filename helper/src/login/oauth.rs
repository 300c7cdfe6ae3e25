//! The OAuth 2.1 public-client side of a person's sign-in, against any authorization server that
//! publishes its metadata: discovery (RFC 8414, with OpenID Connect discovery as the fallback), PKCE
//! S256 (RFC 7636), the authorization code and refresh grants (RFC 6749), the device grant (RFC 8628),
//! revocation (RFC 7009) and resource indicators (RFC 8707). No endpoint path is assumed.
//!
//! Every answer the server sends back is size-limited and shown to the person only as one short
//! sanitized line; tokens are `SecretString`s from the moment they are parsed.

use crate::error::transport_reason;
use crate::error::{ExchangeError, SignInError, one_line};
use crate::exchange::{LooseOAuthError, read_body, sanitize};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `grant_type` of the device grant (RFC 8628 §3.4).
pub const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What the helper needs from the server's metadata.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

/// Where the metadata lives for an issuer URL: the RFC 8414 well-known URI (inserted before any path
/// component, §3.1), then OpenID Connect discovery (appended), which many identity providers serve only.
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let issuer = issuer.trim_end_matches('/');
    let (origin, path) = match issuer.find("://").map(|i| i + 3) {
        Some(start) => match issuer[start..].find('/') {
            Some(p) => issuer.split_at(start + p),
            None => (issuer, ""),
        },
        None => (issuer, ""),
    };
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!("{issuer}/.well-known/openid-configuration"),
    ]
}

/// Fetch and check the metadata of `issuer` (the broker's URL).
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<Metadata, crate::error::HelperError> {
    let unsupported = |reason: String| SignInError::Unsupported {
        broker: issuer.to_owned(),
        reason,
    };
    let mut tried = Vec::new();
    for url in metadata_urls(issuer) {
        let resp = http
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| ExchangeError::Unavailable {
                url: url.clone(),
                reason: transport_reason(&e),
            })?;
        let status = resp.status();
        let body = read_body(resp, &url).await?;
        if status.as_u16() == 404 {
            tried.push(url);
            continue;
        }
        if status.is_server_error() {
            return Err(ExchangeError::Unavailable {
                url,
                reason: format!("HTTP {}", status.as_u16()),
            }
            .into());
        }
        if !status.is_success() {
            return Err(unsupported(format!("{url} answered HTTP {}", status.as_u16())).into());
        }
        let meta: Metadata = serde_json::from_slice(&body).map_err(|e| {
            unsupported(format!(
                "{url} is not authorization server metadata ({})",
                one_line(&e.to_string())
            ))
        })?;
        // RFC 8414 §3.3: the issuer must be the one we asked, or a mix-up attack is possible.
        if meta.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(unsupported(format!(
                "its metadata names another issuer ({})",
                sanitize(&meta.issuer, 200)
            ))
            .into());
        }
        // Only S256. A server that says nothing may still do PKCE (RFC 7636 predates the field); one that
        // lists methods without S256 cannot protect the code.
        if !meta.code_challenge_methods_supported.is_empty()
            && !meta
                .code_challenge_methods_supported
                .iter()
                .any(|m| m == "S256")
        {
            return Err(unsupported("it does not offer PKCE with S256".into()).into());
        }
        return Ok(meta);
    }
    Err(unsupported(format!(
        "no authorization server metadata (tried {})",
        tried.join(", ")
    ))
    .into())
}

/// `n` random bytes from the operating system, base64url without padding.
pub fn random_b64(n: usize) -> Result<String, SignInError> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| SignInError::Store {
            what: "generate",
            reason: "the operating system's random source failed".into(),
        })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// A PKCE pair (RFC 7636): the verifier stays here, the S256 challenge goes in the URL.
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Result<Self, SignInError> {
        // 32 bytes → 43 characters, the minimum length of §4.1, with 256 bits of entropy.
        let verifier = random_b64(32)?;
        let challenge = s256(&verifier);
        Ok(Pkce {
            verifier: SecretString::from(verifier),
            challenge,
        })
    }
}

/// `BASE64URL(SHA256(verifier))`.
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The authorization request URL (the endpoint's own query, if any, is kept).
pub fn authorization_url(endpoint: &str, params: &[(&str, &str)]) -> Result<String, SignInError> {
    let mut url = reqwest::Url::parse(endpoint).map_err(|e| SignInError::Unsupported {
        broker: endpoint.to_owned(),
        reason: format!("its authorization_endpoint is not a URL ({e})"),
    })?;
    url.query_pairs_mut().extend_pairs(params);
    Ok(url.into())
}

/// A token endpoint's answer.
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_in: u64,
    pub scope: Option<String>,
    /// Read for who signed in (not verified: it came straight from the issuer over our own request).
    pub id_token: Option<String>,
    /// Some servers say how long the refresh token lives.
    pub refresh_expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct RawTokenSet {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token_expires_in: Option<u64>,
}

/// What a grant request can end in.
pub enum GrantOutcome {
    Tokens(TokenSet),
    /// An RFC 6749 §5.2 error (`invalid_grant`, `authorization_pending`, `slow_down`…).
    Error {
        status: u16,
        error: String,
        description: Option<String>,
    },
}

/// POST a form (the shared [`crate::exchange::post_form`]); the status as a number.
async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), ExchangeError> {
    let (status, body) = crate::exchange::post_form(http, url, form).await?;
    Ok((status.as_u16(), body))
}

fn oauth_error(status: u16, body: &[u8]) -> GrantOutcome {
    match serde_json::from_slice::<LooseOAuthError>(body) {
        Ok(e) => GrantOutcome::Error {
            status,
            error: sanitize(&e.error, 64),
            description: e
                .error_description
                .as_deref()
                .map(|d| sanitize(d, 300))
                .filter(|d| !d.is_empty()),
        },
        Err(_) => GrantOutcome::Error {
            status,
            error: format!("http_{status}"),
            description: Some("no RFC 6749 error body".into()),
        },
    }
}

/// A grant at the token endpoint (authorization code, refresh, device code).
pub async fn grant(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<GrantOutcome, ExchangeError> {
    let (status, body) = post_form(http, url, form).await?;
    if (400..500).contains(&status) {
        return Ok(oauth_error(status, &body));
    }
    if status >= 500 {
        return Err(ExchangeError::Unavailable {
            url: url.to_owned(),
            reason: format!("HTTP {status}"),
        });
    }
    if !(200..300).contains(&status) {
        return Err(ExchangeError::BadResponse {
            url: url.to_owned(),
            reason: format!("unexpected HTTP {status}"),
        });
    }
    let raw: RawTokenSet =
        serde_json::from_slice(&body).map_err(|e| ExchangeError::BadResponse {
            url: url.to_owned(),
            reason: format!("not a token response ({})", one_line(&e.to_string())),
        })?;
    let bad = |reason: &str| ExchangeError::BadResponse {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if !raw.token_type.eq_ignore_ascii_case("bearer") {
        return Err(bad("token_type is not Bearer"));
    }
    if !crate::cache::is_single_line_token(&raw.access_token) {
        return Err(bad("the access token is empty or not a single line"));
    }
    if let Some(r) = &raw.refresh_token
        && !crate::cache::is_single_line_token(r)
    {
        return Err(bad("the refresh token is empty or not a single line"));
    }
    let access_token = SecretString::from(raw.access_token);
    // `expires_in` is counted on our clock; the JWT's `exp` only when the server leaves it out.
    let expires_in = raw.expires_in.unwrap_or_else(|| {
        crate::exchange::jwt_payload(access_token.expose_secret())
            .and_then(|v| v.get("exp").and_then(serde_json::Value::as_u64))
            .map_or(0, |exp| {
                exp.saturating_sub(crate::sys::Clock::now_unix(&crate::sys::SystemClock))
            })
    });
    Ok(GrantOutcome::Tokens(TokenSet {
        access_token,
        refresh_token: raw.refresh_token.map(SecretString::from),
        expires_in,
        scope: raw.scope,
        id_token: raw.id_token,
        refresh_expires_in: raw.refresh_token_expires_in,
    }))
}

/// RFC 8628 §3.2.
#[derive(Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

/// Start a device sign-in.
pub async fn device_authorization(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<Result<DeviceAuthorization, GrantOutcome>, ExchangeError> {
    let (status, body) = post_form(http, url, form).await?;
    if (400..500).contains(&status) {
        return Ok(Err(oauth_error(status, &body)));
    }
    if !(200..300).contains(&status) {
        return Err(ExchangeError::Unavailable {
            url: url.to_owned(),
            reason: format!("HTTP {status}"),
        });
    }
    serde_json::from_slice(&body)
        .map(Ok)
        .map_err(|e| ExchangeError::BadResponse {
            url: url.to_owned(),
            reason: format!(
                "not a device authorization response ({})",
                one_line(&e.to_string())
            ),
        })
}

/// RFC 7009: revoke a refresh token. 200 whether or not the server knew it (§2.2).
pub async fn revoke(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    token: &SecretString,
) -> Result<(), ExchangeError> {
    let (status, body) = post_form(
        http,
        url,
        &[
            ("token", token.expose_secret()),
            ("token_type_hint", "refresh_token"),
            ("client_id", client_id),
        ],
    )
    .await?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let reason = match oauth_error(status, &body) {
        GrantOutcome::Error {
            error, description, ..
        } => format!(
            "HTTP {status}: {error}{}",
            description.map(|d| format!(": {d}")).unwrap_or_default()
        ),
        GrantOutcome::Tokens(_) => format!("HTTP {status}"),
    };
    Err(ExchangeError::Unavailable {
        url: url.to_owned(),
        reason,
    })
}

/// Who signed in, from the ID token if there is one, else from the access token (both read, not
/// verified: shown to the person, never used to decide anything).
pub fn who(tokens: &TokenSet) -> (Option<String>, Option<String>) {
    let claims = tokens
        .id_token
        .as_deref()
        .and_then(crate::exchange::jwt_payload)
        .or_else(|| crate::exchange::jwt_payload(tokens.access_token.expose_secret()));
    let Some(c) = claims else {
        return (None, None);
    };
    let s = |k: &str| {
        c.get(k)
            .and_then(serde_json::Value::as_str)
            .map(|v| sanitize(v, 200))
    };
    let subject = s("sub");
    // A Tollgate JWT names the person in its grant's principal (the policy's choice, often the email).
    let principal = c
        .get("tollgate")
        .and_then(|g| g.get("principal"))
        .and_then(serde_json::Value::as_str)
        .map(|v| sanitize(v, 200));
    let name = s("email")
        .or_else(|| s("preferred_username"))
        .or(principal)
        .or_else(|| s("name"));
    (subject, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_follow_rfc_8414_then_oidc() {
        assert_eq!(
            metadata_urls("https://b.example"),
            [
                "https://b.example/.well-known/oauth-authorization-server",
                "https://b.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://b.example/tenant/x/"),
            [
                "https://b.example/.well-known/oauth-authorization-server/tenant/x",
                "https://b.example/tenant/x/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn s256_is_base64url_of_sha256_without_padding() {
        // The expected value computed independently: Python's
        // base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r2wW1gFWFOEjXk"),
            "dZrJz5b___3oA5uVny1DZqEO9NM98brdg_f4AEY03Bc"
        );
        let p = Pkce::new().expect("pkce");
        assert_eq!(p.verifier.expose_secret().len(), 43);
        assert_eq!(p.challenge, s256(p.verifier.expose_secret()));
        assert_ne!(
            Pkce::new().expect("pkce").challenge,
            p.challenge,
            "fresh each time"
        );
    }

    #[test]
    fn authorization_url_keeps_the_endpoint_query() {
        let u = authorization_url(
            "https://b/oauth/authorize?tenant=1",
            &[("state", "a b"), ("scope", "openid offline_access")],
        )
        .expect("url");
        assert_eq!(
            u,
            "https://b/oauth/authorize?tenant=1&state=a+b&scope=openid+offline_access"
        );
    }
}
