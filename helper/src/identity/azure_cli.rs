//! `azure-cli`: the person's Azure CLI sign-in (`az login`) as an identity source — an Entra access token
//! for the broker's application ID URI from `az account get-access-token --output json --scope
//! {resource}/.default [--tenant T]`, presented to the broker exactly as the `azure` source's token is
//! (the broker's `[[identity.azure]]` verifies it; a user's token carries `oid`, `tid`, `upn`, `idtyp`).
//!
//! Why not `azure_identity::AzureCliCredential` (it is in the pinned 1.0 without extra features): it runs
//! `az` through `/bin/sh -c "cd /bin && az …"`, so the executable cannot be named (`TOLLGATE_AZ`) without
//! re-parsing its shell string in a custom `Executor`; its standard executor waits on a thread with no
//! way to stop `az`, which would keep the helper past its deadline; and it passes `az`'s stderr through
//! verbatim. Here `az` is spawned directly (no shell, arguments as a list), killed when the run's deadline
//! drops the proof (it is stopped 300 ms before the run's deadline, so a hung `az` is reported as such and
//! not as an unreachable broker), and its stderr is reduced to one line and to the command the person
//! should run.
//!
//! `az` is found at load: `TOLLGATE_AZ` (a path, or a name looked up on `PATH`), default `az`; when it is
//! not there the source is "not configured" (a chain moves on). "Please run 'az login'" and the other
//! `az login` hints of the CLI (an expired refresh token, consent) become `SignInNeeded` (exit 67).

use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NAME: &str = "azure-cli";
/// How often a running `az` is checked for its exit (it takes a second or so; Python starts slowly).
const POLL: Duration = Duration::from_millis(10);
/// `az` must be done this long before the run's deadline, leaving time for the exchange.
const EXCHANGE_RESERVE: Duration = Duration::from_millis(300);
/// How long after `az` exits its pipes may stay open (a grandchild holding them) before we read what
/// it wrote.
const PIPE_GRACE: Duration = Duration::from_millis(300);
/// Largest output of `az` we keep (a token answer is a few kilobytes).
const MAX_OUTPUT: u64 = 256 * 1024;

#[derive(Debug, Clone)]
pub struct AzureCliSettings {
    /// The broker's application ID URI (the token's audience).
    pub resource: Option<String>,
    /// `--tenant` for `az`, when the broker's tenant is not the CLI's default.
    pub tenant: Option<String>,
    /// `TOLLGATE_AZ` as given (a path, or a name to find on `path_var`); default `az`.
    pub az: PathBuf,
    /// `PATH`, to find `az` by name.
    pub path_var: Option<OsString>,
    /// The Azure CLI's config directory (`AZURE_CONFIG_DIR`, default `~/.azure`): its `azureProfile.json`
    /// says who is signed in, which the fingerprint includes.
    pub config_dir: Option<PathBuf>,
}

pub struct AzureCliIdentity {
    resource: String,
    tenant: Option<String>,
    az: PathBuf,
    /// The signed-in account as `azureProfile.json` names it (not a secret), for the fingerprint.
    account: String,
}

/// An executable file?
fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `az` as a path (with a `/`), or looked up on `PATH`.
pub fn find_az(az: &Path, path_var: Option<&OsString>) -> Option<PathBuf> {
    if az.components().count() > 1 {
        return executable(az).then(|| az.to_owned());
    }
    std::env::split_paths(path_var?)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(az))
        .find(|p| executable(p))
}

/// The default subscription's user and tenant in `azureProfile.json` (written by `az login`), or "".
fn signed_in_account(config_dir: Option<&Path>) -> String {
    let Some(text) =
        config_dir.and_then(|d| std::fs::read_to_string(d.join("azureProfile.json")).ok())
    else {
        return String::new();
    };
    // The CLI writes it with a UTF-8 byte-order mark.
    let v: serde_json::Value =
        serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap_or_default();
    v["subscriptions"]
        .as_array()
        .and_then(|subs| subs.iter().find(|s| s["isDefault"] == true))
        .map(|s| {
            format!(
                "{}\0{}\0{}",
                s["user"]["name"].as_str().unwrap_or_default(),
                s["user"]["type"].as_str().unwrap_or_default(),
                s["tenantId"].as_str().unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

impl AzureCliIdentity {
    pub fn load(s: &AzureCliSettings) -> Result<Self, IdentityError> {
        let resource = s.resource.clone().ok_or(IdentityError::NotConfigured {
            source_name: NAME,
            hint: "set TOLLGATE_AZURE_RESOURCE or `[azure_cli] resource` (the broker's application ID URI)"
                .into(),
        })?;
        let az = find_az(&s.az, s.path_var.as_ref()).ok_or_else(|| IdentityError::NotConfigured {
            source_name: NAME,
            hint: format!(
                "the Azure CLI (`{}`) is not installed or not on PATH; install it or set TOLLGATE_AZ to its path",
                s.az.display()
            ),
        })?;
        Ok(AzureCliIdentity {
            resource,
            tenant: s.tenant.clone(),
            az,
            account: signed_in_account(s.config_dir.as_deref()),
        })
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "account".to_string(),
            "get-access-token".into(),
            "--output".into(),
            "json".into(),
            "--scope".into(),
            format!("{}/.default", self.resource.trim_end_matches('/')),
        ];
        if let Some(t) = &self.tenant {
            a.extend(["--tenant".to_string(), t.clone()]);
        }
        a
    }
}

/// A child killed (and reaped) when dropped: the run's deadline drops the proof, and `az` with it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Read a pipe (bounded) on a thread into a shared buffer, so a chatty `az` never blocks on a full pipe,
/// and what it wrote can be taken even while a grandchild (the CLI's telemetry upload) still holds the
/// pipe open.
struct Drain {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: std::thread::JoinHandle<()>,
}

impl Drain {
    fn start<R: std::io::Read + Send + 'static>(r: Option<R>) -> Drain {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = buf.clone();
        let done = std::thread::spawn(move || {
            let Some(r) = r else { return };
            let mut r = std::io::Read::take(r, MAX_OUTPUT);
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = std::io::Read::read(&mut r, &mut chunk) {
                shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(&chunk[..n]);
            }
        });
        Drain { buf, done }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(
            &mut *self
                .buf
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// What a failed `az` run means, from its exit status and stderr.
pub fn classify_failure(code: Option<i32>, stderr: &str, tenant: Option<&str>) -> IdentityError {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The CLI's message, without its `WARNING:` chatter; one line, bounded.
    let reason: String = lines
        .iter()
        .find(|l| l.starts_with("ERROR:"))
        .or_else(|| lines.iter().find(|l| !l.starts_with("WARNING:")))
        .map_or_else(
            || match code {
                Some(c) => format!("`az account get-access-token` failed with exit code {c}"),
                None => "`az account get-access-token` was killed by a signal".to_string(),
            },
            |l| {
                let l = l.strip_prefix("ERROR:").map_or(*l, str::trim_start);
                format!("the Azure CLI answered: {l}")
            },
        )
        .chars()
        .take(300)
        .collect();
    if stderr.contains("az login") {
        // The CLI names the exact command when it knows one (`az login --scope …` for consent).
        let suggested = lines
            .iter()
            .map(|l| l.trim_matches(|c| c == '\'' || c == '"' || c == '`'))
            .find(|l| {
                l.starts_with("az login")
                    && l.len() <= 300
                    && l.chars().all(|c| !c.is_control() && c != '\'')
            });
        let command = match (suggested, tenant) {
            (Some(s), _) => s.to_string(),
            (None, Some(t)) => format!("az login --tenant {t}"),
            (None, None) => "az login".to_string(),
        };
        return IdentityError::SignInNeeded {
            source_name: NAME,
            reason,
            command,
        };
    }
    IdentityError::Invalid {
        source_name: NAME,
        reason,
    }
}

impl Identity for AzureCliIdentity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"tollgate-token azure-cli fingerprint v1\0");
        for part in [
            self.resource.as_str(),
            self.tenant.as_deref().unwrap_or_default(),
            &self.az.display().to_string(),
            &self.account,
        ] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        hex::encode(h.finalize())
    }

    fn prove<'a>(&'a self, ctx: &'a ProveContext<'a>) -> ProveFuture<'a> {
        Box::pin(async move {
            let mut child = match Command::new(&self.az)
                .args(self.args())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
            {
                Ok(c) => KillOnDrop(c),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(IdentityError::NotConfigured {
                        source_name: NAME,
                        hint: format!(
                            "the Azure CLI ({}) is gone; install it or set TOLLGATE_AZ",
                            self.az.display()
                        ),
                    });
                }
                Err(e) => {
                    return Err(IdentityError::Invalid {
                        source_name: NAME,
                        reason: format!("cannot run {}: {e}", self.az.display()),
                    });
                }
            };
            let out = Drain::start(child.0.stdout.take());
            let err = Drain::start(child.0.stderr.take());
            let started = std::time::Instant::now();
            let give_up = ctx
                .deadline
                .checked_sub(EXCHANGE_RESERVE)
                .unwrap_or(started);
            let status = loop {
                match child.0.try_wait() {
                    Ok(Some(s)) => break s,
                    // Dropping the guard kills `az`.
                    Ok(None) if std::time::Instant::now() >= give_up => {
                        return Err(IdentityError::Unavailable {
                            source_name: NAME,
                            reason: format!(
                                "`az account get-access-token` did not answer within {} ms (raise --timeout-ms)",
                                started.elapsed().as_millis()
                            ),
                        });
                    }
                    Ok(None) => tokio::time::sleep(POLL).await,
                    Err(e) => {
                        return Err(IdentityError::Invalid {
                            source_name: NAME,
                            reason: format!("waiting for {}: {e}", self.az.display()),
                        });
                    }
                }
            };
            // `az` has exited and flushed; its pipes close unless a grandchild inherited them.
            for _ in 0..(PIPE_GRACE.as_millis() / POLL.as_millis()) {
                if out.done.is_finished() && err.done.is_finished() {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            let stdout = out.take();
            let stderr = String::from_utf8_lossy(&err.take()).into_owned();
            if !status.success() {
                return Err(classify_failure(
                    status.code(),
                    &stderr,
                    self.tenant.as_deref(),
                ));
            }
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Answer {
                #[serde(deserialize_with = "super::de_secret")]
                access_token: SecretString,
            }
            let a: Answer =
                serde_json::from_slice(&stdout).map_err(|_| IdentityError::Invalid {
                    source_name: NAME,
                    reason: "`az account get-access-token` printed no JSON with an accessToken"
                        .into(),
                })?;
            Ok(Proof {
                subject_token: a.access_token,
                subject_token_type: tollgate::exchange::TOKEN_TYPE_JWT,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn az_failures_table() {
        let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
            // Not signed in: the real text of Azure CLI 2.x.
            (
                "ERROR: Please run 'az login' to setup account.\n",
                None,
                "identity: the Azure CLI answered: Please run 'az login' to setup account.; run `az login`",
                Some("az login"),
            ),
            (
                "ERROR: Please run 'az login' to setup account.\n",
                Some("contoso.onmicrosoft.com"),
                "setup account",
                Some("az login --tenant contoso.onmicrosoft.com"),
            ),
            // An expired refresh token, and consent: the CLI names the command.
            (
                "WARNING: something\nERROR: AADSTS700082: The refresh token has expired due to inactivity.\nInteractive authentication is needed. Please run:\naz login --scope api://tollgate/.default\n",
                None,
                "AADSTS700082",
                Some("az login --scope api://tollgate/.default"),
            ),
            // The broker's app is unknown to the tenant: signing in again does not help.
            (
                "ERROR: AADSTS500011: The resource principal named api://nope was not found in the tenant named Contoso.\n",
                None,
                "AADSTS500011",
                None,
            ),
            ("", None, "failed with exit code 2", None),
        ];
        for (stderr, tenant, reason, command) in cases {
            let e = classify_failure(Some(2), stderr, *tenant);
            let text = e.to_string();
            assert!(text.contains(reason), "{text}");
            assert!(!text.contains('\n'), "{text}");
            match (e, command) {
                (IdentityError::SignInNeeded { command: c, .. }, Some(want)) => {
                    assert_eq!(&c, want)
                }
                (IdentityError::Invalid { .. }, None) => {}
                (e, want) => panic!("{stderr:?}: {e:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn az_is_found_by_path_or_name_and_must_be_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let az = dir.path().join("az");
        std::fs::write(&az, "#!/bin/sh\n").expect("write");
        let path = Some(OsString::from(format!(
            "/nonexistent:{}",
            dir.path().display()
        )));
        assert_eq!(find_az(&az, None), None, "not executable yet");
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find_az(Path::new("az"), path.as_ref()), Some(az.clone()));
        assert_eq!(find_az(&az, None), Some(az.clone()));
        assert_eq!(find_az(Path::new("az"), None), None);
        assert_eq!(find_az(&dir.path().join("missing"), path.as_ref()), None);
    }

    #[test]
    fn the_fingerprint_follows_the_signed_in_account() {
        let dir = tempfile::tempdir().expect("tmp");
        let az = dir.path().join("az");
        std::fs::write(&az, "#!/bin/sh\n").expect("write");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let settings = AzureCliSettings {
            resource: Some("api://tollgate".into()),
            tenant: None,
            az: az.clone(),
            path_var: None,
            config_dir: Some(dir.path().to_owned()),
        };
        let profile = |user: &str| {
            format!(
                "\u{feff}{{\"installationId\":\"x\",\"subscriptions\":[{{\"id\":\"s1\",\"isDefault\":false,\"tenantId\":\"t\",\"user\":{{\"name\":\"other@contoso.com\",\"type\":\"user\"}}}},{{\"id\":\"s2\",\"isDefault\":true,\"tenantId\":\"t\",\"user\":{{\"name\":\"{user}\",\"type\":\"user\"}}}}]}}"
            )
        };
        let fp = || {
            AzureCliIdentity::load(&settings)
                .expect("load")
                .fingerprint()
        };
        let none = fp();
        std::fs::write(
            dir.path().join("azureProfile.json"),
            profile("ada@contoso.com"),
        )
        .expect("w");
        let ada = fp();
        std::fs::write(
            dir.path().join("azureProfile.json"),
            profile("bob@contoso.com"),
        )
        .expect("w");
        let bob = fp();
        assert_ne!(none, ada);
        assert_ne!(ada, bob);
        assert_eq!(bob, fp());
        let loaded = AzureCliIdentity::load(&settings).expect("load");
        assert_eq!(
            loaded.args(),
            [
                "account",
                "get-access-token",
                "--output",
                "json",
                "--scope",
                "api://tollgate/.default"
            ]
        );
        // Without a resource, or without `az`: not configured here (a chain moves on).
        for s in [
            AzureCliSettings {
                resource: None,
                ..settings.clone()
            },
            AzureCliSettings {
                az: dir.path().join("missing-az"),
                ..settings.clone()
            },
        ] {
            assert!(matches!(
                AzureCliIdentity::load(&s),
                Err(IdentityError::NotConfigured { .. })
            ));
        }
    }
}
