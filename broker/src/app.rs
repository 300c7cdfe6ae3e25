//! Application state and the HTTP router.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::error::{ApiError, OAuthFailure};
use crate::governance::Governance;
use crate::governance::store::RevocationKind;
use crate::identity::{Verifiers, VerifyError};
use crate::keys;
use crate::ledger::Ledger;
use crate::policy::{Decision, Policy};
use crate::router::Router as ModelRouter;
use crate::token::{KeyRing, TokenService};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tollgate::exchange::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT};
use tollgate::{ModelPattern, OAuthErrorCode, TokenExchangeRequest, TokenExchangeResponse};

pub struct AppState {
    pub tokens: TokenService,
    pub verifiers: Verifiers,
    pub policy: RwLock<Arc<Policy>>,
    /// Where the policy is (re)loaded from.
    pub policy_file: std::path::PathBuf,
    pub router: ModelRouter,
    /// Longest `Retry-After` the proxy waits out itself.
    pub retry_after_max_wait_secs: u64,
    pub codex_models: BTreeMap<String, serde_json::Value>,
    pub auth_cache: moka::sync::Cache<[u8; 32], Arc<tollgate::Claims>>,
    pub ledger: Ledger,
    pub clock: SharedClock,
    pub max_body_bytes: usize,
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    /// SHA-256 of the admin key; `None` disables `/admin/*`.
    pub admin_key_sha256: Option<[u8; 32]>,
    pub metrics: crate::metrics::Metrics,
    /// `None` when `[audit] enabled = false`.
    pub audit: Option<crate::audit::AuditLog>,
    /// Admin key checks and dashboard sessions.
    pub admin: crate::admin::AdminAuth,
    /// Budget definitions, for the dashboard.
    pub budgets: Vec<crate::config::BudgetConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("identity verifiers: {0}")]
    Identity(String),
    #[error(transparent)]
    Store(#[from] crate::governance::store::StoreError),
}

impl AppState {
    /// Build the state from a validated config: load the policy, open (and migrate) the governance store,
    /// load signing keys from the key file or from the store (generating and rotating them there).
    pub async fn build(config: &Config, clock: SharedClock) -> Result<Arc<Self>, BuildError> {
        let policy = Policy::load(&config.policy_file)?;
        let now = clock.now_secs();
        let governance = Governance::open(config, clock.clone()).await?;
        // Before anything is served: every revocation (a restarted replica must not accept a revoked token
        // until its first poll), and this replica's issuer checked against the other replicas'.
        governance.load_revocations().await?;
        crate::governance::store::claim_issuer(
            governance.store.as_ref(),
            &config.server.public_url,
            now,
            governance.lease_secs(),
        )
        .await?;
        let ring = Arc::new(KeyRing::default());
        match (&config.tokens.signing_key_file, &governance.keys) {
            (Some(path), _) => ring.replace(vec![keys::load_file(path, now)?]),
            (None, Some(km)) => km.sync(governance.store.as_ref(), &ring, now).await?,
            (None, None) => ring.replace(keys::load_or_generate(&config.server.state_dir, now)?),
        }
        let audit_sink: Option<Arc<dyn crate::audit::AuditSink>> = if config.audit.enabled {
            Some(match governance.store.pool() {
                // Replicas sharing PostgreSQL share one chain in it.
                crate::governance::store::StorePool::Postgres(pool) => {
                    Arc::new(crate::audit::postgres::PgAudit::new(pool))
                }
                crate::governance::store::StorePool::Sqlite(_) => Arc::new(
                    crate::audit::sqlite::SqliteAudit::open(&config.audit.sqlite_path),
                ),
            })
        } else {
            None
        };
        let verifiers = Verifiers::from_config(config, clock.clone(), governance.store.clone())
            .map_err(|e| BuildError::Identity(e.to_string()))?;
        let state = Arc::new(AppState {
            tokens: TokenService {
                keys: ring.clone(),
                issuer: config.server.public_url.clone(),
                audience: config.tokens.audience.clone(),
                leeway_secs: config.tokens.leeway_secs,
                clock: clock.clone(),
            },
            verifiers,
            policy: RwLock::new(Arc::new(policy)),
            policy_file: config.policy_file.clone(),
            router: ModelRouter::new(config, clock.clone()),
            retry_after_max_wait_secs: config.routing.retry_after_max_wait_secs,
            codex_models: config.codex_models.clone(),
            auth_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            ledger: Ledger::new(Arc::new(governance)),
            admin_key_sha256: config.admin.key_sha256,
            metrics: crate::metrics::Metrics::new(config.metrics.clone(), &config.routes),
            audit: audit_sink
                .map(|sink| {
                    crate::audit::AuditLog::new(sink)
                        .with_checkpoints(
                            config.audit.checkpoints,
                            Arc::new(crate::audit::checkpoint::RingSigner {
                                keys: ring.clone(),
                                issuer: config.server.public_url.clone(),
                            }),
                            clock.clone(),
                        )
                        .with_journal(&config.audit.journal)
                })
                .transpose()?,
            admin: crate::admin::AdminAuth::new(config.admin.key_sha256),
            budgets: config.budgets.clone(),
            clock,
            max_body_bytes: config.server.max_body_bytes,
            default_ttl_secs: config.tokens.default_ttl_secs,
            max_ttl_secs: config.tokens.max_ttl_secs,
        });
        state.router.attach_metrics(&state.metrics);
        // A key that leaves the ring (retired) takes its tokens with it, cached verifications included.
        let cache = state.auth_cache.clone();
        ring.on_removal(move || cache.invalidate_all());
        Ok(state)
    }

    /// Background governance work: revocation and key polling, lease renewal, expiry of dead brokers'
    /// reservations, settlement retries. Stops when the state is dropped.
    pub fn spawn_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let g = self.ledger.governance.clone();
        tokio::spawn(async move {
            let lease = Duration::from_secs(g.lease_secs());
            let mut last_renew = std::time::Instant::now();
            let mut last_expire = std::time::Instant::now();
            let mut last_keys = std::time::Instant::now();
            loop {
                tokio::time::sleep(g.poll_interval()).await;
                let Some(app) = weak.upgrade() else { return };
                let renew = last_renew.elapsed() >= lease / 3;
                let expire = last_expire.elapsed() >= lease / 2;
                if renew {
                    last_renew = std::time::Instant::now();
                }
                if expire {
                    last_expire = std::time::Instant::now();
                }
                g.tick(renew, expire).await;
                app.metrics.upkeep();
                if last_keys.elapsed() >= Duration::from_secs(1) {
                    last_keys = std::time::Instant::now();
                    if let Err(e) = app.sync_keys().await {
                        tracing::warn!(error = %e, "could not sync signing keys");
                    }
                }
            }
        });
    }

    /// One key poll: publish keys other replicas created (scheduled or forced) and drop retired ones.
    /// The background loop calls it every second; public so tests drive it without timers.
    pub async fn sync_keys(&self) -> Result<(), crate::governance::store::StoreError> {
        let g = &self.ledger.governance;
        match &g.keys {
            Some(km) => {
                km.sync(g.store.as_ref(), &self.tokens.keys, self.clock.now_secs())
                    .await
            }
            None => Ok(()),
        }
    }

    /// Load the policy file again and swap it in. Requests in flight keep the policy they started with
    /// (each holds its own `Arc`); an invalid file is rejected, logged with its line and column, and the
    /// old policy stays in force.
    pub fn reload_policy(&self) -> Result<usize, crate::config::ConfigError> {
        match Policy::load(&self.policy_file) {
            Ok(p) => {
                let n = p.rules.len();
                *self
                    .policy
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(p);
                tracing::info!(file = %self.policy_file.display(), rules = n, "policy reloaded");
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
                Err(e)
            }
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The whole HTTP surface. Every route but the explicit allow-list (health, discovery, JWKS, token
/// endpoint) requires a valid bearer token.
pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/oauth/token", post(token_exchange))
        .route("/v1/responses", post(crate::proxy::responses))
        .route("/v1/chat/completions", post(crate::proxy::chat_completions))
        .route("/v1/models", get(crate::proxy::models))
        .route("/v1/tollgate/usage", get(self_usage))
        .route("/admin/v1/revoke", post(admin_revoke))
        .route("/metrics", get(metrics))
        .merge(crate::admin::routes())
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::refuse_while_journal_full,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::observe::track,
        ))
        .with_state(state)
}

/// `GET /metrics`: Prometheus text format. Public only with `[metrics] public = true`; otherwise the admin
/// key is required as a bearer token (and with no admin key configured the route does not exist).
async fn metrics(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let cfg = &app.metrics.config;
    if !cfg.enabled || (!cfg.public && !app.admin.enabled()) {
        return ApiError::NotFound.into_response();
    }
    if !cfg.public && !app.admin.check_bearer(&headers) {
        return crate::error::AdminError::Unauthorized.into_response();
    }
    if let Some(a) = &app.audit {
        app.metrics.audit_failures(a.errors());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.tokens.keys.active().is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no signing key").into_response();
    }
    if let Err(e) = app.ledger.governance.store.ping().await {
        tracing::warn!(error = %e, "not ready: governance store unavailable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "governance store unavailable",
        )
            .into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

async fn jwks(State(app): State<Arc<AppState>>) -> Response {
    let mut r = axum::Json(app.tokens.keys.jwks()).into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=300"),
    );
    r
}

async fn discovery(State(app): State<Arc<AppState>>) -> Response {
    let iss = &app.tokens.issuer;
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

fn bad_request(code: OAuthErrorCode, d: &str) -> OAuthFailure {
    OAuthFailure::new(StatusCode::BAD_REQUEST, code, d)
}

/// `POST /oauth/token`: RFC 8693 token exchange.
async fn token_exchange(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthFailure> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(bad_request(
            OAuthErrorCode::InvalidRequest,
            "content-type must be application/x-www-form-urlencoded",
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| bad_request(OAuthErrorCode::InvalidRequest, "malformed form body"))?;
    // RFC 6749 §3.2: parameters must not repeat (a repeated subject_token could smuggle a second proof).
    let mut seen = std::collections::BTreeSet::new();
    if pairs.iter().any(|(k, _)| !seen.insert(k.as_str())) {
        return Err(bad_request(
            OAuthErrorCode::InvalidRequest,
            "a parameter is repeated",
        ));
    }
    match pairs.iter().find(|(k, _)| k == "grant_type") {
        Some((_, g)) if g == GRANT_TYPE_TOKEN_EXCHANGE => {}
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
    let req: TokenExchangeRequest = serde_urlencoded::from_bytes(&body).map_err(|_| {
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
        && aud != &app.tokens.audience
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
    let identity = app.verifiers.verify(&req.subject_token_type, &req.subject_token).await.map_err(|e| {
        tracing::info!(reason = e.reason(), token_type = %req.subject_token_type, "token exchange refused");
        app.metrics.mint("unknown", e.reason());
        match e {
            VerifyError::UnsupportedType => bad_request(OAuthErrorCode::InvalidRequest, "unsupported subject_token_type"),
            VerifyError::Rejected(_) => bad_request(OAuthErrorCode::InvalidGrant, "the subject token was not accepted"),
            VerifyError::Unavailable(_) => OAuthFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                OAuthErrorCode::TemporarilyUnavailable,
                "the identity provider could not be reached; try again",
            ),
        }
    })?;
    let (mut grant, rule_ttl, rule) = match app.policy().decide(&identity) {
        Decision::Allow {
            grant,
            max_ttl_secs,
            rule,
        } => (*grant, max_ttl_secs, rule),
        Decision::Deny { rule } => {
            app.metrics.mint(identity.kind.as_str(), "denied");
            tracing::info!(kind = %identity.kind, subject = %identity.subject, rule = %rule, "denied by policy rule");
            return Err(bad_request(
                OAuthErrorCode::InvalidGrant,
                "no grant for this identity",
            ));
        }
        Decision::NoMatch => {
            app.metrics.mint(identity.kind.as_str(), "denied");
            tracing::info!(kind = %identity.kind, subject = %identity.subject, "no policy rule matched");
            return Err(bad_request(
                OAuthErrorCode::InvalidGrant,
                "no grant for this identity",
            ));
        }
    };
    if let Some(scope) = &req.scope {
        grant.models = narrow_models(&grant.models, scope)
            .map_err(|d| bad_request(OAuthErrorCode::InvalidScope, &d))?;
    }
    let ceiling = rule_ttl.unwrap_or(app.max_ttl_secs).min(app.max_ttl_secs);
    let ttl = req
        .requested_ttl_secs
        .unwrap_or(app.default_ttl_secs)
        .clamp(1, ceiling);
    let minted = app.tokens.mint(grant, ttl).map_err(|e| {
        tracing::error!(error = %e, "mint failed");
        OAuthFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            OAuthErrorCode::ServerError,
            "could not issue a token",
        )
    })?;
    tracing::info!(principal = %minted.claims.sub, kind = %identity.kind, rule = %rule, jti = %minted.claims.jti, ttl, "token minted");
    app.metrics.mint(identity.kind.as_str(), "minted");
    if let Some(audit) = &app.audit {
        let c = &minted.claims;
        audit.record(crate::audit::AuditEvent {
            ts: i64::try_from(app.clock.now_secs()).unwrap_or(i64::MAX),
            kind: Some(crate::audit::EventKind::Mint),
            actor: c.grant.principal.clone(),
            principal: Some(c.grant.principal.clone()),
            team: c.grant.team.clone(),
            request_id: Some(crate::observe::request_id()),
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

/// `scope = "model:gpt-5.5 model:o4-*"` narrows the grant: each requested pattern must be allowed (a
/// literal must match an allowed glob; a glob must equal an allowed glob). Other scope tokens are refused.
fn narrow_models(allowed: &[ModelPattern], scope: &str) -> Result<Vec<ModelPattern>, String> {
    let mut out = Vec::new();
    for item in scope.split_whitespace() {
        let Some(m) = item.strip_prefix("model:") else {
            return Err(format!("unknown scope {item:?} (use model:<name or glob>)"));
        };
        let p = ModelPattern::new(m).map_err(|e| e.to_string())?;
        let ok = if p.is_literal() {
            allowed.iter().any(|a| a.matches(m))
        } else {
            allowed.contains(&p)
        };
        if !ok {
            return Err(format!("scope {item:?} is outside the grant"));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err("empty scope".into());
    }
    Ok(out)
}

/// `GET /v1/tollgate/usage`: the token holder's own usage.
async fn self_usage(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = crate::proxy::authenticate(&app, &headers)?;
    let budgets = app.ledger.governance.report(&claims).await?;
    Ok(axum::Json(json!({
        "principal": claims.grant.principal,
        "team": claims.grant.team,
        "org": claims.grant.org,
        "expires_at": claims.exp,
        "budgets": budgets,
        // Token counts of this principal through this broker process since it started.
        "usage": app.ledger.totals(&claims.grant.principal),
    }))
    .into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    jti: Option<String>,
    principal: Option<String>,
    /// Free text kept in the audit trail.
    reason: Option<String>,
}

/// Is `headers` carrying the admin key? Compares SHA-256 digests in constant time.
fn admin_authorized(app: &AppState, headers: &HeaderMap) -> bool {
    let Some(want) = app.admin_key_sha256 else {
        return false;
    };
    let Some(got) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let digest: [u8; 32] = sha2::Sha256::digest(got.trim().as_bytes()).into();
    bool::from(subtle::ConstantTimeEq::ct_eq(&digest[..], &want[..]))
}

/// `POST /admin/v1/revoke` `{"jti": "..."}` or `{"principal": "..."}`: effective here at once, on other
/// replicas within one poll interval.
async fn admin_revoke(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !admin_authorized(&app, &headers) {
        return Err(ApiError::Unauthorized("admin"));
    }
    let req: RevokeRequest = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest("expected {\"jti\": ...} or {\"principal\": ...}".into())
    })?;
    let req_reason = req.reason;
    let (kind, value) = match (req.jti, req.principal) {
        (Some(j), None) if !j.is_empty() => (RevocationKind::Jti, j),
        (None, Some(p)) if !p.is_empty() => (RevocationKind::Principal, p),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of jti and principal".into(),
            ));
        }
    };
    let seq = app
        .ledger
        .governance
        .revoke(kind, &value)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "revocation could not be stored");
            ApiError::StoreUnavailable
        })?;
    tracing::info!(kind = kind.as_str(), value = %value, seq, "revocation by admin");
    if let Some(a) = &app.audit {
        let (principal, jti) = match kind {
            RevocationKind::Jti => (None, Some(value.clone())),
            RevocationKind::Principal => (Some(value.clone()), None),
        };
        a.record(crate::audit::AuditEvent {
            ts: i64::try_from(app.clock.now_secs()).unwrap_or(i64::MAX),
            kind: Some(crate::audit::EventKind::Revocation),
            actor: "admin".into(),
            principal,
            jti,
            detail: json!({"kind": kind.as_str(), "value": value, "seq": seq, "reason": req_reason}),
            ..Default::default()
        });
    }
    Ok(axum::Json(json!({"revoked": {kind.as_str(): value}, "seq": seq})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

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
