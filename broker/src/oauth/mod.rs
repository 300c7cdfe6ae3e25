//! The broker as an OAuth 2.1 authorization server for people (issue 14): public clients (Codex's
//! `gateway_oauth`, `tollgate-token login`) get the same short-lived Tollgate JWT workloads get, after the
//! person signs in at the company's IdP ([`idp`], the broker an OpenID Connect relying party).
//!
//! - `authorize.rs`: `GET /oauth/authorize` (authorization code, PKCE S256 only, exact `state`, loopback or
//!   registered redirect URIs, RFC 8707 `resource`), `GET /oauth/callback` (the IdP's answer),
//!   `POST /oauth/consent` (the consent page's form).
//! - `device.rs`: `POST /oauth/device_authorization` and the verification page `/oauth/device` (RFC 8628).
//! - `grant.rs`: the `authorization_code`, `refresh_token` and `device_code` grants of `/oauth/token`
//!   (rotation on every use, replay revokes the family), `POST /oauth/revoke` (RFC 7009) and the RFC 8414
//!   metadata.
//! - `pages.rs`: the small server-rendered pages (no JavaScript, CSP, CSRF tokens).
//! - `store.rs`: login sessions, codes, device codes and refresh-token families in the governance store,
//!   so every replica serves every step.
//!
//! Who the person is comes only from a verified ID token; what they get comes only from the policy
//! (identity kind `user`, the ID-token claims as attributes), decided again at every refresh.

pub mod authorize;
pub mod device;
pub mod form;
pub mod grant;
pub mod idp;
pub mod pages;
pub mod store;

use crate::clock::SharedClock;
use crate::config::oauth::{ClientConfig, OAuthConfig};
use crate::identity::VerifiedIdentity;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tollgate::IdentityKind;

/// The cookie that ties a browser to its login session (path `/oauth`, `HttpOnly`, `SameSite=Lax`: it must
/// come back on the IdP's top-level redirect to `/oauth/callback`).
pub const LOGIN_COOKIE: &str = "tollgate_login";
/// The device page's double-submit CSRF cookie (`SameSite=Strict`).
pub const CSRF_COOKIE: &str = "tollgate_csrf";

/// Scopes a client may ask for: `models` (every model the policy grants), `model:<name or glob>` (narrower),
/// `offline_access` (accepted; a refresh token is always issued).
pub const SCOPES_SUPPORTED: [&str; 2] = ["models", "offline_access"];

/// The authorization server: configuration, IdPs, its store.
pub struct OAuth {
    pub cfg: OAuthConfig,
    pub idps: Vec<idp::Idp>,
    pub store: store::OAuthStore,
    pub clock: SharedClock,
    /// `server.public_url`, without a trailing slash: the issuer and the base of every endpoint.
    pub public_url: String,
    /// The audience of the Tollgate JWT (`tokens.audience`).
    pub audience: String,
    /// Cookies carry `Secure` when the broker is reached over HTTPS.
    pub secure_cookies: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthSetupError {
    #[error("IdP {name}: {source}")]
    Idp {
        name: String,
        #[source]
        source: idp::IdpError,
    },
}

impl OAuth {
    pub fn new(
        cfg: OAuthConfig,
        pool: crate::governance::store::StorePool,
        clock: SharedClock,
        public_url: &str,
        audience: &str,
    ) -> Result<Self, OAuthSetupError> {
        let idps = cfg
            .idps
            .iter()
            .map(|i| {
                idp::Idp::new(i.clone(), clock.clone()).map_err(|source| OAuthSetupError::Idp {
                    name: i.name.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(OAuth {
            idps,
            store: store::OAuthStore::new(pool),
            clock,
            public_url: public_url.trim_end_matches('/').to_string(),
            audience: audience.to_string(),
            secure_cookies: public_url.starts_with("https://"),
            cfg,
        })
    }

    pub fn now(&self) -> i64 {
        i64::try_from(self.clock.now_secs()).unwrap_or(i64::MAX)
    }

    pub fn client(&self, id: &str) -> Option<&ClientConfig> {
        self.cfg.clients.iter().find(|c| c.id == id)
    }

    pub fn idp(&self, name: &str) -> Option<&idp::Idp> {
        self.idps.iter().find(|i| i.cfg.name == name)
    }

    /// The broker's redirect URI at the IdP.
    pub fn callback_url(&self) -> String {
        format!("{}/oauth/callback", self.public_url)
    }

    /// Does an RFC 8707 `resource` name this broker? (Its public URL, its `/v1` API, or its token audience.)
    /// The access token's `aud` is always the audience the proxy verifies.
    pub fn resource_ok(&self, resource: &str) -> bool {
        let r = resource.trim_end_matches('/');
        r == self.public_url || r == format!("{}/v1", self.public_url) || resource == self.audience
    }
}

/// May `client` be sent back to `uri`? Exact registered URIs, and (RFC 8252 §7.3) `http://127.0.0.1` or
/// `http://[::1]` on any port with any path when the client allows loopback. `localhost` is not loopback
/// here (RFC 8252 §8.3: a name can resolve elsewhere); no fragment, no user info.
pub fn redirect_allowed(client: &ClientConfig, uri: &str) -> bool {
    if client.redirect_uris.iter().any(|r| r == uri) {
        return true;
    }
    if !client.loopback || uri.len() > 2048 {
        return false;
    }
    let Ok(u) = reqwest::Url::parse(uri) else {
        return false;
    };
    u.scheme() == "http"
        && u.fragment().is_none()
        && u.username().is_empty()
        && u.password().is_none()
        // The parser normalises the host: `127.1` and `0x7f.1` are written `127.0.0.1`, IPv6 compressed.
        && matches!(u.host_str(), Some("127.0.0.1" | "[::1]"))
}

/// A person's verified identity as stored between steps (the login session, a code, a family).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIdentity {
    pub kind: IdentityKind,
    pub subject: String,
    pub issuer: Option<String>,
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl From<&VerifiedIdentity> for StoredIdentity {
    fn from(v: &VerifiedIdentity) -> Self {
        StoredIdentity {
            kind: v.kind,
            subject: v.subject.clone(),
            issuer: v.issuer.clone(),
            attributes: v.attributes.clone(),
        }
    }
}

impl From<StoredIdentity> for VerifiedIdentity {
    fn from(s: StoredIdentity) -> Self {
        VerifiedIdentity {
            kind: s.kind,
            subject: s.subject,
            issuer: s.issuer,
            attributes: s.attributes,
        }
    }
}

impl StoredIdentity {
    /// The IdP it came from (the `idp` attribute).
    pub fn idp(&self) -> &str {
        self.attributes
            .get("idp")
            .and_then(|v| v.first())
            .map_or("", String::as_str)
    }

    /// What the pages show: the email when there is one, else the subject.
    pub fn display(&self) -> &str {
        self.attributes
            .get("email")
            .and_then(|v| v.first())
            .map_or(self.subject.as_str(), String::as_str)
    }
}

/// A random secret: 32 bytes, base64url.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// PKCE S256 (RFC 7636 §4.2): `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Z a-z 0-9 - . _ ~]`.
pub fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Constant-time string equality.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
}

/// What a client asked for, validated: `models`, `offline_access` and `model:<pattern>` items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope(pub String);

impl Scope {
    /// Parse a requested scope (absent = `models`). Model patterns are checked against the grant later.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        let s = s
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("models");
        if s.len() > 1024 {
            return Err("scope is too long".into());
        }
        let mut items: Vec<&str> = Vec::new();
        for item in s.split_whitespace() {
            let ok = SCOPES_SUPPORTED.contains(&item)
                || item
                    .strip_prefix("model:")
                    .is_some_and(|m| tollgate::ModelPattern::new(m).is_ok());
            if !ok {
                return Err(format!(
                    "unknown scope {item:?} (use models, offline_access or model:<name or glob>)"
                ));
            }
            if !items.contains(&item) {
                items.push(item);
            }
        }
        Ok(Scope(items.join(" ")))
    }

    /// The `model:` items, as a scope string for [`crate::token::narrow_models`]; `None` when
    /// the whole grant is asked for.
    pub fn model_items(&self) -> Option<String> {
        let m: Vec<&str> = self
            .0
            .split_whitespace()
            .filter(|i| i.starts_with("model:"))
            .collect();
        (!m.is_empty()).then(|| m.join(" "))
    }

    /// Is `other` within this scope (for a refresh that names a scope)?
    pub fn covers(&self, other: &Scope) -> bool {
        let mine: Vec<&str> = self.0.split_whitespace().collect();
        other
            .0
            .split_whitespace()
            .all(|i| mine.contains(&i) || (i.starts_with("model:") && self.model_items().is_none()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(loopback: bool, uris: &[&str]) -> ClientConfig {
        ClientConfig {
            id: "c".into(),
            name: "c".into(),
            redirect_uris: uris.iter().map(|s| s.to_string()).collect(),
            loopback,
        }
    }

    #[test]
    fn redirect_uris_loopback_any_port_and_exact_registered_only() {
        let c = client(true, &["https://tools.example.com/cb"]);
        for (uri, ok) in [
            ("http://127.0.0.1:18992/callback", true),
            ("http://127.0.0.1:1/", true),
            ("http://127.0.0.1/cb", true),
            ("http://[::1]:5000/cb?x=1", true),
            ("https://tools.example.com/cb", true),
            ("https://tools.example.com/cb/", false),
            ("https://tools.example.com/cb?x", false),
            ("http://localhost:18992/callback", false),
            ("https://127.0.0.1:18992/callback", false),
            ("http://127.0.0.2:18992/callback", false),
            ("http://127.0.0.1.evil.com:18992/callback", false),
            ("http://evil@127.0.0.1:18992/callback", false),
            ("http://127.0.0.1:18992/callback#frag", false),
            ("http://10.0.0.1:18992/callback", false),
            ("javascript:alert(1)", false),
            ("", false),
        ] {
            assert_eq!(redirect_allowed(&c, uri), ok, "{uri}");
        }
        let strict = client(false, &["https://tools.example.com/cb"]);
        assert!(!redirect_allowed(
            &strict,
            "http://127.0.0.1:18992/callback"
        ));
        assert!(redirect_allowed(&strict, "https://tools.example.com/cb"));
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn scopes() {
        assert_eq!(Scope::parse(None).expect("ok").0, "models");
        assert_eq!(
            Scope::parse(Some("models offline_access models"))
                .expect("ok")
                .0,
            "models offline_access"
        );
        assert_eq!(
            Scope::parse(Some("model:gpt-5*"))
                .expect("ok")
                .model_items()
                .as_deref(),
            Some("model:gpt-5*")
        );
        assert!(Scope::parse(Some("openid admin")).is_err());
        let all = Scope::parse(Some("models")).expect("ok");
        assert!(all.covers(&Scope::parse(Some("model:gpt-5.5")).expect("ok")));
        let narrow = Scope::parse(Some("model:gpt-5.5")).expect("ok");
        assert!(!narrow.covers(&all));
    }
}
