//! Signing keys: ES256, each with a `kid`. Generated into the state directory on first start (mode 0600)
//! or loaded from a file. Older keys stay published in the JWKS until every token they signed has expired.

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

/// Load a key from a PEM file.
pub fn load_file(path: &Path, created: u64) -> Result<SigningKey, KeyError> {
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
    create_private_dir(&dir).map_err(|source| KeyError::Io {
        path: dir.clone(),
        source,
    })?;
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
