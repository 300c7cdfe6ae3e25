//! Static bootstrap credentials: for local trials and tests. The broker stores only SHA-256 digests and
//! compares them in constant time.

use super::{VerifiedIdentity, Verifier, VerifyError};
use crate::config::StaticCredential;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate::IdentityKind;
use tollgate::exchange::TOKEN_TYPE_STATIC;

pub struct StaticVerifier {
    credentials: Vec<StaticCredential>,
}

impl StaticVerifier {
    pub fn new(credentials: Vec<StaticCredential>) -> Self {
        StaticVerifier { credentials }
    }
}

#[async_trait]
impl Verifier for StaticVerifier {
    fn token_types(&self) -> &[&'static str] {
        &[TOKEN_TYPE_STATIC]
    }

    async fn verify(
        &self,
        _token_type: &str,
        subject_token: &str,
    ) -> Result<VerifiedIdentity, VerifyError> {
        let digest: [u8; 32] = Sha256::digest(subject_token.as_bytes()).into();
        // Compare against every entry without early exit, so timing does not reveal which (if any) matched.
        let mut found: Option<&StaticCredential> = None;
        for c in &self.credentials {
            if bool::from(c.sha256.ct_eq(&digest)) && found.is_none() {
                found = Some(c);
            }
        }
        let c = found.ok_or(VerifyError::Rejected("bad_credential"))?;
        Ok(VerifiedIdentity {
            kind: IdentityKind::Static,
            subject: c.subject.clone(),
            issuer: None,
            attributes: Default::default(),
        })
    }
}

/// Hex SHA-256 of a credential, as written in config (`tollgate-broker hash-credential`).
pub fn hash_credential(credential: &str) -> String {
    hex::encode(Sha256::digest(credential.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_only_the_right_credential() {
        let mut sha = [0u8; 32];
        hex::decode_to_slice(hash_credential("let-me-in"), &mut sha).expect("hex");
        let v = StaticVerifier::new(vec![StaticCredential {
            subject: "dev".into(),
            sha256: sha,
        }]);
        let id = v.verify(TOKEN_TYPE_STATIC, "let-me-in").await.expect("ok");
        assert_eq!(id.subject, "dev");
        assert!(matches!(
            v.verify(TOKEN_TYPE_STATIC, "let-me-out").await,
            Err(VerifyError::Rejected(_))
        ));
        assert!(matches!(
            v.verify(TOKEN_TYPE_STATIC, "").await,
            Err(VerifyError::Rejected(_))
        ));
    }
}
