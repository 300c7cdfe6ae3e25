//! What the three floors (`floor_proxy.rs`, `axum_floor.rs`, `hyper_floor.rs`) share: their arguments,
//! runtime, listener and the parts of their stacks two of them have in common. Only the forwarding
//! differs between them, which is what they measure. Each floor uses a part of this module.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::io::Write;

/// `<floor> http://127.0.0.1:PORT [threads]`: the upstream's base URL (no trailing slash) and the
/// runtime: worker threads of a multi-thread runtime, or "current" for one current-thread runtime.
pub struct Args {
    pub base: String,
    threads: String,
}

pub fn args() -> Args {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    Args {
        base: base.trim_end_matches('/').to_string(),
        threads: args.next().unwrap_or_default(),
    }
}

impl Args {
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut b = if self.threads == "current" {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Ok(n) = self.threads.parse::<usize>() {
                b.worker_threads(n);
            }
            b
        };
        b.enable_all().build()
    }
}

/// A listener on a free loopback port, announced on stdout as the bench scripts expect
/// (`listening http://127.0.0.1:PORT`, bench/lib.sh's `start`).
#[allow(clippy::print_stdout)]
pub async fn listen() -> anyhow::Result<tokio::net::TcpListener> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening http://{}", l.local_addr()?);
    std::io::stdout().flush()?;
    Ok(l)
}

/// Serve `app` with axum, Nagle off on every connection (as the broker does).
pub async fn serve_axum(l: tokio::net::TcpListener, app: axum::Router) -> anyhow::Result<()> {
    let l = axum::serve::ListenerExt::tap_io(l, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(l, app).await?;
    Ok(())
}

/// hyper-util's pooled HTTP/1 client, Nagle off (the broker's upstream client, without TLS).
pub fn hyper_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(conn)
}
