//! Identity verification: one verifier per proof kind behind one interface.

pub mod static_cred;

use async_trait::async_trait;
use std::collections::BTreeMap;
use tollgate::IdentityKind;

/// An identity the broker has verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedIdentity {
    pub kind: IdentityKind,
    /// Canonical subject (ARN with assumed-role folded to role, OIDC `sub`, Azure `oid`, static subject…).
    pub subject: String,
    /// Who vouched (OIDC issuer, STS endpoint); `None` for static credentials.
    pub issuer: Option<String>,
    /// Claims and attributes a policy may match on (groups, account, namespace…), multi-valued.
    pub attributes: BTreeMap<String, Vec<String>>,
}

/// Why a proof was not accepted. The variants are for logs and metrics; the client only ever learns
/// `invalid_grant` with a generic description, so an attacker learns nothing about which check failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The proof is not of a type any configured verifier takes.
    #[error("unsupported subject_token_type")]
    UnsupportedType,
    /// The proof was checked and rejected.
    #[error("proof rejected: {0}")]
    Rejected(&'static str),
    /// The proof could not be checked because a dependency (issuer, STS) is down.
    #[error("verifier unavailable: {0}")]
    Unavailable(String),
}

impl VerifyError {
    /// A low-cardinality label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::UnsupportedType => "unsupported_type",
            VerifyError::Rejected(r) => r,
            VerifyError::Unavailable(_) => "unavailable",
        }
    }
}

/// A proof verifier.
#[async_trait]
pub trait Verifier: Send + Sync {
    /// The `subject_token_type` URNs this verifier takes.
    fn token_types(&self) -> &[&'static str];
    /// Verify a subject token of one of those types.
    async fn verify(
        &self,
        token_type: &str,
        subject_token: &str,
    ) -> Result<VerifiedIdentity, VerifyError>;
}

/// All configured verifiers; dispatches on `subject_token_type`.
#[derive(Default)]
pub struct Verifiers {
    verifiers: Vec<Box<dyn Verifier>>,
}

impl Verifiers {
    pub fn push(&mut self, v: Box<dyn Verifier>) {
        self.verifiers.push(v);
    }

    pub async fn verify(
        &self,
        token_type: &str,
        subject_token: &str,
    ) -> Result<VerifiedIdentity, VerifyError> {
        for v in &self.verifiers {
            if v.token_types().contains(&token_type) {
                match v.verify(token_type, subject_token).await {
                    // Several verifiers may take JWTs (Vault, OIDC issuers, Azure): try the next on a
                    // "not mine" rejection only.
                    Err(VerifyError::Rejected("not_this_issuer")) => continue,
                    r => return r,
                }
            }
        }
        Err(VerifyError::UnsupportedType)
    }
}
