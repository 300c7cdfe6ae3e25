//! `[audit]`: the audit trail's store, checkpoints and journal. Raw struct (as written, strict) and its
//! validated form.

use super::source::{ConfigError, Source};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// `[audit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Record the audit trail. Default true.
    pub enabled: Option<bool>,
    /// SQLite file of the trail when the store is SQLite. Default `<server.state_dir>/audit.sqlite`.
    /// Relative to this file. With `[store] kind = "postgres"` the trail is in PostgreSQL (one chain for
    /// all replicas) and setting this is an error.
    pub sqlite_path: Option<Spanned<PathBuf>>,
    /// Sign a checkpoint after every record whose sequence number is a multiple of this. Default 1000;
    /// 0 turns this trigger off.
    pub checkpoint_every: Option<Spanned<u64>>,
    /// Also sign one when this many seconds passed since the last and the chain grew. Default 60; 0 off.
    pub checkpoint_interval_secs: Option<Spanned<u64>>,
    /// Directory of the local journal that keeps records while the audit store is unavailable. Default
    /// `<server.state_dir>/audit-journal`. Relative to this file.
    pub journal_dir: Option<Spanned<PathBuf>>,
    /// Largest journal, bytes. Default 67108864 (64 MiB).
    pub journal_max_bytes: Option<Spanned<u64>>,
    /// `refuse` (default: refuse new requests with 503 while the journal is full) or `drop` (drop and count).
    pub on_journal_full: Option<Spanned<String>>,
}

#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub enabled: bool,
    /// The SQLite trail (SQLite store only; PostgreSQL keeps the trail in the store).
    pub sqlite_path: PathBuf,
    pub checkpoints: crate::audit::checkpoint::CheckpointConfig,
    /// Where records wait while the store cannot take them.
    pub journal: crate::audit::journal::JournalConfig,
}

pub fn validate(
    s: &Source,
    r: &RawAudit,
    state_dir: &Path,
    postgres_store: bool,
) -> Result<AuditConfig, ConfigError> {
    if let (Some(p), true) = (&r.sqlite_path, postgres_store) {
        return Err(s.error_at(
            p.span(),
            "audit.sqlite_path",
            "with [store] kind = \"postgres\" the audit trail is kept in PostgreSQL (one chain for all replicas); remove this key",
        ));
    }
    let defaults = crate::audit::checkpoint::CheckpointConfig::default();
    let cap = |v: &Option<Spanned<u64>>, field: &str, default: u64| match v {
        Some(x) if *x.get_ref() > 1_000_000_000 => Err(s.error_at(
            x.span(),
            field,
            "must be at most 1000000000 (0 turns it off)",
        )),
        Some(x) => Ok(*x.get_ref()),
        None => Ok(default),
    };
    let journal = crate::audit::journal::JournalConfig {
        dir: r.journal_dir.as_ref().map_or_else(
            || state_dir.join("audit-journal"),
            |p| s.resolve(p.get_ref()),
        ),
        max_bytes: match &r.journal_max_bytes {
            Some(x) if !(4096..=1 << 40).contains(x.get_ref()) => {
                return Err(s.error_at(
                    x.span(),
                    "audit.journal_max_bytes",
                    "must be between 4096 and 1099511627776",
                ));
            }
            Some(x) => *x.get_ref(),
            None => crate::audit::journal::DEFAULT_MAX_BYTES,
        },
        on_full: match &r.on_journal_full {
            None => crate::audit::journal::OnFull::Refuse,
            Some(v) => match v.get_ref().as_str() {
                "refuse" => crate::audit::journal::OnFull::Refuse,
                "drop" => crate::audit::journal::OnFull::Drop,
                other => {
                    return Err(s.error_at(
                        v.span(),
                        "audit.on_journal_full",
                        format_args!("unknown value {other:?} (use \"refuse\" or \"drop\")"),
                    ));
                }
            },
        },
    };
    Ok(AuditConfig {
        journal,
        enabled: r.enabled.unwrap_or(true),
        sqlite_path: r.sqlite_path.as_ref().map_or_else(
            || state_dir.join("audit.sqlite"),
            |p| s.resolve(p.get_ref()),
        ),
        checkpoints: crate::audit::checkpoint::CheckpointConfig {
            every: cap(
                &r.checkpoint_every,
                "audit.checkpoint_every",
                defaults.every,
            )?,
            interval_secs: cap(
                &r.checkpoint_interval_secs,
                "audit.checkpoint_interval_secs",
                defaults.interval_secs,
            )?,
        },
    })
}
