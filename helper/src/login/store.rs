//! Where a sign-in is kept.
//!
//! Two pieces per (broker, profile):
//! - the **record** (`login-<slot>.json` in the state directory, 0600 in a 0700 directory): who signed in,
//!   at which issuer, with which client, and where the refresh token is. Nothing secret.
//! - the **refresh token**: in the OS credential store (the `keyring` crate: the Secret Service on Linux,
//!   the Keychain on macOS), or, when that is unavailable (a server, an SSH session without a desktop
//!   session, a container), in `login-<slot>.refresh`, 0600, whose content says it is a fallback.
//!
//! A rotated refresh token replaces the old one in one step (the credential store's set, or a temp file
//! renamed over the old one), so a crash leaves either the old token or the new one, never half.
//!
//! `TOLLGATE_CREDENTIAL_STORE` = `auto` (default: the OS store, else the file), `keyring` (the OS store or
//! an error) or `file` (never touch the OS store; what the tests use).

use crate::error::SignInError;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{DirBuilder, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The name the refresh token has in the OS credential store.
pub const KEYRING_SERVICE: &str = "tollgate-token";
const RECORD_VERSION: u32 = 1;
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Which store to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    Auto,
    Keyring,
    File,
}

impl StoreChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(StoreChoice::Auto),
            "keyring" => Some(StoreChoice::Keyring),
            "file" => Some(StoreChoice::File),
            _ => None,
        }
    }
}

/// Where the refresh token of a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    Keyring,
    File,
}

/// A sign-in, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub broker: String,
    pub profile: String,
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// RFC 8707 `resource` sent with every grant.
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    /// Email or user name, for `status`.
    #[serde(default)]
    pub name: Option<String>,
    /// Unix seconds.
    pub signed_in_at: u64,
    /// Unix seconds, when the server said how long the refresh token lives.
    #[serde(default)]
    pub refresh_expires_at: Option<u64>,
    pub held: Held,
    /// When `held` is `File`: why the OS store was not used.
    #[serde(default)]
    pub fallback_reason: Option<String>,
}

impl Record {
    /// Who, for messages: the name, else the subject.
    pub fn who(&self) -> String {
        match (&self.name, &self.subject) {
            (Some(n), Some(s)) if n != s => format!("{n} (subject {s})"),
            (Some(n), _) => n.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => "an unnamed account".into(),
        }
    }

    /// What distinguishes this sign-in in the token cache key: another person, issuer, client or a new
    /// sign-in is another slot. Not secret.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tollgate-token login fingerprint v1");
        for part in [
            self.issuer.as_str(),
            self.client_id.as_str(),
            self.subject.as_deref().unwrap_or(""),
            &self.signed_in_at.to_string(),
        ] {
            h.update([0u8]);
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// The files of one (broker, profile) sign-in.
#[derive(Debug, Clone)]
pub struct Slot {
    dir: PathBuf,
    digest: String,
    broker: String,
    profile: String,
}

impl Slot {
    pub fn new(dir: &Path, broker: &str, profile: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"tollgate-token login slot v1\0");
        h.update(broker.as_bytes());
        h.update([0u8]);
        h.update(profile.as_bytes());
        Slot {
            dir: dir.to_owned(),
            digest: hex::encode(h.finalize())[..32].to_owned(),
            broker: broker.to_owned(),
            profile: profile.to_owned(),
        }
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.join(format!("login-{}.json", self.digest))
    }

    pub fn fallback_path(&self) -> PathBuf {
        self.dir.join(format!("login-{}.refresh", self.digest))
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("login-{}.lock", self.digest))
    }

    /// The account name in the OS credential store: readable in a keychain UI.
    fn keyring_user(&self) -> String {
        format!("{} {}", self.profile, self.broker)
    }

    fn ensure_dir(&self) -> Result<(), SignInError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| store_err("keep", format!("cannot create {}: {e}", self.dir.display())))
    }

    pub fn load(&self) -> Result<Option<Record>, SignInError> {
        let Some(bytes) = read_private(&self.record_path())? else {
            return Ok(None);
        };
        let r: Record = serde_json::from_slice(&bytes).map_err(|e| {
            store_err(
                "read",
                format!(
                    "{} is not a sign-in record ({e}); run `tollgate-token logout` and sign in again",
                    self.record_path().display()
                ),
            )
        })?;
        if r.version != RECORD_VERSION || r.broker != self.broker || r.profile != self.profile {
            return Ok(None);
        }
        Ok(Some(r))
    }

    pub fn save(&self, r: &Record) -> Result<(), SignInError> {
        self.ensure_dir()?;
        let body = serde_json::to_vec_pretty(r)
            .map_err(|e| store_err("keep", format!("cannot encode the sign-in record: {e}")))?;
        replace(&self.record_path(), &body)
    }

    /// Take the slot's lock (blocking): a refresh rotates the token, so two renewals must not overlap
    /// (the second would replay the first's token and revoke the whole family).
    pub fn lock(&self) -> Result<File, SignInError> {
        self.ensure_dir()?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path())
            .map_err(|e| store_err("lock", e.to_string()))?;
        f.lock().map_err(|e| store_err("lock", e.to_string()))?;
        Ok(f)
    }

    /// Keep a refresh token: the OS store if `choice` allows and it works, else the fallback file.
    /// Returns where it went and, for the file, why.
    pub fn put_refresh(
        &self,
        choice: StoreChoice,
        token: &SecretString,
    ) -> Result<(Held, Option<String>), SignInError> {
        self.ensure_dir()?;
        if choice != StoreChoice::File {
            match self
                .entry()
                .and_then(|e| e.set_password(token.expose_secret()))
            {
                Ok(()) => {
                    // A stale fallback must not outlive the token that replaced it.
                    let _ = std::fs::remove_file(self.fallback_path());
                    return Ok((Held::Keyring, None));
                }
                Err(e) if choice == StoreChoice::Keyring => {
                    return Err(store_err(
                        "keep",
                        format!("the OS credential store failed: {}", keyring_reason(&e)),
                    ));
                }
                Err(e) => {
                    let reason = format!(
                        "the OS credential store is unavailable: {}",
                        keyring_reason(&e)
                    );
                    self.write_fallback(token, &reason)?;
                    return Ok((Held::File, Some(reason)));
                }
            }
        }
        let reason = "TOLLGATE_CREDENTIAL_STORE=file".to_owned();
        self.write_fallback(token, &reason)?;
        Ok((Held::File, Some(reason)))
    }

    /// Replace the refresh token where the record says it is (a rotation).
    pub fn rotate(&self, r: &Record, token: &SecretString) -> Result<(), SignInError> {
        match r.held {
            Held::Keyring => self
                .entry()
                .and_then(|e| e.set_password(token.expose_secret()))
                .map_err(|e| store_err("keep", keyring_reason(&e))),
            Held::File => self.write_fallback(
                token,
                r.fallback_reason
                    .as_deref()
                    .unwrap_or("the OS credential store is unavailable"),
            ),
        }
    }

    pub fn get_refresh(&self, r: &Record) -> Result<Option<SecretString>, SignInError> {
        match r.held {
            Held::Keyring => match self.entry().and_then(|e| e.get_password()) {
                Ok(t) => Ok(Some(SecretString::from(t))),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(store_err("read", keyring_reason(&e))),
            },
            Held::File => {
                let Some(bytes) = read_private(&self.fallback_path())? else {
                    return Ok(None);
                };
                let f: FallbackIn = serde_json::from_slice(&bytes).map_err(|e| {
                    store_err("read", format!("{}: {e}", self.fallback_path().display()))
                })?;
                Ok(Some(SecretString::from(f.refresh_token)))
            }
        }
    }

    /// Forget everything of this sign-in here (the record, the token wherever it is).
    pub fn forget(&self, r: Option<&Record>) {
        if r.is_none_or(|r| r.held == Held::Keyring)
            && let Ok(e) = self.entry()
        {
            let _ = e.delete_credential();
        }
        let _ = std::fs::remove_file(self.fallback_path());
        let _ = std::fs::remove_file(self.record_path());
    }

    fn entry(&self) -> keyring::Result<keyring::Entry> {
        keyring::Entry::new(KEYRING_SERVICE, &self.keyring_user())
    }

    fn write_fallback(&self, token: &SecretString, reason: &str) -> Result<(), SignInError> {
        let body = serde_json::to_vec_pretty(&FallbackOut {
            fallback: &format!(
                "tollgate-token keeps this refresh token in a file only because {reason}; \
                 it is readable by you alone (0600)"
            ),
            refresh_token: token.expose_secret(),
        })
        .map_err(|e| store_err("keep", e.to_string()))?;
        replace(&self.fallback_path(), &body)
    }
}

#[derive(Serialize)]
struct FallbackOut<'a> {
    fallback: &'a str,
    refresh_token: &'a str,
}

#[derive(Deserialize)]
struct FallbackIn {
    refresh_token: String,
}

fn store_err(what: &'static str, reason: String) -> SignInError {
    SignInError::Store { what, reason }
}

fn keyring_reason(e: &keyring::Error) -> String {
    crate::error::one_line(&e.to_string())
}

/// Read a file of ours: `None` when missing; refused when others can access it or it is not ours.
fn read_private(path: &Path) -> Result<Option<Vec<u8>>, SignInError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(store_err("read", format!("{}: {e}", path.display()))),
    };
    let meta = f
        .metadata()
        .map_err(|e| store_err("read", format!("{}: {e}", path.display())))?;
    if crate::sys::open_to_others(&meta).is_some() || !crate::sys::owned_by_us(&meta) {
        return Err(store_err(
            "read",
            format!(
                "{} is accessible by others or not yours (tollgate-token writes it 0600); \
                 run `tollgate-token logout` and sign in again",
                path.display()
            ),
        ));
    }
    let mut bytes = Vec::new();
    (&mut f)
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| store_err("read", format!("{}: {e}", path.display())))?;
    Ok(Some(bytes))
}

/// Write a 0600 temp file beside `target` and rename it over `target`, fsynced: unlike the token
/// cache, a lost refresh token costs the person a new sign-in.
fn replace(target: &Path, body: &[u8]) -> Result<(), SignInError> {
    let err = |e: std::io::Error| store_err("keep", format!("{}: {e}", target.display()));
    let (tmp_path, mut tmp) = crate::cache::create_temp_beside(target).map_err(err)?;
    let result = tmp
        .write_all(body)
        .and_then(|()| tmp.sync_all())
        .and_then(|()| {
            drop(tmp);
            std::fs::rename(&tmp_path, target)
        });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp_path);
        return Err(err(e));
    }
    let _ = std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn record(held: Held) -> Record {
        Record {
            version: RECORD_VERSION,
            broker: "https://b".into(),
            profile: "default".into(),
            issuer: "https://b".into(),
            client_id: "tollgate-token".into(),
            token_endpoint: "https://b/oauth/token".into(),
            revocation_endpoint: None,
            resource: Some("https://b".into()),
            scope: None,
            subject: Some("alice".into()),
            name: Some("alice@example.com".into()),
            signed_in_at: 100,
            refresh_expires_at: None,
            held,
            fallback_reason: Some("TOLLGATE_CREDENTIAL_STORE=file".into()),
        }
    }

    #[test]
    fn the_file_fallback_is_0600_says_so_and_rotates_in_place() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("state");
        let slot = Slot::new(&dir, "https://b", "default");
        let (held, why) = slot
            .put_refresh(StoreChoice::File, &SecretString::from("rt-1"))
            .expect("put");
        assert_eq!(held, Held::File);
        assert_eq!(why.as_deref(), Some("TOLLGATE_CREDENTIAL_STORE=file"));
        let r = record(held);
        slot.save(&r).expect("save");
        let meta = std::fs::metadata(slot.fallback_path()).expect("meta");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).expect("dir").mode() & 0o777, 0o700);
        let text = std::fs::read_to_string(slot.fallback_path()).expect("read");
        assert!(
            text.contains("only because TOLLGATE_CREDENTIAL_STORE=file"),
            "{text}"
        );

        slot.rotate(&r, &SecretString::from("rt-2"))
            .expect("rotate");
        let got = slot.get_refresh(&r).expect("get").expect("some");
        assert_eq!(got.expose_secret(), "rt-2");
        assert_eq!(
            slot.load().expect("load").expect("some").who(),
            "alice@example.com (subject alice)"
        );

        // Opened up by someone: refused, not served.
        std::fs::set_permissions(slot.fallback_path(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(
            slot.get_refresh(&r),
            Err(SignInError::Store { .. })
        ));

        slot.forget(Some(&r));
        assert!(slot.load().expect("load").is_none());
        assert!(!slot.fallback_path().exists());
    }

    #[test]
    fn slots_differ_by_broker_and_profile() {
        let d = Path::new("/x");
        let a = Slot::new(d, "https://b", "default").record_path();
        assert_ne!(a, Slot::new(d, "https://c", "default").record_path());
        assert_ne!(a, Slot::new(d, "https://b", "work").record_path());
    }

    #[test]
    fn fingerprint_changes_with_who_and_when() {
        let a = record(Held::File);
        let mut b = a.clone();
        b.subject = Some("bob".into());
        let mut c = a.clone();
        c.signed_in_at = 101;
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
