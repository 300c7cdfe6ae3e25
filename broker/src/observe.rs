//! The HTTP edge of observation: request ids and the middleware that counts every response (by route and
//! status, refusals by reason, proxy requests by model and provider). What a proxied request cost is
//! recorded by [`crate::accounting`] once it has finished.

use crate::app::AppState;
use crate::metrics::{ProxyTags, RefusalReason};
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;

/// Middleware on the whole router: assigns the request id (`x-request-id` on the response), counts
/// every response by route and status, counts refusals by reason, and proxy requests by model/provider.
pub async fn track(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let id = uuid::Uuid::now_v7().to_string();
    let mut resp = crate::request_id::scope(id.clone(), next.run(req)).await;
    let status = resp.status().as_u16();
    if let Some(reason) = resp.extensions().get::<RefusalReason>() {
        app.metrics().refusal(*reason);
    }
    if crate::proxy::providers::Endpoint::accounted_at(&route).is_some() {
        let (model, provider) = resp
            .extensions()
            .get::<ProxyTags>()
            .map_or(("none".to_string(), "none"), |t| {
                (app.metrics().model_label(&t.model), t.provider.as_str())
            });
        app.metrics().request(&route, &model, provider, status);
    }
    app.metrics()
        .http(&route, status, started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}
