//! The admin credential (a key compared as SHA-256 digests in constant time) and browser sessions for the
//! dashboard (single-use tickets, `HttpOnly` session cookies). Holds no application state.

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

pub(crate) const TICKET_TTL_SECS: u64 = 60;
pub(crate) const SESSION_TTL_SECS: u64 = 8 * 3600;
pub(crate) const COOKIE: &str = "tollgate_admin";

/// Admin credential and browser sessions.
pub struct AdminAuth {
    key_sha256: Option<[u8; 32]>,
    /// sha256(ticket or session) → (expiry, is_session).
    secrets: Mutex<HashMap<[u8; 32], (u64, bool)>>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl AdminAuth {
    pub fn new(key_sha256: Option<[u8; 32]>) -> Self {
        AdminAuth {
            key_sha256,
            secrets: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.key_sha256.is_some()
    }

    /// Is this the admin key? Constant time in the key's content.
    pub fn check_key(&self, presented: &str) -> bool {
        match &self.key_sha256 {
            Some(want) => bool::from(digest(presented).ct_eq(want)),
            None => false,
        }
    }

    /// The bearer token of a request equals the admin key.
    pub fn check_bearer(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, t)| self.check_key(t.trim()))
    }

    pub(crate) fn issue(&self, now: u64, session: bool) -> String {
        let secret = random_secret();
        let ttl = if session {
            SESSION_TTL_SECS
        } else {
            TICKET_TTL_SECS
        };
        let mut m = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, (exp, _)| *exp > now);
        m.insert(digest(&secret), (now + ttl, session));
        secret
    }

    /// Redeem a single-use ticket.
    pub(crate) fn redeem_ticket(&self, ticket: &str, now: u64) -> bool {
        let mut m = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.remove(&digest(ticket)) {
            Some((exp, false)) => exp > now,
            Some(other) => {
                m.insert(digest(ticket), other);
                false
            }
            None => false,
        }
    }

    pub(crate) fn check_session(&self, headers: &HeaderMap, now: u64) -> bool {
        let Some(cookies) = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let m = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cookies
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(k, _)| *k == COOKIE)
            .any(|(_, v)| matches!(m.get(&digest(v)), Some((exp, true)) if *exp > now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn key_and_tickets() {
        let key = "admin-secret";
        let a = AdminAuth::new(Some(digest(key)));
        assert!(a.check_key(key));
        assert!(!a.check_key("admin-secreT"));
        assert!(!AdminAuth::new(None).check_key(key));
        let t = a.issue(100, false);
        assert!(!a.redeem_ticket(&t, 100 + TICKET_TTL_SECS + 1), "expired");
        let t = a.issue(100, false);
        assert!(a.redeem_ticket(&t, 101));
        assert!(!a.redeem_ticket(&t, 102), "single use");
        let s = a.issue(100, true);
        assert!(!a.redeem_ticket(&s, 101), "a session is not a ticket");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={s}")).expect("hv"),
        );
        assert!(a.check_session(&h, 200));
        assert!(!a.check_session(&h, 100 + SESSION_TTL_SECS + 1));
    }
}
