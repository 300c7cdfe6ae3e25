//! `[store]`: the governance store (SQLite file or PostgreSQL), its leases, polling and pool.

use super::source::{ConfigError, Env, Source};
use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    /// `sqlite` (default) or `postgres`.
    kind: Option<Spanned<String>>,
    /// SQLite file, relative to `server.state_dir`. Default `governance.db`.
    path: Option<PathBuf>,
    /// PostgreSQL URL; default from the environment variable named by `url_env`.
    url: Option<Spanned<String>>,
    /// Environment variable holding the PostgreSQL URL. Default `TOLLGATE_DATABASE_URL`.
    url_env: Option<String>,
    /// PostgreSQL schema to use (created if missing). Default: the server's search_path.
    schema: Option<Spanned<String>>,
    /// `refuse` (default: fail closed with 503) or `allow` when the store cannot be reached.
    on_unavailable: Option<Spanned<String>>,
    /// Lifetime of a reservation without renewal, seconds. Default 30.
    reservation_lease_secs: Option<Spanned<u64>>,
    /// How often to poll for revocations and new signing keys, milliseconds. Default 250.
    poll_interval_ms: Option<Spanned<u64>>,
    /// Connection pool size. Default 8.
    max_connections: Option<Spanned<u32>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub sqlite_path: PathBuf,
    pub url: Option<SecretString>,
    pub schema: Option<String>,
    /// Let requests through (unbudgeted, logged) when the store is down, instead of 503.
    pub fail_open: bool,
    pub reservation_lease_secs: u64,
    pub poll_interval_ms: u64,
    pub max_connections: u32,
}

pub(super) fn validate(
    s: &Source,
    raw: &RawStore,
    state_dir: &Path,
    env: &dyn Env,
) -> Result<StoreConfig, ConfigError> {
    let kind = match &raw.kind {
        None => StoreKind::Sqlite,
        Some(k) => match k.get_ref().as_str() {
            "sqlite" => StoreKind::Sqlite,
            "postgres" | "postgresql" => StoreKind::Postgres,
            other => {
                return Err(s.error_at(
                    k.span(),
                    "store.kind",
                    format_args!("unknown store {other:?} (use \"sqlite\" or \"postgres\")"),
                ));
            }
        },
    };
    let url = match &raw.url {
        Some(u) => Some(u.get_ref().clone()),
        None => env.var(raw.url_env.as_deref().unwrap_or("TOLLGATE_DATABASE_URL")),
    };
    if kind == StoreKind::Postgres {
        match &url {
            None => {
                let span = raw.kind.as_ref().map_or(0..0, Spanned::span);
                return Err(s.error_at(
                    span,
                    "store.url",
                    "a postgres store needs `url` or the environment variable named by `url_env` (default TOLLGATE_DATABASE_URL)",
                ));
            }
            Some(u) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => {
                let span = raw.url.as_ref().map_or(0..0, Spanned::span);
                return Err(s.error_at(span, "store.url", "must start with postgres://"));
            }
            Some(_) => {}
        }
    }
    if let Some(schema) = &raw.schema {
        let v = schema.get_ref();
        if v.is_empty()
            || v.len() > 63
            || !v
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(s.error_at(
                schema.span(),
                "store.schema",
                "must be 1-63 characters of a-z, 0-9 and _",
            ));
        }
    }
    let fail_open = match &raw.on_unavailable {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            "refuse" => false,
            "allow" => true,
            other => {
                return Err(s.error_at(
                    v.span(),
                    "store.on_unavailable",
                    format_args!("unknown value {other:?} (use \"refuse\" or \"allow\")"),
                ));
            }
        },
    };
    let ranged = |v: &Option<Spanned<u64>>, field: &str, lo: u64, hi: u64, default: u64| match v {
        Some(x) if !(lo..=hi).contains(x.get_ref()) => Err(s.error_at(
            x.span(),
            field,
            format_args!("must be between {lo} and {hi}"),
        )),
        Some(x) => Ok(*x.get_ref()),
        None => Ok(default),
    };
    let max_connections = match &raw.max_connections {
        Some(x) => s.in_range(x, "store.max_connections", 256)?,
        None => 8,
    };
    Ok(StoreConfig {
        kind,
        sqlite_path: state_dir.join(raw.path.as_deref().unwrap_or(Path::new("governance.db"))),
        url: url.map(SecretString::from),
        schema: raw.schema.as_ref().map(|x| x.get_ref().clone()),
        fail_open,
        reservation_lease_secs: ranged(
            &raw.reservation_lease_secs,
            "store.reservation_lease_secs",
            2,
            86_400,
            30,
        )?,
        poll_interval_ms: ranged(
            &raw.poll_interval_ms,
            "store.poll_interval_ms",
            50,
            60_000,
            250,
        )?,
        max_connections,
    })
}
