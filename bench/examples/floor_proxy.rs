//! The floor of the stack: the smallest forwarder on the same crates as the broker (axum server, reqwest
//! client, tokio multi-thread runtime), with no governance at all — it reads the body, forwards it to
//! the upstream and relays the answer. `bench/run.sh floor` measures it beside the broker, so the
//! broker's added latency can be split into "what the HTTP stack costs here" and "what Tollgate adds".
//!
//!     cargo run --release -p tollgate-bench --example floor_proxy -- http://127.0.0.1:PORT [threads]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

mod common;

#[derive(Clone)]
struct Up {
    client: reqwest::Client,
    base: String,
}

async fn forward(
    State(up): State<Up>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut req = up
        .client
        .post(format!("{}{}", up.base, uri.path()))
        .body(body);
    if let Some(ct) = headers.get("content-type") {
        req = req.header("content-type", ct);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status();
            let ct = r.headers().get("content-type").cloned();
            let body = r.bytes().await.unwrap_or_default();
            let mut resp = (status, body).into_response();
            if let Some(ct) = ct {
                resp.headers_mut().insert("content-type", ct);
            }
            resp
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = common::args();
    args.runtime()?.block_on(async move {
        let up = Up {
            client: reqwest::Client::builder().tcp_nodelay(true).build()?,
            base: args.base,
        };
        let app = axum::Router::new()
            .fallback(axum::routing::post(forward))
            .with_state(up);
        common::serve_axum(common::listen().await?, app).await
    })
}
