//! TLS termination with rustls: certificate and key from PEM files, reloaded when they change (checked
//! every `reload_interval_secs`; a bad new file is logged and the old certificate stays), and optional
//! client-certificate authentication against a CA bundle (mutual TLS).
//!
//! [`TlsListener`] plugs into `axum::serve`: a background task accepts TCP connections and runs each
//! handshake in its own task (a slow client cannot stall the accept loop); finished streams are handed to
//! axum. Dropping the listener (axum does on graceful shutdown) stops accepting at once, so new
//! connections are refused while in-flight ones drain.

use crate::config::server::TlsConfig;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The broker's one crypto provider (server TLS here, the upstream client in `proxy/client.rs`).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Build a rustls server config from the files.
pub fn load(cfg: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .map_err(|e| file_err(&cfg.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cfg.cert_file, e))?;
    if certs.is_empty() {
        return Err(file_err(&cfg.cert_file, "no certificate in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| file_err(&cfg.key_file, e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
                roots
                    .add(c.map_err(|e| file_err(ca, e))?)
                    .map_err(|e| file_err(ca, e))?;
            }
            if roots.is_empty() {
                return Err(file_err(ca, "no CA certificate in the file"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut sc = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_err(&cfg.key_file, e))?;
    // axum is served over HTTP/1.1 here.
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(sc)
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The current server config, swapped when the files change.
pub struct TlsReloader {
    cfg: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    stamp: Mutex<Stamp>,
}

fn stamp(cfg: &TlsConfig) -> Stamp {
    [
        Some(&cfg.cert_file),
        Some(&cfg.key_file),
        cfg.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

impl TlsReloader {
    pub fn new(cfg: TlsConfig) -> Result<Self, TlsError> {
        let sc = load(&cfg)?;
        let st = stamp(&cfg);
        Ok(TlsReloader {
            cfg,
            current: RwLock::new(Arc::new(sc)),
            stamp: Mutex::new(st),
        })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reload when any file's mtime or size changed. `Ok(true)` when a new config is in force; on error
    /// the old one stays (and the change is retried on the next check).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cfg);
        {
            let old = self
                .stamp
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *old == now {
                return Ok(false);
            }
        }
        let sc = load(&self.cfg)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(sc);
        *self
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        tracing::info!(cert = %self.cfg.cert_file.display(), "TLS certificate reloaded");
        Ok(true)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.reload_interval_secs)
    }
}

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    pub fn new(tcp: TcpListener, reloader: Arc<TlsReloader>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let r = reloader.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = TlsAcceptor::from(r.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let reload = tokio::spawn(async move {
            let mut tick = tokio::time::interval(reloader.interval());
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = reloader.reload_if_changed() {
                    tracing::error!(error = %e, "TLS reload failed; keeping the current certificate");
                }
            }
        });
        Ok(TlsListener {
            rx,
            local,
            tasks: vec![accept, reload],
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task only ends when aborted, which happens on drop; never reached while serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
