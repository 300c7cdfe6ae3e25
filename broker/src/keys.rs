//! Signing keys: ES256, each with a `kid`. Generated into the state directory on first start (mode 0600)
//! or loaded from a file. Older keys stay published in the JWKS until every token they signed has expired.
//!
//! Also the rules for every file the broker keeps secrets or the ledger in ([`private_dir`],
//! [`prepare_sqlite_file`], [`check_private_file`]): created 0600 in a 0700 directory, and refused at
//! start — as ssh refuses an unprotected private key — when group or others can get at them. And the
//! key-encryption key ([`KeyEncryptionKey`]) that seals store-held signing keys at rest.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("signing key store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file or directory holding secrets or the ledger that others can get at (or that cannot be made
    /// private). The message names the path and the fix.
    #[error("{}: {message}", path.display())]
    Exposed { path: PathBuf, message: String },
}

/// One ES256 key. The private half is only present for keys this broker can sign with.
pub struct SigningKey {
    pub kid: String,
    /// Unix seconds the key was created; the newest signs.
    pub created: u64,
    encoding: Option<EncodingKey>,
    pub decoding: DecodingKey,
    x: String,
    y: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Build from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8], created: u64) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err("unexpected public key encoding".into());
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(point)[..12]);
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            kid,
            created,
            encoding: Some(EncodingKey::from_ec_der(der)),
            decoding,
            x,
            y,
        })
    }

    /// A public key from a JWK (`kty` EC, `crv` P-256): verifies, cannot sign.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, String> {
        let field = |k: &str| {
            jwk.get(k)
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("JWK without {k:?}"))
        };
        if field("kty")? != "EC" || field("crv")? != "P-256" {
            return Err("only EC P-256 JWKs are supported".into());
        }
        let (x, y) = (field("x")?.to_string(), field("y")?.to_string());
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            kid: field("kid")?.to_string(),
            created: 0,
            encoding: None,
            decoding,
            x,
            y,
        })
    }

    /// A new random key.
    pub fn generate(created: u64) -> Result<(Self, Vec<u8>), String> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| e.to_string())?;
        let der = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&der, created)?, der))
    }

    pub fn encoding(&self) -> Option<&EncodingKey> {
        self.encoding.as_ref()
    }

    /// The public JWK.
    pub fn jwk(&self) -> serde_json::Value {
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid, "x": self.x, "y": self.y})
    }
}

/// PEM-wrap PKCS#8 DER.
pub fn to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// Unwrap a PKCS#8 PEM (`BEGIN PRIVATE KEY`).
pub fn from_pem(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err(
            "no \"BEGIN PRIVATE KEY\" block (expected an unencrypted PKCS#8 P-256 key)".into(),
        );
    }
    STANDARD
        .decode(body.trim())
        .map_err(|e| format!("bad base64 in PEM: {e}"))
}

/// Load a key from a PEM file (refused when group or others can read it, or replace it).
pub fn load_file(path: &Path, created: u64) -> Result<SigningKey, KeyError> {
    check_operator_secret(
        path,
        "the token-signing key (tokens.signing_key_file)",
        "Anyone who could read it can mint tokens for any identity: treat the key as exposed and replace it",
    )?;
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })?;
    let der = from_pem(&text).map_err(|message| KeyError::Bad {
        path: path.into(),
        message,
    })?;
    SigningKey::from_pkcs8(&der, created).map_err(|message| KeyError::Bad {
        path: path.into(),
        message,
    })
}

/// Write a secret file atomically with mode 0600 from creation.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Create a directory (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The keys in a state directory's `keys/` folder, generating the first one if there is none.
/// File names are `<created-unix-secs>.pem`.
pub fn load_or_generate(state_dir: &Path, now: u64) -> Result<Vec<SigningKey>, KeyError> {
    let dir = state_dir.join("keys");
    private_dir(state_dir, Some("signing keys"))?;
    private_dir(&dir, Some("signing keys"))?;
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|source| KeyError::Io {
        path: dir.clone(),
        source,
    })?;
    for e in entries {
        let e = e.map_err(|source| KeyError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = e.path();
        let Some(created) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        keys.push(load_file(&path, created)?);
    }
    if keys.is_empty() {
        keys.push(generate_into(&dir, now)?);
    }
    keys.sort_by_key(|k| std::cmp::Reverse(k.created));
    Ok(keys)
}

/// Generate a key and store it in `dir` as `<now>.pem`.
pub fn generate_into(dir: &Path, now: u64) -> Result<SigningKey, KeyError> {
    let (key, der) = SigningKey::generate(now).map_err(|message| KeyError::Bad {
        path: dir.into(),
        message,
    })?;
    let path = dir.join(format!("{now}.pem"));
    write_secret_file(&path, to_pem(&der).as_bytes())
        .map_err(|source| KeyError::Io { path, source })?;
    Ok(key)
}

/// Permission bits for group and others.
const GROUP_OTHER: u32 = 0o077;

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// Make `dir` a private directory for files that hold secrets or the ledger: create it (and missing
/// parents) with mode 0700, or tighten an existing one that group or others can get at to 0700.
///
/// Why tighten rather than refuse: a state directory made by hand (`mkdir`), by a container image or as a
/// volume is usually 0755, and the broker owns what is in it; with the files inside created 0600 nothing
/// has leaked through the directory mode alone. A directory this process cannot change (it belongs to
/// someone else) is refused when it holds `refuse_for` (e.g. the SQLite store, which keeps the signing keys
/// in it): others could replace or read what the broker puts there. With `None` it is left as is, with a
/// warning (e.g. a Kubernetes `emptyDir` owned by root, in a pod where the broker is the only user).
pub fn private_dir(dir: &Path, refuse_for: Option<&str>) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        create_private_dir(dir).map_err(|source| KeyError::Io {
            path: dir.into(),
            source,
        })?;
    }
    let meta = std::fs::metadata(dir).map_err(|source| KeyError::Io {
        path: dir.into(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(KeyError::Exposed {
            path: dir.into(),
            message: "expected a directory".into(),
        });
    }
    let mode = mode_of(&meta);
    if mode & GROUP_OTHER == 0 {
        return Ok(());
    }
    match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        Ok(()) => {
            tracing::warn!(
                dir = %dir.display(),
                was = format_args!("{mode:04o}"),
                "state directory was accessible by group or others; tightened to 0700"
            );
            Ok(())
        }
        Err(e) if refuse_for.is_some() => Err(KeyError::Exposed {
            path: dir.into(),
            message: format!(
                "this directory holds {} but group or others can access it (mode {mode:04o}) and this user \
                 cannot change that ({e}). Run `chmod 700 {}` as its owner, or point the broker at a \
                 directory it may create itself.",
                refuse_for.unwrap_or_default(),
                dir.display()
            ),
        }),
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                mode = format_args!("{mode:04o}"),
                error = %e,
                "state directory is accessible by group or others and cannot be tightened; it holds no keys, continuing"
            );
            Ok(())
        }
    }
}

/// Refuse a file that holds secrets or the ledger when group or others have any access to it, the way ssh
/// refuses an unprotected private key. A missing file is fine (it is created 0600 later). `what` names the
/// file for a person, `exposure` says what an exposure means and what to do beyond `chmod`.
pub fn check_private_file(path: &Path, what: &str, exposure: &str) -> Result<(), KeyError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(KeyError::Io {
                path: path.into(),
                source,
            });
        }
    };
    let mode = mode_of(&meta);
    if mode & GROUP_OTHER != 0 {
        return Err(KeyError::Exposed {
            path: path.into(),
            message: format!(
                "{what} is accessible by group or others (mode {mode:04o}); the broker refuses to start. \
                 Run `chmod 600 {}`. {exposure}.",
                path.display()
            ),
        });
    }
    Ok(())
}

/// A secret the operator provides (the signing-key file, the key-encryption-key file): the file as in
/// [`check_private_file`], and its directory must not let others replace it (group- or world-writable
/// without the sticky bit).
pub fn check_operator_secret(path: &Path, what: &str, exposure: &str) -> Result<(), KeyError> {
    check_private_file(path, what, exposure)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = mode_of(&meta);
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(KeyError::Exposed {
                path: dir.into(),
                message: format!(
                    "the directory of {what} is writable by group or others (mode {mode:04o}), so they could \
                     replace the file; the broker refuses to start. Run `chmod go-w {}`.",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// Create `path` empty with mode 0600 unless it exists (`O_EXCL`: there is no moment at which it exists
/// with another mode).
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// What an SQLite file the broker keeps holds (for the refusal message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqliteRole {
    /// `governance.db`: budgets, spend, revocations and the token-signing keys.
    GovernanceStore,
    /// `audit.sqlite`: the audit trail.
    AuditTrail,
}

/// Prepare an SQLite database that holds secrets or the ledger, before SQLite opens it: its directory
/// private ([`private_dir`]), the database and its `-wal`/`-shm`/`-journal` companions refused when group or
/// others can access them, and the database created empty with mode 0600 if missing. SQLite creates the
/// companions with the database file's mode, so they are 0600 from creation too (no process-wide umask,
/// which would need `unsafe` and would change every other file the process creates).
pub fn prepare_sqlite_file(path: &Path, role: SqliteRole) -> Result<(), KeyError> {
    let (what, exposure, refuse_for) = match role {
        SqliteRole::GovernanceStore => (
            "the governance store (token-signing keys, budgets, spend)",
            "Anyone who could read it could mint tokens: after fixing the modes, retire the signing keys it \
             held (`tollgate-broker admin retire-key --kid …`) or seal them with [tokens] \
             key_encryption_key_file",
            Some("the governance store (signing keys, budgets)"),
        ),
        SqliteRole::AuditTrail => (
            "the audit trail",
            "It records who minted tokens and what they spent",
            None,
        ),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir, refuse_for)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut n = name.clone();
        n.push(suffix);
        check_private_file(&path.with_file_name(n), what, exposure)?;
    }
    create_private_file(path).map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })
}

/// The key-encryption key (KEK) that seals store-held signing keys at rest (AES-256-GCM): with it set, a
/// copy of the database alone mints nothing. Read from a file or an environment variable as 32 bytes in
/// base64 or hex (`openssl rand -base64 32`).
pub struct KeyEncryptionKey {
    key: aws_lc_rs::aead::LessSafeKey,
    /// First 8 bytes of SHA-256 of the key: names the KEK a key was sealed with (in errors), reveals nothing.
    id: [u8; 8],
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

/// Marks a sealed key in the `pkcs8` column (a PKCS#8 DER key starts with 0x30, a SEQUENCE).
const SEALED_MAGIC: &[u8; 5] = b"TGSK1";
const NONCE_LEN: usize = 12;

/// A stored signing key's bytes, opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// It was sealed; here is the PKCS#8 DER.
    Sealed(Vec<u8>),
    /// It was stored in the clear (written before sealing was configured, or by a broker without a KEK).
    Plain,
}

impl KeyEncryptionKey {
    /// Parse 32 bytes given as base64 (standard or URL-safe, padded or not) or 64 hex characters.
    pub fn from_text(text: &str) -> Result<Self, String> {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| e.to_string())?
        } else {
            let unpadded = t.trim_end_matches('=');
            STANDARD_NO_PAD
                .decode(unpadded)
                .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
                .map_err(|_| {
                    "not base64 or hex (generate one with `openssl rand -base64 32`)".to_string()
                })?
        };
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != 32 {
            return Err(format!(
                "must be 32 bytes (256 bits), got {} (generate one with `openssl rand -base64 32`)",
                bytes.len()
            ));
        }
        let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, bytes)
            .map_err(|e| e.to_string())?;
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Ok(KeyEncryptionKey {
            key: aws_lc_rs::aead::LessSafeKey::new(unbound),
            id,
        })
    }

    /// A short public name of this KEK.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    fn aad(kid: &str) -> Vec<u8> {
        let mut aad = b"tollgate signing key\0".to_vec();
        aad.extend_from_slice(kid.as_bytes());
        aad
    }

    /// Seal a key's PKCS#8 DER, bound to its `kid` (a sealed key moved to another row does not open).
    pub fn seal(&self, kid: &str, der: &[u8]) -> Result<Vec<u8>, String> {
        use aws_lc_rs::rand::SecureRandom;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|e| e.to_string())?;
        let mut body = der.to_vec();
        self.key
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(Self::aad(kid)),
                &mut body,
            )
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(SEALED_MAGIC.len() + 8 + NONCE_LEN + body.len());
        out.extend_from_slice(SEALED_MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// Is this stored key sealed?
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(SEALED_MAGIC)
}

/// Open a stored key: a sealed one needs the KEK it was sealed with; a plain one is reported as such (the
/// bytes are the DER already).
pub fn open_stored(
    kek: Option<&KeyEncryptionKey>,
    kid: &str,
    stored: &[u8],
) -> Result<Opened, String> {
    if !is_sealed(stored) {
        return Ok(Opened::Plain);
    }
    let head = SEALED_MAGIC.len() + 8 + NONCE_LEN;
    if stored.len() < head + 16 {
        return Err(format!(
            "signing key {kid} in the store: sealed value is truncated"
        ));
    }
    let sealed_with = hex::encode(&stored[SEALED_MAGIC.len()..SEALED_MAGIC.len() + 8]);
    let Some(kek) = kek else {
        return Err(format!(
            "signing key {kid} in the store is sealed with key-encryption key {sealed_with}, and this broker \
             has none: set [tokens] key_encryption_key_file or key_encryption_key_env as on the other replicas"
        ));
    };
    if sealed_with != kek.id() {
        return Err(format!(
            "signing key {kid} in the store is sealed with key-encryption key {sealed_with}, but this broker's \
             is {}: every replica needs the same key-encryption key",
            kek.id()
        ));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&stored[SEALED_MAGIC.len() + 8..head]);
    let mut body = stored[head..].to_vec();
    let plain = kek
        .key
        .open_in_place(
            aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
            aws_lc_rs::aead::Aad::from(KeyEncryptionKey::aad(kid)),
            &mut body,
        )
        .map_err(|_| {
            format!("signing key {kid} in the store does not open with key-encryption key {sealed_with} (altered?)")
        })?;
    Ok(Opened::Sealed(plain.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_with_private_modes_and_reloads_same_kid() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path().join("state");
        let a = load_or_generate(&state, 100).expect("gen");
        assert_eq!(a.len(), 1);
        let meta = std::fs::metadata(state.join("keys/100.pem")).expect("file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(state.join("keys"))
                .expect("dir")
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let b = load_or_generate(&state, 200).expect("reload");
        assert_eq!(b.len(), 1);
        assert_eq!(a[0].kid, b[0].kid);
        let jwk = b[0].jwk();
        assert_eq!(jwk["kty"], "EC");
        assert!(
            jwk.get("d").is_none(),
            "private part must never be published"
        );
    }

    #[test]
    fn pem_round_trip_and_errors() {
        let (k, der) = SigningKey::generate(1).expect("gen");
        let back = from_pem(&to_pem(&der)).expect("pem");
        assert_eq!(SigningKey::from_pkcs8(&back, 1).expect("key").kid, k.kid);
        assert!(from_pem("garbage").is_err());
        assert!(SigningKey::from_pkcs8(b"junk", 1).is_err());
    }
}
