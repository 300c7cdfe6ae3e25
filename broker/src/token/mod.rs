//! Minting and verifying Tollgate access tokens (ES256 JWTs with a `kid`).

pub mod endpoint;
pub mod limits;

use crate::clock::SharedClock;
use crate::keys::SigningKey;
use jsonwebtoken::{Algorithm, Header, Validation};
use std::sync::{Arc, RwLock};
use tollgate::{Claims, Grant, ModelPattern};

/// Clock skew we tolerate on `iat`/`nbf`: tokens are backdated by this much.
pub const SKEW_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("no signing key with a private part is loaded")]
    NoKey,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Why a bearer token was refused. Never shown to the client in detail.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown key id")]
    UnknownKid,
    #[error("bad signature or claims")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::Invalid => "invalid",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
        }
    }
}

/// Called when keys leave the ring (retired, or past retention).
type RemovalHook = Box<dyn Fn() + Send + Sync>;

/// The set of keys: the first signs, all verify.
#[derive(Default)]
pub struct KeyRing {
    keys: RwLock<Vec<Arc<SigningKey>>>,
    /// Whoever caches verified tokens must forget them when a key goes (a retired key's tokens are refused
    /// at once, cached or not).
    on_removal: RwLock<Option<RemovalHook>>,
}

impl KeyRing {
    pub fn new(keys: Vec<SigningKey>) -> Self {
        let mut keys: Vec<Arc<SigningKey>> = keys.into_iter().map(Arc::new).collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.created));
        KeyRing {
            keys: RwLock::new(keys),
            on_removal: RwLock::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<SigningKey>>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A key that can sign (readiness).
    pub fn active(&self) -> Option<Arc<SigningKey>> {
        self.read().iter().find(|k| k.encoding().is_some()).cloned()
    }

    /// The key that signs at `now`: the newest whose `created` is not in the future (keys of the next
    /// rotation generation are published ahead of use). Falls back to the oldest signing key.
    pub fn active_at(&self, now: u64) -> Option<Arc<SigningKey>> {
        let keys = self.read();
        keys.iter()
            .find(|k| k.encoding().is_some() && k.created <= now)
            .or_else(|| keys.iter().rev().find(|k| k.encoding().is_some()))
            .cloned()
    }

    pub fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.read().iter().find(|k| k.kid == kid).cloned()
    }

    /// Replace the whole set (rotation, reload from the store). Calls the removal hook when a key left.
    pub fn replace(&self, keys: Vec<SigningKey>) {
        let mut keys: Vec<Arc<SigningKey>> = keys.into_iter().map(Arc::new).collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.created));
        let removed = {
            let mut cur = self
                .keys
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let removed = cur.iter().any(|old| !keys.iter().any(|k| k.kid == old.kid));
            *cur = keys;
            removed
        };
        if removed
            && let Some(hook) = self
                .on_removal
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
        {
            hook();
        }
    }

    /// Run `hook` whenever a key leaves the ring (e.g. forget cached verifications).
    pub fn on_removal(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self
            .on_removal
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(hook));
    }

    /// `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": self.read().iter().map(|k| k.jwk()).collect::<Vec<_>>()})
    }
}

/// Mints and verifies our own tokens.
pub struct TokenService {
    pub keys: Arc<KeyRing>,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    pub clock: SharedClock,
}

/// A freshly minted token.
pub struct Minted {
    pub token: String,
    pub claims: Claims,
}

impl TokenService {
    /// Sign a grant for `ttl_secs`.
    /// Mint a token for `grant`, decided under the policy version `pv` (see [`Claims::pv`]).
    pub fn mint(
        &self,
        grant: Grant,
        ttl_secs: u64,
        pv: Option<String>,
    ) -> Result<Minted, MintError> {
        let now = self.clock.now_secs();
        let key = self.keys.active_at(now).ok_or(MintError::NoKey)?;
        let enc = key.encoding().ok_or(MintError::NoKey)?;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: grant.principal.clone(),
            iat: now.saturating_sub(SKEW_SECS),
            nbf: now.saturating_sub(SKEW_SECS),
            exp: now + ttl_secs,
            jti: uuid::Uuid::now_v7().simple().to_string(),
            grant,
            pv,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, enc)?;
        Ok(Minted { token, claims })
    }

    /// Verify signature (pinned ES256, known `kid`), `iss`, `aud`, then `exp`/`nbf` against our clock.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
            _ => TokenError::Malformed,
        })?;
        if header.alg != Algorithm::ES256 {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKid)?;
        let key = self.keys.find(&kid).ok_or(TokenError::UnknownKid)?;
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false; // checked below against the injected clock
        v.validate_nbf = false;
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v)
            .map_err(|_| TokenError::Invalid)?;
        let now = self.clock.now_secs();
        let c = data.claims;
        if c.exp <= now.saturating_sub(self.leeway_secs) {
            return Err(TokenError::Expired);
        }
        if c.nbf > now + self.leeway_secs {
            return Err(TokenError::NotYetValid);
        }
        Ok(c)
    }
}

/// `scope = "model:gpt-5.5 model:o4-*"` narrows the grant: each requested pattern must be allowed (a
/// literal must match an allowed glob; a glob must equal an allowed glob). Other scope tokens are refused.
pub(crate) fn narrow_models(
    allowed: &[ModelPattern],
    scope: &str,
) -> Result<Vec<ModelPattern>, String> {
    let mut out = Vec::new();
    for item in scope.split_whitespace() {
        let Some(m) = item.strip_prefix("model:") else {
            return Err(format!("unknown scope {item:?} (use model:<name or glob>)"));
        };
        let p = ModelPattern::new(m).map_err(|e| e.to_string())?;
        let ok = if p.is_literal() {
            allowed.iter().any(|a| a.matches(m))
        } else {
            allowed.contains(&p)
        };
        if !ok {
            return Err(format!("scope {item:?} is outside the grant"));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err("empty scope".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use tollgate::ModelPattern;
    use tollgate::grant::{IdentityKind, Provenance};

    fn grant() -> Grant {
        Grant {
            principal: "alice".into(),
            team: None,
            org: None,
            models: vec![ModelPattern::new("*").expect("p")],
            budgets: vec![],
            rate: Default::default(),
            identity: Provenance {
                kind: IdentityKind::Static,
                subject: "alice".into(),
                issuer: None,
                rule: "r".into(),
            },
            attributes: Default::default(),
        }
    }

    fn svc(clock: &FakeClock) -> TokenService {
        TokenService {
            keys: Arc::new(KeyRing::new(vec![SigningKey::generate(1).expect("key").0])),
            issuer: "http://broker".into(),
            audience: "tollgate".into(),
            leeway_secs: 5,
            clock: Arc::new(clock.clone()),
        }
    }

    #[test]
    fn mint_then_verify_and_expire_on_fake_clock() {
        let clock = FakeClock::new(1_000_000);
        let s = svc(&clock);
        let m = s.mint(grant(), 600, None).expect("mint");
        assert_eq!(m.claims.exp, 1_000_600);
        assert_eq!(m.claims.iat, 1_000_000 - SKEW_SECS);
        let c = s.verify(&m.token).expect("valid");
        assert_eq!(c.grant.principal, "alice");
        clock.advance(600 + 5);
        assert_eq!(s.verify(&m.token), Err(TokenError::Expired));
    }

    #[test]
    fn rejects_other_keys_alg_none_and_wrong_audience() {
        let clock = FakeClock::new(1_000_000);
        let s = svc(&clock);
        let other = svc(&clock);
        let foreign = other.mint(grant(), 600, None).expect("mint");
        assert_eq!(s.verify(&foreign.token), Err(TokenError::UnknownKid));

        // Same kid, different key: forge a header naming our kid but signed by the other key.
        let mut h = Header::new(Algorithm::ES256);
        h.kid = s.keys.active().map(|k| k.kid.clone());
        let forged = jsonwebtoken::encode(
            &h,
            &foreign.claims,
            other.keys.active().expect("k").encoding().expect("enc"),
        )
        .expect("enc");
        assert_eq!(s.verify(&forged), Err(TokenError::Invalid));

        // alg: none, with our claims.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&foreign.claims).expect("json"))
        );
        assert!(matches!(
            s.verify(&none),
            Err(TokenError::Algorithm | TokenError::Malformed)
        ));

        // HS256 with a guessable secret.
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = h.kid.clone();
        let hs_tok = jsonwebtoken::encode(
            &hs,
            &foreign.claims,
            &jsonwebtoken::EncodingKey::from_secret(b"x"),
        )
        .expect("hs");
        assert_eq!(s.verify(&hs_tok), Err(TokenError::Algorithm));

        // Wrong audience, signed by us.
        let mut wrong = s.mint(grant(), 600, None).expect("mint").claims;
        wrong.aud = "someone-else".into();
        let tok = jsonwebtoken::encode(
            &h,
            &wrong,
            s.keys.active().expect("k").encoding().expect("enc"),
        )
        .expect("enc");
        assert_eq!(s.verify(&tok), Err(TokenError::Invalid));

        assert_eq!(s.verify("not-a-jwt"), Err(TokenError::Malformed));
    }

    #[test]
    fn future_nbf_is_refused() {
        let clock = FakeClock::new(1_000_000);
        let s = svc(&clock);
        let m = s.mint(grant(), 600, None).expect("mint");
        clock.set(1_000_000 - SKEW_SECS - 100);
        assert_eq!(s.verify(&m.token), Err(TokenError::NotYetValid));
    }
}
