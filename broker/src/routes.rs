//! The HTTP surface, in three parts by who may call it (the router is built here and nowhere else):
//! - public, an explicit allow-list: health, discovery, JWKS, the token endpoint (its own body limit and
//!   per-address rate limit), the people sign-in pages and endpoints of [`crate::oauth`] (the same limits), and `/metrics` (admin key unless `[metrics] public = true`);
//! - bearer: every proxy route (Responses over HTTP and WebSocket, Chat Completions, Anthropic Messages and
//!   its token count, models) and the usage report, behind [`crate::proxy::require_token`] — a layer, so no
//!   handler there can forget it, and a request without a valid token is refused before its body is read;
//! - admin: `/admin/*` ([`crate::admin`]), which checks the admin credential.

use crate::app::AppState;
use crate::error::ApiError;
use crate::proxy::providers::Endpoint;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tollgate::Claims;

/// The whole HTTP surface (see the module docs).
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
                    state.token_endpoint().max_request_bytes,
                ))
                .route_layer(from_fn_with_state(
                    state.clone(),
                    crate::token::endpoint::guard,
                )),
        )
        .route("/metrics", get(metrics))
        // People sign-in (`[oauth]`; 404 without it): the authorization server's browser pages and
        // endpoints. `/oauth/token` above serves its grants.
        .route(
            "/.well-known/oauth-authorization-server",
            get(crate::oauth::grant::metadata),
        )
        .merge(
            Router::new()
                .route("/oauth/authorize", get(crate::oauth::authorize::authorize))
                .route("/oauth/login", post(crate::oauth::authorize::choose))
                .route("/oauth/callback", get(crate::oauth::authorize::callback))
                .route("/oauth/consent", post(crate::oauth::authorize::consent))
                .route(
                    "/oauth/device",
                    get(crate::oauth::device::page).post(crate::oauth::device::submit),
                )
                .route(
                    "/oauth/device_authorization",
                    post(crate::oauth::device::authorization),
                )
                .route("/oauth/revoke", post(crate::oauth::grant::revoke))
                .layer(DefaultBodyLimit::max(
                    state.token_endpoint().max_request_bytes,
                ))
                .route_layer(from_fn_with_state(
                    state.clone(),
                    crate::token::endpoint::guard,
                )),
        );
    let bearer = Router::new()
        .route(
            Endpoint::Responses.route(),
            post(crate::proxy::responses).get(crate::proxy::websocket::responses_ws),
        )
        .route(
            Endpoint::ChatCompletions.route(),
            post(crate::proxy::chat_completions),
        )
        .route(Endpoint::Messages.route(), post(crate::proxy::messages))
        .route(
            Endpoint::CountTokens.route(),
            post(crate::proxy::count_tokens),
        )
        .route("/v1/models", get(crate::proxy::models))
        .route(
            "/v1/codex/models",
            get(crate::proxy::catalog::codex_catalog),
        )
        .route("/v1/tollgate/usage", get(self_usage))
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .route_layer(from_fn_with_state(
            state.clone(),
            crate::proxy::require_token,
        ));
    Router::new()
        .merge(public)
        .merge(bearer)
        .merge(crate::admin::routes())
        .fallback(|| async { ApiError::NotFound })
        .layer(from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// What every request passes through, outermost first, as one middleware (each `from_fn` layer boxes
/// the request's future and clones the boxed inner service on every request; issue #19):
/// 1. [`crate::observe::track`]: the request id, and every response counted;
/// 2. [`crate::error::anthropic_shape`]: Anthropic-protocol clients (Claude Code) read every error in
///    Anthropic's shape, including the refusals of stage 3;
/// 3. `refuse_while_journal_full`: fail closed while the audit journal is full
///    (`[audit] on_journal_full = "refuse"`).
pub async fn edge(
    State(app): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    crate::observe::track(&app, req, |req| {
        crate::error::anthropic_shape(req, |req| refuse_while_journal_full(&app, req, next))
    })
    .await
}

/// `GET /metrics`: Prometheus text format. Public only with `[metrics] public = true`; otherwise the admin
/// key is required as a bearer token (and with no admin key configured the route does not exist).
async fn metrics(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let cfg = &app.metrics().config;
    if !cfg.enabled || (!cfg.public && !app.admin().enabled()) {
        return ApiError::NotFound.into_response();
    }
    if !cfg.public && !app.admin().check_bearer(&headers) {
        return crate::error::AdminError::Unauthorized.into_response();
    }
    if let Some(a) = &app.audit() {
        app.metrics().audit_failures(a.errors());
        let (records, bytes) = a.journal_backlog();
        app.metrics().audit_journal(records, bytes);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics().render(),
    )
        .into_response()
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.tokens().keys.active().is_none() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no signing key").into_response();
    }
    if let Err(e) = app.governance().store.ping().await {
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
    if !app.accounting().flush(Duration::from_secs(2)).await {
        tracing::warn!("usage report: settlements are still queued; the report may lag");
    }
    let budgets = app.governance().report(&claims).await?;
    let usage = app
        .governance()
        .usage_today(&claims.grant.principal)
        .await?;
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

/// While the journal is full (`on_journal_full = "refuse"`), refuse what would make new records — proxy
/// requests and token exchanges — with 503, and say not ready; everything else passes. A stage of
/// [`edge`], so the request path checks one flag.
async fn refuse_while_journal_full(
    app: &AppState,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let blocked = app.audit().as_ref().is_some_and(|a| !a.accepting());
    if !blocked {
        return next.run(req).await;
    }
    let path = req.uri().path();
    let status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    let retry = [(axum::http::header::RETRY_AFTER, "5")];
    if path == "/oauth/token" {
        return crate::error::OAuthFailure::new(
            status,
            tollgate::OAuthErrorCode::TemporarilyUnavailable,
            "the audit trail cannot record new tokens right now; try again shortly",
        )
        .into_response();
    }
    if path.starts_with("/v1/") {
        tracing::warn!("refused: the audit journal is full and its store unavailable");
        return (
            status,
            retry,
            axum::Json(tollgate::OpenAiError::new(
                "Tollgate: the audit trail cannot record requests right now (its database is unavailable and the local journal is full); requests are refused until it is back.",
                "server_error",
                Some("audit_unavailable"),
            )),
        )
            .into_response();
    }
    if path == "/readyz" {
        return (status, "audit journal full").into_response();
    }
    next.run(req).await
}
