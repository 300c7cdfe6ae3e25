//! `aws`: a SigV4-signed `sts:GetCallerIdentity` request, signed here and never sent (the broker replays it).
//!
//! Credentials come from the usual places, in the SDKs' order: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//! (+ `AWS_SESSION_TOKEN`); then the profile (`AWS_PROFILE`, default `default`) of the AWS config file
//! (`AWS_CONFIG_FILE`, `~/.aws/config`) merged with the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, `~/.aws/credentials`; its values win), where — as in the SDKs — an IAM
//! Identity Center (SSO) profile resolves through SSO ([`super::aws_sso`]: the person's `aws sso login`)
//! before any static keys; then container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI` /
//! `_RELATIVE_URI`, with `AWS_CONTAINER_AUTHORIZATION_TOKEN`), then EC2 instance metadata (IMDSv2;
//! `AWS_EC2_METADATA_DISABLED` and `AWS_EC2_METADATA_SERVICE_ENDPOINT` honoured). We sign with `aws-sigv4`
//! directly instead of pulling in `aws-config` (see helper/README.md: a 3× larger binary and 4× the build
//! for a chain we mostly need one link of). Not supported: `credential_process`, `role_arn` /
//! `source_profile` chains in the AWS config, web identity. With a role ARN configured
//! (`TOLLGATE_AWS_ROLE_ARN`), the helper first calls `sts:AssumeRole` (signed the same way) and proves
//! as the role session. The helper's own AWS calls are that one and, for SSO profiles, the IAM Identity
//! Center portal's `GetRoleCredentials` (and SSO OIDC's `CreateToken` to refresh a session's token).

use super::aws_sso::{self, Ini};
use super::{Identity, Proof, ProveContext, ProveFuture};
use crate::error::IdentityError;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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
    /// The AWS config file (`AWS_CONFIG_FILE`, default `~/.aws/config`): profiles, SSO sessions.
    pub config_file: Option<PathBuf>,
    /// Where `aws sso login` caches its tokens (`~/.aws/sso/cache`).
    pub sso_cache_dir: Option<PathBuf>,
    /// The IAM Identity Center portal endpoint override (`AWS_ENDPOINT_URL_SSO`, else `AWS_ENDPOINT_URL`).
    pub sso_endpoint: Option<aws_sso::EndpointOverride>,
    /// The SSO OIDC endpoint override, for token refresh (`AWS_ENDPOINT_URL_SSO_OIDC`, else
    /// `AWS_ENDPOINT_URL`).
    pub sso_oidc_endpoint: Option<aws_sso::EndpointOverride>,
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
    /// An IAM Identity Center profile and what its token cache held at load.
    Sso(Box<(aws_sso::SsoProfile, aws_sso::CacheRead)>),
    Container,
    Imds(String),
}

pub struct AwsIdentity {
    settings: AwsSettings,
    source: Source,
    secrets: Vec<SecretString>,
}

/// Static keys of a profile's properties.
fn static_keys(props: &BTreeMap<String, String>) -> Option<AwsCredentials> {
    match (
        props.get("aws_access_key_id"),
        props.get("aws_secret_access_key"),
    ) {
        (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Some(AwsCredentials {
            access_key_id: a.clone(),
            secret_access_key: s.clone(),
            session_token: props
                .get("aws_session_token")
                .filter(|t| !t.is_empty())
                .cloned(),
        }),
        _ => None,
    }
}

/// The profile's source: its properties from the config file, overridden by the credentials file's (as
/// in the SDKs); an SSO profile resolves through SSO before any static keys. Local reads only.
fn profile_source(s: &AwsSettings) -> Result<Option<Source>, IdentityError> {
    let read = |p: &Option<PathBuf>| match p {
        Some(p) => Ini::read(p),
        None => Ok(Ini::default()),
    };
    let config = read(&s.config_file)?;
    let credentials = read(&s.credentials_file)?;
    let mut props = config
        .config_profile(&s.profile)
        .cloned()
        .unwrap_or_default();
    if let Some(c) = credentials.credentials_profile(&s.profile) {
        props.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if aws_sso::is_sso(&props) {
        let config_file = s.config_file.clone().unwrap_or_default();
        let p = aws_sso::SsoProfile::resolve(&config, &config_file, &s.profile, &props)?;
        let cache = match &s.sso_cache_dir {
            Some(dir) => aws_sso::read_cached_token(dir, &p)?,
            None => aws_sso::CacheRead::Missing(
                PathBuf::from("~/.aws/sso/cache").join(p.cache_file_name()),
            ),
        };
        return Ok(Some(Source::Sso(Box::new((p, cache)))));
    }
    Ok(static_keys(&props).map(Source::Static))
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
        } else if let Some(source) = profile_source(s)? {
            match &source {
                Source::Static(c) => {
                    secrets.push(SecretString::from(c.secret_access_key.clone()));
                    secrets.extend(c.session_token.clone().map(SecretString::from));
                }
                // The bearer token is read at load, so the error boundary scrubs it from every message;
                // the role credentials only ever live in `SecretString`s and `AwsCredentials`.
                Source::Sso(sso) => {
                    if let (_, aws_sso::CacheRead::Token(t)) = &**sso {
                        secrets.extend(t.secrets());
                    }
                }
                _ => {}
            }
            source
        } else if s.container_uri.is_some() {
            secrets.extend(s.container_token.clone());
            Source::Container
        } else if let Some(ep) = &s.imds_endpoint {
            Source::Imds(ep.clone())
        } else {
            return Err(IdentityError::NotConfigured {
                source_name: NAME,
                hint: "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE with ~/.aws/credentials or an IAM Identity Center (SSO) profile in ~/.aws/config, or run with a container/instance role".into(),
            });
        };
        Ok(AwsIdentity {
            settings: s.clone(),
            source,
            secrets,
        })
    }

    async fn credentials(
        &self,
        http: &reqwest::Client,
        now_unix: u64,
    ) -> Result<AwsCredentials, IdentityError> {
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
            Source::Sso(sso) => {
                let (p, cache) = &**sso;
                let bearer = aws_sso::current_token(
                    http,
                    cache,
                    p,
                    self.settings.sso_oidc_endpoint.as_ref(),
                    now_unix,
                )
                .await?;
                aws_sso::role_credentials(http, p, self.settings.sso_endpoint.as_ref(), &bearer)
                    .await
            }
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
                        crate::error::transport_reason(&e)
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
                    .map_err(|e| unavailable(crate::error::transport_reason(&e)))?
                    .text()
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let role = role.lines().next().unwrap_or_default().trim().to_string();
                if role.is_empty() {
                    return Err(unavailable("the instance has no IAM role".into()));
                }
                get(format!("/latest/meta-data/iam/security-credentials/{role}"))
                    .await
                    .map_err(|e| unavailable(crate::error::transport_reason(&e)))?
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
                crate::error::transport_reason(&e)
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
            // Who signs in (start URL, session) and which role: another role is another grant.
            Source::Sso(sso) => h.update(
                format!(
                    "sso\0{}\0{}\0{}\0{}\0{}",
                    sso.0.profile,
                    sso.0.start_url,
                    sso.0.session.as_deref().unwrap_or_default(),
                    sso.0.account_id,
                    sso.0.role_name
                )
                .as_bytes(),
            ),
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
            let mut creds = self.credentials(ctx.http, ctx.now_unix).await?;
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

    fn settings(dir: &std::path::Path, profile: &str) -> AwsSettings {
        AwsSettings {
            region: "us-east-1".into(),
            sts_url: "https://sts.us-east-1.amazonaws.com/".into(),
            server_id: "tollgate".into(),
            env_access_key_id: None,
            env_secret_access_key: None,
            env_session_token: None,
            profile: profile.into(),
            credentials_file: Some(dir.join("credentials")),
            config_file: Some(dir.join("config")),
            sso_cache_dir: Some(dir.join("sso/cache")),
            sso_endpoint: None,
            sso_oidc_endpoint: None,
            container_uri: None,
            container_token: None,
            container_token_file: None,
            imds_endpoint: None,
            role_arn: None,
            role_session_name: "tollgate-token".into(),
        }
    }

    #[test]
    fn shared_credentials_file_profiles() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("credentials"),
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n[profile dev]\naws_access_key_id=AKIADEV\naws_secret_access_key=s2\naws_session_token=t2\n",
        )
        .expect("write");
        let key = |profile: &str| match profile_source(&settings(dir.path(), profile)) {
            Ok(Some(Source::Static(c))) => Some((c.access_key_id, c.session_token)),
            Ok(None) => None,
            _ => panic!("{profile}"),
        };
        assert_eq!(key("default"), Some(("AKIADEFAULT".into(), None)));
        assert_eq!(key("dev"), Some(("AKIADEV".into(), Some("t2".into()))));
        assert_eq!(key("nope"), None);
        let mut s = settings(dir.path(), "default");
        s.credentials_file = Some(dir.path().join("missing"));
        assert!(profile_source(&s).expect("ok").is_none());
    }

    /// The SDKs' order inside a profile: the config file and the credentials file merge (credentials
    /// win), and an SSO profile resolves through SSO before static keys.
    #[test]
    fn profile_order_table() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("config"),
            "[profile sso]\nsso_start_url = https://d-1.awsapps.com/start\nsso_region = us-east-1\n\
             sso_account_id = 123456789012\nsso_role_name = Dev\n\n\
             [profile cfgkeys]\naws_access_key_id = AKIACONFIG\naws_secret_access_key = c\n\n\
             [profile both]\naws_access_key_id = AKIACONFIG\naws_secret_access_key = c\n\n\
             [sso]\nsso_start_url = https://not-a-profile-section\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("credentials"),
            "[sso]\naws_access_key_id = AKIASTATIC\naws_secret_access_key = s\n\n\
             [both]\naws_access_key_id = AKIACREDS\naws_secret_access_key = s\n",
        )
        .expect("write");
        for (profile, want) in [
            ("sso", "sso Dev"),
            ("cfgkeys", "static AKIACONFIG"),
            ("both", "static AKIACREDS"),
            ("absent", "none"),
        ] {
            let got = match profile_source(&settings(dir.path(), profile)).expect(profile) {
                Some(Source::Static(c)) => format!("static {}", c.access_key_id),
                Some(Source::Sso(sso)) if matches!(sso.1, aws_sso::CacheRead::Missing(_)) => {
                    let p = &sso.0;
                    format!("sso {}", p.role_name)
                }
                Some(_) => "other".into(),
                None => "none".into(),
            };
            assert_eq!(got, want, "{profile}");
        }
        // Environment keys come before any profile.
        let mut s = settings(dir.path(), "sso");
        s.env_access_key_id = Some("AKIAENV".into());
        s.env_secret_access_key = Some(SecretString::from("e"));
        let a = AwsIdentity::load(&s).expect("load");
        assert!(matches!(&a.source, Source::Static(c) if c.access_key_id == "AKIAENV"));
        // An SSO profile's fingerprint names the role: another role is another cache entry.
        let sso = AwsIdentity::load(&settings(dir.path(), "sso")).expect("load");
        assert_ne!(sso.fingerprint(), a.fingerprint());
    }
}
