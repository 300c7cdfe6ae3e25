//! Entra ID (Azure) access tokens from managed identity or workload identity, and people's tokens from the
//! Azure CLI (`tollgate-token --identity azure-cli`): nothing here assumes a managed identity's claims.
//!
//! The token's `tid` must be an allow-listed tenant; that tenant's discovery document
//! (`{authority}/{tenant}/v2.0/.well-known/openid-configuration`) gives the JWKS. RS256 only; `iss` must be
//! the tenant's v2 issuer (from discovery) or its v1 issuer `https://sts.windows.net/{tenant}/` (what
//! tokens for an app with `accessTokenAcceptedVersion` 1 carry); `aud` must be the broker's app ID URI.
//! Identity = `oid`; every claim becomes an attribute (`appid`/`azp`, `tid`, and when present `xms_mirid`,
//! `idtyp`, `upn`, `scp`). `xms_mirid` is only a hint: Microsoft emits it for first-party audiences only.
//! A person's token says `idtyp = "user"` (when the app asks for that optional claim) and carries `upn` and
//! `scp`; the Azure CLI's is issued to the CLI's client ID (`appid` 04b07795-8ddb-461a-bbee-02f9e1bf7b46), so
//! a policy tells people from workloads by those attributes.

use super::config::AzureConfig;
use super::jwt::{self, Expectations, KeyLocation, KeyStore, Unverified};
use super::{VerifiedIdentity, Verifier, VerifyError};
use crate::clock::SharedClock;
use async_trait::async_trait;
use jsonwebtoken::Algorithm;
use tollgate::IdentityKind;
use tollgate::exchange::TOKEN_TYPE_JWT;

const V1_ISSUER_PREFIX: &str = "https://sts.windows.net/";

pub struct AzureVerifier {
    cfg: AzureConfig,
    keys: KeyStore,
    clock: SharedClock,
}

impl AzureVerifier {
    pub fn new(cfg: AzureConfig, clock: SharedClock) -> Result<Self, VerifyError> {
        Ok(AzureVerifier {
            keys: KeyStore::new(&cfg.keys, clock.clone())?,
            cfg,
            clock,
        })
    }

    /// Is this plausibly an Entra token meant for this verifier (before any check)?
    fn looks_mine(&self, u: &Unverified) -> bool {
        u.str_claim("tid").is_some()
            && u.str_claim("iss").is_some_and(|iss| {
                iss.starts_with(V1_ISSUER_PREFIX)
                    || iss.starts_with(&format!("{}/", self.cfg.authority))
            })
    }
}

#[async_trait]
impl Verifier for AzureVerifier {
    fn token_types(&self) -> &[&'static str] {
        &[TOKEN_TYPE_JWT]
    }

    async fn verify(
        &self,
        _token_type: &str,
        subject_token: &str,
    ) -> Result<VerifiedIdentity, VerifyError> {
        let u = Unverified::parse(subject_token)?;
        if !self.looks_mine(&u) {
            return Err(VerifyError::Rejected("not_this_issuer"));
        }
        let tid = u.str_claim("tid").unwrap_or_default().to_ascii_lowercase();
        // Only allow-listed tenants: never fetch discovery for a tenant an attacker names.
        let Some(tenant) = self.cfg.tenants.iter().find(|t| **t == tid) else {
            return Err(VerifyError::Rejected("tenant_not_allowed"));
        };
        if u.header.alg != Algorithm::RS256 {
            return Err(VerifyError::Rejected("alg_not_allowed"));
        }
        let location = KeyLocation::Discovery {
            url: format!(
                "{}/{tenant}/v2.0/.well-known/openid-configuration",
                self.cfg.authority
            ),
            expected_issuer: None,
        };
        let (set, jwk) = self
            .keys
            .key_for(tenant, &location, u.header.kid.as_deref())
            .await?;
        let mut issuers = vec![format!("{V1_ISSUER_PREFIX}{tenant}/")];
        if let Some(iss) = &set.issuer {
            // A per-tenant document names its tenant in the issuer; a "common" one has a placeholder.
            issuers.push(iss.replace("{tenantid}", tenant));
        }
        let claims = jwt::verify(
            subject_token,
            u.header.alg,
            &jwk,
            &Expectations {
                algorithms: &[Algorithm::RS256],
                issuers: &issuers,
                audiences: &self.cfg.audiences,
                leeway_secs: self.cfg.leeway_secs,
                now_secs: self.clock.now_secs(),
            },
        )?;
        // The verified claims must name the same tenant we took keys and issuers for.
        if claims
            .get("tid")
            .and_then(|v| v.as_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
            != Some(tenant.as_str())
        {
            return Err(VerifyError::Rejected("tenant_not_allowed"));
        }
        let oid = claims
            .get("oid")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::Rejected("no_subject"))?
            .to_string();
        let mut attributes = jwt::attributes(&claims);
        // v2 tokens carry the client ID as `azp`, v1 as `appid`: expose both names.
        if let Some(azp) = attributes.get("azp").cloned() {
            attributes.entry("appid".into()).or_insert(azp);
        }
        Ok(VerifiedIdentity {
            kind: IdentityKind::Azure,
            subject: oid,
            issuer: claims.get("iss").and_then(|v| v.as_str()).map(String::from),
            attributes,
        })
    }
}
