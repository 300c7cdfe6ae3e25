//! The RFC 8693 token exchange with the broker, and reading (not verifying) the token we get back.
//!
//! Only reached when the cache says a mint is needed: this is where the HTTP client and the
//! (current-thread) tokio runtime are built.

use crate::cache::is_single_line_token;
use crate::error::{ExchangeError, one_line, transport_reason};
use crate::identity::{Identity, ProveContext};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tollgate::exchange::{GRANT_TYPE_TOKEN_EXCHANGE, TokenExchangeRequest, TokenExchangeResponse};

/// Response bodies larger than this are refused.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Connecting should never eat the whole deadline.
const MAX_CONNECT: Duration = Duration::from_secs(2);

/// A freshly minted token.
#[derive(Debug)]
pub struct Minted {
    pub access_token: SecretString,
    /// Unix seconds on the local clock: now + `expires_in` (the token's `exp` only if that is missing).
    pub expires_at: u64,
    pub expires_in: u64,
    pub scope: Option<String>,
}

/// What to ask for.
#[derive(Debug, Clone)]
pub struct MintRequest<'a> {
    pub broker: &'a str,
    pub audience: &'a str,
    pub ttl_secs: Option<u64>,
    pub scope: Option<&'a str>,
}

/// `{broker}/oauth/token`.
pub fn token_endpoint(broker: &str) -> String {
    format!("{}/oauth/token", broker.trim_end_matches('/'))
}

/// The JWT payload as JSON, without verifying anything. `None` if the token is not a JWT.
pub fn jwt_payload(token: &str) -> Option<serde_json::Value> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The Tollgate claims of a token, without verifying anything.
pub fn jwt_claims(token: &str) -> Option<tollgate::Claims> {
    jwt_payload(token).and_then(|v| serde_json::from_value(v).ok())
}

/// Build the HTTP client: no redirects (a token request must not be replayed elsewhere), a
/// connect timeout below the deadline, system proxies honoured.
///
/// TLS runs on rustls with `ring`, installed here as the process's provider, so the clients other crates
/// build later in the same run (Vault's) use it too. (The helper leaves out aws-lc-rs: see Cargo.toml.)
pub fn http_client(remaining: Duration) -> Result<reqwest::Client, reqwest::Error> {
    builder(remaining).build()
}

/// The same client without keeping connections: a sign-in waits minutes for the person between two
/// requests, longer than servers keep an idle connection, and a reused connection the server is closing
/// fails the request ("connection closed before message completed").
pub fn http_client_unpooled(remaining: Duration) -> Result<reqwest::Client, reqwest::Error> {
    builder(remaining).pool_max_idle_per_host(0).build()
}

fn builder(remaining: Duration) -> reqwest::ClientBuilder {
    // Err only when a provider is already installed (a second client in this process): nothing to do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(remaining.min(MAX_CONNECT))
        .timeout(remaining)
        .user_agent(concat!("tollgate-token/", env!("CARGO_PKG_VERSION")))
}

/// Run a future on a fresh current-thread runtime, bounded by `deadline`.
pub fn block_on_with_deadline<T, E: From<ExchangeError>>(
    deadline: Instant,
    what: &str,
    url: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<Result<T, E>, std::io::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    Ok(rt.block_on(async {
        match tokio::time::timeout(remaining, fut).await {
            Ok(r) => r,
            Err(_) => Err(ExchangeError::Unavailable {
                url: url.to_owned(),
                reason: format!(
                    "timed out {what} (deadline {} ms; raise --timeout-ms)",
                    remaining.as_millis()
                ),
            }
            .into()),
        }
    }))
}

/// Read at most `MAX_BODY_BYTES` of a response.
pub async fn read_body(mut resp: reqwest::Response, url: &str) -> Result<Vec<u8>, ExchangeError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ExchangeError::Unavailable {
        url: url.to_owned(),
        reason: transport_reason(&e),
    })? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY_BYTES {
            return Err(ExchangeError::BadResponse {
                url: url.to_owned(),
                reason: "response body too large".into(),
            });
        }
    }
    Ok(body)
}

/// RFC 6749 §5.2, loosely: brokers may use codes we do not know.
#[derive(Deserialize)]
pub(crate) struct LooseOAuthError {
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) error_description: Option<String>,
}

/// Broker text is shown to the user: keep it to one short printable line.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

/// Prove identity and exchange the proof for a token.
pub async fn mint(
    http: &reqwest::Client,
    identity: &dyn Identity,
    req: &MintRequest<'_>,
    now: u64,
    deadline: Instant,
) -> Result<Minted, crate::error::HelperError> {
    let ctx = ProveContext {
        audience: req.audience,
        http,
        now_unix: now,
        deadline,
    };
    let proof = identity.prove(&ctx).await?;
    Ok(exchange(
        http,
        req,
        &proof.subject_token,
        proof.subject_token_type,
        now,
    )
    .await?)
}

/// POST an `application/x-www-form-urlencoded` body (RFC 6749 §3.2: token endpoints take forms) and
/// read the bounded answer. The encoded form holds a credential, so it is a [`SecretString`] until sent.
/// The one way the helper talks to a token, device or revocation endpoint.
pub async fn post_form<F: serde::Serialize + ?Sized>(
    http: &reqwest::Client,
    url: &str,
    form: &F,
) -> Result<(reqwest::StatusCode, Vec<u8>), ExchangeError> {
    let body = SecretString::from(serde_urlencoded::to_string(form).map_err(|e| {
        ExchangeError::BadResponse {
            url: url.to_owned(),
            reason: format!("cannot encode request: {e}"),
        }
    })?);
    let resp = http
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(body.expose_secret().to_owned())
        .send()
        .await
        .map_err(|e| ExchangeError::Unavailable {
            url: url.to_owned(),
            reason: transport_reason(&e),
        })?;
    let status = resp.status();
    Ok((status, read_body(resp, url).await?))
}

/// `POST {broker}/oauth/token`.
pub async fn exchange(
    http: &reqwest::Client,
    req: &MintRequest<'_>,
    subject_token: &SecretString,
    subject_token_type: &str,
    now: u64,
) -> Result<Minted, ExchangeError> {
    let url = token_endpoint(req.broker);
    let form = TokenExchangeRequest {
        grant_type: GRANT_TYPE_TOKEN_EXCHANGE.to_owned(),
        subject_token: subject_token.expose_secret().to_owned(),
        subject_token_type: subject_token_type.to_owned(),
        audience: Some(req.audience.to_owned()),
        scope: req.scope.map(str::to_owned),
        requested_token_type: None,
        requested_ttl_secs: req.ttl_secs,
    };
    let (status, bytes) = post_form(http, &url, &form).await?;
    drop(form);

    if status.is_client_error() {
        return Err(match serde_json::from_slice::<LooseOAuthError>(&bytes) {
            Ok(e) => ExchangeError::Refused {
                status: status.as_u16(),
                error: sanitize(&e.error, 64),
                description: e
                    .error_description
                    .as_deref()
                    .map(|d| sanitize(d, 300))
                    .filter(|d| !d.is_empty()),
            },
            Err(_) => ExchangeError::Refused {
                status: status.as_u16(),
                error: status
                    .canonical_reason()
                    .unwrap_or("client error")
                    .to_ascii_lowercase()
                    .replace(' ', "_"),
                description: Some(
                    "the broker sent no RFC 6749 error body (is the broker URL right?)".into(),
                ),
            },
        });
    }
    if status.is_server_error() {
        let code = serde_json::from_slice::<LooseOAuthError>(&bytes)
            .ok()
            .map(|e| format!(" ({})", sanitize(&e.error, 64)));
        return Err(ExchangeError::Unavailable {
            url,
            reason: format!("HTTP {}{}", status.as_u16(), code.unwrap_or_default()),
        });
    }
    if !status.is_success() {
        return Err(ExchangeError::BadResponse {
            url,
            reason: format!("unexpected HTTP {}", status.as_u16()),
        });
    }
    let parsed: TokenExchangeResponse =
        serde_json::from_slice(&bytes).map_err(|e| ExchangeError::BadResponse {
            url: url.clone(),
            reason: format!(
                "not a token-exchange response ({})",
                one_line(&e.to_string())
            ),
        })?;
    let access_token = SecretString::from(parsed.access_token);
    if !is_single_line_token(access_token.expose_secret()) {
        return Err(ExchangeError::BadResponse {
            url,
            reason: "the access token is empty or not a single line".into(),
        });
    }
    if !parsed.token_type.eq_ignore_ascii_case("bearer") {
        return Err(ExchangeError::BadResponse {
            url,
            reason: format!(
                "token_type is {:?}, expected Bearer",
                sanitize(&parsed.token_type, 32)
            ),
        });
    }
    // Lifetime is counted on our own clock from `expires_in`: the JWT's `exp` is on the broker's clock,
    // and with the clocks apart (skew) it would make us serve a token the broker has already expired,
    // or throw away one it still accepts. `exp` is only the fallback when `expires_in` is missing.
    let expires_at = if parsed.expires_in > 0 {
        now.saturating_add(parsed.expires_in)
    } else {
        jwt_payload(access_token.expose_secret())
            .and_then(|v| v.get("exp").and_then(serde_json::Value::as_u64))
            .unwrap_or(now)
    };
    Ok(Minted {
        access_token,
        expires_at,
        expires_in: parsed.expires_in,
        scope: parsed.scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn payload_decoding() {
        let tok = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"exp":42,"sub":"a"}"#)
        );
        assert_eq!(jwt_payload(&tok).and_then(|v| v["exp"].as_u64()), Some(42));
        assert!(jwt_claims(&tok).is_none(), "not full Claims");
        assert!(jwt_payload("opaque-token").is_none());
        assert!(jwt_payload("a.b.c.d").is_none());
        assert!(jwt_payload("a.!!!.c").is_none());
    }

    #[test]
    fn endpoint_join() {
        assert_eq!(token_endpoint("https://b/x/"), "https://b/x/oauth/token");
        assert_eq!(token_endpoint("https://b"), "https://b/oauth/token");
    }

    #[test]
    fn sanitize_makes_one_short_line() {
        assert_eq!(sanitize("a\nb\tc", 10), "a b c");
        assert_eq!(sanitize("abcdef", 3), "abc…");
    }
}
