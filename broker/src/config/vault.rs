//! `[vault]`: the Vault (or OpenBao) server that holds upstream keys in KV v2, and its token.

use super::source::{ConfigError, Env, Source};
use secrecy::SecretString;
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVault {
    /// `http(s)://host:port` of the Vault/OpenBao server.
    address: String,
    /// Environment variable holding the Vault token.
    token_env: Option<String>,
    /// File holding the Vault token (trimmed).
    token_file: Option<PathBuf>,
    /// How often keys are re-read, seconds. Default 300.
    refresh_secs: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct VaultConfig {
    pub address: String,
    pub token: SecretString,
    pub refresh_secs: u64,
}

pub(super) fn validate(
    s: &Source,
    raw: &Option<Spanned<RawVault>>,
    env: &dyn Env,
) -> Result<Option<VaultConfig>, ConfigError> {
    let Some(v) = raw else {
        return Ok(None);
    };
    let span = v.span();
    let v = v.get_ref();
    if !(v.address.starts_with("http://") || v.address.starts_with("https://")) {
        return Err(s.error_at(span, "vault.address", "must start with http:// or https://"));
    }
    let token = match (&v.token_env, &v.token_file) {
        (Some(var), None) => env.var(var),
        (None, Some(file)) => {
            let path = s.resolve(file);
            match env.read_file(&path) {
                Ok(t) => Some(t.trim().to_string()),
                Err(e) => {
                    return Err(s.error_at(
                        span,
                        "vault.token_file",
                        format_args!("cannot read {}: {e}", path.display()),
                    ));
                }
            }
        }
        _ => {
            return Err(s.error_at(span, "vault", "set exactly one of token_env and token_file"));
        }
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(s.error_at(span, "vault.token_env", "the Vault token is not set"));
    };
    Ok(Some(VaultConfig {
        address: v.address.trim_end_matches('/').to_string(),
        token: SecretString::from(token),
        refresh_secs: v.refresh_secs.unwrap_or(300).max(1),
    }))
}
