//! `aws`: a SigV4-signed `sts:GetCallerIdentity` request, signed here and never sent (the broker replays it).
//!
//! Credentials come from the usual places, in the SDKs' order: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (+ `AWS_SESSION_TOKEN`), the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_PROFILE`),
//! container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`, with
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`), then EC2 instance metadata (IMDSv2; `AWS_EC2_METADATA_DISABLED`
//! and `AWS_EC2_METADATA_SERVICE_ENDPOINT` honoured). We sign with `aws-sigv4` directly instead of
//! pulling in `aws-config` (see helper/README.md: a 3× larger binary and 4× the build for a chain we
//! mostly need one link of). Not supported: SSO and `credential_process` profiles, web identity.
//! With a role ARN configured, the helper first calls `sts:AssumeRole` (signed the same way; this is the
//! only AWS call the helper itself makes) and proves as the role session.

use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;
use tollgate::aws::{AwsCredentials, NONCE_HEADER, SignOptions, sign_get_caller_identity};

const NAME: &str = "aws";
/// How long an instance-metadata probe may take before we call it "not on EC2".
const IMDS_TIMEOUT: Duration = Duration::from_millis(1000);

/// Resolved settings (from flags/env/config; nothing read from disk or network yet).
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub region: String,
    /// The URL to sign for; default `https://sts.{region}.amazonaws.com/`.
    pub sts_url: String,
    /// Our broker's server ID (the value its `[identity.aws] server_id` expects).
    pub server_id: String,
    pub env_access_key_id: Option<String>,
    pub env_secret_access_key: Option<SecretString>,
    pub env_session_token: Option<SecretString>,
    pub profile: String,
    pub credentials_file: Option<PathBuf>,
    /// Container credentials endpoint and its authorization token.
    pub container_uri: Option<String>,
    pub container_token: Option<SecretString>,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (EKS Pod Identity): read on every mint, it rotates.
    pub container_token_file: Option<PathBuf>,
    /// `None` when disabled.
    pub imds_endpoint: Option<String>,
    /// Assume this role first (signed `sts:AssumeRole` to `sts_url`), then prove as the role.
    pub role_arn: Option<String>,
    pub role_session_name: String,
}

enum Source {
    Static(AwsCredentials),
    Container,
    Imds(String),
}

pub struct AwsIdentity {
    settings: AwsSettings,
    source: Source,
    secrets: Vec<SecretString>,
}

/// Read a profile from a shared credentials file (INI).
fn read_profile(path: &PathBuf, profile: &str) -> Result<Option<AwsCredentials>, IdentityError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::ReadFile {
                source_name: NAME,
                path: path.clone(),
                source,
            });
        }
    };
    let (mut in_section, mut ak, mut sk, mut tok) = (false, None, None, None);
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.starts_with(';') || l.is_empty() {
            continue;
        }
        if let Some(sec) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let sec = sec.trim();
            in_section =
                sec == profile || sec.strip_prefix("profile ").map(str::trim) == Some(profile);
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => ak = Some(v),
                "aws_secret_access_key" => sk = Some(v),
                "aws_session_token" => tok = Some(v),
                _ => {}
            }
        }
    }
    Ok(match (ak, sk) {
        (Some(a), Some(s)) => Some(AwsCredentials {
            access_key_id: a,
            secret_access_key: s,
            session_token: tok,
        }),
        _ => None,
    })
}

impl AwsIdentity {
    /// Pick the credential source (local reads only).
    pub fn load(s: &AwsSettings) -> Result<Self, IdentityError> {
        let mut secrets = Vec::new();
        let source = if let (Some(ak), Some(sk)) = (&s.env_access_key_id, &s.env_secret_access_key)
        {
            secrets.push(sk.clone());
            secrets.extend(s.env_session_token.clone());
            Source::Static(AwsCredentials {
                access_key_id: ak.clone(),
                secret_access_key: sk.expose_secret().to_string(),
                session_token: s
                    .env_session_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_string()),
            })
        } else if let Some(c) = match &s.credentials_file {
            Some(p) => read_profile(p, &s.profile)?,
            None => None,
        } {
            secrets.push(SecretString::from(c.secret_access_key.clone()));
            secrets.extend(c.session_token.clone().map(SecretString::from));
            Source::Static(c)
        } else if s.container_uri.is_some() {
            secrets.extend(s.container_token.clone());
            Source::Container
        } else if let Some(ep) = &s.imds_endpoint {
            Source::Imds(ep.clone())
        } else {
            return Err(IdentityError::NotConfigured {
                source_name: NAME,
                hint: "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE with ~/.aws/credentials, or run with a container/instance role".into(),
            });
        };
        Ok(AwsIdentity {
            settings: s.clone(),
            source,
            secrets,
        })
    }

    async fn credentials(&self, http: &reqwest::Client) -> Result<AwsCredentials, IdentityError> {
        let unavailable = |reason: String| IdentityError::Unavailable {
            source_name: NAME,
            reason,
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Creds {
            access_key_id: String,
            secret_access_key: String,
            token: Option<String>,
        }
        let into = |c: Creds| AwsCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.token,
        };
        match &self.source {
            Source::Static(c) => Ok(AwsCredentials {
                access_key_id: c.access_key_id.clone(),
                secret_access_key: c.secret_access_key.clone(),
                session_token: c.session_token.clone(),
            }),
            Source::Container => {
                let uri = self.settings.container_uri.as_deref().unwrap_or_default();
                let mut req = http.get(uri);
                // The file wins over the variable, as in the SDKs.
                let token = match &self.settings.container_token_file {
                    Some(path) => Some(SecretString::from(
                        std::fs::read_to_string(path)
                            .map_err(|source| IdentityError::ReadFile {
                                source_name: NAME,
                                path: path.clone(),
                                source,
                            })?
                            .trim()
                            .to_string(),
                    )),
                    None => self.settings.container_token.clone(),
                };
                if let Some(t) = &token {
                    req = req.header("authorization", t.expose_secret());
                }
                let r = req.send().await.map_err(|e| {
                    unavailable(format!(
                        "container credentials endpoint: {}",
                        crate::exchange::transport_reason(&e)
                    ))
                })?;
                if !r.status().is_success() {
                    return Err(unavailable(format!(
                        "container credentials endpoint answered {}",
                        r.status()
                    )));
                }
                r.json::<Creds>().await.map(into).map_err(|_| {
                    unavailable("container credentials endpoint sent malformed JSON".into())
                })
            }
            Source::Imds(ep) => {
                let ep = ep.trim_end_matches('/');
                // A failed connection means "not on EC2": a chain moves on.
                let token = http
                    .put(format!("{ep}/latest/api/token"))
                    .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
                    .timeout(IMDS_TIMEOUT)
                    .send()
                    .await
                    .map_err(|_| IdentityError::NotConfigured {
                        source_name: NAME,
                        hint: "no AWS credentials in the environment or profile, and no instance metadata service answered".into(),
                    })?;
                if !token.status().is_success() {
                    return Err(unavailable(format!(
                        "instance metadata token: HTTP {}",
                        token.status()
                    )));
                }
                let token = token.text().await.map_err(|e| unavailable(e.to_string()))?;
                let get = |path: String| {
                    http.get(format!("{ep}{path}"))
                        .header("x-aws-ec2-metadata-token", token.clone())
                        .timeout(IMDS_TIMEOUT)
                        .send()
                };
                let role = get("/latest/meta-data/iam/security-credentials/".into())
                    .await
                    .map_err(|e| unavailable(crate::exchange::transport_reason(&e)))?
                    .text()
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let role = role.lines().next().unwrap_or_default().trim().to_string();
                if role.is_empty() {
                    return Err(unavailable("the instance has no IAM role".into()));
                }
                get(format!("/latest/meta-data/iam/security-credentials/{role}"))
                    .await
                    .map_err(|e| unavailable(crate::exchange::transport_reason(&e)))?
                    .json::<Creds>()
                    .await
                    .map(into)
                    .map_err(|_| unavailable("instance metadata sent malformed credentials".into()))
            }
        }
    }
}

/// A unique (not secret) value per proof: process ID, time, and std's per-process random hash keys.
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

/// The text of `<tag>…</tag>` (STS answers are flat and entity-free where we read them).
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim())
}

impl AwsIdentity {
    async fn assume_role(
        &self,
        http: &reqwest::Client,
        creds: &AwsCredentials,
        role_arn: &str,
    ) -> Result<AwsCredentials, IdentityError> {
        let unavailable = |reason: String| IdentityError::Unavailable {
            source_name: NAME,
            reason,
        };
        let body = serde_urlencoded::to_string([
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", role_arn),
            ("RoleSessionName", self.settings.role_session_name.as_str()),
            ("DurationSeconds", "900"),
        ])
        .map_err(|e| unavailable(e.to_string()))?;
        let url = &self.settings.sts_url;
        let headers = tollgate::aws::sign_sts_post(
            creds,
            &self.settings.region,
            url,
            &body,
            &[],
            std::time::SystemTime::now(),
        )
        .map_err(|e| IdentityError::Invalid {
            source_name: NAME,
            reason: e.to_string(),
        })?;
        let mut req = http.post(url.as_str()).body(body);
        for (k, vs) in &headers {
            for v in vs {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let resp = req.send().await.map_err(|e| {
            unavailable(format!(
                "sts:AssumeRole at {url}: {}",
                crate::exchange::transport_reason(&e)
            ))
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let code = xml_text(&text, "Code").unwrap_or("");
            let reason = format!("sts:AssumeRole {role_arn}: HTTP {status} {code}");
            return Err(if status.is_server_error() {
                unavailable(reason)
            } else {
                IdentityError::Invalid {
                    source_name: NAME,
                    reason,
                }
            });
        }
        let c = xml_text(&text, "Credentials")
            .ok_or_else(|| unavailable("sts:AssumeRole answered without credentials".into()))?;
        match (
            xml_text(c, "AccessKeyId"),
            xml_text(c, "SecretAccessKey"),
            xml_text(c, "SessionToken"),
        ) {
            (Some(a), Some(s), Some(t)) => Ok(AwsCredentials {
                access_key_id: a.to_string(),
                secret_access_key: s.to_string(),
                session_token: Some(t.to_string()),
            }),
            _ => Err(unavailable(
                "sts:AssumeRole answered with incomplete credentials".into(),
            )),
        }
    }
}

impl Identity for AwsIdentity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fingerprint(&self) -> String {
        let s = &self.settings;
        let mut h = Sha256::new();
        h.update(b"tollgate-token aws fingerprint v1\0");
        let role = s.role_arn.clone().unwrap_or_default();
        for part in [
            &s.region,
            &s.sts_url,
            &s.server_id,
            &role,
            &s.role_session_name,
        ] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        match &self.source {
            Source::Static(c) => h.update(format!("static\0{}", c.access_key_id).as_bytes()),
            Source::Container => h.update(
                format!(
                    "container\0{}",
                    s.container_uri.as_deref().unwrap_or_default()
                )
                .as_bytes(),
            ),
            Source::Imds(ep) => h.update(format!("imds\0{ep}").as_bytes()),
        }
        hex::encode(h.finalize())
    }

    fn prove<'a>(&'a self, ctx: &'a ProveContext<'a>) -> ProveFuture<'a> {
        Box::pin(async move {
            let mut creds = self.credentials(ctx.http).await?;
            if let Some(role) = &self.settings.role_arn {
                creds = self.assume_role(ctx.http, &creds, role).await?;
            }
            let nonce = nonce();
            let signed = sign_get_caller_identity(
                &creds,
                &self.settings.region,
                &self.settings.sts_url,
                &SignOptions {
                    server_id: Some(&self.settings.server_id),
                    extra_headers: &[(NONCE_HEADER, nonce.as_str())],
                    time: std::time::SystemTime::now(),
                },
            )
            .map_err(|e| IdentityError::Invalid {
                source_name: NAME,
                reason: e.to_string(),
            })?;
            Ok(Proof {
                subject_token: SecretString::from(signed.encode()),
                subject_token_type: tollgate::exchange::TOKEN_TYPE_AWS_SIGV4,
            })
        })
    }

    fn secrets(&self) -> Vec<SecretString> {
        self.secrets.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_credentials_file_profiles() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("credentials");
        std::fs::write(
            &p,
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n[profile dev]\naws_access_key_id=AKIADEV\naws_secret_access_key=s2\naws_session_token=t2\n",
        )
        .expect("write");
        let d = read_profile(&p, "default").expect("read").expect("default");
        assert_eq!(d.access_key_id, "AKIADEFAULT");
        let dev = read_profile(&p, "dev").expect("read").expect("dev");
        assert_eq!(dev.session_token.as_deref(), Some("t2"));
        assert!(read_profile(&p, "nope").expect("read").is_none());
        assert!(
            read_profile(&dir.path().join("missing"), "default")
                .expect("ok")
                .is_none()
        );
    }
}
