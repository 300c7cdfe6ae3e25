//! The token endpoint (`POST /oauth/token`, RFC 8693 token exchange) and the discovery documents beside
//! it (`/.well-known/jwks.json`, `/.well-known/openid-configuration`). Minting itself is in the parent
//! module; who the caller is comes from [`crate::identity`], what they may do from [`crate::policy`].
//!
//! The endpoint is unauthenticated by nature, so it is small and strict: its own body limit
//! (`tokens.max_request_bytes`, 16 KiB by default; larger bodies get 413 before they are read), a rate
//! limit per client address (`tokens.exchanges_per_minute_per_address`), parameters that may not repeat,
//! and refusals that never say which check failed.

use super::limits::PeerAddr;
use super::narrow_models;
use crate::app::AppState;
use crate::error::OAuthFailure;
use crate::identity::VerifyError;
use crate::policy::Decision;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use tollgate::exchange::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use tollgate::{OAuthErrorCode, TokenExchangeRequest, TokenExchangeResponse};

pub use super::limits::MIN_TTL_SECS;

/// Middleware on `/oauth/token`: refuse a body over the limit (by `Content-Length`, before reading it) and
/// an address over its rate, both in the RFC 6749 error shape.
pub async fn guard(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let t = &app.token_endpoint();
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > t.max_request_bytes as u64) {
        return too_large(t.max_request_bytes);
    }
    // Behind a load balancer every caller shares its address: size the limit for that, or set it to 0. A
    // request that did not come over a socket (the router driven in-process) has no address to limit.
    let peer = req
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0.ip());
    if let (Some(limiter), Some(ip)) = (&t.limiter, peer)
        && let Err(not_until) = limiter.check_key(&ip)
    {
        {
            use governor::clock::Clock as _;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let secs = wait.as_secs().max(1);
            tracing::info!(%ip, "token exchange rate limited");
            let mut r = OAuthFailure::new(
                StatusCode::TOO_MANY_REQUESTS,
                OAuthErrorCode::TemporarilyUnavailable,
                format!("too many token requests from this address; retry in {secs} s"),
            )
            .into_response();
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
            return r;
        }
    }
    next.run(req).await
}

fn too_large(limit: usize) -> Response {
    OAuthFailure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        OAuthErrorCode::InvalidRequest,
        format!("request body is larger than {limit} bytes"),
    )
    .into_response()
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks(State(app): State<Arc<AppState>>) -> Response {
    let mut r = axum::Json(app.tokens().keys.jwks()).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// `GET /.well-known/openid-configuration`.
pub async fn discovery(State(app): State<Arc<AppState>>) -> Response {
    let iss = &app.tokens().issuer;
    axum::Json(json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "token_endpoint": format!("{iss}/oauth/token"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["none"],
    }))
    .into_response()
}

/// The one refusal for a proof that is wrong *or* has no grant: the caller learns nothing about which.
fn not_accepted() -> OAuthFailure {
    bad_request(
        OAuthErrorCode::InvalidGrant,
        "the subject token was not accepted",
    )
}

fn bad_request(code: OAuthErrorCode, d: &str) -> OAuthFailure {
    OAuthFailure::new(StatusCode::BAD_REQUEST, code, d)
}

/// `POST /oauth/token`: RFC 8693 token exchange.
pub async fn exchange(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Response> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(app.token_endpoint().max_request_bytes)
        } else {
            bad_request(
                OAuthErrorCode::InvalidRequest,
                "could not read the request body",
            )
            .into_response()
        }
    })?;
    exchange_body(&app, &headers, &body)
        .await
        .map_err(IntoResponse::into_response)
}

async fn exchange_body(
    app: &Arc<AppState>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, OAuthFailure> {
    // RFC 6749 §3.2 form rules (content type, no repeated parameter — a repeated subject_token could
    // smuggle a second proof): the same parser as the people grants.
    let pairs = crate::oauth::form::parse_form(headers, body)?;
    match pairs.iter().find(|(k, _)| k == "grant_type") {
        Some((_, g)) if g == GRANT_TYPE_TOKEN_EXCHANGE => {}
        // People (the authorization server): authorization code, refresh token, device code.
        Some((_, g)) if crate::oauth::grant::is_people_grant(g) => {
            let g = g.clone();
            return crate::oauth::grant::token(app, &g, pairs).await;
        }
        Some(_) => {
            return Err(bad_request(
                OAuthErrorCode::UnsupportedGrantType,
                "only token exchange (RFC 8693) is supported",
            ));
        }
        None => {
            return Err(bad_request(
                OAuthErrorCode::InvalidRequest,
                "missing grant_type",
            ));
        }
    }
    // Name the parameter that is wrong: the one extension parameter with a type is checked first.
    if let Some((_, v)) = pairs.iter().find(|(k, _)| k == "requested_ttl_secs") {
        match v.parse::<u64>() {
            Ok(0) => {
                return Err(bad_request(
                    OAuthErrorCode::InvalidRequest,
                    "requested_ttl_secs must be a positive number of seconds",
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(bad_request(
                    OAuthErrorCode::InvalidRequest,
                    "requested_ttl_secs must be a whole number of seconds",
                ));
            }
        }
    }
    let req: TokenExchangeRequest = serde_urlencoded::from_bytes(body).map_err(|_| {
        bad_request(
            OAuthErrorCode::InvalidRequest,
            "missing or malformed parameter (subject_token, subject_token_type)",
        )
    })?;
    if let Some(t) = &req.requested_token_type
        && t != TOKEN_TYPE_ACCESS_TOKEN
        && t != TOKEN_TYPE_JWT
    {
        return Err(bad_request(
            OAuthErrorCode::InvalidRequest,
            "unsupported requested_token_type",
        ));
    }
    if let Some(aud) = &req.audience
        && aud != &app.tokens().audience
    {
        return Err(bad_request(
            OAuthErrorCode::InvalidTarget,
            "unknown audience",
        ));
    }
    if req.subject_token.is_empty() || req.subject_token.len() > 64 * 1024 {
        return Err(bad_request(
            OAuthErrorCode::InvalidRequest,
            "subject_token is empty or too large",
        ));
    }
    let identity = app.verifiers().verify(&req.subject_token_type, &req.subject_token).await.map_err(|e| {
        tracing::info!(reason = e.reason(), token_type = %req.subject_token_type, "token exchange refused");
        app.metrics().mint("unknown", e.reason());
        match e {
            VerifyError::UnsupportedType => bad_request(OAuthErrorCode::InvalidRequest, "unsupported subject_token_type"),
            VerifyError::Rejected(_) => not_accepted(),
            VerifyError::Unavailable(_) => OAuthFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                OAuthErrorCode::TemporarilyUnavailable,
                "the identity provider could not be reached; try again",
            ),
        }
    })?;
    let policy = app.policy();
    let (mut grant, rule_ttl, rule) = match policy.decide(&identity) {
        Decision::Allow {
            grant,
            max_ttl_secs,
            rule,
        } => (*grant, max_ttl_secs, rule),
        Decision::Deny { rule } => {
            app.metrics().mint(identity.kind.as_str(), "denied");
            tracing::info!(kind = %identity.kind, subject = %identity.subject, rule = %rule, "denied by policy rule");
            return Err(not_accepted());
        }
        Decision::NoMatch => {
            app.metrics().mint(identity.kind.as_str(), "denied");
            tracing::info!(kind = %identity.kind, subject = %identity.subject, "no policy rule matched");
            return Err(not_accepted());
        }
    };
    if let Some(scope) = &req.scope {
        grant.models = narrow_models(&grant.models, scope)
            .map_err(|d| bad_request(OAuthErrorCode::InvalidScope, &d))?;
    }
    let t = &app.token_endpoint();
    let ceiling = rule_ttl.unwrap_or(t.max_ttl_secs).min(t.max_ttl_secs);
    let ttl = req
        .requested_ttl_secs
        .unwrap_or(t.default_ttl_secs)
        .max(MIN_TTL_SECS)
        .min(ceiling);
    let minted = app
        .tokens()
        .mint(grant, ttl, policy.rule_version(&rule).map(str::to_string))
        .map_err(|e| {
            tracing::error!(error = %e, "mint failed");
            OAuthFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                OAuthErrorCode::ServerError,
                "could not issue a token",
            )
        })?;
    tracing::info!(principal = %minted.claims.sub, kind = %identity.kind, rule = %rule, jti = %minted.claims.jti, ttl, "token minted");
    app.metrics().mint(identity.kind.as_str(), "minted");
    if let Some(audit) = &app.audit() {
        let c = &minted.claims;
        audit.record(crate::audit::AuditEvent {
            ts: i64::try_from(app.clock().now_secs()).unwrap_or(i64::MAX),
            kind: Some(crate::audit::EventKind::Mint),
            actor: c.grant.principal.clone(),
            principal: Some(c.grant.principal.clone()),
            team: c.grant.team.clone(),
            request_id: Some(crate::request_id::request_id()),
            jti: Some(c.jti.clone()),
            expires_at: i64::try_from(c.exp).ok(),
            detail: json!({
                "identity": c.grant.identity,
                "org": c.grant.org,
                "models": c.grant.models,
                "budgets": c.grant.budgets,
                "ttl_secs": ttl,
            }),
            ..Default::default()
        });
    }
    let scope = minted
        .claims
        .grant
        .models
        .iter()
        .map(|m| format!("model:{m}"))
        .collect::<Vec<_>>()
        .join(" ");
    let resp = TokenExchangeResponse {
        access_token: minted.token,
        issued_token_type: TOKEN_TYPE_ACCESS_TOKEN.into(),
        token_type: "Bearer".into(),
        expires_in: ttl,
        scope: Some(scope),
    };
    let mut r = axum::Json(resp).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::ModelPattern;

    #[test]
    fn scope_narrowing() {
        let allowed = vec![
            ModelPattern::new("gpt-5*").expect("p"),
            ModelPattern::new("demo").expect("p"),
        ];
        assert_eq!(
            narrow_models(&allowed, "model:gpt-5.5").expect("ok"),
            vec![ModelPattern::new("gpt-5.5").expect("p")]
        );
        assert!(narrow_models(&allowed, "model:gpt-5*").is_ok());
        assert!(narrow_models(&allowed, "model:gpt-*").is_err());
        assert!(narrow_models(&allowed, "model:o3").is_err());
        assert!(narrow_models(&allowed, "admin").is_err());
        assert!(narrow_models(&allowed, "").is_err());
    }
}
