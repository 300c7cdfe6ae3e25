//! Observation of the request path: request ids, the HTTP metrics middleware, the per-request
//! observation carried through the proxy ([`RequestObs`]), and the one settle hook ([`finish`]) that feeds
//! the ledger, metrics, the audit trail and the trace span.
//!
//! The proxy touches this module in three places only: `RequestObs::start` when it builds its
//! `RequestRecord`, `mark_first_byte` when the first chunk goes out, and `finish` instead of calling the
//! ledger directly. Everything else is read from the response by the middleware.

use crate::app::AppState;
use crate::audit::{AuditEvent, EventKind};
use crate::ledger::RequestRecord;
use crate::metrics::{ProxyTags, RefusalReason, Settled};
use crate::usage::{StreamEnd, Usage};
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id (set by [`track`]); a fresh one outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| uuid::Uuid::now_v7().to_string())
}

/// Middleware on the whole router: assigns the request id (`x-request-id` on the response), counts
/// every response by route and status, counts refusals by reason, and proxy requests by model/provider.
pub async fn track(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let id = uuid::Uuid::now_v7().to_string();
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    let status = resp.status().as_u16();
    if let Some(reason) = resp.extensions().get::<RefusalReason>() {
        app.metrics.refusal(*reason);
    }
    if route == "/v1/responses" || route == "/v1/chat/completions" {
        let (model, provider) = resp
            .extensions()
            .get::<ProxyTags>()
            .map_or(("none".to_string(), "none"), |t| {
                (app.metrics.model_label(&t.model), t.provider.as_str())
            });
        app.metrics.request(&route, &model, provider, status);
    }
    app.metrics
        .http(&route, status, started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Observation state of one proxied request, carried in its `RequestRecord`.
#[derive(Debug)]
pub struct RequestObs {
    pub request_id: String,
    pub dispatched: Instant,
    pub first_byte: Option<Instant>,
    /// The `gen_ai` trace span of this request; closed when the request settles.
    pub span: tracing::Span,
}

impl RequestObs {
    /// Called when the request is about to go upstream; records Tollgate's own added time.
    pub fn start(app: &AppState, route: &str, model: &str, started: Instant) -> Self {
        let now = Instant::now();
        app.metrics
            .added_latency(route, now.duration_since(started).as_secs_f64());
        RequestObs {
            request_id: request_id(),
            dispatched: now,
            first_byte: None,
            span: crate::telemetry::request_span(route, model),
        }
    }

    fn detached() -> Self {
        RequestObs {
            request_id: String::new(),
            dispatched: Instant::now(),
            first_byte: None,
            span: tracing::Span::none(),
        }
    }

    pub fn mark_first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
    }
}

fn end_label(end: StreamEnd) -> &'static str {
    match end {
        StreamEnd::Completed => "completed",
        StreamEnd::Incomplete => "incomplete",
        StreamEnd::Failed => "failed",
        StreamEnd::Truncated => "truncated",
    }
}

/// Settle a proxied request exactly once: the ledger (budgets, spend) settles on its own task; metrics,
/// the audit record and the span follow with the settled cost.
pub fn finish(
    app: &Arc<AppState>,
    record: RequestRecord,
    usage: Option<Usage>,
    end: StreamEnd,
    streamed_text_bytes: u64,
) {
    let mut record = record;
    let claims = record.claims.clone();
    let model = record.model.clone();
    let provider = record.provider.clone();
    let status = record.status;
    let started = record.started;
    let obs = std::mem::replace(&mut record.obs, RequestObs::detached());
    let u = usage.unwrap_or_default();
    let now = Instant::now();
    let upstream_secs = now.duration_since(obs.dispatched).as_secs_f64();
    let ttfb = obs.first_byte.map(|t| t.duration_since(started));
    let end_s = end_label(end);
    if !obs.span.is_disabled() {
        let system = app
            .router
            .providers()
            .find(|p| p.name == provider)
            .map_or_else(
                || "unknown".to_string(),
                |p| format!("{:?}", p.kind).to_lowercase(),
            );
        crate::telemetry::settle_span(&obs.span, &system, &provider, status, &u, end_s);
    }
    drop(obs.span);
    let app2 = app.clone();
    let request_id = obs.request_id;
    let after: crate::ledger::AfterSettle = Box::new(move |cost: tollgate::Nanos| {
        let app = app2;
        app.metrics.settled(&Settled {
            model: &model,
            provider: &provider,
            principal: &claims.grant.principal,
            input_tokens: u.input_tokens,
            cached_input_tokens: u.cached_input_tokens,
            output_tokens: u.output_tokens,
            cost_nanos: Some(u64::try_from(cost.0).unwrap_or(0)),
            end: end_s,
            upstream_secs,
            ttfb_secs: ttfb.map(|d| d.as_secs_f64()),
        });
        if let Some(audit) = &app.audit {
            let g = &claims.grant;
            audit.record(AuditEvent {
                ts: i64::try_from(app.clock.now_secs()).unwrap_or(i64::MAX),
                kind: Some(EventKind::Request),
                actor: g.principal.clone(),
                principal: Some(g.principal.clone()),
                team: g.team.clone(),
                model: Some(model.clone()),
                provider: Some(provider.clone()),
                status: Some(i64::from(status)),
                input_tokens: Some(i64::try_from(u.input_tokens).unwrap_or(i64::MAX)),
                output_tokens: Some(i64::try_from(u.output_tokens).unwrap_or(i64::MAX)),
                cost_nanos: Some(cost.0),
                request_id: Some(request_id),
                jti: Some(claims.jti.clone()),
                expires_at: None,
                detail: serde_json::json!({
                    "identity": g.identity,
                    "org": g.org,
                    "cached_input_tokens": u.cached_input_tokens,
                    "reasoning_tokens": u.reasoning_tokens,
                    "end": end_s,
                    "latency_ms": u64::try_from(now.duration_since(started).as_millis()).unwrap_or(u64::MAX),
                    "ttfb_ms": ttfb.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                }),
            });
        }
    });
    app.ledger
        .finish(record, usage, end, streamed_text_bytes, after);
}
