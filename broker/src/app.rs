//! Application state and the HTTP router.

use crate::accounting::Accounting;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::error::ApiError;
use crate::governance::Governance;
use crate::identity::Verifiers;
use crate::keys;
use crate::policy::Policy;
use crate::router::Router as ModelRouter;
use crate::token::endpoint::TokenEndpoint;
use crate::token::{KeyRing, TokenService};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tollgate::Claims;

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
    /// Prices, budgets, rate limits, revocation.
    pub governance: Arc<Governance>,
    /// What happens to a request once admitted: settlement, metrics, audit, the log line.
    pub accounting: Arc<Accounting>,
    pub clock: SharedClock,
    pub max_body_bytes: usize,
    /// `/oauth/token`'s settings and per-address limiter.
    pub token_endpoint: TokenEndpoint,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `None` when `[audit] enabled = false`.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
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
        let metrics = Arc::new(crate::metrics::Metrics::new(
            config.metrics.clone(),
            &config.routes,
        ));
        let governance = Arc::new(Governance::open(config, clock.clone(), metrics.clone()).await?);
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
        let audit = audit_sink.map(|sink| {
            Arc::new(crate::audit::AuditLog::new(sink).with_checkpoints(
                config.audit.checkpoints,
                Arc::new(crate::audit::checkpoint::RingSigner {
                    keys: ring.clone(),
                    issuer: config.server.public_url.clone(),
                }),
                clock.clone(),
            ))
        });
        let accounting = Accounting::new(
            governance.clone(),
            metrics.clone(),
            audit.clone(),
            clock.clone(),
        );
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
            governance,
            accounting,
            metrics,
            audit,
            admin: crate::admin::AdminAuth::new(config.admin.key_sha256),
            budgets: config.budgets.clone(),
            clock,
            max_body_bytes: config.server.max_body_bytes,
            token_endpoint: TokenEndpoint::new(&config.tokens),
        });
        state.router.attach_metrics(&state.metrics);
        Ok(state)
    }

    /// Background governance work: revocation and key polling, lease renewal, expiry of dead brokers'
    /// reservations, settlement retries. Stops when the state is dropped.
    pub fn spawn_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let g = self.governance.clone();
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
                app.token_endpoint.upkeep();
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
        let g = &self.governance;
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

/// The whole HTTP surface, in three parts by who may call it:
/// - public, an explicit allow-list: health, discovery, JWKS, the token endpoint (its own body limit and
///   per-address rate limit), and `/metrics` (admin key unless `[metrics] public = true`);
/// - bearer: every proxy route and the usage report, behind [`crate::proxy::require_token`] — a layer, so
///   no handler there can forget it, and a request without a valid token is refused before its body is read;
/// - admin: `/admin/*` (see [`crate::admin`]), which checks the admin credential.
pub fn router(state: Arc<AppState>) -> Router {
    let public = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(crate::token::endpoint::jwks))
        .route(
            "/.well-known/openid-configuration",
            get(crate::token::endpoint::discovery),
        )
        .route(
            "/oauth/token",
            post(crate::token::endpoint::exchange)
                .layer(DefaultBodyLimit::max(
                    state.token_endpoint.max_request_bytes,
                ))
                .route_layer(from_fn_with_state(
                    state.clone(),
                    crate::token::endpoint::guard,
                )),
        )
        .route("/metrics", get(metrics));
    let bearer = Router::new()
        .route(
            "/v1/responses",
            post(crate::proxy::responses).get(crate::proxy::responses_upgrade),
        )
        .route("/v1/chat/completions", post(crate::proxy::chat_completions))
        .route("/v1/models", get(crate::proxy::models))
        .route("/v1/tollgate/usage", get(self_usage))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .route_layer(from_fn_with_state(
            state.clone(),
            crate::proxy::require_token,
        ));
    Router::new()
        .merge(public)
        .merge(bearer)
        .merge(crate::admin::routes())
        .fallback(|| async { ApiError::NotFound })
        .layer(from_fn_with_state(state.clone(), crate::observe::track))
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
    if let Err(e) = app.governance.store.ping().await {
        tracing::warn!(error = %e, "not ready: governance store unavailable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "governance store unavailable",
        )
            .into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

/// `GET /v1/tollgate/usage`: the token holder's own usage.
async fn self_usage(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Arc<Claims>>,
) -> Result<Response, ApiError> {
    // Read-your-writes on this replica: what it has finished is settled before the store is read.
    if !app.accounting.flush(Duration::from_secs(2)).await {
        tracing::warn!("usage report: settlements are still queued; the report may lag");
    }
    let budgets = app.governance.report(&claims).await?;
    let usage = app.governance.usage_today(&claims.grant.principal).await?;
    Ok(axum::Json(json!({
        "principal": claims.grant.principal,
        "team": claims.grant.team,
        "org": claims.grant.org,
        "expires_at": claims.exp,
        "budgets": budgets,
        // This principal's settled requests since 00:00 UTC, from the store (the same on every replica).
        "usage": usage,
    }))
    .into_response())
}
