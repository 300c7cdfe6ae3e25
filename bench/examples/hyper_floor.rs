//! The floor one layer down: the same forwarder as `floor_proxy.rs` written on hyper directly (hyper's
//! HTTP/1 server, hyper-util's pooled client), without axum's router and extractors or reqwest's request
//! builder. `bench/run.sh floor` and `bench/compare.sh` measure it beside the axum + reqwest floor and the
//! broker, so "should the hot path sit on hyper directly?" is answered by numbers from one run
//! (docs/benchmarks.md).
//!
//!     cargo run --release -p tollgate-bench --example hyper_floor -- http://127.0.0.1:PORT [threads]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

mod common;

struct Up {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port`, no trailing slash.
    base: String,
}

async fn forward(up: Arc<Up>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let mut out = Request::post(format!("{}{}", up.base, parts.uri.path()));
    if let Some(ct) = parts.headers.get(hyper::header::CONTENT_TYPE) {
        out = out.header(hyper::header::CONTENT_TYPE, ct);
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return status(StatusCode::BAD_GATEWAY);
    };
    match up.client.request(out).await {
        Ok(r) => {
            let (parts, body) = r.into_parts();
            match body.collect().await {
                Ok(b) => {
                    let mut resp = Response::new(Full::new(b.to_bytes()));
                    *resp.status_mut() = parts.status;
                    if let Some(ct) = parts.headers.get(hyper::header::CONTENT_TYPE) {
                        resp.headers_mut()
                            .insert(hyper::header::CONTENT_TYPE, ct.clone());
                    }
                    resp
                }
                Err(_) => status(StatusCode::BAD_GATEWAY),
            }
        }
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}

fn main() -> anyhow::Result<()> {
    let args = common::args();
    args.runtime()?.block_on(async move {
        let up = Arc::new(Up {
            client: common::hyper_client(),
            base: args.base,
        });
        let l = common::listen().await?;
        loop {
            let (tcp, _) = l.accept().await?;
            let _ = tcp.set_nodelay(true);
            let up = up.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let up = up.clone();
                    async move { Ok::<_, std::convert::Infallible>(forward(up, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}
