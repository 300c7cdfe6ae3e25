//! Generic OIDC issuers: Vault/OpenBao identity tokens, Kubernetes service-account tokens, CI OIDC tokens.
//!
//! One verifier per configured issuer. A token is routed here by its (unverified) `iss`; everything else
//! is checked after the signature: algorithm pinned per issuer, `aud`, `exp`/`nbf`/`iat` with the
//! configured leeway, then bound claims (exact or glob). All claims become policy attributes.

use super::config::{BoundClaimsType, OidcConfig};
use super::jwt::{self, Expectations, KeyLocation, KeyStore, Unverified};
use super::{VerifiedIdentity, Verifier, VerifyError};
use crate::clock::SharedClock;
use async_trait::async_trait;
use tollgate::exchange::TOKEN_TYPE_JWT;
use tollgate::pattern::glob_match;

pub struct OidcVerifier {
    cfg: OidcConfig,
    keys: KeyStore,
    location: KeyLocation,
    issuers: Vec<String>,
    clock: SharedClock,
}

impl OidcVerifier {
    pub fn new(cfg: OidcConfig, clock: SharedClock) -> Result<Self, VerifyError> {
        let location = match (&cfg.jwks_url, &cfg.discovery_url) {
            (Some(url), _) => KeyLocation::Jwks { url: url.clone() },
            (None, Some(url)) => KeyLocation::Discovery {
                url: url.clone(),
                expected_issuer: Some(cfg.issuer.clone()),
            },
            (None, None) => KeyLocation::Discovery {
                url: format!(
                    "{}/.well-known/openid-configuration",
                    cfg.issuer.trim_end_matches('/')
                ),
                expected_issuer: Some(cfg.issuer.clone()),
            },
        };
        Ok(OidcVerifier {
            keys: KeyStore::new(&cfg.keys, clock.clone())?,
            issuers: vec![cfg.issuer.clone()],
            location,
            cfg,
            clock,
        })
    }
}

/// Does some value of the claim satisfy some bound value?
pub(crate) fn claim_bound(values: &[String], wanted: &[String], ty: BoundClaimsType) -> bool {
    values.iter().any(|v| {
        wanted.iter().any(|w| match ty {
            BoundClaimsType::Exact => v == w,
            BoundClaimsType::Glob => glob_match(w.as_bytes(), v.as_bytes()),
        })
    })
}

#[async_trait]
impl Verifier for OidcVerifier {
    fn token_types(&self) -> &[&'static str] {
        &[TOKEN_TYPE_JWT]
    }

    async fn verify(
        &self,
        _token_type: &str,
        subject_token: &str,
    ) -> Result<VerifiedIdentity, VerifyError> {
        let u = Unverified::parse(subject_token)?;
        if u.str_claim("iss") != Some(self.cfg.issuer.as_str()) {
            return Err(VerifyError::Rejected("not_this_issuer"));
        }
        if !self.cfg.algorithms.contains(&u.header.alg) {
            return Err(VerifyError::Rejected("alg_not_allowed"));
        }
        let (_, jwk) = self
            .keys
            .key_for(&self.cfg.issuer, &self.location, u.header.kid.as_deref())
            .await?;
        let claims = jwt::verify(
            subject_token,
            u.header.alg,
            &jwk,
            &Expectations {
                algorithms: &self.cfg.algorithms,
                issuers: &self.issuers,
                audiences: &self.cfg.audiences,
                leeway_secs: self.cfg.leeway_secs,
                now_secs: self.clock.now_secs(),
            },
        )?;
        let subject = claims
            .get(&self.cfg.subject_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::Rejected("no_subject"))?
            .to_string();
        let attributes = jwt::attributes(&claims);
        for (claim, wanted) in &self.cfg.bound_claims {
            let values = attributes.get(claim).map(Vec::as_slice).unwrap_or_default();
            if !claim_bound(values, wanted, self.cfg.bound_claims_type) {
                return Err(VerifyError::Rejected("claim_mismatch"));
            }
        }
        Ok(VerifiedIdentity {
            kind: self.cfg.kind,
            subject,
            issuer: Some(self.cfg.issuer.clone()),
            attributes,
        })
    }
}
