//! What every JWT-based verifier shares: discovery + JWKS fetched and cached (moka), refreshed on an
//! unknown `kid` at most once per `jwks_min_refresh_secs`; signature, algorithm, `iss`, `aud`, `exp`,
//! `nbf`, `iat` checks against the injected clock; claims flattened into policy attributes.

use super::VerifyError;
use super::config::KeyCacheConfig;
use crate::clock::SharedClock;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest discovery document or JWKS we read.
const MAX_DOC_BYTES: usize = 512 * 1024;

/// Where an issuer's keys come from.
#[derive(Clone, Debug)]
pub enum KeyLocation {
    /// An OpenID discovery document; its `issuer` must equal `expected_issuer` when that is set.
    Discovery {
        url: String,
        expected_issuer: Option<String>,
    },
    /// A JWKS URL, no discovery.
    Jwks { url: String },
}

/// A fetched key set and the issuer its discovery document declared.
#[derive(Debug)]
pub struct KeySet {
    pub issuer: Option<String>,
    pub jwks: JwkSet,
}

/// Discovery + JWKS, cached per key (issuer or tenant).
pub struct KeyStore {
    http: reqwest::Client,
    cache: moka::future::Cache<String, Arc<KeySet>>,
    last_fetch: Mutex<HashMap<String, u64>>,
    min_refresh_secs: u64,
    clock: SharedClock,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl KeyStore {
    pub fn new(cfg: &KeyCacheConfig, clock: SharedClock) -> Result<Self, VerifyError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(3000)))
            .build()
            .map_err(|e| VerifyError::Unavailable(format!("http client: {e}")))?;
        Ok(KeyStore {
            http,
            cache: moka::future::Cache::builder()
                .max_capacity(1024)
                .time_to_live(Duration::from_secs(cfg.jwks_cache_secs))
                .build(),
            last_fetch: Mutex::new(HashMap::new()),
            min_refresh_secs: cfg.jwks_min_refresh_secs,
            clock,
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, VerifyError> {
        let unavailable = |what: &str| VerifyError::Unavailable(format!("{what} from {url}"));
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| VerifyError::Unavailable(format!("fetch {url}: {e}")))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(unavailable(&format!("status {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| VerifyError::Unavailable(format!("read {url}: {e}")))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOC_BYTES {
                return Err(unavailable("oversized document"));
            }
        }
        serde_json::from_slice(&body).map_err(|_| unavailable("malformed JSON"))
    }

    async fn fetch(&self, cache_key: &str, loc: &KeyLocation) -> Result<KeySet, VerifyError> {
        self.last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(cache_key.to_string(), self.clock.now_secs());
        let (issuer, jwks_url) = match loc {
            KeyLocation::Jwks { url } => (None, url.clone()),
            KeyLocation::Discovery {
                url,
                expected_issuer,
            } => {
                let d: Discovery = self.get_json(url).await?;
                if let Some(exp) = expected_issuer
                    && &d.issuer != exp
                {
                    return Err(VerifyError::Unavailable(format!(
                        "discovery at {url} names issuer {:?}, expected {exp:?}",
                        d.issuer
                    )));
                }
                if !(d.jwks_uri.starts_with("https://") || d.jwks_uri.starts_with("http://")) {
                    return Err(VerifyError::Unavailable(format!(
                        "discovery at {url} has a non-http jwks_uri"
                    )));
                }
                (Some(d.issuer), d.jwks_uri)
            }
        };
        let jwks: JwkSet = self.get_json(&jwks_url).await?;
        tracing::debug!(key = cache_key, keys = jwks.keys.len(), "fetched JWKS");
        Ok(KeySet { issuer, jwks })
    }

    async fn cached(&self, cache_key: &str, loc: &KeyLocation) -> Result<Arc<KeySet>, VerifyError> {
        self.cache
            .try_get_with(cache_key.to_string(), async {
                self.fetch(cache_key, loc).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<VerifyError>| match &*e {
                VerifyError::Unavailable(m) => VerifyError::Unavailable(m.clone()),
                VerifyError::Rejected(r) => VerifyError::Rejected(r),
                VerifyError::UnsupportedType => VerifyError::UnsupportedType,
            })
    }

    /// The key set and the key for `kid`. An unknown `kid` triggers one refresh unless the last fetch
    /// for this key was less than `jwks_min_refresh_secs` ago (so garbage `kid`s cannot hammer the
    /// issuer).
    pub async fn key_for(
        &self,
        cache_key: &str,
        loc: &KeyLocation,
        kid: Option<&str>,
    ) -> Result<(Arc<KeySet>, Jwk), VerifyError> {
        let set = self.cached(cache_key, loc).await?;
        if let Some(k) = pick(&set.jwks, kid) {
            return Ok((set, k));
        }
        let last = self
            .last_fetch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(cache_key)
            .copied()
            .unwrap_or(0);
        if self.clock.now_secs() < last.saturating_add(self.min_refresh_secs) {
            return Err(VerifyError::Rejected("unknown_kid"));
        }
        self.cache.invalidate(cache_key).await;
        let set = self.cached(cache_key, loc).await?;
        match pick(&set.jwks, kid) {
            Some(k) => Ok((set, k)),
            None => Err(VerifyError::Rejected("unknown_kid")),
        }
    }
}

/// The signing key for `kid`; without a `kid`, the only key (if there is exactly one).
fn pick(set: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    let usable = |k: &&Jwk| {
        !matches!(
            k.common.public_key_use,
            Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
        )
    };
    match kid {
        Some(kid) => set.find(kid).filter(usable).cloned(),
        None => {
            let mut keys = set.keys.iter().filter(usable);
            match (keys.next(), keys.next()) {
                (Some(k), None) => Some(k.clone()),
                _ => None,
            }
        }
    }
}

/// The parts of a JWT read before its signature is checked: only to route it to a verifier.
pub struct Unverified {
    pub header: jsonwebtoken::Header,
    pub claims: Map<String, Value>,
}

impl Unverified {
    pub fn parse(token: &str) -> Result<Self, VerifyError> {
        // `alg: none` and unknown algorithms fail here.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| VerifyError::Rejected("malformed_jwt"))?;
        let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
            .map_err(|_| VerifyError::Rejected("malformed_jwt"))?;
        Ok(Unverified { header, claims })
    }

    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// What a verified token must satisfy.
pub struct Expectations<'a> {
    pub algorithms: &'a [Algorithm],
    pub issuers: &'a [String],
    pub audiences: &'a [String],
    pub leeway_secs: u64,
    pub now_secs: u64,
}

/// Verify signature, algorithm, `iss`, `aud`, `exp`, `nbf`, `iat`. Returns the verified claims.
pub fn verify(
    token: &str,
    header_alg: Algorithm,
    jwk: &Jwk,
    x: &Expectations<'_>,
) -> Result<Map<String, Value>, VerifyError> {
    if !x.algorithms.contains(&header_alg) {
        return Err(VerifyError::Rejected("alg_not_allowed"));
    }
    if let Some(ka) = &jwk.common.key_algorithm
        && *ka != jsonwebtoken::jwk::KeyAlgorithm::from(header_alg)
    {
        return Err(VerifyError::Rejected("alg_key_mismatch"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| VerifyError::Rejected("bad_key"))?;
    // An HMAC "key" from a JWKS, or an RSA key used with an EC algorithm: refuse before verifying.
    if key.family() != header_alg.family() {
        return Err(VerifyError::Rejected("alg_key_mismatch"));
    }
    let mut v = Validation::new(header_alg);
    v.algorithms = vec![header_alg];
    // Time is checked below against the injected clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(x.issuers);
    v.set_audience(x.audiences);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
        VerifyError::Rejected(match e.kind() {
            ErrorKind::InvalidSignature => "bad_signature",
            ErrorKind::InvalidIssuer => "wrong_issuer",
            ErrorKind::InvalidAudience => "wrong_audience",
            ErrorKind::MissingRequiredClaim(_) => "missing_claim",
            ErrorKind::InvalidAlgorithm => "alg_not_allowed",
            _ => "invalid_jwt",
        })
    })?;
    let claims = data.claims;
    let num = |n: &str| claims.get(n).map(|v| v.as_f64().map(|f| f as u64));
    let leeway = x.leeway_secs;
    match num("exp") {
        Some(Some(exp)) if x.now_secs <= exp.saturating_add(leeway) => {}
        Some(Some(_)) => return Err(VerifyError::Rejected("expired")),
        _ => return Err(VerifyError::Rejected("missing_claim")),
    }
    match num("nbf") {
        None => {}
        Some(Some(nbf)) if nbf <= x.now_secs.saturating_add(leeway) => {}
        Some(_) => return Err(VerifyError::Rejected("not_yet_valid")),
    }
    match num("iat") {
        None => {}
        Some(Some(iat)) if iat <= x.now_secs.saturating_add(leeway) => {}
        Some(_) => return Err(VerifyError::Rejected("issued_in_future")),
    }
    Ok(claims)
}

/// Claims as policy attributes: strings, numbers and booleans as strings, arrays of them as several
/// values; nested objects flattened with `/` (`kubernetes.io/namespace`). Bounded in size.
pub fn attributes(claims: &Map<String, Value>) -> BTreeMap<String, Vec<String>> {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::String(s) if s.len() <= 1024 => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    fn walk(
        prefix: &str,
        m: &Map<String, Value>,
        depth: usize,
        out: &mut BTreeMap<String, Vec<String>>,
    ) {
        for (k, v) in m {
            if out.len() >= 256 {
                return;
            }
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}/{k}")
            };
            match v {
                Value::Object(o) if depth < 4 => walk(&name, o, depth + 1, out),
                Value::Array(a) => {
                    let vals: Vec<String> = a.iter().filter_map(scalar).take(256).collect();
                    if !vals.is_empty() {
                        out.insert(name, vals);
                    }
                }
                v => {
                    if let Some(s) = scalar(v) {
                        out.insert(name, vec![s]);
                    }
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", claims, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_flatten_to_attributes() {
        let c = json!({
            "sub": "system:serviceaccount:ci:runner",
            "groups": ["eng", "ops", {"x": 1}],
            "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "runner"}},
            "exp": 1700000000,
            "admin": false
        });
        let a = attributes(c.as_object().expect("obj"));
        assert_eq!(a["groups"], vec!["eng", "ops"]);
        assert_eq!(a["kubernetes.io/namespace"], vec!["ci"]);
        assert_eq!(a["kubernetes.io/serviceaccount/name"], vec!["runner"]);
        assert_eq!(a["admin"], vec!["false"]);
        assert_eq!(a["exp"], vec!["1700000000"]);
    }
}
