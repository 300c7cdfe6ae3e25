//! `[server]`: where the broker listens, the URL it issues tokens as, its state directory, body limit, log
//! format, shutdown grace and TLS.

use super::source::{ConfigError, Source};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    state_dir: Option<PathBuf>,
    max_body_bytes: Option<Spanned<u64>>,
    log_format: Option<LogFormat>,
    shutdown_grace_secs: Option<u64>,
    tls: Option<RawTls>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Issuer of our tokens and base of discovery; no trailing slash.
    pub public_url: String,
    /// Whether `public_url` was configured (else it is derived from the address the broker listens on).
    pub public_url_set: bool,
    pub state_dir: PathBuf,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub shutdown_grace_secs: u64,
    pub tls: Option<TlsConfig>,
}

impl ServerConfig {
    /// No `public_url` is configured and the port is 0: the broker advertises (and issues tokens as) the
    /// address it was given by the system, which no other replica shares, so it takes no part in the
    /// store's shared-issuer check (docs/operations.md, "Several replicas").
    pub fn issuer_is_ephemeral(&self) -> bool {
        !self.public_url_set && self.listen.port() == 0
    }
}

pub(super) fn validate(s: &Source, raw: &RawServer) -> Result<ServerConfig, ConfigError> {
    let listen_raw = raw
        .listen
        .as_ref()
        .map_or("127.0.0.1:8787", |l| l.get_ref().as_str());
    let listen: SocketAddr = listen_raw.parse().map_err(|e| match &raw.listen {
        Some(l) => s.error_at(
            l.span(),
            "server.listen",
            format_args!("{listen_raw:?} is not an address:port ({e})"),
        ),
        None => s.error_at(0..0, "server.listen", e),
    })?;
    let public_url = match &raw.public_url {
        Some(u) => {
            let v = u.get_ref().trim_end_matches('/').to_string();
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(s.error_at(
                    u.span(),
                    "server.public_url",
                    "must start with http:// or https://",
                ));
            }
            v
        }
        None => format!("http://{listen}"),
    };
    let max_body_bytes = match &raw.max_body_bytes {
        Some(m) if *m.get_ref() < 1024 || *m.get_ref() > 256 * 1024 * 1024 => {
            return Err(s.error_at(
                m.span(),
                "server.max_body_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        Some(m) => *m.get_ref() as usize,
        None => 16 * 1024 * 1024,
    };
    Ok(ServerConfig {
        listen,
        public_url_set: raw.public_url.is_some(),
        public_url,
        state_dir: s.resolve(raw.state_dir.as_deref().unwrap_or(Path::new(".tollgate"))),
        max_body_bytes,
        log_format: raw.log_format.unwrap_or_default(),
        shutdown_grace_secs: raw.shutdown_grace_secs.unwrap_or(30),
        tls: tls(s, &raw.tls)?,
    })
}

/// `[server.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain. Reloaded when the file changes.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Reloaded when the file changes.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// How often to check the files for changes, seconds. Default 10.
    pub reload_interval_secs: Option<Spanned<u64>>,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub reload_interval_secs: u64,
}

pub fn tls(s: &Source, r: &Option<RawTls>) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(r) = r else { return Ok(None) };
    let reload_interval_secs = match &r.reload_interval_secs {
        Some(v) if *v.get_ref() == 0 => {
            return Err(s.error_at(
                v.span(),
                "server.tls.reload_interval_secs",
                "must be at least 1",
            ));
        }
        Some(v) => *v.get_ref(),
        None => 10,
    };
    Ok(Some(TlsConfig {
        cert_file: s.resolve(&r.cert_file),
        key_file: s.resolve(&r.key_file),
        client_ca_file: r.client_ca_file.as_deref().map(|p| s.resolve(p)),
        reload_interval_secs,
    }))
}
