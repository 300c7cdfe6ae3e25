//! The people's grants of `POST /oauth/token` (`authorization_code` with PKCE, `refresh_token` with
//! rotation, `urn:ietf:params:oauth:grant-type:device_code`), `POST /oauth/revoke` (RFC 7009) and the RFC
//! 8414 metadata. Every grant ends in the same policy decision and the same mint as a token exchange; the
//! refresh grant decides again, so a policy change reaches people at their next refresh.
//!
//! Refresh tokens rotate on every use and are bound to their client; presenting a used one (a replay: it
//! was stolen, or the client lost the new one) revokes the whole family and the access tokens it minted.

use super::authorize::{CodeData, access_ttl};
use super::device::DeviceData;
use super::form::parse_form;
use super::store::{CodeUse, DevicePoll, Family, RefreshUse, digest};
use super::{OAuth, Scope, StoredIdentity, pkce_challenge, random_token, same, valid_verifier};
use crate::app::AppState;
use crate::error::OAuthFailure;
use crate::governance::store::RevocationKind;
use crate::identity::VerifiedIdentity;
use crate::policy::Decision;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use tollgate::OAuthErrorCode;

pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
pub const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Is this one of the people's grants (served here rather than by the token exchange)?
pub fn is_people_grant(g: &str) -> bool {
    [
        GRANT_AUTHORIZATION_CODE,
        GRANT_REFRESH_TOKEN,
        GRANT_DEVICE_CODE,
    ]
    .contains(&g)
}

fn fail(code: OAuthErrorCode, d: &str) -> OAuthFailure {
    OAuthFailure::new(StatusCode::BAD_REQUEST, code, d)
}

fn store_failed(e: impl std::fmt::Display) -> OAuthFailure {
    tracing::error!(error = %e, "oauth store failed");
    OAuthFailure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        OAuthErrorCode::TemporarilyUnavailable,
        "try again",
    )
}

struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
    fn need(&self, k: &str) -> Result<&str, OAuthFailure> {
        self.get(k)
            .ok_or_else(|| fail(OAuthErrorCode::InvalidRequest, &format!("missing {k}")))
    }
}

/// The token endpoint's people grants (called by [`crate::token::endpoint`] with the parsed form).
pub async fn token(
    app: &Arc<AppState>,
    grant_type: &str,
    pairs: Vec<(String, String)>,
) -> Result<Response, OAuthFailure> {
    let Some(oauth) = app.oauth().clone() else {
        return Err(fail(
            OAuthErrorCode::UnsupportedGrantType,
            "people sign-in is not configured on this broker",
        ));
    };
    let f = Form(pairs);
    let client_id = f.need("client_id")?;
    if oauth.client(client_id).is_none() {
        return Err(OAuthFailure::new(
            StatusCode::UNAUTHORIZED,
            OAuthErrorCode::InvalidClient,
            "unknown client_id",
        ));
    }
    if let Some(r) = f.get("resource")
        && !oauth.resource_ok(r)
    {
        return Err(fail(
            OAuthErrorCode::InvalidTarget,
            "resource is not this broker",
        ));
    }
    match grant_type {
        GRANT_AUTHORIZATION_CODE => authorization_code(app, &oauth, client_id, &f).await,
        GRANT_REFRESH_TOKEN => refresh(app, &oauth, client_id, &f).await,
        _ => device_code(app, &oauth, client_id, &f).await,
    }
}

async fn authorization_code(
    app: &Arc<AppState>,
    oauth: &OAuth,
    client_id: &str,
    f: &Form,
) -> Result<Response, OAuthFailure> {
    let code = f.need("code")?;
    let redirect_uri = f.need("redirect_uri")?;
    let verifier = f.get("code_verifier").ok_or_else(|| {
        fail(
            OAuthErrorCode::InvalidRequest,
            "missing code_verifier (PKCE is required)",
        )
    })?;
    let refused = || fail(OAuthErrorCode::InvalidGrant, "the code was not accepted");
    let hash = digest(code);
    let now = oauth.now();
    let (owner, data) = match oauth
        .store
        .redeem_code(&hash, now)
        .await
        .map_err(store_failed)?
    {
        CodeUse::Fresh { client_id, data } => (client_id, data),
        CodeUse::Replayed { family_id } => {
            // RFC 6749 §4.1.2 / OAuth 2.1: a code used twice revokes what it issued.
            tracing::warn!("authorization code replayed; revoking the sign-in it started");
            if let Some(fam) = family_id {
                revoke_family(app, oauth, &fam, "code_replayed", "system").await;
            }
            return Err(refused());
        }
        CodeUse::Invalid => return Err(refused()),
    };
    let data: CodeData = serde_json::from_str(&data).map_err(|_| refused())?;
    if owner != client_id {
        tracing::info!(client = client_id, "code presented by another client");
        return Err(refused());
    }
    if data.redirect_uri != redirect_uri {
        tracing::info!(
            client = client_id,
            "code redeemed with another redirect_uri"
        );
        return Err(refused());
    }
    if !valid_verifier(verifier) || !same(&pkce_challenge(verifier), &data.code_challenge) {
        tracing::info!(client = client_id, "PKCE verifier does not match");
        return Err(refused());
    }
    if let (Some(asked), Some(r)) = (&data.resource, f.get("resource"))
        && asked.trim_end_matches('/') != r.trim_end_matches('/')
    {
        return Err(fail(
            OAuthErrorCode::InvalidTarget,
            "resource differs from the authorization request",
        ));
    }
    let (resp, family) = issue(app, oauth, client_id, &data.identity, &data.scope, None).await?;
    if let Err(e) = oauth.store.set_code_family(&hash, &family).await {
        tracing::warn!(error = %e, "could not link a code to its sign-in");
    }
    Ok(resp)
}

async fn refresh(
    app: &Arc<AppState>,
    oauth: &OAuth,
    client_id: &str,
    f: &Form,
) -> Result<Response, OAuthFailure> {
    let token = f.need("refresh_token")?;
    let refused = || {
        fail(
            OAuthErrorCode::InvalidGrant,
            "the refresh token was not accepted",
        )
    };
    let now = oauth.now();
    let fam = match oauth
        .store
        .use_refresh(&digest(token), client_id, now)
        .await
        .map_err(store_failed)?
    {
        RefreshUse::Fresh(f) => f,
        RefreshUse::Replayed { family_id } => {
            tracing::warn!(family = %family_id, "refresh token replayed; revoking its family");
            app.metrics().mint("user", "refresh_replayed");
            revoke_family(app, oauth, &family_id, "refresh_replayed", "system").await;
            return Err(refused());
        }
        RefreshUse::OtherClient => {
            tracing::info!(
                client = client_id,
                "refresh token presented by another client"
            );
            return Err(refused());
        }
        RefreshUse::Invalid => return Err(refused()),
    };
    let original = Scope(fam.scope.clone());
    let scope = match f.get("scope") {
        None => original,
        Some(s) => {
            let asked =
                Scope::parse(Some(s)).map_err(|e| fail(OAuthErrorCode::InvalidScope, &e))?;
            if !original.covers(&asked) {
                return Err(fail(
                    OAuthErrorCode::InvalidScope,
                    "scope is wider than the sign-in's",
                ));
            }
            asked
        }
    };
    let identity: StoredIdentity = serde_json::from_str(&fam.identity).map_err(|_| refused())?;
    let (resp, _) = issue(app, oauth, client_id, &identity, &scope, Some(&fam)).await?;
    Ok(resp)
}

async fn device_code(
    app: &Arc<AppState>,
    oauth: &OAuth,
    client_id: &str,
    f: &Form,
) -> Result<Response, OAuthFailure> {
    let code = f.need("device_code")?;
    let now = oauth.now();
    match oauth
        .store
        .poll_device(&digest(code), now)
        .await
        .map_err(store_failed)?
    {
        DevicePoll::Unknown => Err(fail(
            OAuthErrorCode::InvalidGrant,
            "the device code was not accepted",
        )),
        DevicePoll::Expired => Err(fail(
            OAuthErrorCode::ExpiredToken,
            "the device code has expired; start again",
        )),
        DevicePoll::SlowDown(interval) => Err(fail(
            OAuthErrorCode::SlowDown,
            &format!("polling too fast; wait {interval} seconds between polls"),
        )),
        DevicePoll::Pending => Err(fail(
            OAuthErrorCode::AuthorizationPending,
            "waiting for the person to sign in",
        )),
        DevicePoll::Denied => Err(fail(OAuthErrorCode::AccessDenied, "the person declined")),
        DevicePoll::Approved {
            client_id: owner,
            data,
            identity,
        } => {
            if owner != client_id {
                return Err(fail(
                    OAuthErrorCode::InvalidGrant,
                    "the device code was not accepted",
                ));
            }
            let data: DeviceData = serde_json::from_str(&data).map_err(store_failed)?;
            let identity: StoredIdentity = serde_json::from_str(&identity).map_err(store_failed)?;
            let (resp, _) = issue(app, oauth, client_id, &identity, &data.scope, None).await?;
            Ok(resp)
        }
    }
}

/// Decide, mint, and record: a new family (`family` = `None`) or the next refresh token of one.
async fn issue(
    app: &Arc<AppState>,
    oauth: &OAuth,
    client_id: &str,
    stored: &StoredIdentity,
    scope: &Scope,
    family: Option<&Family>,
) -> Result<(Response, String), OAuthFailure> {
    let identity: VerifiedIdentity = stored.clone().into();
    let policy = app.policy();
    let denied = || fail(OAuthErrorCode::InvalidGrant, "access is not granted");
    let (mut grant, rule_ttl, rule) = match policy.decide(&identity) {
        Decision::Allow {
            grant,
            max_ttl_secs,
            rule,
        } => (*grant, max_ttl_secs, rule),
        _ => {
            app.metrics().mint("user", "denied");
            tracing::info!(subject = %identity.subject, "no policy rule grants this person access");
            if let Some(fam) = family {
                revoke_family(app, oauth, &fam.family_id, "policy_denied", "system").await;
            }
            return Err(denied());
        }
    };
    if let Some(models) = scope.model_items() {
        grant.models = crate::token::narrow_models(&grant.models, &models)
            .map_err(|d| fail(OAuthErrorCode::InvalidScope, &d))?;
    }
    let ttl = access_ttl(app, oauth, rule_ttl);
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
    let now = oauth.now();
    let refresh = random_token();
    let refresh_exp = now + i64::try_from(oauth.cfg.refresh_ttl_secs).unwrap_or(i64::MAX / 4);
    let family_id = match family {
        Some(f) => {
            oauth
                .store
                .rotate(
                    &f.family_id,
                    &digest(&refresh),
                    now,
                    refresh_exp.min(f.expires_at),
                )
                .await
                .map_err(store_failed)?;
            f.family_id.clone()
        }
        None => {
            let f = Family {
                family_id: uuid::Uuid::now_v7().simple().to_string(),
                client_id: client_id.to_string(),
                idp: stored.idp().to_string(),
                subject: stored.subject.clone(),
                principal: minted.claims.grant.principal.clone(),
                identity: serde_json::to_string(stored).map_err(store_failed)?,
                scope: scope.0.clone(),
                created_at: now,
                last_used_at: now,
                expires_at: now + i64::try_from(oauth.cfg.session_max_secs).unwrap_or(i64::MAX / 4),
                revoked_at: None,
                revoked_reason: None,
            };
            oauth
                .store
                .create_family(&f, &digest(&refresh), refresh_exp.min(f.expires_at))
                .await
                .map_err(store_failed)?;
            f.family_id
        }
    };
    let exp = i64::try_from(minted.claims.exp).unwrap_or(i64::MAX);
    oauth
        .store
        .add_access(&minted.claims.jti, &family_id, exp)
        .await
        .map_err(store_failed)?;
    let how = if family.is_some() {
        "refresh"
    } else {
        "sign-in"
    };
    tracing::info!(principal = %minted.claims.sub, client = client_id, family = %family_id, rule = %rule, jti = %minted.claims.jti, ttl, how, "token minted for a person");
    app.metrics().mint("user", "minted");
    if let Some(audit) = &app.audit() {
        let c = &minted.claims;
        audit.record(crate::audit::AuditEvent {
            ts: now,
            kind: Some(crate::audit::EventKind::Mint),
            actor: c.grant.principal.clone(),
            principal: Some(c.grant.principal.clone()),
            team: c.grant.team.clone(),
            request_id: Some(crate::request_id::request_id()),
            jti: Some(c.jti.clone()),
            expires_at: Some(exp),
            detail: json!({
                "identity": c.grant.identity,
                "org": c.grant.org,
                "models": c.grant.models,
                "budgets": c.grant.budgets,
                "ttl_secs": ttl,
                "oauth": {"client_id": client_id, "family": family_id, "grant": how},
            }),
            ..Default::default()
        });
    }
    let mut r = axum::Json(json!({
        "access_token": minted.token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "refresh_token": refresh,
        "scope": scope.0,
    }))
    .into_response();
    super::pages::security_headers(r.headers_mut());
    Ok((r, family_id))
}

/// Revoke a sign-in: its refresh tokens stop at once, its live access tokens through the revocation
/// list (at their next request, on every replica). Audited. `false` when it was already revoked.
pub async fn revoke_family(
    app: &AppState,
    oauth: &OAuth,
    family_id: &str,
    reason: &str,
    actor: &str,
) -> bool {
    let now = oauth.now();
    let jtis = match oauth.store.revoke_family(family_id, now, reason).await {
        Ok(Some(j)) => j,
        Ok(None) => return false,
        Err(e) => {
            tracing::error!(error = %e, family = family_id, "could not revoke a sign-in");
            return false;
        }
    };
    for jti in &jtis {
        if let Err(e) = app.governance().revoke(RevocationKind::Jti, jti).await {
            tracing::error!(error = %e, "could not revoke an access token of a revoked sign-in");
        }
    }
    tracing::info!(
        family = family_id,
        reason,
        access_tokens = jtis.len(),
        "sign-in revoked"
    );
    if let Some(audit) = &app.audit() {
        audit.record(crate::audit::AuditEvent {
            ts: now,
            kind: Some(crate::audit::EventKind::Revocation),
            actor: actor.to_string(),
            request_id: Some(crate::request_id::request_id()),
            detail: json!({
                "oauth_family": family_id,
                "reason": reason,
                "access_tokens": jtis,
            }),
            ..Default::default()
        });
    }
    true
}

/// `POST /oauth/revoke` (RFC 7009): a refresh or access token; the sign-in it belongs to is revoked.
/// Always 200 for a known client, whatever the token was (§2.2).
pub async fn revoke(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return crate::error::ApiError::NotFound.into_response();
    };
    let f = match parse_form(&headers, &body) {
        Ok(p) => Form(p),
        Err(e) => return e.into_response(),
    };
    let Some(client_id) = f.get("client_id").filter(|c| oauth.client(c).is_some()) else {
        return OAuthFailure::new(
            StatusCode::UNAUTHORIZED,
            OAuthErrorCode::InvalidClient,
            "unknown client_id",
        )
        .into_response();
    };
    let Some(token) = f.get("token") else {
        return fail(OAuthErrorCode::InvalidRequest, "missing token").into_response();
    };
    let family = match oauth.store.family_of_refresh(&digest(token)).await {
        Ok(Some(x)) => Some(x),
        Ok(None) => match app.tokens().verify(token) {
            Ok(claims) => oauth
                .store
                .family_of_access(&claims.jti)
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        },
        Err(e) => return store_failed(e).into_response(),
    };
    if let Some((fam, owner)) = family
        && owner == client_id
    {
        revoke_family(&app, &oauth, &fam, "client_revoked", client_id).await;
    }
    let mut r = StatusCode::OK.into_response();
    super::pages::security_headers(r.headers_mut());
    r
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub async fn metadata(State(app): State<Arc<AppState>>) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return crate::error::ApiError::NotFound.into_response();
    };
    let u = &oauth.public_url;
    let mut r = axum::Json(json!({
        "issuer": u,
        "authorization_endpoint": format!("{u}/oauth/authorize"),
        "token_endpoint": format!("{u}/oauth/token"),
        "device_authorization_endpoint": format!("{u}/oauth/device_authorization"),
        "revocation_endpoint": format!("{u}/oauth/revoke"),
        "jwks_uri": format!("{u}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": [
            GRANT_AUTHORIZATION_CODE,
            GRANT_REFRESH_TOKEN,
            GRANT_DEVICE_CODE,
            tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE,
        ],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": super::SCOPES_SUPPORTED,
        "authorization_response_iss_parameter_supported": true,
    }))
    .into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=300"),
    );
    r
}
