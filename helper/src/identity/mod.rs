//! Identity sources: something that can prove who we are to the broker.
//!
//! Loading a source ([`load`]) is cheap and local: it reads files and environment only, so that the
//! cache key (which includes [`Identity::fingerprint`]) is known before any network work. Producing
//! the proof ([`Identity::prove`]) happens only when a mint is needed and may use the network
//! (Vault, Azure IMDS) through the shared HTTP client in [`ProveContext`].
//!
//! Sources: `static`, [`aws`] (with IAM Identity Center profiles, [`aws_sso`]), [`vault`], [`azure`],
//! [`azure_cli`] (the Azure CLI's sign-in), [`oidc_file`], and [`chain`], which tries sources in order,
//! moving on at [`IdentityError::NotConfigured`] and stopping at any other error.

pub mod aws;
pub mod aws_sso;
pub mod azure;
pub mod azure_cli;
pub mod chain;
pub mod oidc_file;
pub mod vault;

use crate::error::IdentityError;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// What the broker receives as `subject_token` / `subject_token_type`.
pub struct Proof {
    pub subject_token: SecretString,
    pub subject_token_type: &'static str,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proof")
            .field("subject_token", &"[redacted]")
            .field("subject_token_type", &self.subject_token_type)
            .finish()
    }
}

/// Deserialize a string straight into a `SecretString` (`secrecy`'s serde feature is not enabled).
pub(crate) fn de_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(SecretString::from)
}

/// What a source may use while producing a proof.
pub struct ProveContext<'a> {
    pub audience: &'a str,
    pub http: &'a reqwest::Client,
    /// The run's clock (Unix seconds): expiry checks use it, so tests inject time.
    pub now_unix: u64,
    /// When the run gives up. A source that runs a program (`az`) stops it before this, so the failure
    /// is its own and not blamed on the broker.
    pub deadline: std::time::Instant,
}

/// A boxed future, so `Identity` stays object-safe without an extra macro crate.
pub type ProveFuture<'a> = Pin<Box<dyn Future<Output = Result<Proof, IdentityError>> + Send + 'a>>;

/// One way of proving identity.
pub trait Identity: Send + Sync {
    /// The source's name as given to `--identity` (`static`, `aws`, …).
    fn name(&self) -> &'static str;
    /// A stable, non-secret digest of what distinguishes this identity (the cache key includes it).
    /// It must change whenever the identity would mint a different grant, and must never be
    /// reversible to a secret.
    fn fingerprint(&self) -> String;
    /// Produce a fresh proof.
    fn prove<'a>(&'a self, ctx: &'a ProveContext<'a>) -> ProveFuture<'a>;
    /// Secrets this source holds, so the error boundary can scrub them from any message.
    fn secrets(&self) -> Vec<SecretString> {
        Vec::new()
    }
}

/// Where the static credential comes from.
#[derive(Debug, Clone)]
pub enum StaticCredential {
    /// The value of `TOLLGATE_CREDENTIAL`.
    Inline(SecretString),
    File(PathBuf),
    None,
}

/// How the identity is configured (not yet loaded: loading may fail with exit 65).
#[derive(Debug, Clone)]
pub enum IdentityConfig {
    Static(StaticCredential),
    Aws(Box<aws::AwsSettings>),
    Vault(vault::VaultSettings),
    Azure(azure::AzureSettings),
    /// The person's Azure CLI sign-in.
    AzureCli(azure_cli::AzureCliSettings),
    OidcFile(Option<PathBuf>),
    Chain(Vec<IdentityConfig>),
    /// A person signed in with `tollgate-token login` (see `login`): renewed from the refresh token.
    Login,
}

/// Load the configured identity.
pub fn load(config: &IdentityConfig) -> Result<Box<dyn Identity>, IdentityError> {
    match config {
        IdentityConfig::Static(cred) => Ok(Box::new(StaticIdentity::load(cred)?)),
        IdentityConfig::Aws(s) => Ok(Box::new(aws::AwsIdentity::load(s)?)),
        IdentityConfig::Vault(s) => Ok(Box::new(vault::VaultIdentity::load(s)?)),
        IdentityConfig::Azure(s) => Ok(Box::new(azure::AzureIdentity::load(s)?)),
        IdentityConfig::AzureCli(s) => Ok(Box::new(azure_cli::AzureCliIdentity::load(s)?)),
        IdentityConfig::OidcFile(p) => Ok(Box::new(oidc_file::OidcFileIdentity::load(p.as_ref())?)),
        // Not a proof: the token path renews a sign-in itself (`token::Source`).
        IdentityConfig::Login => Err(IdentityError::Invalid {
            source_name: "login",
            reason: "a person's sign-in is renewed with its refresh token, not proven".into(),
        }),
        IdentityConfig::Chain(members) => Ok(Box::new(chain::ChainIdentity::new(
            members
                .iter()
                .map(|m| (m.name().to_string(), load(m)))
                .collect(),
        )?)),
    }
}

/// Read a long-lived secret the user keeps in a file, refusing it, as ssh refuses a private key, when
/// group or others may access it and it is the user's own (so `chmod 600` is theirs to run). The mode
/// is read from the open file, so it is the file we read.
///
/// Only the static credential is checked this way. The files other sources read are written by other
/// tools that choose their modes: Kubernetes projects service-account and Azure federated tokens 0644
/// by default, and they are short-lived; `~/.aws/credentials` and `~/.vault-token` are the AWS CLI's
/// and Vault's, which the other clients of those files do not check either.
pub fn read_private_file(
    source_name: &'static str,
    path: &std::path::Path,
) -> Result<SecretString, IdentityError> {
    use std::io::Read;
    let read_err = |source| IdentityError::ReadFile {
        source_name,
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if let Some(mode) = crate::sys::open_to_others(&meta)
        && crate::sys::owned_by_us(&meta)
    {
        return Err(IdentityError::Insecure {
            source_name,
            path: path.to_owned(),
            mode,
        });
    }
    let mut content = String::new();
    file.read_to_string(&mut content).map_err(read_err)?;
    Ok(SecretString::from(content))
}

/// A bootstrap credential shared with the broker. For local trials and tests only.
pub struct StaticIdentity {
    credential: SecretString,
}

impl StaticIdentity {
    const NAME: &'static str = "static";

    pub fn load(source: &StaticCredential) -> Result<Self, IdentityError> {
        let raw = match source {
            StaticCredential::Inline(c) => SecretString::from(c.expose_secret().trim()),
            StaticCredential::File(path) => {
                SecretString::from(read_private_file(Self::NAME, path)?.expose_secret().trim())
            }
            StaticCredential::None => {
                return Err(IdentityError::NotConfigured {
                    source_name: Self::NAME,
                    hint: "set TOLLGATE_CREDENTIAL, pass --credential-file PATH, or set `credential_file` in the profile; \
                           a person signs in with `tollgate-token login`"
                        .into(),
                });
            }
        };
        let c = raw.expose_secret();
        if c.is_empty() {
            return Err(IdentityError::Invalid {
                source_name: Self::NAME,
                reason: "the credential is empty".into(),
            });
        }
        if c.chars().any(char::is_control) {
            return Err(IdentityError::Invalid {
                source_name: Self::NAME,
                reason: "the credential contains control characters or several lines".into(),
            });
        }
        Ok(StaticIdentity { credential: raw })
    }
}

impl Identity for StaticIdentity {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tollgate-token static fingerprint v1\0");
        h.update(self.credential.expose_secret().as_bytes());
        hex::encode(h.finalize())
    }

    fn prove<'a>(&'a self, _ctx: &'a ProveContext<'a>) -> ProveFuture<'a> {
        Box::pin(async move {
            Ok(Proof {
                subject_token: self.credential.clone(),
                subject_token_type: tollgate::exchange::TOKEN_TYPE_STATIC,
            })
        })
    }

    fn secrets(&self) -> Vec<SecretString> {
        vec![self.credential.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_not_the_secret() {
        let a = StaticIdentity::load(&StaticCredential::Inline("s3cret\n".into())).expect("load");
        let b = StaticIdentity::load(&StaticCredential::Inline("s3cret".into())).expect("load");
        let c = StaticIdentity::load(&StaticCredential::Inline("other".into())).expect("load");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert!(!a.fingerprint().contains("s3cret"));
        assert_eq!(a.fingerprint().len(), 64);
    }

    #[test]
    fn missing_and_bad_credentials() {
        assert!(matches!(
            StaticIdentity::load(&StaticCredential::None),
            Err(IdentityError::NotConfigured { .. })
        ));
        assert!(matches!(
            StaticIdentity::load(&StaticCredential::Inline("  ".into())),
            Err(IdentityError::Invalid { .. })
        ));
        let e = StaticIdentity::load(&StaticCredential::Inline("a\nb".into()))
            .err()
            .expect("multi-line");
        assert!(!e.to_string().contains("a\nb"));
        let e = StaticIdentity::load(&StaticCredential::File("/nonexistent/cred".into()))
            .err()
            .expect("missing");
        assert!(e.to_string().contains("/nonexistent/cred"));
    }

    /// A private file, as the README's `(umask 077; …)` makes it.
    fn private_file(dir: &std::path::Path, name: &str, content: &str) -> std::path::PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let p = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .expect("create");
        std::io::Write::write_all(&mut f, content.as_bytes()).expect("write");
        p
    }

    #[test]
    fn file_credential_is_trimmed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = private_file(tmp.path(), "cred", "abc\n");
        let s = StaticIdentity::load(&StaticCredential::File(p)).expect("load");
        assert_eq!(s.credential.expose_secret(), "abc");
    }

    #[test]
    fn a_credential_file_others_can_access_is_refused_like_ssh() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let p = private_file(tmp.path(), "cred", "s3cret-value\n");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = StaticIdentity::load(&StaticCredential::File(p.clone()))
                .err()
                .expect("refused");
            assert!(
                matches!(e, IdentityError::Insecure { mode: m, .. } if m == mode),
                "{e}"
            );
            let text = e.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", p.display())),
                "{text}"
            );
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
            assert_eq!(
                crate::error::HelperError::from(e).exit(),
                crate::error::Exit::Usage
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            StaticIdentity::load(&StaticCredential::File(p.clone())).expect("private is fine");
        }
    }
}
