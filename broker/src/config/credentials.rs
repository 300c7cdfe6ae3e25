//! `[[credentials]]`: static credentials by the SHA-256 of their secret (the secret is never in config).

use super::source::{ConfigError, Source};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    subject: Spanned<String>,
    /// Lower-case hex SHA-256 of the credential. The credential itself is never in config.
    sha256: Spanned<String>,
}

#[derive(Clone, Debug)]
pub struct StaticCredential {
    pub subject: String,
    pub sha256: [u8; 32],
}

pub(super) fn validate(
    s: &Source,
    raw: &[RawCredential],
) -> Result<Vec<StaticCredential>, ConfigError> {
    let mut credentials = Vec::new();
    for c in raw {
        let hexs = c.sha256.get_ref();
        let mut digest = [0u8; 32];
        if hexs.len() != 64 || hex::decode_to_slice(hexs, &mut digest).is_err() {
            return Err(s.error_at(
                c.sha256.span(),
                "credentials.sha256",
                "must be 64 hex characters (sha256 of the credential)",
            ));
        }
        if c.subject.get_ref().trim().is_empty() {
            return Err(s.error_at(c.subject.span(), "credentials.subject", "must not be empty"));
        }
        credentials.push(StaticCredential {
            subject: c.subject.get_ref().clone(),
            sha256: digest,
        });
    }
    Ok(credentials)
}
