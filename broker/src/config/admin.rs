//! `[admin]`: the admin key (by its SHA-256) that opens `/admin/v1/*`.

use super::source::{ConfigError, Source};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Lower-case hex SHA-256 of the admin key. No admin API without it.
    key_sha256: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Default)]
pub struct AdminConfig {
    pub key_sha256: Option<[u8; 32]>,
}

pub(super) fn validate(s: &Source, raw: &RawAdmin) -> Result<AdminConfig, ConfigError> {
    Ok(AdminConfig {
        key_sha256: match &raw.key_sha256 {
            None => None,
            Some(h) => {
                let mut d = [0u8; 32];
                if h.get_ref().len() != 64 || hex::decode_to_slice(h.get_ref(), &mut d).is_err() {
                    return Err(s.error_at(
                        h.span(),
                        "admin.key_sha256",
                        "must be 64 hex characters (sha256 of the admin key)",
                    ));
                }
                Some(d)
            }
        },
    })
}
