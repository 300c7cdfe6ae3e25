//! The `[oauth]` section of the broker config: the broker as an OAuth 2.1 authorization server for people
//! (public clients such as Codex and `tollgate-token`), signing them in through the company's IdP.
//!
//! ```toml
//! [oauth]                               # present = the people path is on
//! access_ttl_secs = 900
//!
//! [[oauth.idp]]                         # one or more OpenID Connect providers (Entra, Okta, Google, Keycloak…)
//! name = "corp"
//! issuer = "https://login.example.com"
//! client_id = "tollgate"
//! client_secret_env = "TOLLGATE_IDP_SECRET"
//! scopes = ["openid", "email", "profile", "groups"]
//! claims = { groups = "roles" }         # policy attribute `groups` from the ID token's `roles` claim
//!
//! [[oauth.client]]                      # default: `tollgate-token` and `codex`, loopback redirects only
//! id = "codex"
//! ```

use super::{ConfigError, Env, Source};
use jsonwebtoken::Algorithm;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    /// Life of an access token issued to a person, seconds. Default `tokens.default_ttl_secs`; the policy
    /// rule's `max_ttl_secs` and `tokens.max_ttl_secs` still cap it.
    access_ttl_secs: Option<Spanned<u64>>,
    /// Life of one refresh token (it rotates on every use), seconds. Default 1209600 (14 days).
    refresh_ttl_secs: Option<Spanned<u64>>,
    /// Longest life of a sign-in (a refresh-token family) from the IdP login, seconds. Default 2592000 (30 days).
    session_max_secs: Option<Spanned<u64>>,
    /// Life of the server-side login session (from `/oauth/authorize` to the consent), seconds. Default 600.
    login_ttl_secs: Option<Spanned<u64>>,
    /// Life of an authorization code, seconds. Default 60.
    code_ttl_secs: Option<Spanned<u64>>,
    /// Life of a device code (RFC 8628), seconds. Default 600.
    device_code_ttl_secs: Option<Spanned<u64>>,
    /// Least seconds between two polls of one device code (RFC 8628 `interval`). Default 5.
    device_poll_interval_secs: Option<Spanned<u64>>,
    #[serde(default)]
    idp: Vec<Spanned<RawIdp>>,
    #[serde(default)]
    client: Vec<Spanned<RawClient>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdp {
    /// Short name (`[a-z0-9-]`, 1–32): in logs, the audit trail and the `idp` policy attribute.
    name: String,
    /// What the sign-in page calls it. Default: `name`.
    display_name: Option<String>,
    /// The IdP's issuer, exactly as its ID tokens carry it in `iss`.
    issuer: String,
    /// Default `{issuer}/.well-known/openid-configuration`.
    discovery_url: Option<String>,
    /// The broker's client ID at the IdP (the ID token's audience).
    client_id: String,
    /// Environment variable holding the client secret (a confidential client). Unset with
    /// `client_secret_file` unset: a public client (PKCE only).
    client_secret_env: Option<String>,
    /// File holding the client secret (trimmed).
    client_secret_file: Option<PathBuf>,
    /// Default `["openid", "email", "profile"]`; must include `openid`.
    scopes: Option<Vec<String>>,
    /// ID-token signing algorithms accepted. Default `["RS256"]`. Asymmetric only.
    algorithms: Option<Vec<String>>,
    /// Claim naming the person. Default `sub`.
    subject_claim: Option<String>,
    /// Policy attribute → ID-token claim it is read from (flattened name), on top of every claim kept
    /// under its own name. Default: none.
    #[serde(default)]
    claims: BTreeMap<String, String>,
    /// Tolerance on `exp`/`nbf`/`iat`, seconds. Default 60, maximum 300.
    leeway_secs: Option<u64>,
    /// How long discovery + JWKS are cached, seconds. Default 3600.
    jwks_cache_secs: Option<u64>,
    /// Least time between two refreshes triggered by an unknown `kid`, seconds. Default 60.
    jwks_min_refresh_secs: Option<u64>,
    /// Timeout of discovery, JWKS and token requests to the IdP, milliseconds. Default 5000.
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    /// The `client_id` the client sends.
    id: String,
    /// What the consent page calls it. Default: `id`.
    name: Option<String>,
    /// Exact redirect URIs besides loopback ones. Default: none.
    #[serde(default)]
    redirect_uris: Vec<String>,
    /// Accept `http://127.0.0.1:{any port}/…` and `http://[::1]:{any port}/…` (RFC 8252 §7.3). Default true.
    loopback: Option<bool>,
}

// ---------------------------------------------------------------- validated

#[derive(Clone, Debug)]
pub struct OAuthConfig {
    pub access_ttl_secs: Option<u64>,
    pub refresh_ttl_secs: u64,
    pub session_max_secs: u64,
    pub login_ttl_secs: u64,
    pub code_ttl_secs: u64,
    pub device_code_ttl_secs: u64,
    pub device_poll_interval_secs: u64,
    pub idps: Vec<IdpConfig>,
    pub clients: Vec<ClientConfig>,
}

#[derive(Clone, Debug)]
pub struct IdpConfig {
    pub name: String,
    pub display_name: String,
    pub issuer: String,
    pub discovery_url: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub scopes: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub subject_claim: String,
    /// Policy attribute → claim.
    pub claims: BTreeMap<String, String>,
    pub keys: crate::identity::config::KeyCacheConfig,
    pub leeway_secs: u64,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub loopback: bool,
}

/// The clients when none is configured: the helper and Codex, loopback redirects only.
pub fn default_clients() -> Vec<ClientConfig> {
    [("tollgate-token", "tollgate-token"), ("codex", "Codex")]
        .into_iter()
        .map(|(id, name)| ClientConfig {
            id: id.into(),
            name: name.into(),
            redirect_uris: vec![],
            loopback: true,
        })
        .collect()
}

fn is_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Validate `[oauth]`; `None` when the section is absent.
pub fn validate(
    raw: &Option<Spanned<RawOAuth>>,
    s: &Source,
    env: &dyn Env,
) -> Result<Option<OAuthConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let span = raw.span();
    let raw = raw.get_ref();
    let secs = |v: &Option<Spanned<u64>>,
                field: &str,
                min: u64,
                max: u64,
                default: u64|
     -> Result<u64, ConfigError> {
        match v {
            Some(t) if *t.get_ref() < min || *t.get_ref() > max => Err(s.error_at(
                t.span(),
                field,
                format_args!("must be between {min} and {max} seconds"),
            )),
            Some(t) => Ok(*t.get_ref()),
            None => Ok(default),
        }
    };
    let access_ttl_secs = match &raw.access_ttl_secs {
        Some(_) => Some(secs(
            &raw.access_ttl_secs,
            "oauth.access_ttl_secs",
            crate::token::limits::MIN_TTL_SECS,
            super::TTL_CEILING_SECS,
            0,
        )?),
        None => None,
    };
    let session_max_secs = secs(
        &raw.session_max_secs,
        "oauth.session_max_secs",
        60,
        366 * 86_400,
        30 * 86_400,
    )?;
    let refresh_ttl_secs = secs(
        &raw.refresh_ttl_secs,
        "oauth.refresh_ttl_secs",
        60,
        366 * 86_400,
        14 * 86_400,
    )?;
    let cfg = OAuthConfig {
        access_ttl_secs,
        refresh_ttl_secs,
        session_max_secs,
        login_ttl_secs: secs(&raw.login_ttl_secs, "oauth.login_ttl_secs", 30, 3600, 600)?,
        code_ttl_secs: secs(&raw.code_ttl_secs, "oauth.code_ttl_secs", 5, 600, 60)?,
        device_code_ttl_secs: secs(
            &raw.device_code_ttl_secs,
            "oauth.device_code_ttl_secs",
            60,
            3600,
            600,
        )?,
        device_poll_interval_secs: secs(
            &raw.device_poll_interval_secs,
            "oauth.device_poll_interval_secs",
            1,
            60,
            5,
        )?,
        idps: raw
            .idp
            .iter()
            .map(|i| idp(i, s, env))
            .collect::<Result<_, _>>()?,
        clients: if raw.client.is_empty() {
            default_clients()
        } else {
            raw.client
                .iter()
                .map(|c| client(c, s))
                .collect::<Result<_, _>>()?
        },
    };
    if cfg.idps.is_empty() {
        return Err(s.error_at(
            span,
            "oauth.idp",
            "at least one [[oauth.idp]] is needed: people sign in through the company's IdP",
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, r) in cfg.idps.iter().zip(&raw.idp) {
        if !names.insert(i.name.clone()) {
            return Err(s.error_at(r.span(), "oauth.idp[].name", "duplicate name"));
        }
    }
    let mut ids = std::collections::BTreeSet::new();
    for (c, r) in cfg.clients.iter().zip(&raw.client) {
        if !ids.insert(c.id.clone()) {
            return Err(s.error_at(r.span(), "oauth.client[].id", "duplicate client id"));
        }
    }
    Ok(Some(cfg))
}

fn idp(r: &Spanned<RawIdp>, s: &Source, env: &dyn Env) -> Result<IdpConfig, ConfigError> {
    let span = r.span();
    let r = r.get_ref();
    let err = |field: &str, m: &str| s.error_at(span.clone(), &format!("oauth.idp[].{field}"), m);
    if !is_name(&r.name) {
        return Err(err("name", "1 to 32 characters of a-z, 0-9 and -"));
    }
    let http = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    if !http(&r.issuer) {
        return Err(err("issuer", "must be an http:// or https:// URL"));
    }
    if r.discovery_url.as_deref().is_some_and(|u| !http(u)) {
        return Err(err("discovery_url", "must be an http:// or https:// URL"));
    }
    if r.client_id.is_empty() {
        return Err(err("client_id", "must not be empty"));
    }
    let client_secret = match (&r.client_secret_env, &r.client_secret_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                "client_secret_env",
                "set only one of client_secret_env and client_secret_file",
            ));
        }
        (Some(var), None) => Some(SecretString::from(env.var(var).ok_or_else(|| {
            err(
                "client_secret_env",
                &format!("the environment variable {var} is not set"),
            )
        })?)),
        (None, Some(file)) => {
            let path = s.resolve(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "client_secret_file",
                    &format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let t = text.trim();
            if t.is_empty() {
                return Err(err("client_secret_file", "the file is empty"));
            }
            Some(SecretString::from(t.to_string()))
        }
        (None, None) => None,
    };
    let scopes = r
        .scopes
        .clone()
        .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]);
    if !scopes.iter().any(|x| x == "openid") {
        return Err(err("scopes", "must include \"openid\""));
    }
    if scopes
        .iter()
        .any(|x| x.is_empty() || x.bytes().any(|b| b <= b' ' || b == b'"' || b == b'\\'))
    {
        return Err(err("scopes", "a scope is empty or holds a space or quote"));
    }
    let algorithms = match &r.algorithms {
        None => vec![Algorithm::RS256],
        Some(list) if list.is_empty() => return Err(err("algorithms", "empty list")),
        Some(list) => list
            .iter()
            .map(|a| match a.as_str() {
                "RS256" => Ok(Algorithm::RS256),
                "RS384" => Ok(Algorithm::RS384),
                "RS512" => Ok(Algorithm::RS512),
                "PS256" => Ok(Algorithm::PS256),
                "PS384" => Ok(Algorithm::PS384),
                "PS512" => Ok(Algorithm::PS512),
                "ES256" => Ok(Algorithm::ES256),
                "ES384" => Ok(Algorithm::ES384),
                "EdDSA" => Ok(Algorithm::EdDSA),
                other => Err(err(
                    "algorithms",
                    &format!("{other:?} is not an asymmetric JWS algorithm this broker verifies"),
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let leeway_secs = r.leeway_secs.unwrap_or(60);
    if leeway_secs > 300 {
        return Err(err("leeway_secs", "at most 300"));
    }
    let issuer = r.issuer.clone();
    Ok(IdpConfig {
        name: r.name.clone(),
        display_name: r.display_name.clone().unwrap_or_else(|| r.name.clone()),
        discovery_url: r.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )
        }),
        issuer,
        client_id: r.client_id.clone(),
        client_secret,
        scopes,
        algorithms,
        subject_claim: r.subject_claim.clone().unwrap_or_else(|| "sub".into()),
        claims: r.claims.clone(),
        keys: crate::identity::config::KeyCacheConfig {
            jwks_cache_secs: r.jwks_cache_secs.unwrap_or(3600).max(1),
            jwks_min_refresh_secs: r.jwks_min_refresh_secs.unwrap_or(60),
            timeout_ms: r.timeout_ms.unwrap_or(5000).max(1),
        },
        leeway_secs,
        timeout_ms: r.timeout_ms.unwrap_or(5000).max(1),
    })
}

fn client(r: &Spanned<RawClient>, s: &Source) -> Result<ClientConfig, ConfigError> {
    let span = r.span();
    let r = r.get_ref();
    let err =
        |field: &str, m: &str| s.error_at(span.clone(), &format!("oauth.client[].{field}"), m);
    if r.id.is_empty()
        || r.id.len() > 64
        || !r
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(err("id", "1 to 64 characters of A-Z a-z 0-9 - _ . :"));
    }
    for u in &r.redirect_uris {
        let ok = reqwest::Url::parse(u).is_ok_and(|p| {
            p.fragment().is_none() && (p.scheme() == "https" || p.scheme() == "http")
        });
        if !ok {
            return Err(err(
                "redirect_uris",
                &format!("{u:?} is not an absolute http(s) URL without a fragment"),
            ));
        }
    }
    let loopback = r.loopback.unwrap_or(true);
    if !loopback && r.redirect_uris.is_empty() {
        return Err(err(
            "redirect_uris",
            "a client without loopback redirects needs at least one redirect URI",
        ));
    }
    Ok(ClientConfig {
        id: r.id.clone(),
        name: r.name.clone().unwrap_or_else(|| r.id.clone()),
        redirect_uris: r.redirect_uris.clone(),
        loopback,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Source};
    use std::collections::BTreeMap;

    const IDP: &str = "[[oauth.idp]]\nname = \"corp\"\nissuer = \"https://idp.example.com\"\nclient_id = \"tollgate\"\n";

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        Config::from_source(
            Source {
                path: "broker.toml".into(),
                text: format!("policy_file = \"policy.toml\"\n{text}"),
            },
            &env,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_secrets() {
        let c = load(
            &format!("[oauth]\n{IDP}client_secret_env = \"IDP_SECRET\"\n"),
            &[("IDP_SECRET", "s3cret-value")],
        )
        .expect("valid");
        let o = c.oauth.expect("oauth");
        let ids: Vec<&str> = o.clients.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["tollgate-token", "codex"]);
        assert!(o.clients.iter().all(|c| c.loopback));
        assert_eq!(o.idps[0].scopes, ["openid", "email", "profile"]);
        assert_eq!(
            o.idps[0].discovery_url,
            "https://idp.example.com/.well-known/openid-configuration"
        );
        assert_eq!((o.code_ttl_secs, o.device_poll_interval_secs), (60, 5));
        assert!(
            !format!("{:?}", o.idps[0]).contains("s3cret-value"),
            "the secret is redacted"
        );
        assert!(load("", &[]).expect("valid").oauth.is_none());
    }

    #[test]
    fn errors_name_the_field_and_line() {
        for (text, env, wanted) in [
            ("[oauth]\n", vec![], "oauth.idp: at least one"),
            (
                &format!("[oauth]\n{IDP}client_secret_env = \"MISSING\"\n") as &str,
                vec![],
                "oauth.idp[].client_secret_env: the environment variable MISSING is not set",
            ),
            (
                &format!("[oauth]\n{IDP}client_secret_env = \"A\"\nclient_secret_file = \"f\"\n"),
                vec![("A", "x")],
                "set only one of client_secret_env and client_secret_file",
            ),
            (
                &format!("[oauth]\n{IDP}scopes = [\"email\"]\n"),
                vec![],
                "oauth.idp[].scopes: must include \"openid\"",
            ),
            (
                &format!("[oauth]\n{IDP}algorithms = [\"HS256\"]\n"),
                vec![],
                "oauth.idp[].algorithms",
            ),
            (
                &format!("[oauth]\ncode_ttl_secs = 0\n{IDP}"),
                vec![],
                "broker.toml:3:17: oauth.code_ttl_secs: must be between 5 and 600",
            ),
            (
                &format!("[oauth]\n{IDP}\n[[oauth.client]]\nid = \"x\"\nloopback = false\n"),
                vec![],
                "oauth.client[].redirect_uris: a client without loopback",
            ),
            (
                &format!(
                    "[oauth]\n{IDP}\n[[oauth.client]]\nid = \"x\"\nredirect_uris = [\"https://a/cb#f\"]\n"
                ),
                vec![],
                "without a fragment",
            ),
            (&format!("[oauth]\nbogus = 1\n{IDP}"), vec![], "bogus"),
        ] {
            let e = load(text, &env).expect_err(wanted);
            assert!(e.contains(wanted), "{e} should contain {wanted}");
            assert!(e.starts_with("broker.toml:"), "{e}");
        }
    }
}
