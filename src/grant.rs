//! The claims inside a Tollgate access token, and the grant they carry.

use crate::pattern::ModelPattern;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Which kind of proof established the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityKind {
    /// A bootstrap credential configured on the broker (local trials, tests).
    Static,
    /// A signed `sts:GetCallerIdentity` request.
    Aws,
    /// A Vault/OpenBao identity token.
    Vault,
    /// An Entra ID (Azure) access token.
    Azure,
    /// Any other OIDC issuer: Kubernetes service accounts, CI systems.
    Oidc,
    /// A person signed in through the company's IdP (the broker's OAuth authorization server).
    User,
}

impl IdentityKind {
    pub const ALL: [IdentityKind; 6] = [
        IdentityKind::Static,
        IdentityKind::Aws,
        IdentityKind::Vault,
        IdentityKind::Azure,
        IdentityKind::Oidc,
        IdentityKind::User,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Static => "static",
            IdentityKind::Aws => "aws",
            IdentityKind::Vault => "vault",
            IdentityKind::Azure => "azure",
            IdentityKind::Oidc => "oidc",
            IdentityKind::User => "user",
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the identity came from, kept in the token for audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub kind: IdentityKind,
    /// The verified subject as the identity provider names it (an ARN, a Vault entity id, an object id…).
    pub subject: String,
    /// The issuer or endpoint that vouched for it, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The policy rule that produced the grant.
    pub rule: String,
}

/// Per-principal rate limits carried in the grant. `None` = unlimited on that axis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
}

/// What the bearer of a token may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Model globs the bearer may call.
    pub models: Vec<ModelPattern>,
    /// Ids of the budgets this grant is charged against (besides those the broker attaches by scope).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default_rate")]
    pub rate: RateLimits,
    pub identity: Provenance,
    /// Extra attributes the policy chose to carry (small, string-valued).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

fn is_default_rate(r: &RateLimits) -> bool {
    r == &RateLimits::default()
}

impl Grant {
    /// May this grant call `model`?
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.iter().any(|p| p.matches(model))
    }
}

/// The registered claims plus our grant. Registered names are fixed fields, so a policy can never
/// override `iss`, `exp` and friends: the grant lives under its own key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// The grant, under a namespaced claim.
    #[serde(rename = "tollgate")]
    pub grant: Grant,
    /// The version of the policy that decided the grant (a digest of the policy file). A token minted
    /// under a policy that has since changed is refused with 401, so the agent re-runs its credential
    /// helper and the new grant applies at once. Absent in tokens from older brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            principal: "alice".into(),
            team: Some("platform".into()),
            org: None,
            models: vec![
                ModelPattern::new("gpt-5*").expect("p"),
                ModelPattern::new("demo").expect("p"),
            ],
            budgets: vec![],
            rate: RateLimits::default(),
            identity: Provenance {
                kind: IdentityKind::Static,
                subject: "alice".into(),
                issuer: None,
                rule: "r".into(),
            },
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn model_allowlist() {
        let g = grant();
        assert!(g.allows_model("gpt-5.5"));
        assert!(g.allows_model("demo"));
        assert!(!g.allows_model("demo-2"));
        assert!(!g.allows_model("o3"));
    }

    #[test]
    fn claims_round_trip_and_namespacing() {
        let c = Claims {
            iss: "https://broker".into(),
            aud: "tollgate".into(),
            sub: "alice".into(),
            iat: 1,
            nbf: 1,
            exp: 2,
            jti: "j".into(),
            grant: grant(),
            pv: None,
        };
        let v = serde_json::to_value(&c).expect("ser");
        assert_eq!(v["tollgate"]["principal"], "alice");
        assert_eq!(v["tollgate"]["identity"]["kind"], "static");
        assert!(v["tollgate"].get("rate").is_none());
        let back: Claims = serde_json::from_value(v).expect("de");
        assert_eq!(back, c);
    }
}
