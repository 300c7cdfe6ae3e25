//! The broker as an OpenID Connect relying party of the company's IdP: authorization code with PKCE (S256)
//! and `nonce`, the IdP's endpoints from its discovery document (whose `issuer` must be the configured
//! one), the code exchanged server-side with the broker's client secret (never sent to a browser), and the
//! ID token verified by the same code that verifies workload JWTs ([`crate::identity::jwt`]): algorithm
//! pinned, signature against the IdP's JWKS, `iss` and `aud` pinned, time checks on the injected clock,
//! then `nonce` and `azp`.

use crate::clock::SharedClock;
use crate::config::oauth::IdpConfig;
use crate::identity::jwt::{self, Expectations, KeyLocation, KeyStore, Unverified};
use crate::identity::{VerifiedIdentity, VerifyError};
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::time::Duration;
use tollgate::IdentityKind;

/// Claims that describe the token, not the person: never policy attributes.
const TOKEN_CLAIMS: [&str; 12] = [
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "nonce",
    "at_hash",
    "c_hash",
    "s_hash",
    "azp",
    "sid",
    "auth_time",
];

/// Why signing in at the IdP failed. Logged; the person sees a generic page.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("the IdP could not be reached or answered badly: {0}")]
    Unavailable(String),
    #[error("the IdP refused the code: {0}")]
    Refused(String),
    #[error("ID token rejected: {0}")]
    IdToken(&'static str),
}

impl From<VerifyError> for IdpError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Unavailable(m) => IdpError::Unavailable(m),
            other => IdpError::IdToken(other.reason()),
        }
    }
}

#[derive(Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

/// One configured IdP.
pub struct Idp {
    pub cfg: IdpConfig,
    http: reqwest::Client,
    keys: KeyStore,
    location: KeyLocation,
    discovery: moka::future::Cache<(), Discovery>,
    clock: SharedClock,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

impl Idp {
    pub fn new(cfg: IdpConfig, clock: SharedClock) -> Result<Self, IdpError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(3000)))
            .build()
            .map_err(|e| IdpError::Unavailable(format!("http client: {e}")))?;
        Ok(Idp {
            keys: KeyStore::new(&cfg.keys, clock.clone())?,
            location: KeyLocation::Discovery {
                url: cfg.discovery_url.clone(),
                expected_issuer: Some(cfg.issuer.clone()),
            },
            discovery: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(Duration::from_secs(cfg.keys.jwks_cache_secs))
                .build(),
            http,
            cfg,
            clock,
        })
    }

    async fn discovery(&self) -> Result<Discovery, IdpError> {
        self.discovery
            .try_get_with((), async {
                let url = &self.cfg.discovery_url;
                let resp = self
                    .http
                    .get(url)
                    .header(reqwest::header::ACCEPT, "application/json")
                    .send()
                    .await
                    .map_err(|e| IdpError::Unavailable(format!("discovery {url}: {e}")))?;
                if !resp.status().is_success() {
                    return Err(IdpError::Unavailable(format!(
                        "discovery {url}: status {}",
                        resp.status()
                    )));
                }
                let d: Discovery = resp
                    .json()
                    .await
                    .map_err(|_| IdpError::Unavailable(format!("discovery {url}: malformed")))?;
                if d.issuer != self.cfg.issuer {
                    return Err(IdpError::Unavailable(format!(
                        "discovery {url} names issuer {:?}, configured {:?}",
                        d.issuer, self.cfg.issuer
                    )));
                }
                let http = |u: &str| u.starts_with("https://") || u.starts_with("http://");
                if !http(&d.authorization_endpoint) || !http(&d.token_endpoint) {
                    return Err(IdpError::Unavailable(format!(
                        "discovery {url}: endpoints must be http(s) URLs"
                    )));
                }
                Ok(d)
            })
            .await
            .map_err(|e: std::sync::Arc<IdpError>| IdpError::Unavailable(e.to_string()))
    }

    /// Where to send the browser: the IdP's authorization endpoint with our client, PKCE, state and nonce.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        code_challenge: &str,
    ) -> Result<String, IdpError> {
        let d = self.discovery().await?;
        let mut url = reqwest::Url::parse(&d.authorization_endpoint)
            .map_err(|_| IdpError::Unavailable("authorization_endpoint is not a URL".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.cfg.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.cfg.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// The IdP's origin (`scheme://host[:port]`), for the pages' `form-action`.
    pub async fn authorization_origin(&self) -> Option<String> {
        let d = self.discovery().await.ok()?;
        let u = reqwest::Url::parse(&d.authorization_endpoint).ok()?;
        Some(u.origin().ascii_serialization())
    }

    /// Exchange the code at the IdP's token endpoint and verify the ID token it returns.
    pub async fn redeem(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity, IdpError> {
        let d = self.discovery().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", code_verifier),
        ];
        let mut req = self.http.post(&d.token_endpoint);
        match &self.cfg.client_secret {
            // client_secret_basic (RFC 6749 §2.3.1): both parts form-urlencoded first.
            Some(secret) => {
                let enc = |s: &str| {
                    serde_urlencoded::to_string([("", s)])
                        .map(|v| v.trim_start_matches('=').to_string())
                        .unwrap_or_default()
                };
                req = req.basic_auth(enc(&self.cfg.client_id), Some(enc(secret.expose_secret())));
            }
            None => form.push(("client_id", &self.cfg.client_id)),
        }
        let resp = req
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| IdpError::Unavailable(format!("token endpoint: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let code = body
                .get("error")
                .and_then(|v| v.as_str())
                .unwrap_or("no error code")
                .chars()
                .take(64)
                .collect::<String>();
            return Err(if status.is_server_error() {
                IdpError::Unavailable(format!("token endpoint status {status}"))
            } else {
                IdpError::Refused(format!("status {status}, {code}"))
            });
        }
        let answer: TokenAnswer = resp
            .json()
            .await
            .map_err(|_| IdpError::Unavailable("token endpoint: malformed answer".into()))?;
        let id_token = answer.id_token.ok_or(IdpError::IdToken("no_id_token"))?;
        self.verify_id_token(&id_token, nonce).await
    }

    /// Verify an ID token from this IdP and map it to a person's identity.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> Result<VerifiedIdentity, IdpError> {
        let u = Unverified::parse(id_token)?;
        if u.str_claim("iss") != Some(self.cfg.issuer.as_str()) {
            return Err(IdpError::IdToken("wrong_issuer"));
        }
        if !self.cfg.algorithms.contains(&u.header.alg) {
            return Err(IdpError::IdToken("alg_not_allowed"));
        }
        let (_, jwk) = self
            .keys
            .key_for(&self.cfg.issuer, &self.location, u.header.kid.as_deref())
            .await?;
        let claims = jwt::verify(
            id_token,
            u.header.alg,
            &jwk,
            &Expectations {
                algorithms: &self.cfg.algorithms,
                issuers: std::slice::from_ref(&self.cfg.issuer),
                audiences: std::slice::from_ref(&self.cfg.client_id),
                leeway_secs: self.cfg.leeway_secs,
                now_secs: self.clock.now_secs(),
            },
        )?;
        // OpenID Connect Core §3.1.3.7: the nonce we sent, and `azp` (when present) is us.
        let got_nonce = claims.get("nonce").and_then(|v| v.as_str()).unwrap_or("");
        if nonce.is_empty()
            || !bool::from(subtle::ConstantTimeEq::ct_eq(
                got_nonce.as_bytes(),
                nonce.as_bytes(),
            ))
        {
            return Err(IdpError::IdToken("nonce_mismatch"));
        }
        if let Some(azp) = claims.get("azp")
            && azp.as_str() != Some(self.cfg.client_id.as_str())
        {
            return Err(IdpError::IdToken("wrong_azp"));
        }
        let subject = claims
            .get(&self.cfg.subject_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .ok_or(IdpError::IdToken("no_subject"))?
            .to_string();
        let mut attributes = jwt::attributes(&claims);
        attributes.retain(|k, _| !TOKEN_CLAIMS.contains(&k.as_str()));
        for (attr, claim) in &self.cfg.claims {
            match attributes.get(claim).cloned() {
                Some(v) => {
                    attributes.insert(attr.clone(), v);
                }
                None => {
                    attributes.remove(attr);
                }
            }
        }
        attributes.insert("idp".into(), vec![self.cfg.name.clone()]);
        Ok(VerifiedIdentity {
            kind: IdentityKind::User,
            subject,
            issuer: Some(self.cfg.issuer.clone()),
            attributes,
        })
    }
}
