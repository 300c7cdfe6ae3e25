//! The HTTP edge of observation: request ids and the middleware that counts every response (by route and
//! status, refusals by reason, proxy requests by model and provider). What a proxied request cost is
//! recorded by [`crate::accounting`] once it has finished.

use crate::app::AppState;
use crate::metrics::{ProxyTags, RefusalReason};
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::response::Response;
use std::time::Instant;

/// The outermost stage of every request ([`crate::routes::edge`] runs it around the rest): assigns the
/// request id (`x-request-id` on the response), counts every response by route and status, counts
/// refusals by reason, and proxy requests by model/provider. `next` is the rest of the request.
pub async fn track<F, Fut>(app: &AppState, req: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    // The route's pattern, shared (an `Arc<str>` inside): not copied per request.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let id = uuid::Uuid::now_v7().to_string();
    let header = HeaderValue::from_str(&id).ok();
    let mut resp = crate::request_id::scope(id, next(req)).await;
    let status = resp.status();
    if let Some(reason) = resp.extensions().get::<RefusalReason>() {
        app.metrics().refusal(*reason);
    }
    if crate::proxy::providers::Endpoint::accounted_at(route).is_some() {
        let (model, provider) = resp
            .extensions()
            .get::<ProxyTags>()
            .map_or(("none", "none"), |t| {
                (app.metrics().model_label(&t.model), t.provider.as_str())
            });
        app.metrics().request(route, model, provider, status);
    }
    app.metrics()
        .http(route, status, started.elapsed().as_secs_f64());
    if let Some(v) = header {
        const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}
