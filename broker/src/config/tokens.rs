//! `[tokens]`: the audience, lifetimes and leeway of minted tokens, signing-key rotation, the token
//! endpoint's limits, and the key-encryption key that seals store-held signing keys.

use super::source::{ConfigError, Env, Source};
use crate::keys::KeyEncryptionKey;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    audience: Option<String>,
    default_ttl_secs: Option<Spanned<u64>>,
    max_ttl_secs: Option<Spanned<u64>>,
    leeway_secs: Option<Spanned<u64>>,
    signing_key_file: Option<PathBuf>,
    /// Signing keys (kept in the store) rotate every this many seconds. Default 86400.
    rotate_secs: Option<Spanned<u64>>,
    /// Largest `/oauth/token` request body, in bytes. Default 16384 (1024–1048576).
    max_request_bytes: Option<Spanned<u64>>,
    /// Token exchanges one client address may make per minute (burst: a tenth of it, at least 10).
    /// Default 600; 0 turns the limit off.
    exchanges_per_minute_per_address: Option<Spanned<u32>>,
    /// File holding the key-encryption key (32 bytes, base64 or hex) that seals store-held signing keys
    /// at rest. Default: none (keys stored in the clear; the store is then as secret as the keys).
    key_encryption_key_file: Option<PathBuf>,
    /// Environment variable holding the key-encryption key instead. Default: none.
    key_encryption_key_env: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TokenConfig {
    pub audience: String,
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub leeway_secs: u64,
    pub signing_key_file: Option<PathBuf>,
    pub rotate_secs: u64,
    /// Largest `/oauth/token` request body, in bytes.
    pub max_request_bytes: usize,
    /// Token exchanges per client address per minute; 0 = unlimited.
    pub exchanges_per_minute_per_address: u32,
    /// Seals store-held signing keys at rest (`key_encryption_key_file` / `key_encryption_key_env`).
    pub key_encryption_key: Option<Arc<KeyEncryptionKey>>,
}

/// Absolute ceiling for any token lifetime: 24 h. Short TTLs are the point.
pub const TTL_CEILING_SECS: u64 = 24 * 3600;

pub(super) fn validate(
    s: &Source,
    raw: &RawTokens,
    env: &dyn Env,
) -> Result<TokenConfig, ConfigError> {
    let ttl = |v: &Option<Spanned<u64>>, field: &str, default: u64| -> Result<u64, ConfigError> {
        match v {
            Some(t) if *t.get_ref() == 0 || *t.get_ref() > TTL_CEILING_SECS => Err(s.error_at(
                t.span(),
                field,
                format_args!("must be between 1 and {TTL_CEILING_SECS} seconds"),
            )),
            Some(t) => Ok(*t.get_ref()),
            None => Ok(default),
        }
    };
    let max_ttl_secs = ttl(&raw.max_ttl_secs, "tokens.max_ttl_secs", 3600)?;
    let default_ttl_secs = ttl(
        &raw.default_ttl_secs,
        "tokens.default_ttl_secs",
        max_ttl_secs.min(3600),
    )?;
    if default_ttl_secs > max_ttl_secs {
        let span = raw.default_ttl_secs.as_ref().map_or(0..0, Spanned::span);
        return Err(s.error_at(
            span,
            "tokens.default_ttl_secs",
            "must not exceed tokens.max_ttl_secs",
        ));
    }
    let leeway_secs = match &raw.leeway_secs {
        Some(l) if *l.get_ref() > 300 => {
            return Err(s.error_at(l.span(), "tokens.leeway_secs", "must be at most 300"));
        }
        Some(l) => *l.get_ref(),
        None => 30,
    };
    Ok(TokenConfig {
        audience: raw
            .audience
            .clone()
            .unwrap_or_else(|| "tollgate".to_string()),
        default_ttl_secs,
        max_ttl_secs,
        leeway_secs,
        signing_key_file: raw.signing_key_file.as_deref().map(|p| s.resolve(p)),
        rotate_secs: match &raw.rotate_secs {
            Some(r) if !(10..=365 * 86_400).contains(r.get_ref()) => {
                return Err(s.error_at(
                    r.span(),
                    "tokens.rotate_secs",
                    "must be between 10 and 31536000",
                ));
            }
            Some(r) => *r.get_ref(),
            None => 86_400,
        },
        max_request_bytes: match &raw.max_request_bytes {
            Some(b) if !(1024..=1_048_576).contains(b.get_ref()) => {
                return Err(s.error_at(
                    b.span(),
                    "tokens.max_request_bytes",
                    "must be between 1024 and 1048576",
                ));
            }
            Some(b) => usize::try_from(*b.get_ref()).unwrap_or(16_384),
            None => 16_384,
        },
        exchanges_per_minute_per_address: raw
            .exchanges_per_minute_per_address
            .as_ref()
            .map_or(600, |r| *r.get_ref()),
        key_encryption_key: key_encryption_key(
            raw.key_encryption_key_file
                .as_deref()
                .map(|p| s.resolve(p))
                .as_deref(),
            raw.key_encryption_key_env.as_deref(),
            env,
        )
        .map_err(|(field, message)| s.error_at(0..0, field, message))?,
    })
}

/// The key-encryption key from `tokens.key_encryption_key_file` or `tokens.key_encryption_key_env` (at most
/// one). The file must be private (checked on the real file, as for a private key) and is read through
/// the injected environment. Errors name the field.
fn key_encryption_key(
    file: Option<&Path>,
    env_var: Option<&str>,
    env: &dyn Env,
) -> Result<Option<Arc<KeyEncryptionKey>>, (&'static str, String)> {
    match (file, env_var) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err((
            "tokens.key_encryption_key_env",
            "set key_encryption_key_file or key_encryption_key_env, not both".into(),
        )),
        (Some(path), None) => {
            let field = "tokens.key_encryption_key_file";
            crate::keys::check_operator_secret(
                path,
                "the key-encryption key (tokens.key_encryption_key_file)",
                "With it and a copy of the store anyone can mint tokens; treat it as exposed",
            )
            .map_err(|e| (field, e.to_string()))?;
            let text = env
                .read_file(path)
                .map_err(|e| (field, format!("{}: {e}", path.display())))?;
            KeyEncryptionKey::from_text(&text)
                .map(|k| Some(Arc::new(k)))
                .map_err(|e| (field, format!("{}: {e}", path.display())))
        }
        (None, Some(name)) => {
            let Some(value) = env.var(name) else {
                return Err((
                    "tokens.key_encryption_key_env",
                    format!(
                        "the environment variable {name} is not set (it must hold the key-encryption key)"
                    ),
                ));
            };
            KeyEncryptionKey::from_text(&value)
                .map(|k| Some(Arc::new(k)))
                .map_err(|e| ("tokens.key_encryption_key_env", format!("{name}: {e}")))
        }
    }
}
