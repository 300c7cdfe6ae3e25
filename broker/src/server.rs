//! Running the HTTP server: bind, announce, serve, drain on shutdown.

use crate::app::AppState;
use crate::routes::router;
use crate::token::limits::PeerAddr;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serve until SIGINT/SIGTERM, then stop accepting (new connections are refused) and give in-flight
/// requests, streams included, `grace` to finish. With `tls`, serve HTTPS (see [`crate::tls`]).
pub async fn serve(
    state: Arc<AppState>,
    listen: SocketAddr,
    grace: Duration,
    tls: Option<crate::config::server::TlsConfig>,
) -> anyhow::Result<()> {
    serve_until(state, listen, grace, tls, shutdown_signal()).await
}

/// [`serve`] with the shutdown trigger given (tests pass their own future).
pub async fn serve_until(
    state: Arc<AppState>,
    listen: SocketAddr,
    grace: Duration,
    tls: Option<crate::config::server::TlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    serve_on(state, listener, grace, tls, shutdown).await
}

/// [`serve_until`] on a bound listener.
pub async fn serve_on(
    state: Arc<AppState>,
    listener: TcpListener,
    grace: Duration,
    tls: Option<crate::config::server::TlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tokio::spawn(watch_policy(state.clone()));
    // The audit writer starts now: records a previous process left in the journal are replayed at once.
    if let Some(audit) = &state.audit() {
        audit.resume();
    }
    let app = router(state.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let result = match tls {
        None => {
            announce(scheme, addr);
            // SSE is many small writes: without TCP_NODELAY, Nagle plus the client's delayed ACK adds ~40 ms
            // per streamed answer (measured with broker/tests/routing_overhead.rs).
            let listener = NoDelayListener(listener);
            drain(listener, app, grace, shutdown).await
        }
        Some(cfg) => {
            let reloader = Arc::new(crate::tls::TlsReloader::new(cfg)?);
            let tls_listener = crate::tls::TlsListener::new(listener, reloader)?;
            announce(scheme, addr);
            drain(tls_listener, app, grace, shutdown).await
        }
    };
    // Queued settlements land, then this process's budget allotments go back to the store.
    if !state.accounting().flush(Duration::from_secs(10)).await {
        tracing::error!(
            "settlements still queued at shutdown could not be stored in time; their spend is lost"
        );
    }
    state.governance().shutdown().await;
    if let Some(audit) = &state.audit() {
        audit.flush().await;
        // Cover the last records with a signed checkpoint (logged) before the process goes.
        if audit.checkpoints_enabled() {
            audit.checkpoint().await;
        }
    }
    result
}

fn announce(scheme: &str, addr: SocketAddr) {
    // One machine-readable line on stdout so scripts and tests can find a port-0 listener.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening {scheme}://{addr}");
        let _ = out.flush();
    }
    tracing::info!(%addr, scheme, "tollgate-broker listening");
}

async fn drain<L>(
    listener: L,
    app: axum::Router,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    PeerAddr: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    // The peer address reaches handlers as `ConnectInfo` (the token endpoint's per-address limit).
    let app = app.into_make_service_with_connect_info::<PeerAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
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

/// How often the policy file is checked for changes.
const POLICY_POLL: Duration = Duration::from_secs(2);

/// A digest of the policy file's content (`None` if unreadable): reload when it changes.
fn policy_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    use sha2::Digest;
    std::fs::read(path)
        .ok()
        .map(|b| sha2::Sha256::digest(&b).into())
}

/// Reload the policy on SIGHUP, and when the file's content changes (polled: no platform watcher, works
/// the same on bind mounts and Kubernetes ConfigMaps, whose updates are symlink swaps).
async fn watch_policy(state: Arc<AppState>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last = policy_digest(state.policy_file());
    let mut tick = tokio::time::interval(POLICY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let by_signal = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now = policy_digest(state.policy_file());
        if by_signal || (now.is_some() && now != last) {
            if by_signal {
                tracing::info!("SIGHUP: reloading the policy");
            }
            last = now;
            let _ = state.reload_policy();
        }
    }
}

pub async fn shutdown_signal() {
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

/// The plain-TCP listener: TCP_NODELAY on every accepted connection.
pub struct NoDelayListener(pub tokio::net::TcpListener);

impl axum::serve::Listener for NoDelayListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = io.set_nodelay(true);
        (io, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, NoDelayListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, NoDelayListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}
