//! Identity verification: one verifier per proof kind behind one interface.

pub mod aws;
pub mod azure;
pub mod config;
pub mod jwt;
pub mod oidc;
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
    /// Every verifier the config asks for. Clients are built here; nothing is fetched until a proof
    /// arrives.
    /// `store` is the governance store: the AWS verifier keeps its replay guard there, shared by replicas.
    pub fn from_config(
        config: &crate::config::Config,
        clock: crate::clock::SharedClock,
        store: std::sync::Arc<dyn crate::governance::store::Store>,
    ) -> Result<Self, VerifyError> {
        let mut v = Verifiers::default();
        v.push(Box::new(static_cred::StaticVerifier::new(
            config.credentials.clone(),
        )));
        if let Some(a) = &config.identity.aws {
            v.push(Box::new(aws::AwsVerifier::new(
                a.clone(),
                clock.clone(),
                store,
            )?));
        }
        for o in &config.identity.oidc {
            v.push(Box::new(oidc::OidcVerifier::new(o.clone(), clock.clone())?));
        }
        for a in &config.identity.azure {
            v.push(Box::new(azure::AzureVerifier::new(
                a.clone(),
                clock.clone(),
            )?));
        }
        Ok(v)
    }

    pub fn push(&mut self, v: Box<dyn Verifier>) {
        self.verifiers.push(v);
    }

    pub async fn verify(
        &self,
        token_type: &str,
        subject_token: &str,
    ) -> Result<VerifiedIdentity, VerifyError> {
        let mut taken = false;
        for v in &self.verifiers {
            if v.token_types().contains(&token_type) {
                taken = true;
                match v.verify(token_type, subject_token).await {
                    // Several verifiers may take JWTs (Vault, OIDC issuers, Azure): try the next on a
                    // "not mine" rejection only.
                    Err(VerifyError::Rejected("not_this_issuer")) => continue,
                    r => return r,
                }
            }
        }
        if taken {
            // A JWT from an issuer nobody trusts is a bad grant, not an unsupported type.
            Err(VerifyError::Rejected("unknown_issuer"))
        } else {
            Err(VerifyError::UnsupportedType)
        }
    }
}
