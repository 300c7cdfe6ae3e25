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
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use std::sync::Arc;

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

#[allow(clippy::print_stdout)]
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let threads = args.next().unwrap_or_default();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Ok(n) = threads.parse::<usize>() {
        b.worker_threads(n);
    }
    b.enable_all().build()?.block_on(async move {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let up = Arc::new(Up {
            client: Client::builder(TokioExecutor::new()).build(conn),
            base: base.trim_end_matches('/').to_string(),
        });
        let app = axum::Router::new()
            .fallback(axum::routing::post(forward))
            .with_state(up);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening http://{}", l.local_addr()?);
        std::io::stdout().flush()?;
        let l = axum::serve::ListenerExt::tap_io(l, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(l, app).await?;
        Ok(())
    })
}
