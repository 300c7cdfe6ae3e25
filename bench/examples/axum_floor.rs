//! The floor of the broker's stack as it is now: axum's server and router, as in `floor_proxy.rs`, with
//! hyper-util's pooled client, as in `hyper_floor.rs` and the broker's upstream client
//! (`broker/src/proxy/client.rs`). Beside the other two floors it splits their difference into what
//! axum's server side costs and what reqwest's client costs, so "should the server side sit on hyper
//! directly?" is answered by numbers (`bench/cost.sh`, docs/benchmarks.md).
//!
//!     cargo run --release -p tollgate-bench --example axum_floor -- http://127.0.0.1:PORT [threads]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::sync::Arc;

mod common;

struct Up {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port`, no trailing slash.
    base: String,
}

async fn forward(State(up): State<Arc<Up>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut out = hyper::Request::post(format!("{}{}", up.base, uri.path()));
    if let Some(ct) = headers.get(hyper::header::CONTENT_TYPE) {
        out = out.header(hyper::header::CONTENT_TYPE, ct);
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    match up.client.request(out).await {
        Ok(r) => {
            let (parts, body) = r.into_parts();
            match body.collect().await {
                Ok(b) => {
                    let mut resp = (parts.status, b.to_bytes()).into_response();
                    if let Some(ct) = parts.headers.get(hyper::header::CONTENT_TYPE) {
                        resp.headers_mut()
                            .insert(hyper::header::CONTENT_TYPE, ct.clone());
                    }
                    resp
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = common::args();
    args.runtime()?.block_on(async move {
        let up = Arc::new(Up {
            client: common::hyper_client(),
            base: args.base,
        });
        let app = axum::Router::new()
            .fallback(axum::routing::post(forward))
            .with_state(up);
        common::serve_axum(common::listen().await?, app).await
    })
}
