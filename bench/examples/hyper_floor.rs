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
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::Write;
use std::sync::Arc;

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
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening http://{}", l.local_addr()?);
        std::io::stdout().flush()?;
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
