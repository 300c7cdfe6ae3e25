//! The on-disk token cache.
//!
//! One JSON file per (broker, audience, identity name + fingerprint, profile) in a 0700 directory,
//! named by the hex SHA-256 of that tuple. Files are created 0600 at open, written to a temp file in
//! the same directory and renamed over the old one, so a reader sees either the old or the new token,
//! never half of one. Minting is guarded by an exclusive `flock` on a sibling `.lock` file; the kernel
//! releases it when the process dies (Codex SIGKILLs a helper on timeout).
//!
//! Nothing here is fsynced: the cache can always be rebuilt by minting. After a power loss the file
//! may hold the old token (still checked against its expiry), or be empty or torn (a `Corrupt` miss:
//! a warning and a mint). Either costs one mint; an fsync costs every cold run a few milliseconds.
//!
//! A cache file that group or others can access, or that is not ours, was not written by us (we
//! create every file 0600): it is never served, not even as a fallback, and the next mint replaces it.
//!
//! Next to each slot, `<digest>.fail` remembers a recent broker failure (see [`RememberedFailure`]).
//!
//! This module is on the hot path (a cache hit must be a read, a parse and a print), so it uses
//! only `std` and `serde_json`.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Cache files larger than this are not ours.
const MAX_CACHE_FILE_BYTES: u64 = 64 * 1024;
const FORMAT_VERSION: u32 = 1;

/// What identifies one cache slot. Every input that changes the token must be here.
#[derive(Debug, Clone)]
pub struct CacheKey<'a> {
    pub broker: &'a str,
    pub audience: &'a str,
    pub identity: &'a str,
    /// Non-secret digest from `Identity::fingerprint`.
    pub fingerprint: &'a str,
    pub profile: &'a str,
}

impl CacheKey<'_> {
    /// Hex SHA-256 of the tuple (NUL-separated; none of the parts may contain NUL).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tollgate-token cache v1");
        for part in [
            self.broker,
            self.audience,
            self.identity,
            self.fingerprint,
            self.profile,
        ] {
            h.update([0u8]);
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// A cached token and what it was minted for.
#[derive(Debug, Clone)]
pub struct CachedToken {
    pub access_token: SecretString,
    /// Unix seconds on the local clock: mint time + `expires_in`.
    pub expires_at: u64,
    /// Unix seconds, local clock at mint time.
    pub minted_at: u64,
    pub broker: String,
    pub audience: String,
    pub profile: String,
    pub identity: String,
    pub scope: Option<String>,
}

impl CachedToken {
    /// Seconds of life left (0 once expired).
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }

    /// Good to serve without minting: more than `margin` seconds left.
    pub fn is_fresh(&self, now: u64, margin: u64) -> bool {
        self.remaining(now) > margin
    }

    /// Not yet expired: may be served when the broker cannot be reached.
    pub fn is_valid(&self, now: u64) -> bool {
        self.remaining(now) > 0
    }
}

/// The file format. Borrowed on write so the token is not copied into another `String`.
#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    access_token: &'a str,
    expires_at: u64,
    minted_at: u64,
    broker: &'a str,
    audience: &'a str,
    profile: &'a str,
    identity: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

#[derive(Deserialize)]
struct FileIn {
    version: u32,
    #[serde(deserialize_with = "de_secret")]
    access_token: SecretString,
    expires_at: u64,
    minted_at: u64,
    broker: String,
    audience: String,
    profile: String,
    identity: String,
    #[serde(default)]
    scope: Option<String>,
}

fn de_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

/// Result of looking in the cache.
#[derive(Debug)]
pub enum Lookup {
    Hit(CachedToken),
    Miss,
    /// Unreadable, unparsable or not matching the key: treat as a miss, warn, overwrite.
    Corrupt(String),
    /// Accessible by group or others, or not ours: never served; warn, mint, re-create it 0600.
    Insecure(String),
}

/// A broker failure, remembered for a few seconds so that Codex's reruns of a failing helper fail at
/// once with the same message instead of each waiting out the deadline against a hung broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedFailure {
    /// Unix seconds (local clock) when the attempt failed.
    pub at: u64,
    /// The broker answered 2xx with garbage (else: unreachable, timed out or 5xx).
    #[serde(default)]
    pub bad_response: bool,
    pub url: String,
    pub reason: String,
}

/// Why the cache could not be used. The helper degrades (mints without caching) and warns.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create cache directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("timed out waiting for another tollgate-token to finish minting (lock {path})")]
    LockTimeout { path: PathBuf },
    #[error("cannot write cache file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Holds the mint lock until dropped (closing the descriptor releases the `flock`).
#[derive(Debug)]
pub struct MintLock {
    _file: File,
}

/// One cache slot.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    file: PathBuf,
    lock: PathBuf,
    expect_broker: String,
    expect_audience: String,
    expect_profile: String,
    expect_identity: String,
}

impl Cache {
    pub fn new(dir: &Path, key: &CacheKey<'_>) -> Self {
        let digest = key.digest();
        Cache {
            dir: dir.to_owned(),
            file: dir.join(format!("{digest}.json")),
            lock: dir.join(format!("{digest}.lock")),
            expect_broker: key.broker.to_owned(),
            expect_audience: key.audience.to_owned(),
            expect_profile: key.profile.to_owned(),
            expect_identity: key.identity.to_owned(),
        }
    }

    pub fn file_path(&self) -> &Path {
        &self.file
    }

    fn failure_path(&self) -> PathBuf {
        self.file.with_extension("fail")
    }

    /// Read the slot. Never fails: problems are a `Corrupt` or `Insecure` miss.
    pub fn read(&self) -> Lookup {
        let file = match File::open(&self.file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Corrupt(format!("cannot open {}: {e}", self.file.display())),
        };
        // The open file's own metadata, so a swap between a check and the read cannot fool us.
        match file.metadata() {
            Ok(meta) => {
                if let Some(mode) = crate::sys::open_to_others(&meta) {
                    return Lookup::Insecure(format!(
                        "{} is accessible by group or others (mode {mode:04o})",
                        self.file.display()
                    ));
                }
                if !crate::sys::owned_by_us(&meta) {
                    return Lookup::Insecure(format!(
                        "{} belongs to another user",
                        self.file.display()
                    ));
                }
            }
            Err(e) => return Lookup::Corrupt(format!("cannot stat {}: {e}", self.file.display())),
        }
        let mut buf = Vec::new();
        if let Err(e) = file.take(MAX_CACHE_FILE_BYTES + 1).read_to_end(&mut buf) {
            return Lookup::Corrupt(format!("cannot read {}: {e}", self.file.display()));
        }
        if buf.len() as u64 > MAX_CACHE_FILE_BYTES {
            return Lookup::Corrupt(format!("{} is too large", self.file.display()));
        }
        // serde_json's error text names a position, never the content.
        let parsed: FileIn = match serde_json::from_slice(&buf) {
            Ok(p) => p,
            Err(e) => {
                return Lookup::Corrupt(format!(
                    "{} is not a valid cache file ({e})",
                    self.file.display()
                ));
            }
        };
        if parsed.version != FORMAT_VERSION {
            return Lookup::Corrupt(format!(
                "{} has unknown format version {}",
                self.file.display(),
                parsed.version
            ));
        }
        if parsed.broker != self.expect_broker
            || parsed.audience != self.expect_audience
            || parsed.profile != self.expect_profile
            || parsed.identity != self.expect_identity
        {
            return Lookup::Corrupt(format!(
                "{} was written for another broker or profile",
                self.file.display()
            ));
        }
        if !is_single_line_token(parsed.access_token.expose_secret()) {
            return Lookup::Corrupt(format!("{} holds a malformed token", self.file.display()));
        }
        Lookup::Hit(CachedToken {
            access_token: parsed.access_token,
            expires_at: parsed.expires_at,
            minted_at: parsed.minted_at,
            broker: parsed.broker,
            audience: parsed.audience,
            profile: parsed.profile,
            identity: parsed.identity,
            scope: parsed.scope,
        })
    }

    /// Create the directory 0700 (tightening it if it exists with looser permissions).
    fn ensure_dir(&self) -> Result<(), CacheError> {
        let err = |source| CacheError::Dir {
            path: self.dir.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(err)?;
        let meta = std::fs::metadata(&self.dir).map_err(err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(err)?;
        }
        Ok(())
    }

    /// Take the exclusive mint lock, waiting at most until `deadline`.
    pub fn lock(&self, deadline: Instant) -> Result<MintLock, CacheError> {
        self.ensure_dir()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|source| CacheError::Lock {
                path: self.lock.clone(),
                source,
            })?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(MintLock { _file: file }),
                Err(TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Err(CacheError::LockTimeout {
                            path: self.lock.clone(),
                        });
                    }
                    // Polling keeps the deadline honest; a blocking flock cannot be timed out.
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TryLockError::Error(source)) => {
                    return Err(CacheError::Lock {
                        path: self.lock.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Remove the slot's file (an insecure one, while holding the mint lock). Best effort.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.file);
    }

    /// The failure remembered for this slot, if it happened less than `window` seconds before `now`.
    pub fn recent_failure(&self, now: u64, window: u64) -> Option<RememberedFailure> {
        if window == 0 {
            return None;
        }
        let buf = std::fs::read(self.failure_path()).ok()?;
        let f: RememberedFailure = serde_json::from_slice(&buf).ok()?;
        // A record from the future (the clock went back) is not trusted to end.
        (f.at <= now && now - f.at < window).then_some(f)
    }

    /// Remember a failure (atomically replaced, 0600, not fsynced: losing it costs one slow run).
    pub fn remember_failure(&self, f: &RememberedFailure) -> Result<(), CacheError> {
        self.ensure_dir()?;
        let path = self.failure_path();
        let err = |source| CacheError::Write {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec(f).map_err(|e| err(io::Error::other(e)))?;
        replace_file(&path, &body).map_err(err)
    }

    /// Forget the remembered failure (after a successful mint).
    pub fn forget_failure(&self) {
        let _ = std::fs::remove_file(self.failure_path());
    }

    /// Atomically replace the slot's content.
    pub fn write(&self, token: &CachedToken) -> Result<(), CacheError> {
        self.ensure_dir()?;
        let err = |source| CacheError::Write {
            path: self.file.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(&FileOut {
            version: FORMAT_VERSION,
            access_token: token.access_token.expose_secret(),
            expires_at: token.expires_at,
            minted_at: token.minted_at,
            broker: &token.broker,
            audience: &token.audience,
            profile: &token.profile,
            identity: &token.identity,
            scope: token.scope.as_deref(),
        })
        .map_err(|e| err(io::Error::other(e)))?;
        let mut body = body;
        body.push(b'\n');
        replace_file(&self.file, &body).map_err(err)
    }
}

/// Write `body` to a new 0600 temp file beside `target` and rename it over `target`. No fsync: only
/// for files that can be rebuilt (see the module comment).
fn replace_file(target: &Path, body: &[u8]) -> io::Result<()> {
    let (tmp_path, mut tmp) = create_temp_beside(target)?;
    let result = tmp.write_all(body).and_then(|()| {
        drop(tmp);
        std::fs::rename(&tmp_path, target)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

/// Create a new 0600 file next to `target` with a unique name (`O_EXCL`, mode set at open).
pub(crate) fn create_temp_beside(target: &Path) -> io::Result<(PathBuf, File)> {
    let dir = target.parent().unwrap_or_else(|| Path::new("."));
    let stem = target
        .file_name()
        .map_or_else(|| "tmp".into(), |n| n.to_string_lossy().into_owned());
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0u32..100 {
        let path = dir.join(format!(".{stem}.{pid}.{nanos}.{attempt}.tmp"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "cannot find a free temporary file name",
    ))
}

/// A token must fit on one header line: non-empty, printable, no whitespace.
pub fn is_single_line_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 16 * 1024 && t.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn key() -> CacheKey<'static> {
        CacheKey {
            broker: "https://b",
            audience: "tollgate",
            identity: "static",
            fingerprint: "f",
            profile: "default",
        }
    }

    fn token(exp: u64) -> CachedToken {
        CachedToken {
            access_token: SecretString::from("tok.en.sig"),
            expires_at: exp,
            minted_at: 100,
            broker: "https://b".into(),
            audience: "tollgate".into(),
            profile: "default".into(),
            identity: "static".into(),
            scope: None,
        }
    }

    #[test]
    fn digest_depends_on_every_part() {
        let base = key().digest();
        assert_eq!(base.len(), 64);
        assert_ne!(
            base,
            CacheKey {
                broker: "https://c",
                ..key()
            }
            .digest()
        );
        assert_ne!(
            base,
            CacheKey {
                audience: "x",
                ..key()
            }
            .digest()
        );
        assert_ne!(
            base,
            CacheKey {
                identity: "aws",
                ..key()
            }
            .digest()
        );
        assert_ne!(
            base,
            CacheKey {
                fingerprint: "g",
                ..key()
            }
            .digest()
        );
        assert_ne!(
            base,
            CacheKey {
                profile: "p",
                ..key()
            }
            .digest()
        );
        // Separators prevent ambiguity between adjacent parts.
        assert_ne!(
            CacheKey {
                broker: "ab",
                audience: "c",
                ..key()
            }
            .digest(),
            CacheKey {
                broker: "a",
                audience: "bc",
                ..key()
            }
            .digest()
        );
    }

    #[test]
    fn freshness_arithmetic() {
        let t = token(1000);
        assert!(t.is_fresh(600, 300));
        assert!(!t.is_fresh(700, 300));
        assert!(t.is_valid(999));
        assert!(!t.is_valid(1000));
        assert_eq!(t.remaining(2000), 0);
    }

    #[test]
    fn round_trip_modes_and_corruption() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("a/tollgate");
        let cache = Cache::new(&dir, &key());
        assert!(matches!(cache.read(), Lookup::Miss));
        let lock = cache
            .lock(Instant::now() + Duration::from_secs(1))
            .expect("lock");
        cache.write(&token(1000)).expect("write");
        drop(lock);
        match cache.read() {
            Lookup::Hit(t) => {
                assert_eq!(t.access_token.expose_secret(), "tok.en.sig");
                assert_eq!(t.expires_at, 1000);
            }
            other => panic!("expected hit, got {other:?}"),
        }
        assert_eq!(std::fs::metadata(&dir).expect("dir").mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(cache.file_path()).expect("file").mode() & 0o777,
            0o600
        );
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        std::fs::write(cache.file_path(), "{not json").expect("corrupt");
        match cache.read() {
            Lookup::Corrupt(msg) => assert!(!msg.contains("not json"), "{msg}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
        cache.write(&token(2000)).expect("overwrite");
        assert!(matches!(cache.read(), Lookup::Hit(t) if t.expires_at == 2000));

        // A slot read with another key's expectations is not served.
        let other = Cache {
            expect_profile: "p".into(),
            ..cache.clone()
        };
        assert!(matches!(other.read(), Lookup::Corrupt(_)));
    }

    #[test]
    fn lock_times_out_while_held() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = Cache::new(tmp.path(), &key());
        let _held = cache
            .lock(Instant::now() + Duration::from_secs(1))
            .expect("lock");
        // flock locks belong to the open file description, so a second open conflicts even in-process.
        let again = cache.lock(Instant::now() + Duration::from_millis(30));
        assert!(matches!(again, Err(CacheError::LockTimeout { .. })));
    }

    #[test]
    fn loose_dir_is_tightened() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("c");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Cache::new(&dir, &key()).write(&token(5)).expect("write");
        assert_eq!(std::fs::metadata(&dir).expect("dir").mode() & 0o777, 0o700);
    }

    #[test]
    fn a_cache_file_others_can_access_is_never_served() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = Cache::new(tmp.path(), &key());
        cache.write(&token(1000)).expect("write");
        assert!(matches!(cache.read(), Lookup::Hit(_)));
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(cache.file_path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            match cache.read() {
                Lookup::Insecure(why) => {
                    assert!(why.contains(&format!("(mode {mode:04o})")), "{why}");
                    assert!(!why.contains("tok.en.sig"), "{why}");
                }
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        // The next write re-creates it 0600.
        cache.write(&token(2000)).expect("write");
        assert_eq!(
            std::fs::metadata(cache.file_path()).expect("f").mode() & 0o777,
            0o600
        );
        assert!(matches!(cache.read(), Lookup::Hit(t) if t.expires_at == 2000));
        cache.remove();
        assert!(matches!(cache.read(), Lookup::Miss));
    }

    #[test]
    fn remembered_failures_expire_and_are_private() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = Cache::new(&tmp.path().join("c"), &key());
        assert_eq!(cache.recent_failure(100, 10), None);
        let f = RememberedFailure {
            at: 100,
            bad_response: false,
            url: "https://b/oauth/token".into(),
            reason: "timed out".into(),
        };
        cache.remember_failure(&f).expect("remember");
        assert_eq!(
            std::fs::metadata(cache.failure_path()).expect("f").mode() & 0o777,
            0o600
        );
        assert_eq!(cache.recent_failure(100, 10), Some(f.clone()));
        assert_eq!(cache.recent_failure(109, 10), Some(f.clone()));
        assert_eq!(cache.recent_failure(110, 10), None, "expired");
        assert_eq!(cache.recent_failure(99, 10), None, "from the future");
        assert_eq!(cache.recent_failure(100, 0), None, "disabled");
        // Another slot does not see it.
        let other = Cache::new(
            &tmp.path().join("c"),
            &CacheKey {
                broker: "https://other",
                ..key()
            },
        );
        assert_eq!(other.recent_failure(100, 10), None);
        cache.forget_failure();
        assert_eq!(cache.recent_failure(100, 10), None);
    }

    #[test]
    fn token_shape() {
        assert!(is_single_line_token("a.b.c"));
        assert!(!is_single_line_token(""));
        assert!(!is_single_line_token("a b"));
        assert!(!is_single_line_token("a\nb"));
    }
}
