//! AWS IAM Identity Center (SSO) profiles for the `aws` source: a developer's `aws sso login`, reused.
//!
//! A profile in the AWS config file (`AWS_CONFIG_FILE`, default `~/.aws/config`) is an SSO profile when it
//! names an `sso_session` (whose `[sso-session NAME]` section holds `sso_start_url` and `sso_region`) or,
//! in the legacy form, carries `sso_start_url` and `sso_region` itself; either way with `sso_account_id`
//! and `sso_role_name`. `aws sso login` leaves the access token in
//! `~/.aws/sso/cache/<sha1 hex of the session name, or of the start URL for the legacy form>.json`
//! (`accessToken`, `expiresAt`). With it, the IAM Identity Center portal's `GetRoleCredentials`
//! (`GET {portal}/federation/credentials?account_id=…&role_name=…`, header `x-amz-sso_bearer_token`)
//! hands out the role's short-lived keys, which sign the `sts:GetCallerIdentity` proof.
//!
//! Why by hand and not `aws-config`: the helper needs one GET (one POST more to refresh) and a few small
//! JSON shapes; `aws-config` brings the whole SDK runtime (see helper/README.md, "Size": about 3× the
//! binary and 4× the build). Measured: the helper's dependency tree stays at 202 crates.
//! `reqwest` and `serde` are already here; SHA-1 (the cache file's name, not a security use) comes from
//! `ring`, already linked for rustls; `time` (already in the binary through `azure_identity`) parses the
//! RFC 3339 expiry.
//!
//! As the SDKs do, a token of the `sso-session` form that expires within 5 minutes is refreshed with the
//! refresh token and client registration `aws sso login` cached beside it (SSO OIDC `CreateToken`,
//! `POST {oidc}/token`, `grantType = refresh_token`), and the cache file is rewritten in place (0600,
//! atomically) so the AWS CLI and the next run see the new token. If the refresh fails while the old
//! token is still valid, the old one is used. An expired token that cannot be refreshed (legacy form,
//! registration expired, refresh refused), or a missing one, is `SignInNeeded` (exit 67) naming
//! `aws sso login --profile NAME`; the helper never starts a sign-in. The portal endpoint honours
//! `AWS_ENDPOINT_URL_SSO`, the OIDC one `AWS_ENDPOINT_URL_SSO_OIDC`, each then `AWS_ENDPOINT_URL`.

use crate::error::IdentityError;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tollgate::aws::AwsCredentials;

const NAME: &str = "aws";

/// One INI file as the AWS CLI writes it: `[section]` → key → value. Duplicate sections merge, the later
/// value winning, as in the SDKs. Indented lines after a property with an empty value are its
/// sub-properties (`s3 =` then `  max_concurrent_requests = 10`), not keys of the section.
#[derive(Debug, Default)]
pub struct Ini {
    sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Ini {
    pub fn parse(text: &str) -> Ini {
        let mut ini = Ini::default();
        let mut current: Option<String> = None;
        let mut in_sub_properties = false;
        for line in text.lines() {
            let indented = line.starts_with([' ', '\t']);
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            if indented && in_sub_properties {
                continue;
            }
            in_sub_properties = false;
            if let Some(rest) = l.strip_prefix('[') {
                // `[profile dev] # comment`: the header ends at the first `]`.
                current = rest.split_once(']').map(|(name, _)| {
                    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
                    ini.sections.entry(name.clone()).or_default();
                    name
                });
                continue;
            }
            if let (Some(sec), Some((k, v))) = (&current, l.split_once('=')) {
                in_sub_properties = v.trim().is_empty();
                ini.sections
                    .entry(sec.clone())
                    .or_default()
                    .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        ini
    }

    /// Read a file; a missing file is an empty one (as the SDKs treat it).
    pub fn read(path: &Path) -> Result<Ini, IdentityError> {
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Ini::parse(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ini::default()),
            Err(source) => Err(IdentityError::ReadFile {
                source_name: NAME,
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn section(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.sections.get(name)
    }

    /// A profile of the config file: `[profile NAME]`, and for `default` also `[default]`.
    pub fn config_profile(&self, profile: &str) -> Option<&BTreeMap<String, String>> {
        self.section(&format!("profile {profile}")).or_else(|| {
            (profile == "default")
                .then(|| self.section("default"))
                .flatten()
        })
    }

    /// A profile of the credentials file: `[NAME]` (`[profile NAME]` accepted too).
    pub fn credentials_profile(&self, profile: &str) -> Option<&BTreeMap<String, String>> {
        self.section(profile)
            .or_else(|| self.section(&format!("profile {profile}")))
    }
}

/// An IAM Identity Center profile, resolved from the config file (nothing fetched yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoProfile {
    pub profile: String,
    /// The `sso_session` it names; `None` for the legacy form.
    pub session: Option<String>,
    pub start_url: String,
    pub sso_region: String,
    pub account_id: String,
    pub role_name: String,
}

/// An endpoint override from the environment (`AWS_ENDPOINT_URL_SSO`, `AWS_ENDPOINT_URL`, …), checked
/// only when an SSO profile uses it, so a `http://localstack:4566` in the shell does not break static keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointOverride {
    pub var: &'static str,
    pub url: String,
}

impl EndpointOverride {
    /// `https`, or plain `http` only to loopback (tests, local proxies): a bearer token, a refresh token
    /// and a client secret go there, and must not cross a network in clear text.
    pub fn checked(&self) -> Result<String, IdentityError> {
        let bad = |why: &str| IdentityError::Invalid {
            source_name: NAME,
            reason: format!("{} {:?}: {why}", self.var, self.url),
        };
        let url = reqwest::Url::parse(&self.url).map_err(|_| bad("not a URL"))?;
        if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(bad("no query or user info allowed"));
        }
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match url.scheme() {
            "https" => Ok(self.url.trim_end_matches('/').to_string()),
            "http" if loopback => Ok(self.url.trim_end_matches('/').to_string()),
            "http" => Err(bad("plain http is allowed only to loopback")),
            _ => Err(bad("must be an http(s) URL")),
        }
    }
}

/// The keys that make a profile an SSO profile.
pub fn is_sso(props: &BTreeMap<String, String>) -> bool {
    props.contains_key("sso_session") || props.contains_key("sso_start_url")
}

impl SsoProfile {
    /// Resolve `profile` (whose merged properties are `props`) against the config file's sessions.
    /// Errors name the file, the profile and the missing or wrong key.
    pub fn resolve(
        config: &Ini,
        config_file: &Path,
        profile: &str,
        props: &BTreeMap<String, String>,
    ) -> Result<SsoProfile, IdentityError> {
        let bad = |what: String| IdentityError::Invalid {
            source_name: NAME,
            reason: format!("profile `{profile}` in {}: {what}", config_file.display()),
        };
        let get = |props: &BTreeMap<String, String>, key: &str| {
            props.get(key).filter(|v| !v.is_empty()).cloned()
        };
        let (session, start_url, sso_region) = match get(props, "sso_session") {
            Some(name) => {
                let sec = config
                    .section(&format!("sso-session {name}"))
                    .ok_or_else(|| {
                        bad(format!(
                            "`sso_session = {name}` names no [sso-session {name}] section"
                        ))
                    })?;
                let url = get(sec, "sso_start_url")
                    .ok_or_else(|| bad(format!("[sso-session {name}] has no `sso_start_url`")))?;
                let region = get(sec, "sso_region")
                    .ok_or_else(|| bad(format!("[sso-session {name}] has no `sso_region`")))?;
                // The SDKs refuse a profile that repeats the session's settings with other values.
                for (key, v) in [("sso_start_url", &url), ("sso_region", &region)] {
                    if let Some(p) = get(props, key)
                        && &p != v
                    {
                        return Err(bad(format!(
                            "`{key}` differs from the one in [sso-session {name}]"
                        )));
                    }
                }
                (Some(name), url, region)
            }
            None => (
                None,
                get(props, "sso_start_url")
                    .ok_or_else(|| bad("`sso_start_url` is missing".into()))?,
                get(props, "sso_region").ok_or_else(|| {
                    bad("`sso_region` is missing (or name an `sso_session`)".into())
                })?,
            ),
        };
        if sso_region.is_empty()
            || !sso_region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(bad(format!(
                "`sso_region` {sso_region:?} is not a region name"
            )));
        }
        let account_id = get(props, "sso_account_id")
            .ok_or_else(|| bad("`sso_account_id` is missing".into()))?;
        if account_id.len() != 12 || !account_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad(format!(
                "`sso_account_id` {account_id:?} is not a 12-digit account ID"
            )));
        }
        let role_name =
            get(props, "sso_role_name").ok_or_else(|| bad("`sso_role_name` is missing".into()))?;
        Ok(SsoProfile {
            profile: profile.to_string(),
            session,
            start_url,
            sso_region,
            account_id,
            role_name,
        })
    }

    /// The cache file's name: the SHA-1 of the session name, or of the start URL for the legacy form
    /// (the AWS CLI's and SDKs' convention).
    pub fn cache_file_name(&self) -> String {
        let key = self.session.as_deref().unwrap_or(&self.start_url);
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
        format!("{}.json", hex::encode(d.as_ref()))
    }

    /// The SSO OIDC service's base URL: the override if any, else `https://oidc.{sso_region}.amazonaws.com`.
    pub fn oidc(
        &self,
        endpoint_override: Option<&EndpointOverride>,
    ) -> Result<String, IdentityError> {
        match endpoint_override {
            Some(e) => e.checked(),
            None => Ok(format!("https://oidc.{}.amazonaws.com", self.sso_region)),
        }
    }

    /// What the person runs to sign in again.
    pub fn login_command(&self) -> String {
        format!("aws sso login --profile {}", self.profile)
    }

    /// The portal's base URL: the override if any, else `https://portal.sso.{sso_region}.amazonaws.com`.
    pub fn portal(
        &self,
        endpoint_override: Option<&EndpointOverride>,
    ) -> Result<String, IdentityError> {
        match endpoint_override {
            Some(e) => e.checked(),
            None => Ok(format!(
                "https://portal.sso.{}.amazonaws.com",
                self.sso_region
            )),
        }
    }
}

/// Refresh a token this long before it expires (the SDKs' window).
pub const REFRESH_WINDOW_SECS: u64 = 300;

/// The access token `aws sso login` cached.
pub struct CachedSsoToken {
    pub access_token: SecretString,
    /// Unix seconds.
    pub expires_at: u64,
    /// What a refresh needs (`sso-session` form only).
    pub refresh: Option<RefreshGrant>,
    /// The file's other fields, kept when the refreshed token is written back.
    rest: serde_json::Map<String, serde_json::Value>,
    path: PathBuf,
}

/// The client registration and refresh token cached beside an `sso-session` token.
pub struct RefreshGrant {
    pub client_id: String,
    pub client_secret: SecretString,
    pub refresh_token: SecretString,
    /// Unix seconds; the registration (and so the grant) is unusable after it.
    pub registration_expires_at: u64,
}

impl CachedSsoToken {
    /// The secrets read from the file, for the error boundary to scrub.
    pub fn secrets(&self) -> Vec<SecretString> {
        let mut v = vec![self.access_token.clone()];
        if let Some(r) = &self.refresh {
            v.extend([r.client_secret.clone(), r.refresh_token.clone()]);
        }
        v
    }
}

impl std::fmt::Debug for CachedSsoToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSsoToken")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("refreshable", &self.refresh.is_some())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What reading the cache gave: a token, no file, or a file we cannot use (the reason, never its text).
#[derive(Debug)]
pub enum CacheRead {
    Token(CachedSsoToken),
    Missing(PathBuf),
    Unusable(PathBuf, String),
}

/// Parse `expiresAt`: RFC 3339 (what the AWS CLI v2 writes), or the older `…UTC` suffix of botocore.
pub fn parse_expires_at(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = match s.strip_suffix("UTC") {
        Some(rest) => format!("{rest}Z"),
        None => s.to_string(),
    };
    let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// Read `dir/<cache file name>`.
pub fn read_cached_token(dir: &Path, p: &SsoProfile) -> Result<CacheRead, IdentityError> {
    let path = dir.join(p.cache_file_name());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheRead::Missing(path)),
        Err(source) => {
            return Err(IdentityError::ReadFile {
                source_name: NAME,
                path,
                source,
            });
        }
    };
    let Ok(mut rest) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
    else {
        return Ok(CacheRead::Unusable(path, "it is not JSON".into()));
    };
    let mut take = |key: &str| match rest.remove(key) {
        Some(serde_json::Value::String(v)) if !v.is_empty() => Some(v),
        _ => None,
    };
    let (token, expires_at) = (take("accessToken"), take("expiresAt"));
    let (client_id, client_secret, refresh_token, registration_expires_at) = (
        take("clientId"),
        take("clientSecret"),
        take("refreshToken"),
        take("registrationExpiresAt"),
    );
    let Some(token) = token else {
        return Ok(CacheRead::Unusable(
            path,
            "it holds no `accessToken`".into(),
        ));
    };
    let Some(expires_at) = expires_at.as_deref().and_then(parse_expires_at) else {
        return Ok(CacheRead::Unusable(
            path,
            "its `expiresAt` is missing or not a date".into(),
        ));
    };
    // Only the `sso-session` form can be refreshed (the SDKs' rule); a partial grant is no grant.
    let registration = registration_expires_at
        .as_deref()
        .and_then(parse_expires_at);
    let refresh = match (
        p.session.is_some(),
        client_id,
        client_secret,
        refresh_token,
        registration,
    ) {
        (true, Some(client_id), Some(secret), Some(refresh), Some(reg)) => Some(RefreshGrant {
            client_id,
            client_secret: SecretString::from(secret),
            refresh_token: SecretString::from(refresh),
            registration_expires_at: reg,
        }),
        (_, client_id, secret, refresh, _) => {
            // Keep what we did not use, so a rewrite would not drop it.
            for (k, v) in [
                ("clientId", client_id),
                ("clientSecret", secret),
                ("refreshToken", refresh),
                ("registrationExpiresAt", registration_expires_at),
            ] {
                if let Some(v) = v {
                    rest.insert(k.into(), v.into());
                }
            }
            None
        }
    };
    Ok(CacheRead::Token(CachedSsoToken {
        access_token: SecretString::from(token),
        expires_at,
        refresh,
        rest,
        path,
    }))
}

/// `unix` as the AWS CLI writes `expiresAt` (RFC 3339, UTC, whole seconds).
fn format_time(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// Write the refreshed token back where `aws sso login` left it: 0600, through a temporary file renamed
/// over the old one, so the AWS CLI never reads half a file.
fn write_back(t: &CachedSsoToken, access: &SecretString, expires_at: u64, refresh: &SecretString) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut doc = t.rest.clone();
    doc.insert("accessToken".into(), access.expose_secret().into());
    doc.insert("expiresAt".into(), format_time(expires_at).into());
    if let Some(g) = &t.refresh {
        doc.insert("clientId".into(), g.client_id.clone().into());
        doc.insert(
            "clientSecret".into(),
            g.client_secret.expose_secret().into(),
        );
        doc.insert("refreshToken".into(), refresh.expose_secret().into());
        doc.insert(
            "registrationExpiresAt".into(),
            format_time(g.registration_expires_at).into(),
        );
    }
    let Ok(body) = serde_json::to_vec(&doc) else {
        return;
    };
    let tmp = t
        .path
        .with_extension(format!("json.tollgate-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&body))
        .and_then(|()| std::fs::rename(&tmp, &t.path));
    if written.is_err() {
        // Not fatal: the token is used now, and the next run refreshes again.
        let _ = std::fs::remove_file(&tmp);
    }
}

/// SSO OIDC `CreateToken` with the refresh grant: the new access token, its expiry, the refresh token to
/// keep (rotated or not).
async fn refresh(
    http: &reqwest::Client,
    p: &SsoProfile,
    oidc_override: Option<&EndpointOverride>,
    g: &RefreshGrant,
    now_unix: u64,
) -> Result<(SecretString, u64, SecretString), IdentityError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        #[serde(deserialize_with = "super::de_secret")]
        access_token: SecretString,
        expires_in: u64,
        #[serde(default, deserialize_with = "de_opt_secret")]
        refresh_token: Option<SecretString>,
    }
    let oidc = p.oidc(oidc_override)?;
    let what = format!("IAM Identity Center token refresh ({oidc})");
    let body = serde_json::json!({
        "clientId": g.client_id,
        "clientSecret": g.client_secret.expose_secret(),
        "grantType": "refresh_token",
        "refreshToken": g.refresh_token.expose_secret(),
    });
    let resp = http
        .post(format!("{oidc}/token"))
        .json(&body)
        .send()
        .await
        .map_err(|e| IdentityError::Unavailable {
            source_name: NAME,
            reason: format!("{what}: {}", crate::error::transport_reason(&e)),
        })?;
    let status = resp.status();
    if status.is_success() {
        let a: Answer = resp.json().await.map_err(|_| IdentityError::Unavailable {
            source_name: NAME,
            reason: format!("{what}: the answer is not a token"),
        })?;
        let refresh = a.refresh_token.unwrap_or_else(|| g.refresh_token.clone());
        return Ok((
            a.access_token,
            now_unix.saturating_add(a.expires_in),
            refresh,
        ));
    }
    let (kind, message) = error_detail(resp).await;
    let reason = format!(
        "{what}: HTTP {}{}",
        status.as_u16(),
        detail(&kind, &message)
    );
    Err(if status.is_client_error() && status.as_u16() != 429 {
        // invalid_grant (the refresh token expired or was revoked), invalid_client, …
        IdentityError::SignInNeeded {
            source_name: NAME,
            reason,
            command: p.login_command(),
        }
    } else {
        IdentityError::Unavailable {
            source_name: NAME,
            reason,
        }
    })
}

fn de_opt_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d)
        .map(|v| v.filter(|s| !s.is_empty()).map(SecretString::from))
}

/// The token to use now: the cached one while it has more than [`REFRESH_WINDOW_SECS`] left, else a
/// refreshed one (written back), else the cached one while still valid, else `SignInNeeded`.
pub async fn current_token(
    http: &reqwest::Client,
    read: &CacheRead,
    p: &SsoProfile,
    oidc_override: Option<&EndpointOverride>,
    now_unix: u64,
) -> Result<SecretString, IdentityError> {
    if let CacheRead::Token(t) = read
        && t.expires_at <= now_unix.saturating_add(REFRESH_WINDOW_SECS)
        && let Some(g) = t
            .refresh
            .as_ref()
            .filter(|g| g.registration_expires_at > now_unix)
    {
        match refresh(http, p, oidc_override, g, now_unix).await {
            Ok((access, expires_at, refresh_token)) => {
                write_back(t, &access, expires_at, &refresh_token);
                return Ok(access);
            }
            Err(_) if t.expires_at > now_unix => return Ok(t.access_token.clone()),
            Err(e) => return Err(e),
        }
    }
    usable_token(read, p, now_unix).cloned()
}

/// The token to use now, or `SignInNeeded` naming `aws sso login --profile NAME`.
pub fn usable_token<'a>(
    read: &'a CacheRead,
    p: &SsoProfile,
    now_unix: u64,
) -> Result<&'a SecretString, IdentityError> {
    let sign_in = |reason: String| IdentityError::SignInNeeded {
        source_name: NAME,
        reason,
        command: p.login_command(),
    };
    match read {
        CacheRead::Token(t) if t.expires_at > now_unix => Ok(&t.access_token),
        CacheRead::Token(_) => Err(sign_in(format!(
            "the IAM Identity Center sign-in of profile `{}` has expired",
            p.profile
        ))),
        CacheRead::Missing(path) => Err(sign_in(format!(
            "profile `{}` uses IAM Identity Center but there is no cached sign-in ({} does not exist)",
            p.profile,
            path.display()
        ))),
        CacheRead::Unusable(path, why) => Err(sign_in(format!(
            "the cached IAM Identity Center sign-in {} is unusable: {why}",
            path.display()
        ))),
    }
}

/// A restJson1 error: the type in `x-amzn-ErrorType` (`Name:uri`) or `__type` (SSO OIDC also says
/// `error`), the text in `message` (or `error_description`); bounded, one line.
async fn error_detail(resp: reqwest::Response) -> (String, String) {
    let kind = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or_default().to_string());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let kind = kind
        .or_else(|| body["__type"].as_str().map(String::from))
        .or_else(|| body["error"].as_str().map(String::from))
        .unwrap_or_default();
    let message = body["message"]
        .as_str()
        .or_else(|| body["Message"].as_str())
        .or_else(|| body["error_description"].as_str())
        .map(crate::error::one_line)
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect::<String>();
    (kind.chars().take(100).collect(), message)
}

/// ` Kind: message`, or nothing.
fn detail(kind: &str, message: &str) -> String {
    let d = [kind, message]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    if d.is_empty() { d } else { format!(" {d}") }
}

/// `GetRoleCredentials`: the role's keys for the signed-in person.
pub async fn role_credentials(
    http: &reqwest::Client,
    p: &SsoProfile,
    endpoint_override: Option<&EndpointOverride>,
    bearer: &SecretString,
) -> Result<AwsCredentials, IdentityError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RoleCredentials {
        access_key_id: String,
        #[serde(deserialize_with = "super::de_secret")]
        secret_access_key: SecretString,
        #[serde(deserialize_with = "super::de_secret")]
        session_token: SecretString,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        role_credentials: RoleCredentials,
    }
    let unavailable = |reason: String| IdentityError::Unavailable {
        source_name: NAME,
        reason,
    };
    let portal = p.portal(endpoint_override)?;
    let mut url =
        reqwest::Url::parse(&format!("{portal}/federation/credentials")).map_err(|_| {
            unavailable(format!(
                "IAM Identity Center portal URL {portal:?} is not a URL"
            ))
        })?;
    url.query_pairs_mut()
        .append_pair("account_id", &p.account_id)
        .append_pair("role_name", &p.role_name);
    let what = format!(
        "IAM Identity Center GetRoleCredentials ({}, account {} role {})",
        portal, p.account_id, p.role_name
    );
    let resp = http
        .get(url)
        .header("x-amz-sso_bearer_token", bearer.expose_secret())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| unavailable(format!("{what}: {}", crate::error::transport_reason(&e))))?;
    let status = resp.status();
    if status.is_success() {
        let a: Answer = resp
            .json()
            .await
            .map_err(|_| unavailable(format!("{what}: the answer is not role credentials")))?;
        let c = a.role_credentials;
        return Ok(AwsCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key.expose_secret().to_string(),
            session_token: Some(c.session_token.expose_secret().to_string()),
        });
    }
    let (kind, message) = error_detail(resp).await;
    let reason = format!(
        "{what}: HTTP {}{}",
        status.as_u16(),
        detail(&kind, &message)
    );
    Err(match status.as_u16() {
        // The portal no longer knows the token (signed out, session ended or revoked).
        401 => IdentityError::SignInNeeded {
            source_name: NAME,
            reason: format!("{reason} (the IAM Identity Center sign-in is no longer valid)"),
            command: p.login_command(),
        },
        429 => unavailable(reason),
        s if s >= 500 => unavailable(reason),
        // The person is not assigned this role in this account: signing in again would not help.
        403 => IdentityError::Invalid {
            source_name: NAME,
            reason: format!(
                "{reason} (profile `{}`: no assignment of role {} in account {}; ask for it or pick another profile)",
                p.profile, p.role_name, p.account_id
            ),
        },
        // 400, 404: the profile names something the portal does not know.
        _ => IdentityError::Invalid {
            source_name: NAME,
            reason,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
[default]
region = eu-west-1

[profile dev]
sso_session = corp
sso_account_id = 123456789012
sso_role_name = Developer
region = eu-west-1
s3 =
  max_concurrent_requests = 10

[sso-session corp]
sso_start_url = https://d-1234567890.awsapps.com/start
sso_region = eu-central-1
sso_registration_scopes = sso:account:access

[profile legacy]
sso_start_url = https://d-1234567890.awsapps.com/start
sso_region = us-east-1
sso_account_id = 210987654321
sso_role_name = ReadOnly

[profile  spaced ] # comment
sso_session = corp
sso_account_id = 123456789012
sso_role_name = Admin
";

    fn resolve(config: &str, profile: &str) -> Result<SsoProfile, IdentityError> {
        let ini = Ini::parse(config);
        let props = ini.config_profile(profile).cloned().unwrap_or_default();
        SsoProfile::resolve(&ini, Path::new("/h/.aws/config"), profile, &props)
    }

    #[test]
    fn session_and_legacy_profiles_resolve() {
        let dev = resolve(CONFIG, "dev").expect("dev");
        assert_eq!(
            dev,
            SsoProfile {
                profile: "dev".into(),
                session: Some("corp".into()),
                start_url: "https://d-1234567890.awsapps.com/start".into(),
                sso_region: "eu-central-1".into(),
                account_id: "123456789012".into(),
                role_name: "Developer".into(),
            }
        );
        let legacy = resolve(CONFIG, "legacy").expect("legacy");
        assert_eq!(legacy.session, None);
        assert_eq!(legacy.sso_region, "us-east-1");
        assert_eq!(
            resolve(CONFIG, "spaced").expect("spaced").role_name,
            "Admin"
        );
        // The indented sub-property is not a key of the profile.
        let ini = Ini::parse(CONFIG);
        let p = ini.config_profile("dev").expect("dev");
        assert!(!p.contains_key("max_concurrent_requests"));
        assert!(is_sso(p));
        assert!(!is_sso(ini.config_profile("default").expect("default")));
        assert_eq!(
            dev.portal(None).expect("default"),
            "https://portal.sso.eu-central-1.amazonaws.com"
        );
        assert_eq!(
            dev.oidc(None).expect("default"),
            "https://oidc.eu-central-1.amazonaws.com"
        );
        let over = |url: &str| EndpointOverride {
            var: "AWS_ENDPOINT_URL_SSO",
            url: url.into(),
        };
        for (url, want) in [
            ("http://127.0.0.1:9/", Ok("http://127.0.0.1:9")),
            ("http://localhost:9", Ok("http://localhost:9")),
            ("http://[::1]:9", Ok("http://[::1]:9")),
            (
                "https://sso.internal.example/",
                Ok("https://sso.internal.example"),
            ),
            (
                "http://sso.internal.example",
                Err(
                    "AWS_ENDPOINT_URL_SSO \"http://sso.internal.example\": plain http is allowed only to loopback",
                ),
            ),
            ("ftp://[::1]/", Err("must be an http(s) URL")),
            ("https://u:p@x", Err("no query or user info")),
        ] {
            match (dev.portal(Some(&over(url))), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e}"),
                (got, w) => panic!("{url}: {:?} vs {w:?}", got.map_err(|e| e.to_string())),
            }
        }
        assert_eq!(dev.login_command(), "aws sso login --profile dev");
    }

    #[test]
    fn cache_file_is_named_by_the_sha1_of_the_session_or_the_start_url() {
        // sha1("corp") and sha1("https://d-1234567890.awsapps.com/start"), as `shasum` prints them.
        let dev = resolve(CONFIG, "dev").expect("dev");
        assert_eq!(
            dev.cache_file_name(),
            "ee0bfd2552fbd840c02cc48b6e823320543c450f.json"
        );
        let legacy = resolve(CONFIG, "legacy").expect("legacy");
        assert_eq!(
            legacy.cache_file_name(),
            "7487b5b67d5fa1132cf33fa93ae51ef38cc37752.json"
        );
    }

    #[test]
    fn broken_profiles_name_the_file_profile_and_key() {
        let cases: &[(&str, &str)] = &[
            (
                "[profile p]\nsso_session = nope\nsso_account_id = 123456789012\nsso_role_name = R\n",
                "names no [sso-session nope] section",
            ),
            (
                "[profile p]\nsso_session = s\nsso_account_id = 123456789012\nsso_role_name = R\n[sso-session s]\nsso_region = us-east-1\n",
                "[sso-session s] has no `sso_start_url`",
            ),
            (
                "[profile p]\nsso_session = s\nsso_account_id = 123456789012\nsso_role_name = R\n[sso-session s]\nsso_start_url = https://x\n",
                "[sso-session s] has no `sso_region`",
            ),
            (
                "[profile p]\nsso_session = s\nsso_region = us-west-2\nsso_account_id = 123456789012\nsso_role_name = R\n[sso-session s]\nsso_start_url = https://x\nsso_region = us-east-1\n",
                "`sso_region` differs from the one in [sso-session s]",
            ),
            (
                "[profile p]\nsso_start_url = https://x\nsso_account_id = 123456789012\nsso_role_name = R\n",
                "`sso_region` is missing",
            ),
            (
                "[profile p]\nsso_start_url = https://x\nsso_region = us-east-1\nsso_role_name = R\n",
                "`sso_account_id` is missing",
            ),
            (
                "[profile p]\nsso_start_url = https://x\nsso_region = us-east-1\nsso_account_id = 1234\nsso_role_name = R\n",
                "`sso_account_id` \"1234\" is not a 12-digit account ID",
            ),
            (
                "[profile p]\nsso_start_url = https://x\nsso_region = us-east-1\nsso_account_id = 123456789012\n",
                "`sso_role_name` is missing",
            ),
            (
                "[profile p]\nsso_start_url = https://x\nsso_region = evil.example/x\nsso_account_id = 123456789012\nsso_role_name = R\n",
                "`sso_region` \"evil.example/x\" is not a region name",
            ),
        ];
        for (config, want) in cases {
            let e = resolve(config, "p").expect_err(want).to_string();
            assert!(
                e.contains("profile `p` in /h/.aws/config: ") && e.contains(want),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn expiry_formats() {
        assert_eq!(
            parse_expires_at("2026-12-07T04:00:00Z"),
            Some(1_796_616_000)
        );
        assert_eq!(
            parse_expires_at("2026-12-07T04:00:00UTC"),
            Some(1_796_616_000)
        );
        assert_eq!(
            parse_expires_at("2026-12-07T05:00:00+01:00"),
            Some(1_796_616_000)
        );
        assert_eq!(parse_expires_at("tomorrow"), None);
    }

    #[test]
    fn cached_token_table() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = resolve(CONFIG, "dev").expect("dev");
        let file = dir.path().join(p.cache_file_name());
        let now = 1_796_616_000;
        let cases: &[(Option<&str>, Result<(), &str>)] = &[
            (
                Some(
                    r#"{"startUrl":"https://d-1234567890.awsapps.com/start","region":"eu-central-1","accessToken":"aoa-secret-token","expiresAt":"2026-12-07T05:00:00Z"}"#,
                ),
                Ok(()),
            ),
            (
                Some(r#"{"accessToken":"aoa-secret-token","expiresAt":"2026-12-07T04:00:00Z"}"#),
                Err("has expired"),
            ),
            (None, Err("does not exist")),
            (Some("not json"), Err("it is not JSON")),
            (
                Some(r#"{"expiresAt":"2026-12-07T05:00:00Z"}"#),
                Err("holds no `accessToken`"),
            ),
            (
                Some(r#"{"accessToken":"aoa-secret-token","expiresAt":"later"}"#),
                Err("`expiresAt` is missing or not a date"),
            ),
        ];
        for (content, want) in cases {
            let _ = std::fs::remove_file(&file);
            if let Some(c) = content {
                std::fs::write(&file, c).expect("write");
            }
            let read = read_cached_token(dir.path(), &p).expect("read");
            assert!(!format!("{read:?}").contains("aoa-secret-token"));
            match (usable_token(&read, &p, now), want) {
                (Ok(t), Ok(())) => assert_eq!(t.expose_secret(), "aoa-secret-token"),
                (Err(e), Err(w)) => {
                    assert!(
                        matches!(e, IdentityError::SignInNeeded { .. }),
                        "{content:?}: {e}"
                    );
                    let text = e.to_string();
                    assert!(text.contains(w), "{text}");
                    assert!(
                        text.ends_with("run `aws sso login --profile dev`"),
                        "{text}"
                    );
                    assert!(!text.contains("aoa-secret-token"), "{text}");
                    assert_eq!(
                        crate::error::HelperError::from(e).exit(),
                        crate::error::Exit::SignInRequired
                    );
                }
                (r, w) => panic!("{content:?}: got {:?}, want {w:?}", r.map(|_| ())),
            }
        }
    }

    #[test]
    fn refresh_grants_only_for_the_session_form_and_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let full = r#"{"startUrl":"u","accessToken":"a","expiresAt":"2026-12-07T04:00:00Z","clientId":"c","clientSecret":"cs-secret","refreshToken":"rt-secret","registrationExpiresAt":"2027-03-07T04:00:00Z"}"#;
        let partial = r#"{"accessToken":"a","expiresAt":"2026-12-07T04:00:00Z","clientId":"c","refreshToken":"rt-secret"}"#;
        for (profile, content, grant) in [
            ("dev", full, true),
            ("legacy", full, false),
            ("dev", partial, false),
        ] {
            let p = resolve(CONFIG, profile).expect(profile);
            std::fs::write(dir.path().join(p.cache_file_name()), content).expect("write");
            let CacheRead::Token(t) = read_cached_token(dir.path(), &p).expect("read") else {
                panic!("{profile}: no token");
            };
            assert_eq!(t.refresh.is_some(), grant, "{profile} {content}");
            if let Some(g) = &t.refresh {
                assert_eq!(g.registration_expires_at, 1_804_392_000);
                assert_eq!(t.secrets().len(), 3);
            } else {
                // What was not used is kept for a rewrite.
                assert_eq!(
                    t.rest.get("refreshToken").and_then(|v| v.as_str()),
                    Some("rt-secret")
                );
            }
            assert!(!format!("{t:?}").contains("secret"));
        }
        assert_eq!(format_time(1_796_616_000), "2026-12-07T04:00:00Z");
        assert_eq!(
            parse_expires_at(&format_time(1_796_616_123)),
            Some(1_796_616_123)
        );
    }
}
