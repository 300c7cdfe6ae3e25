//! Signing keys shared through the store and rotated on a schedule.
//!
//! Time is cut into generations of `rotate_secs`; generation `g` signs during `[g·R, (g+1)·R)`. Every replica
//! makes sure the keys of the current **and the next** generation exist (`INSERT … ON CONFLICT DO NOTHING`
//! on the generation, so concurrent replicas agree on one key per generation). The next key is therefore in
//! every replica's JWKS a whole generation before anyone signs with it. A retired key stays published until
//! the last token it could have signed has expired: `(g+1)·R + max_ttl + leeway`.

use super::store::{Store, StoreError, StoredKey};
use crate::keys::SigningKey;
use crate::token::KeyRing;
use std::sync::Mutex;

pub struct KeyManager {
    pub rotate_secs: u64,
    /// max token TTL + leeway.
    pub retain_secs: u64,
    loaded: Mutex<Vec<(i64, String)>>,
}

impl KeyManager {
    pub fn new(rotate_secs: u64, retain_secs: u64) -> Self {
        KeyManager {
            rotate_secs: rotate_secs.max(1),
            retain_secs,
            loaded: Mutex::new(Vec::new()),
        }
    }

    fn generation(&self, now: u64) -> i64 {
        i64::try_from(now / self.rotate_secs).unwrap_or(i64::MAX)
    }

    /// Oldest generation whose tokens may still be valid at `now`: generation `k` signed until `(k+1)·R`, so
    /// its last token lives until `(k+1)·R + retain`; it is needed while that is after `now`, i.e. for
    /// `k ≥ floor((now − retain) / R)`.
    fn min_generation(&self, now: u64) -> i64 {
        i64::try_from(now.saturating_sub(self.retain_secs) / self.rotate_secs).unwrap_or(0)
    }

    /// Make sure this and the next generation have keys, then load every key still needed into `ring`.
    pub async fn sync(
        &self,
        store: &dyn Store,
        ring: &KeyRing,
        now: u64,
    ) -> Result<(), StoreError> {
        let g = self.generation(now);
        let have: Vec<i64> = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(g, _)| *g)
            .collect();
        for gen_ in [g, g + 1] {
            if !have.contains(&gen_) {
                let created = gen_.saturating_mul(i64::try_from(self.rotate_secs).unwrap_or(1));
                let (key, der) = SigningKey::generate(created as u64).map_err(StoreError::Setup)?;
                store
                    .ensure_key(&StoredKey {
                        generation: gen_,
                        kid: key.kid.clone(),
                        created,
                        pkcs8: der,
                    })
                    .await?;
            }
        }
        let rows = store.keys_since(self.min_generation(now)).await?;
        let ids: Vec<(i64, String)> = rows.iter().map(|k| (k.generation, k.kid.clone())).collect();
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *loaded == ids {
            return Ok(());
        }
        let mut keys = Vec::new();
        for k in rows {
            match SigningKey::from_pkcs8(&k.pkcs8, u64::try_from(k.created).unwrap_or(0)) {
                Ok(sk) => keys.push(sk),
                Err(e) => {
                    tracing::error!(generation = k.generation, error = %e, "unusable signing key in store")
                }
            }
        }
        tracing::info!(
            keys = keys.len(),
            generation = g,
            "signing keys loaded from the store"
        );
        ring.replace(keys);
        *loaded = ids;
        Ok(())
    }
}
