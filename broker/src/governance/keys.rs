//! Signing keys shared through the store: rotated on a schedule, and on demand.
//!
//! **Scheduled.** Time is cut into generations of `rotate_secs`; generation `g` signs during `[g·R, (g+1)·R)`.
//! Every replica makes sure the keys of the current **and the next** generation exist (`INSERT … ON
//! CONFLICT DO NOTHING` on the generation, so concurrent replicas agree on one key per generation). The next
//! key is therefore in every replica's JWKS a whole generation before anyone signs with it.
//!
//! **Forced** (`POST /admin/v1/keys/rotate`). The replica that takes the call writes a new key to
//! `signing_key_rotations` with `created = now + publish_lead`, and loads it at once. Every replica reloads
//! the key set every second (`publish_lead` is several of those polls), so by `created` every replica
//! publishes the key; only then does it sign — the same "publish before sign" rule as the next generation,
//! with a lead of seconds instead of a generation. A replica cut off from the store for longer than the lead
//! keeps signing with the old key (which everyone can verify) and picks the new one up when it reconnects.
//!
//! **Which key signs.** Each replica signs with the newest key whose `created` is not in the future
//! ([`KeyRing::active_at`]): a forced key takes over from the generation key at its `created`, and the next
//! generation's key (created at `(g+1)·R`) takes over from it at the boundary. Schedule and forced rotations
//! compose without coordination because the rule only depends on `created` and the clock.
//!
//! **Retention.** A key signs at most until the end of the generation its `created` falls in, so it stays
//! published until the last token it could have signed has expired: `(g+1)·R + max_ttl + leeway`.
//!
//! **Sealed at rest.** With a key-encryption key (`[tokens] key_encryption_key_file` / `_env`) every key is
//! written to the store sealed (AES-256-GCM, bound to its `kid`), so a copy of the database alone mints
//! nothing. Keys found in the clear (written before sealing was configured) are sealed in place on load.

use super::store::{Store, StoreError, StoredKey};
use crate::keys::{KeyEncryptionKey, Opened, SigningKey};
use crate::token::KeyRing;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Default lead between recording a forced rotation and signing with the new key.
pub const DEFAULT_PUBLISH_LEAD_SECS: u64 = 5;

pub struct KeyManager {
    pub rotate_secs: u64,
    /// max token TTL + leeway.
    pub retain_secs: u64,
    /// Seconds between a forced rotation and the new key signing (must exceed the key poll interval).
    pub publish_lead_secs: u64,
    /// kids loaded into the ring, to skip rebuilding it when nothing changed.
    loaded: Mutex<Vec<String>>,
    /// Generations whose key this process has made sure exists.
    ensured: Mutex<Vec<i64>>,
    /// Seals keys written to the store, opens sealed ones. `None`: keys are stored in the clear.
    kek: Option<Arc<KeyEncryptionKey>>,
}

/// The answer to a forced rotation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rotated {
    pub kid: String,
    /// Unix seconds from which every replica signs with `kid`.
    pub activates_at: i64,
    /// The key signing until then.
    pub previous_kid: Option<String>,
}

/// The answer to a retirement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Retired {
    pub kid: String,
    /// Unix seconds of the (first) retirement.
    pub retired_at: i64,
    pub already_retired: bool,
    /// It was the key this replica signed with.
    pub was_signing: bool,
    /// The key this replica signs with now.
    pub signing_kid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error("no signing key with this kid in the store")]
    UnknownKid,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// When each key signs from (its `created`, except a promoted successor). The key that would sign now by
/// the usual rule (the newest whose `created` has passed) may be retired; then the scheduled key after it
/// — published a generation ahead, so every replica verifies it already — signs from the retirement on.
/// Forced keys are not promoted: they wait for their publication lead. The rule depends only on what the
/// store holds, so every replica picks the same key.
fn signing_times(
    all: &[(StoredKey, bool)],
    retired: &HashMap<String, i64>,
    now: u64,
) -> HashMap<String, i64> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let mut out = HashMap::new();
    let Some(natural) = all
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.created <= now)
        .max_by_key(|k| k.created)
    else {
        return out;
    };
    let Some(&at) = retired.get(&natural.kid) else {
        return out;
    };
    if let Some(successor) = all
        .iter()
        .filter(|(k, forced)| {
            !forced && !retired.contains_key(&k.kid) && k.created > natural.created
        })
        .map(|(k, _)| k)
        .min_by_key(|k| k.created)
    {
        out.insert(
            successor.kid.clone(),
            successor.created.min(at.max(natural.created)),
        );
    }
    out
}

impl KeyManager {
    pub fn new(rotate_secs: u64, retain_secs: u64) -> Self {
        KeyManager {
            rotate_secs: rotate_secs.max(1),
            retain_secs,
            publish_lead_secs: DEFAULT_PUBLISH_LEAD_SECS,
            loaded: Mutex::new(Vec::new()),
            ensured: Mutex::new(Vec::new()),
            kek: None,
        }
    }

    /// Seal keys at rest with `kek` (and seal keys found in the clear).
    pub fn with_kek(mut self, kek: Option<Arc<KeyEncryptionKey>>) -> Self {
        self.kek = kek;
        self
    }

    /// The bytes to store for a new key: sealed when a KEK is configured.
    fn to_store(&self, kid: &str, der: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match &self.kek {
            Some(kek) => kek.seal(kid, &der).map_err(StoreError::Setup),
            None => Ok(der),
        }
    }

    /// A stored key's PKCS#8 DER. A key in the clear is sealed in place when a KEK is configured (`CAS` on
    /// the old bytes, so concurrent replicas agree); returns whether it did.
    async fn open(&self, store: &dyn Store, k: &StoredKey) -> Result<(Vec<u8>, bool), String> {
        match crate::keys::open_stored(self.kek.as_deref(), &k.kid, &k.pkcs8)? {
            Opened::Sealed(der) => Ok((der, false)),
            Opened::Plain => {
                let Some(kek) = &self.kek else {
                    return Ok((k.pkcs8.clone(), false));
                };
                let sealed = kek.seal(&k.kid, &k.pkcs8)?;
                let changed = store
                    .reseal_key(&k.kid, &k.pkcs8, &sealed)
                    .await
                    .map_err(|e| e.to_string())?;
                if changed {
                    tracing::warn!(kid = %k.kid, kek = %kek.id(), "signing key was stored in the clear; sealed it");
                }
                Ok((k.pkcs8.clone(), changed))
            }
        }
    }

    /// Set the forced-rotation lead (at least 1 s).
    pub fn with_publish_lead(mut self, secs: u64) -> Self {
        self.publish_lead_secs = secs.max(1);
        self
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

    /// Make sure this and the next generation have keys, then load every key still needed (scheduled and
    /// forced), minus the retired ones, into `ring`.
    pub async fn sync(
        &self,
        store: &dyn Store,
        ring: &KeyRing,
        now: u64,
    ) -> Result<(), StoreError> {
        let g = self.generation(now);
        let retired: HashMap<String, i64> = store.retired_keys().await?.into_iter().collect();
        let have: Vec<i64> = self
            .ensured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for gen_ in [g, g + 1] {
            if !have.contains(&gen_) {
                self.ensure_generation(store, gen_).await?;
            }
        }
        let min = self.min_generation(now);
        let mut rows = store.keys_since(min).await?;
        // A retired key cannot take over: while every scheduled key after this generation is retired, make
        // sure a later generation has one (bounded; each is one row).
        let mut next = g + 1;
        while next < g + 8
            && rows
                .iter()
                .filter(|k| k.generation > g)
                .all(|k| retired.contains_key(&k.kid))
        {
            next += 1;
            self.ensure_generation(store, next).await?;
            rows = store.keys_since(min).await?;
        }
        // Only scheduled keys count as a generation's key (a forced key's generation is for retention).
        *self
            .ensured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rows
            .iter()
            .map(|k| k.generation)
            .filter(|x| *x >= g)
            .collect();
        let mut all: Vec<(StoredKey, bool)> = rows.into_iter().map(|k| (k, false)).collect();
        all.extend(
            store
                .rotated_keys_since(min)
                .await?
                .into_iter()
                .map(|k| (k, true)),
        );
        let created = signing_times(&all, &retired, now);
        let mut ids: Vec<String> = all
            .iter()
            .filter(|(k, _)| !retired.contains_key(&k.kid))
            .map(|(k, _)| {
                format!(
                    "{}@{}",
                    k.kid,
                    created.get(&k.kid).copied().unwrap_or(k.created)
                )
            })
            .collect();
        ids.sort();
        let first = {
            let loaded = self
                .loaded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *loaded == ids {
                return Ok(());
            }
            loaded.is_empty()
        };
        let mut keys = Vec::new();
        let mut unusable = Vec::new();
        // At start, with a KEK: seal every key still in the clear, also those no longer loaded (past
        // retention, retired), which stay in the store for checking old audit checkpoints.
        let mut resealed = first && self.kek.is_some() && self.seal_all(store).await?;
        for (k, _) in all.iter().filter(|(k, _)| !retired.contains_key(&k.kid)) {
            let at = created.get(&k.kid).copied().unwrap_or(k.created);
            let opened = match self.open(store, k).await {
                Ok((der, changed)) => {
                    resealed |= changed;
                    SigningKey::from_pkcs8(&der, u64::try_from(at).unwrap_or(0))
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok(sk) => keys.push(sk),
                Err(e) => {
                    tracing::error!(generation = k.generation, kid = %k.kid, error = %e, "unusable signing key in store");
                    unusable.push(e);
                }
            }
        }
        if resealed && let Err(e) = store.purge_overwritten().await {
            tracing::warn!(error = %e, "could not purge the clear-text keys' old pages");
        }
        // At start every key must open (a missing or wrong key-encryption key is a configuration error);
        // later, a replica keeps the keys it has rather than drop them all over one bad row.
        if let Some(e) = unusable.first()
            && (first || keys.is_empty())
        {
            return Err(StoreError::Setup(e.clone()));
        }
        tracing::info!(
            keys = keys.len(),
            retired = retired.len(),
            generation = g,
            "signing keys loaded from the store"
        );
        ring.replace(keys);
        *self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
        Ok(())
    }

    /// Seal every key the store holds in the clear; whether any was.
    async fn seal_all(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let mut any = false;
        for k in store
            .keys_since(i64::MIN)
            .await?
            .into_iter()
            .chain(store.rotated_keys_since(i64::MIN).await?)
        {
            if !crate::keys::is_sealed(&k.pkcs8) {
                any |= self.open(store, &k).await.map_err(StoreError::Setup)?.1;
            }
        }
        Ok(any)
    }

    /// Store a key for generation `gen_` unless one exists (all replicas agree on the first one written).
    async fn ensure_generation(&self, store: &dyn Store, gen_: i64) -> Result<(), StoreError> {
        let created = gen_.saturating_mul(i64::try_from(self.rotate_secs).unwrap_or(1));
        let (key, der) =
            SigningKey::generate(u64::try_from(created).unwrap_or(0)).map_err(StoreError::Setup)?;
        let pkcs8 = self.to_store(&key.kid, der)?;
        store
            .ensure_key(&StoredKey {
                generation: gen_,
                kid: key.kid.clone(),
                created,
                pkcs8,
            })
            .await
    }

    /// Retire a key now: recorded in the store (every replica drops it on its next key poll), dropped here
    /// at once. If it was the key signing, the next scheduled key — published a generation ahead, so every
    /// replica already verifies it — signs from now on.
    pub async fn retire(
        &self,
        store: &dyn Store,
        ring: &KeyRing,
        kid: &str,
        reason: Option<&str>,
        now: u64,
    ) -> Result<Retired, RetireError> {
        let known = store
            .keys_since(i64::MIN)
            .await?
            .into_iter()
            .chain(store.rotated_keys_since(i64::MIN).await?)
            .any(|k| k.kid == kid);
        if !known {
            return Err(RetireError::UnknownKid);
        }
        let was_signing = ring.active_at(now).is_some_and(|k| k.kid == kid);
        let newly = store
            .retire_key(kid, i64::try_from(now).unwrap_or(i64::MAX), reason)
            .await?;
        self.sync(store, ring, now).await?;
        let retired_at = store
            .retired_keys()
            .await?
            .into_iter()
            .find(|(k, _)| k == kid)
            .map_or(i64::try_from(now).unwrap_or(i64::MAX), |(_, at)| at);
        let signing_kid = ring.active_at(now).map(|k| k.kid.clone());
        tracing::warn!(kid, was_signing, signing_kid = ?signing_kid, "signing key retired");
        Ok(Retired {
            kid: kid.to_string(),
            retired_at,
            already_retired: !newly,
            was_signing,
            signing_kid,
        })
    }

    /// Force a rotation: store a new key that signs from `now + publish_lead` on every replica, and load it
    /// here at once (the other replicas load it on their next poll, well before it signs).
    pub async fn rotate(
        &self,
        store: &dyn Store,
        ring: &KeyRing,
        now: u64,
    ) -> Result<Rotated, StoreError> {
        let previous_kid = ring.active_at(now).map(|k| k.kid.clone());
        let activates = now.saturating_add(self.publish_lead_secs);
        let (key, der) = SigningKey::generate(activates).map_err(StoreError::Setup)?;
        let activates_at = i64::try_from(activates).unwrap_or(i64::MAX);
        let pkcs8 = self.to_store(&key.kid, der)?;
        store
            .add_rotated_key(
                &StoredKey {
                    generation: self.generation(activates),
                    kid: key.kid.clone(),
                    created: activates_at,
                    pkcs8,
                },
                i64::try_from(now).unwrap_or(i64::MAX),
            )
            .await?;
        self.sync(store, ring, now).await?;
        tracing::warn!(kid = %key.kid, activates_at, previous_kid = ?previous_kid, "signing key rotation forced");
        Ok(Rotated {
            kid: key.kid,
            activates_at,
            previous_kid,
        })
    }
}
