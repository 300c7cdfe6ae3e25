//! The `[identity]` section of the broker config: which workload identities the broker accepts.
//!
//! ```toml
//! [identity.aws]                      # at most one: a signed sts:GetCallerIdentity, replayed
//! server_id = "tollgate.example.com"  # value the helper must sign into X-Tollgate-Server-ID
//! endpoints = [{ region = "eu-west-1", url = "https://sts.eu-west-1.amazonaws.com" }]
//!
//! [[identity.oidc]]                   # any number: Vault/OpenBao identity tokens, Kubernetes, CI
//! kind = "vault"                      # or "oidc"; the identity kind policies match on
//! issuer = "https://vault.example.com/v1/identity/oidc"
//! audiences = ["tollgate"]
//! bound_claims = { namespace = "ci" }
//!
//! [[identity.azure]]                  # any number: Entra access tokens (managed/workload identity, Azure CLI)
//! tenants = ["00000000-0000-0000-0000-000000000000"]
//! audiences = ["api://tollgate"]
//! ```

use crate::config::source::{ConfigError, Source};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use std::collections::BTreeMap;
use tollgate::IdentityKind;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    aws: Option<Spanned<RawAws>>,
    #[serde(default)]
    oidc: Vec<Spanned<RawOidc>>,
    #[serde(default)]
    azure: Vec<Spanned<RawAzure>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    /// Value the `X-Tollgate-Server-ID` header must carry (and the signature must cover).
    server_id: String,
    /// Allow-listed STS endpoints; the region in the credential scope picks one.
    endpoints: Vec<RawStsEndpoint>,
    /// Extra `X-Amz-*` headers to accept besides the SigV4 ones.
    #[serde(default)]
    allowed_amz_headers: Vec<String>,
    /// How far `X-Amz-Date` may be from the broker's clock, seconds. Default and maximum 900.
    max_skew_secs: Option<u64>,
    /// Timeout of the replay to STS, milliseconds. Default 5000.
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStsEndpoint {
    region: String,
    /// Where the broker replays the request, e.g. `https://sts.eu-west-1.amazonaws.com`. The signed
    /// `Host` must be this URL's authority.
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    kind: Option<String>,
    issuer: String,
    /// Default `{issuer}/.well-known/openid-configuration`.
    discovery_url: Option<String>,
    /// Skip discovery and fetch keys from here.
    jwks_url: Option<String>,
    audiences: Vec<String>,
    /// Default `["RS256"]`. Asymmetric algorithms only.
    algorithms: Option<Vec<String>>,
    /// Tolerance on `exp`/`nbf`/`iat`, seconds. Default 60, maximum 300.
    leeway_secs: Option<u64>,
    /// Claim naming the subject. Default `sub`.
    subject_claim: Option<String>,
    /// Claim (flattened name, nested objects joined by `/`) → required value or list of values.
    #[serde(default)]
    bound_claims: BTreeMap<String, StringOrList>,
    /// `exact` (default) or `glob` (`*`, `?`).
    bound_claims_type: Option<String>,
    /// How long discovery + JWKS are cached, seconds. Default 3600.
    jwks_cache_secs: Option<u64>,
    /// Least time between two refreshes triggered by an unknown `kid`, seconds. Default 60.
    jwks_min_refresh_secs: Option<u64>,
    /// Timeout of discovery and JWKS fetches, milliseconds. Default 5000.
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzure {
    /// Default `https://login.microsoftonline.com`.
    authority: Option<String>,
    tenants: Vec<String>,
    /// The broker's application ID URI (and/or client ID).
    audiences: Vec<String>,
    leeway_secs: Option<u64>,
    /// How long discovery + JWKS are cached, seconds. Default 3600.
    jwks_cache_secs: Option<u64>,
    /// Least time between two refreshes triggered by an unknown `kid`, seconds. Default 60.
    jwks_min_refresh_secs: Option<u64>,
    /// Timeout of discovery and JWKS fetches, milliseconds. Default 5000.
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

// ---------------------------------------------------------------- validated

#[derive(Clone, Debug, Default)]
pub struct IdentityConfig {
    pub aws: Option<AwsConfig>,
    pub oidc: Vec<OidcConfig>,
    pub azure: Vec<AzureConfig>,
}

#[derive(Clone, Debug)]
pub struct AwsConfig {
    pub server_id: String,
    pub endpoints: Vec<StsEndpoint>,
    /// Lower-case.
    pub allowed_amz_headers: Vec<String>,
    pub max_skew_secs: u64,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug)]
pub struct StsEndpoint {
    pub region: String,
    /// Without trailing slash.
    pub url: String,
    /// The URL's authority (`host[:port]`), lower-case: the only `Host` a proof may be signed for.
    pub host: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundClaimsType {
    Exact,
    Glob,
}

#[derive(Clone, Debug)]
pub struct KeyCacheConfig {
    pub jwks_cache_secs: u64,
    pub jwks_min_refresh_secs: u64,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug)]
pub struct OidcConfig {
    pub kind: IdentityKind,
    pub issuer: String,
    pub discovery_url: Option<String>,
    pub jwks_url: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
    pub subject_claim: String,
    pub bound_claims: BTreeMap<String, Vec<String>>,
    pub bound_claims_type: BoundClaimsType,
    pub keys: KeyCacheConfig,
}

#[derive(Clone, Debug)]
pub struct AzureConfig {
    /// Without trailing slash.
    pub authority: String,
    pub tenants: Vec<String>,
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
    pub keys: KeyCacheConfig,
}

fn http_url(u: &str) -> bool {
    u.starts_with("https://") || u.starts_with("http://")
}

impl IdentityConfig {
    pub fn validate(raw: &RawIdentity, s: &Source) -> Result<Self, ConfigError> {
        let mut out = IdentityConfig::default();
        if let Some(a) = &raw.aws {
            let span = a.span();
            let a = a.get_ref();
            let err = |f: &str, m: &str| s.error_at(span.clone(), &format!("identity.aws.{f}"), m);
            if a.server_id.trim().is_empty() || a.server_id.chars().any(char::is_control) {
                return Err(err("server_id", "must be a non-empty single-line value"));
            }
            if a.endpoints.is_empty() {
                return Err(err("endpoints", "list at least one STS endpoint"));
            }
            let mut endpoints = Vec::new();
            for e in &a.endpoints {
                let url =
                    reqwest::Url::parse(&e.url).map_err(|_| err("endpoints.url", "not a URL"))?;
                if !matches!(url.scheme(), "https" | "http")
                    || url.query().is_some()
                    || !url.username().is_empty()
                    || url.path() != "/"
                {
                    return Err(err(
                        "endpoints.url",
                        "must be http(s)://host[:port] with no path, query or user info",
                    ));
                }
                let Some(host) = url.host_str() else {
                    return Err(err("endpoints.url", "has no host"));
                };
                let host = match url.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_string(),
                }
                .to_ascii_lowercase();
                if e.region.is_empty()
                    || !e
                        .region
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(err("endpoints.region", "must be an AWS region name"));
                }
                if endpoints.iter().any(|x: &StsEndpoint| x.region == e.region) {
                    return Err(err("endpoints.region", "listed twice"));
                }
                endpoints.push(StsEndpoint {
                    region: e.region.clone(),
                    url: e.url.trim_end_matches('/').to_string(),
                    host,
                });
            }
            let mut allowed = Vec::new();
            for h in &a.allowed_amz_headers {
                if !h.to_ascii_lowercase().starts_with("x-amz-") {
                    return Err(err(
                        "allowed_amz_headers",
                        "entries must be X-Amz-* header names",
                    ));
                }
                allowed.push(h.to_ascii_lowercase());
            }
            let max_skew_secs = a.max_skew_secs.unwrap_or(900);
            if !(1..=900).contains(&max_skew_secs) {
                return Err(err("max_skew_secs", "must be between 1 and 900"));
            }
            out.aws = Some(AwsConfig {
                server_id: a.server_id.clone(),
                endpoints,
                allowed_amz_headers: allowed,
                max_skew_secs,
                timeout_ms: a.timeout_ms.unwrap_or(5000).clamp(100, 60_000),
            });
        }

        for (i, o) in raw.oidc.iter().enumerate() {
            let span = o.span();
            let o = o.get_ref();
            let err =
                |f: &str, m: &str| s.error_at(span.clone(), &format!("identity.oidc[{i}].{f}"), m);
            let kind = match o.kind.as_deref().unwrap_or("oidc") {
                "oidc" => IdentityKind::Oidc,
                "vault" => IdentityKind::Vault,
                _ => return Err(err("kind", "must be \"oidc\" or \"vault\"")),
            };
            if !http_url(&o.issuer) {
                return Err(err("issuer", "must be an http(s) URL"));
            }
            if out.oidc.iter().any(|x: &OidcConfig| x.issuer == o.issuer) {
                return Err(err("issuer", "configured twice"));
            }
            for u in [&o.discovery_url, &o.jwks_url].into_iter().flatten() {
                if !http_url(u) {
                    return Err(err("discovery_url", "URLs must be http(s)"));
                }
            }
            if o.discovery_url.is_some() && o.jwks_url.is_some() {
                return Err(err("jwks_url", "set either discovery_url or jwks_url"));
            }
            if o.audiences.is_empty() || o.audiences.iter().any(|a| a.is_empty()) {
                return Err(err(
                    "audiences",
                    "list at least one audience: a token for another service must not work here",
                ));
            }
            let algorithms =
                parse_algorithms(o.algorithms.as_deref()).map_err(|m| err("algorithms", &m))?;
            let leeway_secs = leeway(o.leeway_secs).map_err(|m| err("leeway_secs", m))?;
            let bound_claims_type = match o.bound_claims_type.as_deref().unwrap_or("exact") {
                "exact" => BoundClaimsType::Exact,
                "glob" => BoundClaimsType::Glob,
                _ => return Err(err("bound_claims_type", "must be \"exact\" or \"glob\"")),
            };
            let mut bound_claims = BTreeMap::new();
            for (k, v) in &o.bound_claims {
                let vs = match v {
                    StringOrList::One(v) => vec![v.clone()],
                    StringOrList::Many(vs) if vs.is_empty() => {
                        return Err(err("bound_claims", &format!("{k}: empty list")));
                    }
                    StringOrList::Many(vs) => vs.clone(),
                };
                bound_claims.insert(k.clone(), vs);
            }
            out.oidc.push(OidcConfig {
                kind,
                issuer: o.issuer.clone(),
                discovery_url: o.discovery_url.clone(),
                jwks_url: o.jwks_url.clone(),
                audiences: o.audiences.clone(),
                algorithms,
                leeway_secs,
                subject_claim: o.subject_claim.clone().unwrap_or_else(|| "sub".into()),
                bound_claims,
                bound_claims_type,
                keys: key_cache(o.jwks_cache_secs, o.jwks_min_refresh_secs, o.timeout_ms),
            });
        }

        for (i, a) in raw.azure.iter().enumerate() {
            let span = a.span();
            let a = a.get_ref();
            let err =
                |f: &str, m: &str| s.error_at(span.clone(), &format!("identity.azure[{i}].{f}"), m);
            let authority = a
                .authority
                .as_deref()
                .unwrap_or("https://login.microsoftonline.com")
                .trim_end_matches('/')
                .to_string();
            if !http_url(&authority) {
                return Err(err("authority", "must be an http(s) URL"));
            }
            if a.tenants.is_empty() {
                return Err(err("tenants", "list at least one tenant ID"));
            }
            for t in &a.tenants {
                if t.is_empty() || !t.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Err(err("tenants", "tenant IDs are GUIDs"));
                }
            }
            if a.audiences.is_empty() || a.audiences.iter().any(|x| x.is_empty()) {
                return Err(err("audiences", "list the broker's application ID URI"));
            }
            out.azure.push(AzureConfig {
                authority,
                tenants: a.tenants.iter().map(|t| t.to_ascii_lowercase()).collect(),
                audiences: a.audiences.clone(),
                leeway_secs: leeway(a.leeway_secs).map_err(|m| err("leeway_secs", m))?,
                keys: key_cache(a.jwks_cache_secs, a.jwks_min_refresh_secs, a.timeout_ms),
            });
        }
        Ok(out)
    }
}

fn leeway(v: Option<u64>) -> Result<u64, &'static str> {
    match v {
        Some(l) if l > 300 => Err("must be at most 300"),
        Some(l) => Ok(l),
        None => Ok(60),
    }
}

fn key_cache(cache: Option<u64>, min_refresh: Option<u64>, timeout: Option<u64>) -> KeyCacheConfig {
    KeyCacheConfig {
        jwks_cache_secs: cache.unwrap_or(3600).clamp(1, 86_400),
        jwks_min_refresh_secs: min_refresh.unwrap_or(60).min(3600),
        timeout_ms: timeout.unwrap_or(5000).clamp(100, 60_000),
    }
}

fn parse_algorithms(v: Option<&[String]>) -> Result<Vec<Algorithm>, String> {
    let Some(v) = v else {
        return Ok(vec![Algorithm::RS256]);
    };
    if v.is_empty() {
        return Err("list at least one algorithm".into());
    }
    v.iter()
        .map(|a| match a.parse::<Algorithm>() {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) | Err(_) => Err(format!(
                "{a:?} is not allowed: use RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
            )),
            Ok(alg) => Ok(alg),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Source};

    fn load(extra: &str) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = BTreeMap::new();
        Config::from_source(
            Source {
                path: "/etc/tollgate/broker.toml".into(),
                text: format!("policy_file = \"p.toml\"\n{extra}"),
            },
            &env,
        )
    }

    #[test]
    fn full_identity_section() {
        let c = load(
            r#"
[identity.aws]
server_id = "tollgate-test"
endpoints = [{ region = "us-east-1", url = "http://127.0.0.1:5000/" }]

[[identity.oidc]]
kind = "vault"
issuer = "http://127.0.0.1:8200/v1/identity/oidc"
audiences = ["tollgate"]
bound_claims = { team = ["a", "b"] }

[[identity.azure]]
authority = "http://127.0.0.1:9/"
tenants = ["72F988BF-86F1-41AF-91AB-2D7CD011DB47"]
audiences = ["api://tollgate"]
"#,
        )
        .expect("valid");
        let aws = c.identity.aws.expect("aws");
        assert_eq!(aws.endpoints[0].host, "127.0.0.1:5000");
        assert_eq!(aws.endpoints[0].url, "http://127.0.0.1:5000");
        assert_eq!(aws.max_skew_secs, 900);
        assert_eq!(c.identity.oidc[0].kind, IdentityKind::Vault);
        assert_eq!(c.identity.oidc[0].algorithms, vec![Algorithm::RS256]);
        assert_eq!(
            c.identity.azure[0].tenants,
            vec!["72f988bf-86f1-41af-91ab-2d7cd011db47"]
        );
    }

    #[test]
    fn errors_name_field_and_line() {
        let e =
            load("\n[[identity.oidc]]\nissuer = \"http://x\"\naudiences = []\n").expect_err("aud");
        assert!(
            e.to_string().contains(":3:") && e.to_string().contains("identity.oidc[0].audiences"),
            "{e}"
        );
        let e = load(
            "[[identity.oidc]]\nissuer = \"http://x\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\n",
        )
        .expect_err("hs");
        assert!(e.to_string().contains("algorithms"), "{e}");
        let e = load("[identity.aws]\nserver_id = \"x\"\nendpoints = [{ region = \"us-east-1\", url = \"http://127.0.0.1:1/?a=b\" }]\n").expect_err("url");
        assert!(e.to_string().contains("identity.aws.endpoints.url"), "{e}");
        let e = load("[identity.aws]\nserver_id = \"x\"\nendpoints = []\nbogus = 1\n")
            .expect_err("unknown");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e =
            load("[[identity.oidc]]\nissuer = \"http://x\"\naudiences = [\"a\"]\njwks_cache = 1\n")
                .expect_err("unknown flattened");
        assert!(e.to_string().contains("jwks_cache"), "{e}");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/identity");
        let env: BTreeMap<String, String> = BTreeMap::new();
        let c = Config::load(&dir.join("broker.toml"), &env).expect("example config");
        assert!(c.identity.aws.is_some());
        assert_eq!(c.identity.oidc.len(), 3);
        assert_eq!(c.identity.azure.len(), 1);
        let p = crate::policy::Policy::load(&c.policy_file).expect("example policy");
        assert_eq!(p.rules.len(), 6);
    }
}
