//! `oidc-file`: a JWT read from a file on every mint (a projected Kubernetes service-account token, a CI
//! OIDC token written by the runner). The file is re-read each time because its issuer rotates it.

use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const NAME: &str = "oidc-file";

pub struct OidcFileIdentity {
    path: PathBuf,
}

impl OidcFileIdentity {
    pub fn load(path: Option<&PathBuf>) -> Result<Self, IdentityError> {
        match path {
            Some(p) => Ok(OidcFileIdentity { path: p.clone() }),
            None => Err(IdentityError::NotConfigured {
                source_name: NAME,
                hint: "set TOLLGATE_OIDC_FILE or `oidc_file` in the profile".into(),
            }),
        }
    }
}

impl Identity for OidcFileIdentity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tollgate-token oidc-file fingerprint v1\0");
        h.update(self.path.to_string_lossy().as_bytes());
        hex::encode(h.finalize())
    }

    fn prove<'a>(&'a self, _ctx: &'a ProveContext<'a>) -> ProveFuture<'a> {
        Box::pin(async move {
            let text =
                std::fs::read_to_string(&self.path).map_err(|source| IdentityError::ReadFile {
                    source_name: NAME,
                    path: self.path.clone(),
                    source,
                })?;
            let jwt = text.trim();
            if jwt.split('.').count() != 3 || jwt.chars().any(|c| c.is_whitespace()) {
                return Err(IdentityError::Invalid {
                    source_name: NAME,
                    reason: format!("{} does not hold a JWT", self.path.display()),
                });
            }
            Ok(Proof {
                subject_token: SecretString::from(jwt),
                subject_token_type: tollgate::exchange::TOKEN_TYPE_JWT,
            })
        })
    }
}
