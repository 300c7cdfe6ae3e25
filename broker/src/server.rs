//! Running the HTTP server: bind, announce, serve, drain on shutdown.

use crate::app::{AppState, router};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serve until SIGINT/SIGTERM, then stop accepting and give in-flight requests `grace` to finish.
pub async fn serve(
    state: Arc<AppState>,
    listen: SocketAddr,
    grace: Duration,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    // One machine-readable line on stdout so scripts and tests can find a port-0 listener.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening http://{addr}");
        let _ = out.flush();
    }
    tracing::info!(%addr, "tollgate-broker listening");
    let app = router(state);
    // SSE is many small writes: without TCP_NODELAY, Nagle plus the client's delayed ACK adds ~40 ms per
    // streamed answer (measured with broker/tests/routing_overhead.rs).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; draining in-flight requests");
        let _ = tx.send(true);
    });
    let mut rx2 = rx.clone();
    tokio::select! {
        r = server => r?,
        _ = async {
            let _ = rx2.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Install the tracing subscriber: text or JSON, filter from `RUST_LOG` (default `info`), to stderr.
pub fn init_logging(format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Text => builder.try_init(),
    };
}
