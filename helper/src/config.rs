//! Settings: flags > environment > config-file profile > defaults.
//!
//! The config file is TOML at `$XDG_CONFIG_HOME/tollgate/config.toml` (or `~/.config/tollgate/config.toml`):
//!
//! ```toml
//! [profiles.default]
//! broker = "https://tollgate.corp.example"
//! audience = "tollgate"            # default "tollgate"
//! identity = "static"              # default "static"
//! credential_file = "~/.config/tollgate/credential"
//! ttl_secs = 900                   # requested token lifetime; the broker may clamp it
//! refresh_margin_secs = 300        # re-mint when less than this is left (default 300)
//! timeout_ms = 4000                # overall deadline (default 4000, below Codex's 5000)
//! failure_memory_secs = 10         # fail at once for this long after the broker failed (default 10)
//! ```
//!
//! The file's path can be set with `--config` or `TOLLGATE_TOKEN_CONFIG` (not `TOLLGATE_CONFIG`: that
//! one was the broker's too, so exporting it for the broker broke every Codex turn).
//!
//! Raw structs are strict (`deny_unknown_fields`) and are turned into a validated [`Settings`].
//! Nothing here reads the process environment: an [`Env`] is passed in.

use crate::error::{ConfigError, line_col, one_line};
/// Defined beside the identities they configure (so `identity/` does not import this file back).
pub use crate::identity::{IdentityConfig, StaticCredential};
use crate::sys::Env;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default audience asked of the broker.
pub const DEFAULT_AUDIENCE: &str = "tollgate";
/// Default profile name.
pub const DEFAULT_PROFILE: &str = "default";
/// Serve a cached token only while it has more than this many seconds left. It must exceed the
/// `refresh_interval_ms` we write into Codex's config (240 s), so a token Codex holds stays valid.
pub const DEFAULT_REFRESH_MARGIN_SECS: u64 = 300;
/// Overall deadline of one run, below Codex's default `timeout_ms` of 5000.
pub const DEFAULT_TIMEOUT_MS: u64 = 4000;
/// How long a broker failure is remembered (seconds). Codex reruns a failing helper on every retry,
/// backing off 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s: 10 s covers one whole retry sequence after a run that
/// waited out its 4 s deadline, while a turn started by hand a little later tries the broker again.
pub const DEFAULT_FAILURE_MEMORY_SECS: u64 = 10;
/// The environment variable naming the helper's config file.
pub const CONFIG_ENV: &str = "TOLLGATE_TOKEN_CONFIG";

/// The flags shared by every subcommand (all `global`). Environment variables are NOT read by clap:
/// the resolver reads them through [`Env`] so that tests can inject them.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// Broker base URL, e.g. https://tollgate.corp.example [env: TOLLGATE_BROKER]
    #[arg(long, global = true, value_name = "URL")]
    pub broker: Option<String>,
    /// Audience to request [env: TOLLGATE_AUDIENCE] [default: tollgate]
    #[arg(long, global = true)]
    pub audience: Option<String>,
    /// Identity source: static, aws, vault, azure, azure-cli, oidc-file or chain (docs/identity.md) [env: TOLLGATE_IDENTITY] [default: static]
    #[arg(long, global = true, value_name = "KIND")]
    pub identity: Option<String>,
    /// File holding the static credential [env: TOLLGATE_CREDENTIAL_FILE; or the credential itself in TOLLGATE_CREDENTIAL]
    #[arg(long, global = true, value_name = "PATH")]
    pub credential_file: Option<PathBuf>,
    /// Config-file profile [env: TOLLGATE_PROFILE] [default: default]
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Requested token lifetime in seconds; the broker clamps it [env: TOLLGATE_TTL_SECS]
    #[arg(long = "ttl", global = true, value_name = "SECS")]
    pub ttl_secs: Option<u64>,
    /// Re-mint when the cached token has less than this left [env: TOLLGATE_REFRESH_MARGIN_SECS] [default: 300]
    #[arg(long = "refresh-margin", global = true, value_name = "SECS")]
    pub refresh_margin_secs: Option<u64>,
    /// Overall deadline in milliseconds [env: TOLLGATE_TIMEOUT_MS] [default: 4000]
    #[arg(long, global = true, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Config file [env: TOLLGATE_TOKEN_CONFIG] [default: $XDG_CONFIG_HOME/tollgate/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Token cache directory [env: TOLLGATE_CACHE_DIR] [default: $XDG_CACHE_HOME/tollgate]
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the token cache [env: TOLLGATE_NO_CACHE=1]
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// If the same parent process asks again within this many seconds of being handed a cached token,
    /// treat that token as rejected (Codex re-runs its auth command after a 401) and mint a new one.
    /// 0 disables. [env: TOLLGATE_RERUN_WINDOW_SECS] [default: 120 when the parent is Codex, else 0]
    #[arg(long = "rerun-window", global = true, value_name = "SECS")]
    pub rerun_window_secs: Option<u64>,
    /// After the broker failed (unreachable, timed out, 5xx), fail at once with the same message for this
    /// many seconds instead of waiting on it again; a still-valid cached token is served meanwhile. 0 disables.
    /// [env: TOLLGATE_FAILURE_MEMORY_SECS] [default: 10]
    #[arg(long = "failure-memory", global = true, value_name = "SECS")]
    pub failure_memory_secs: Option<u64>,
}

impl Flags {
    /// These flags, each unset one taken from `base` (the arguments Codex's config gives the helper):
    /// what the user typed wins, as a flag wins over everything else.
    pub fn over(self, base: Flags) -> Flags {
        Flags {
            broker: self.broker.or(base.broker),
            audience: self.audience.or(base.audience),
            identity: self.identity.or(base.identity),
            credential_file: self.credential_file.or(base.credential_file),
            profile: self.profile.or(base.profile),
            ttl_secs: self.ttl_secs.or(base.ttl_secs),
            refresh_margin_secs: self.refresh_margin_secs.or(base.refresh_margin_secs),
            timeout_ms: self.timeout_ms.or(base.timeout_ms),
            config: self.config.or(base.config),
            cache_dir: self.cache_dir.or(base.cache_dir),
            no_cache: self.no_cache || base.no_cache,
            rerun_window_secs: self.rerun_window_secs.or(base.rerun_window_secs),
            failure_memory_secs: self.failure_memory_secs.or(base.failure_memory_secs),
        }
    }
}

/// One `[profiles.<name>]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub broker: Option<String>,
    pub audience: Option<String>,
    pub identity: Option<String>,
    /// Relative paths are resolved against the config file's directory; `~/` against HOME.
    pub credential_file: Option<PathBuf>,
    pub ttl_secs: Option<u64>,
    pub refresh_margin_secs: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rerun_window_secs: Option<u64>,
    pub failure_memory_secs: Option<u64>,
    /// `identity = "oidc-file"`: the JWT file (relative to the config file's directory).
    pub oidc_file: Option<PathBuf>,
    /// `identity = "chain"`: the sources to try, in order.
    pub chain: Option<Vec<String>>,
    pub aws: Option<RawAws>,
    pub vault: Option<RawVault>,
    pub azure: Option<RawAzure>,
    pub azure_cli: Option<RawAzureCli>,
}

/// `[profiles.<name>.aws]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAws {
    /// Region to sign for (default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1).
    pub region: Option<String>,
    /// STS URL to sign for (default https://sts.{region}.amazonaws.com/); must be on the broker's list.
    pub sts_url: Option<String>,
    /// The broker's `[identity.aws] server_id` (default: the audience).
    pub server_id: Option<String>,
    /// Shared-credentials profile (default AWS_PROFILE, else `default`).
    pub profile: Option<String>,
    /// Assume this role first (`sts:AssumeRole`), and prove as it.
    pub role_arn: Option<String>,
    /// Session name for the assumed role (default `tollgate-token`).
    pub role_session_name: Option<String>,
}

/// `[profiles.<name>.vault]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVault {
    pub addr: Option<String>,
    pub namespace: Option<String>,
    /// Identity token role: `identity/oidc/token/<role>`.
    pub role: Option<String>,
    /// `token` (default), `approle`, `kubernetes` or `jwt`.
    pub auth: Option<String>,
    /// Auth mount (default: the method's name).
    pub mount: Option<String>,
    /// Role of the kubernetes/jwt auth method.
    pub login_role: Option<String>,
    pub role_id: Option<String>,
    pub secret_id_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub jwt_file: Option<PathBuf>,
}

/// `[profiles.<name>.azure]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAzure {
    /// The broker's application ID URI.
    pub resource: Option<String>,
    /// User-assigned identity / workload identity client ID (default AZURE_CLIENT_ID).
    pub client_id: Option<String>,
    /// Use the VM instance metadata service (default false).
    pub imds: Option<bool>,
}

/// `[profiles.<name>.azure_cli]`: the person's Azure CLI sign-in (`identity = "azure-cli"`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAzureCli {
    /// The broker's application ID URI (default: TOLLGATE_AZURE_RESOURCE, else `[azure] resource`).
    pub resource: Option<String>,
    /// `az … --tenant`: the broker's tenant when it is not the CLI's default (default: none).
    pub tenant: Option<String>,
    /// The `az` executable, a path or a name on PATH (default: TOLLGATE_AZ, else `az`).
    pub az: Option<PathBuf>,
}

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub profiles: BTreeMap<String, RawProfile>,
}

impl RawConfig {
    /// Parse, with errors that name the line and column (and, from serde, the field).
    pub fn parse(src: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(src, s.start));
            let mut message = one_line(e.message());
            // Type errors ("invalid type: …") do not say which field; the key starts the line.
            if !message.contains('`')
                && let Some((key, _)) = src
                    .lines()
                    .nth(line.saturating_sub(1))
                    .and_then(|l| l.split_once('='))
                && let key = key.trim()
                && !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                message = format!("`{key}`: {message}");
            }
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })
    }
}

/// Which identity proves who we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKindSpec {
    Static,
    Aws,
    Vault,
    Azure,
    AzureCli,
    OidcFile,
    Chain,
    Login,
}

impl IdentityConfig {
    pub fn kind(&self) -> IdentityKindSpec {
        match self {
            IdentityConfig::Static(_) => IdentityKindSpec::Static,
            IdentityConfig::Aws(_) => IdentityKindSpec::Aws,
            IdentityConfig::Vault(_) => IdentityKindSpec::Vault,
            IdentityConfig::Azure(_) => IdentityKindSpec::Azure,
            IdentityConfig::AzureCli(_) => IdentityKindSpec::AzureCli,
            IdentityConfig::OidcFile(_) => IdentityKindSpec::OidcFile,
            IdentityConfig::Chain(_) => IdentityKindSpec::Chain,
            IdentityConfig::Login => IdentityKindSpec::Login,
        }
    }

    /// The name as given to `--identity`.
    pub fn name(&self) -> &'static str {
        match self {
            IdentityConfig::Static(_) => "static",
            IdentityConfig::Aws(_) => "aws",
            IdentityConfig::Vault(_) => "vault",
            IdentityConfig::Azure(_) => "azure",
            IdentityConfig::AzureCli(_) => "azure-cli",
            IdentityConfig::OidcFile(_) => "oidc-file",
            IdentityConfig::Chain(_) => "chain",
            IdentityConfig::Login => "login",
        }
    }
}

/// Where a setting came from (only tracked where it matters: `setup` pins a broker given on the
/// command line or in the environment, but not one that the config file already provides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

/// Validated settings for one run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub profile: String,
    pub config_path: PathBuf,
    /// Normalized: no trailing slash, no query, no user info.
    pub broker: String,
    pub broker_source: Source,
    pub audience: String,
    pub identity: IdentityConfig,
    pub ttl_secs: Option<u64>,
    pub refresh_margin_secs: u64,
    pub timeout_ms: u64,
    /// `None` when caching is off.
    pub cache_dir: Option<PathBuf>,
    /// `None`: decide by the parent process (see `rerun`).
    pub rerun_window_secs: Option<u64>,
    /// How long a broker failure is remembered (0: not at all).
    pub failure_memory_secs: u64,
    /// Where sign-ins are recorded (`$XDG_STATE_HOME/tollgate`; `TOLLGATE_STATE_DIR`). `None` without
    /// a HOME: only `login` needs it, and says so.
    pub state_dir: Option<PathBuf>,
    /// Where a sign-in's refresh token goes (`TOLLGATE_CREDENTIAL_STORE`: auto, keyring, file).
    pub credential_store: crate::login::store::StoreChoice,
}

/// Pick the first present value, remembering where it came from.
fn pick<T>(flag: Option<T>, env: Option<T>, file: Option<T>) -> Option<(T, Source)> {
    flag.map(|v| (v, Source::Flag))
        .or_else(|| env.map(|v| (v, Source::Env)))
        .or_else(|| file.map(|v| (v, Source::File)))
}

fn env_u64(env: &dyn Env, key: &str) -> Result<Option<u64>, ConfigError> {
    match env.var(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                what: key.to_owned(),
                value: v,
                reason: "expected a non-negative integer".into(),
            }),
    }
}

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI`, checked the way the AWS SDKs do: `https` anywhere, plain `http`
/// only to loopback or the ECS (169.254.170.2) and EKS Pod Identity (169.254.170.23, fd00:ec2::23)
/// agents, so credentials never cross a network in clear text.
fn check_container_uri(uri: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        what: "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
        value: uri.to_string(),
        reason: reason.into(),
    };
    let url = reqwest::Url::parse(uri).map_err(|_| invalid("not a URL"))?;
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let allowed_http = host.eq_ignore_ascii_case("localhost")
        || match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                ip.is_loopback()
                    || ip == std::net::Ipv4Addr::new(169, 254, 170, 2)
                    || ip == std::net::Ipv4Addr::new(169, 254, 170, 23)
            }
            Ok(std::net::IpAddr::V6(ip)) => {
                ip.is_loopback()
                    || ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
            }
            Err(_) => false,
        };
    match url.scheme() {
        "https" => Ok(uri.to_string()),
        "http" if allowed_http => Ok(uri.to_string()),
        "http" => Err(invalid(
            "plain http is allowed only to loopback or the ECS/EKS credential agents",
        )),
        _ => Err(invalid("must be an http(s) URL")),
    }
}

/// A value passed to `az` as an argument: one line, and not something `az` would read as an option.
fn check_az_arg(what: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.starts_with('-') || v.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ConfigError::Invalid {
            what: what.to_owned(),
            value: v.to_owned(),
            reason: "must be one word that does not start with `-`".into(),
        });
    }
    Ok(())
}

fn env_bool(env: &dyn Env, key: &str) -> bool {
    env.var(key).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// `$XDG_<kind>_HOME` if absolute, else `$HOME/<fallback>`.
fn xdg_dir(env: &dyn Env, var: &'static str, fallback: &str) -> Result<PathBuf, ConfigError> {
    if let Some(p) = env.path(var).filter(|p| p.is_absolute()) {
        return Ok(p);
    }
    env.path("HOME")
        .map(|h| h.join(fallback))
        .ok_or(ConfigError::NoHome {
            what: "the config/cache directory",
            vars: var,
        })
}

/// Expand a leading `~/`, and resolve a relative path against `base`.
fn expand_path(p: &Path, base: Option<&Path>, env: &dyn Env) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = env.path("HOME")
    {
        return home.join(rest);
    }
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_owned(),
    }
}

/// Check and normalize a broker URL.
pub fn normalize_broker(raw: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        what: "broker URL".into(),
        // A URL with user info could carry a password; never echo it.
        value: if raw.contains('@') {
            "[redacted]".into()
        } else {
            raw.to_owned()
        },
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            "the scheme must be https (or http for loopback tests)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("user info is not allowed in the broker URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "a query or fragment is not allowed in the broker URL",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    // `/v1` belongs to Codex's `base_url`, not to the broker's address: with it, the exchange would go to
    // `/v1/oauth/token` and the broker would answer 404. Say what to drop instead.
    if let Some(segments) = url.path_segments() {
        let segments: Vec<&str> = segments.collect();
        if let Some(i) = segments.iter().position(|s| s.eq_ignore_ascii_case("v1")) {
            let mut base = url.clone();
            base.set_path(&segments[..i].join("/"));
            let base = base.as_str().trim_end_matches('/').to_owned();
            let dropped = format!("/{}", segments[i..].join("/"));
            let dropped = dropped.trim_end_matches('/');
            return Err(invalid(&format!(
                "drop `{dropped}` and give the broker's base URL, {base} (only Codex's base_url ends in /v1; \
                 the helper adds /oauth/token itself)"
            )));
        }
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn check_name(what: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty()
        || v.len() > 128
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        return Err(ConfigError::Invalid {
            what: what.to_owned(),
            value: v.to_owned(),
            reason: "use 1-128 characters from A-Z a-z 0-9 - _ . : /".into(),
        });
    }
    Ok(())
}

/// Resolve settings from flags, environment, config file and defaults.
pub fn resolve(flags: &Flags, env: &dyn Env) -> Result<Settings, ConfigError> {
    let profile = flags
        .profile
        .clone()
        .or_else(|| env.var("TOLLGATE_PROFILE"));
    let profile_explicit = profile.is_some();
    let profile = profile.unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    check_name("profile", &profile)?;

    let (config_path, config_explicit) = match flags.config.clone().or_else(|| env.path(CONFIG_ENV))
    {
        Some(p) => (expand_path(&p, None, env), true),
        None => (
            xdg_dir(env, "XDG_CONFIG_HOME", ".config")?
                .join("tollgate")
                .join("config.toml"),
            false,
        ),
    };

    let raw = match std::fs::read_to_string(&config_path) {
        Ok(src) => Some(RawConfig::parse(&src, &config_path)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !config_explicit => None,
        Err(source) => {
            return Err(ConfigError::Read {
                path: config_path,
                source,
            });
        }
    };
    let file = match &raw {
        Some(cfg) => match cfg.profiles.get(&profile) {
            Some(p) => p.clone(),
            None if profile_explicit && profile != DEFAULT_PROFILE => {
                return Err(ConfigError::UnknownProfile {
                    profile,
                    path: config_path,
                });
            }
            None => RawProfile::default(),
        },
        None if profile_explicit && profile != DEFAULT_PROFILE => {
            return Err(ConfigError::NoConfigForProfile {
                profile,
                path: config_path,
            });
        }
        None => RawProfile::default(),
    };
    let identity_file = file.clone();
    let config_dir = config_path.parent().map(Path::to_owned);

    let (broker_raw, broker_source) = pick(
        flags.broker.clone(),
        env.var("TOLLGATE_BROKER"),
        file.broker,
    )
    .ok_or_else(|| ConfigError::NoBroker {
        profile: profile.clone(),
        path: config_path.clone(),
        // The broker's variable, exported in this shell: the likely reason the helper's config was missed.
        hint: if env.var("TOLLGATE_CONFIG").is_some() && env.var(CONFIG_ENV).is_none() {
            " (TOLLGATE_CONFIG is the broker's variable; the helper reads TOLLGATE_TOKEN_CONFIG)"
        } else {
            ""
        },
    })?;
    let broker = normalize_broker(&broker_raw)?;

    let audience = pick(
        flags.audience.clone(),
        env.var("TOLLGATE_AUDIENCE"),
        file.audience,
    )
    .map_or_else(|| DEFAULT_AUDIENCE.to_owned(), |(v, _)| v);
    check_name("audience", &audience)?;

    let identity_pick = pick(
        flags.identity.clone(),
        env.var("TOLLGATE_IDENTITY"),
        file.identity,
    );
    let identity_explicit = identity_pick.is_some();
    let identity_name = identity_pick.map_or_else(|| "static".to_owned(), |(v, _)| v);
    let state_dir = match env.path("TOLLGATE_STATE_DIR") {
        Some(p) => Some(expand_path(&p, None, env)),
        None => xdg_dir(env, "XDG_STATE_HOME", ".local/state")
            .ok()
            .map(|d| d.join("tollgate")),
    };
    let credential_store = match env.var("TOLLGATE_CREDENTIAL_STORE") {
        None => crate::login::store::StoreChoice::Auto,
        Some(v) => crate::login::store::StoreChoice::parse(v.trim()).ok_or_else(|| {
            ConfigError::Invalid {
                what: "TOLLGATE_CREDENTIAL_STORE".into(),
                value: v.clone(),
                reason: "expected auto, keyring or file".into(),
            }
        })?,
    };
    let ctx = IdentityCtx {
        flags,
        env,
        file: &identity_file,
        config_dir: config_dir.as_deref(),
        audience: &audience,
    };
    let mut identity = resolve_identity(&identity_name, &ctx, true)?;
    // Nothing configured but a person signed in with `tollgate-token login`: that sign-in.
    if !identity_explicit
        && matches!(identity, IdentityConfig::Static(StaticCredential::None))
        && let Some(dir) = &state_dir
        && crate::login::store::Slot::new(dir, &broker, &profile)
            .load()
            .is_ok_and(|r| r.is_some())
    {
        identity = IdentityConfig::Login;
    }

    let ttl_secs = pick(
        flags.ttl_secs,
        env_u64(env, "TOLLGATE_TTL_SECS")?,
        file.ttl_secs,
    )
    .map(|(v, _)| v);
    if ttl_secs == Some(0) {
        return Err(ConfigError::Invalid {
            what: "ttl".into(),
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    let refresh_margin_secs = pick(
        flags.refresh_margin_secs,
        env_u64(env, "TOLLGATE_REFRESH_MARGIN_SECS")?,
        file.refresh_margin_secs,
    )
    .map_or(DEFAULT_REFRESH_MARGIN_SECS, |(v, _)| v);
    let timeout_ms = pick(
        flags.timeout_ms,
        env_u64(env, "TOLLGATE_TIMEOUT_MS")?,
        file.timeout_ms,
    )
    .map_or(DEFAULT_TIMEOUT_MS, |(v, _)| v);
    if !(1..=600_000).contains(&timeout_ms) {
        return Err(ConfigError::Invalid {
            what: "timeout_ms".into(),
            value: timeout_ms.to_string(),
            reason: "must be between 1 and 600000".into(),
        });
    }

    let cache_dir = if flags.no_cache || env_bool(env, "TOLLGATE_NO_CACHE") {
        None
    } else {
        Some(
            match flags
                .cache_dir
                .clone()
                .or_else(|| env.path("TOLLGATE_CACHE_DIR"))
            {
                Some(p) => expand_path(&p, None, env),
                None => xdg_dir(env, "XDG_CACHE_HOME", ".cache")?.join("tollgate"),
            },
        )
    };

    let rerun_window_secs = pick(
        flags.rerun_window_secs,
        env_u64(env, "TOLLGATE_RERUN_WINDOW_SECS")?,
        file.rerun_window_secs,
    )
    .map(|(v, _)| v);
    let failure_memory_secs = pick(
        flags.failure_memory_secs,
        env_u64(env, "TOLLGATE_FAILURE_MEMORY_SECS")?,
        file.failure_memory_secs,
    )
    .map_or(DEFAULT_FAILURE_MEMORY_SECS, |(v, _)| v);

    Ok(Settings {
        profile,
        config_path,
        broker,
        broker_source,
        audience,
        identity,
        ttl_secs,
        refresh_margin_secs,
        timeout_ms,
        cache_dir,
        rerun_window_secs,
        failure_memory_secs,
        state_dir,
        credential_store,
    })
}

/// What identity resolution reads.
struct IdentityCtx<'a> {
    flags: &'a Flags,
    env: &'a dyn Env,
    file: &'a RawProfile,
    config_dir: Option<&'a Path>,
    audience: &'a str,
}

/// The sources a chain tries when none are listed.
const DEFAULT_CHAIN: &[&str] = &["oidc-file", "vault", "azure", "aws"];

fn resolve_identity(
    name: &str,
    c: &IdentityCtx<'_>,
    allow_chain: bool,
) -> Result<IdentityConfig, ConfigError> {
    use crate::identity::{aws::AwsSettings, azure::AzureSettings, vault};
    let env = c.env;
    let file = c.file;
    let path_from = |flag: Option<&PathBuf>, var: &str, file_val: Option<&PathBuf>| {
        flag.map(|p| expand_path(p, None, env))
            .or_else(|| env.path(var).map(|p| expand_path(&p, None, env)))
            .or_else(|| file_val.map(|p| expand_path(p, c.config_dir, env)))
    };
    let home = |rel: &str| env.path("HOME").map(|h| h.join(rel));
    Ok(match name {
        "static" => {
            // The most specific source wins: a flag, then the credential itself, then a path.
            let cred = if let Some(p) = &c.flags.credential_file {
                StaticCredential::File(expand_path(p, None, env))
            } else if let Some(v) = env.var("TOLLGATE_CREDENTIAL") {
                StaticCredential::Inline(SecretString::from(v))
            } else if let Some(p) = env.path("TOLLGATE_CREDENTIAL_FILE") {
                StaticCredential::File(expand_path(&p, None, env))
            } else if let Some(p) = &file.credential_file {
                StaticCredential::File(expand_path(p, c.config_dir, env))
            } else {
                StaticCredential::None
            };
            IdentityConfig::Static(cred)
        }
        "oidc-file" => IdentityConfig::OidcFile(path_from(
            None,
            "TOLLGATE_OIDC_FILE",
            file.oidc_file.as_ref(),
        )),
        "aws" => {
            let raw = file.aws.clone().unwrap_or_default();
            let region = env
                .var("TOLLGATE_AWS_REGION")
                .or(raw.region)
                .or_else(|| env.var("AWS_REGION"))
                .or_else(|| env.var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into());
            check_name("AWS region", &region)?;
            let sts_url = env
                .var("TOLLGATE_AWS_STS_URL")
                .or(raw.sts_url)
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com/"));
            let sts_url = normalize_broker(&sts_url).map_err(|_| ConfigError::Invalid {
                what: "AWS STS URL".into(),
                value: sts_url.clone(),
                reason: "must be an http(s) URL with no query".into(),
            })? + "/";
            let container_uri = match env.var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
                Some(full) => Some(check_container_uri(&full)?),
                None => env
                    .var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                    .map(|r| format!("http://169.254.170.2{r}")),
            };
            // The SDKs' endpoint overrides: the service's own variable, then the global one, unless
            // configured endpoints are switched off.
            let endpoint = |service_var: &'static str| {
                if env_bool(env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") {
                    return None;
                }
                [
                    (service_var, env.var(service_var)),
                    ("AWS_ENDPOINT_URL", env.var("AWS_ENDPOINT_URL")),
                ]
                .into_iter()
                .find_map(|(var, url)| {
                    url.map(|url| crate::identity::aws_sso::EndpointOverride { var, url })
                })
            };
            let sso_endpoint = endpoint("AWS_ENDPOINT_URL_SSO");
            let sso_oidc_endpoint = endpoint("AWS_ENDPOINT_URL_SSO_OIDC");
            let imds_endpoint = if env_bool(env, "AWS_EC2_METADATA_DISABLED") {
                None
            } else {
                Some(
                    env.var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                        .unwrap_or_else(|| "http://169.254.169.254".into()),
                )
            };
            IdentityConfig::Aws(Box::new(AwsSettings {
                region,
                sts_url,
                server_id: env
                    .var("TOLLGATE_AWS_SERVER_ID")
                    .or(raw.server_id)
                    .unwrap_or_else(|| c.audience.to_string()),
                env_access_key_id: env.var("AWS_ACCESS_KEY_ID"),
                env_secret_access_key: env.var("AWS_SECRET_ACCESS_KEY").map(SecretString::from),
                env_session_token: env.var("AWS_SESSION_TOKEN").map(SecretString::from),
                profile: env
                    .var("AWS_PROFILE")
                    .or(raw.profile)
                    .unwrap_or_else(|| "default".into()),
                credentials_file: env
                    .path("AWS_SHARED_CREDENTIALS_FILE")
                    .map(|p| expand_path(&p, None, env))
                    .or_else(|| home(".aws/credentials")),
                config_file: env
                    .path("AWS_CONFIG_FILE")
                    .map(|p| expand_path(&p, None, env))
                    .or_else(|| home(".aws/config")),
                sso_cache_dir: home(".aws/sso/cache"),
                sso_endpoint,
                sso_oidc_endpoint,
                container_uri,
                container_token: env
                    .var("AWS_CONTAINER_AUTHORIZATION_TOKEN")
                    .map(SecretString::from),
                container_token_file: env.path("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
                imds_endpoint,
                role_arn: env.var("TOLLGATE_AWS_ROLE_ARN").or(raw.role_arn),
                role_session_name: env
                    .var("TOLLGATE_AWS_ROLE_SESSION_NAME")
                    .or(raw.role_session_name)
                    .unwrap_or_else(|| "tollgate-token".into()),
            }))
        }
        "vault" => {
            let raw = file.vault.clone().unwrap_or_default();
            let method = env
                .var("TOLLGATE_VAULT_AUTH")
                .or(raw.auth.clone())
                .unwrap_or_else(|| "token".into());
            let login_role = env
                .var("TOLLGATE_VAULT_LOGIN_ROLE")
                .or(raw.login_role.clone());
            let auth = match method.as_str() {
                "token" => vault::VaultAuth::Token {
                    token: env
                        .var("VAULT_TOKEN")
                        .or_else(|| env.var("BAO_TOKEN"))
                        .map(SecretString::from),
                    token_file: raw
                        .token_file
                        .as_ref()
                        .map(|p| expand_path(p, c.config_dir, env))
                        .or_else(|| home(".vault-token")),
                },
                "approle" => vault::VaultAuth::AppRole {
                    role_id: env.var("TOLLGATE_VAULT_ROLE_ID").or(raw.role_id.clone()),
                    secret_id: env.var("TOLLGATE_VAULT_SECRET_ID").map(SecretString::from),
                    secret_id_file: path_from(
                        None,
                        "TOLLGATE_VAULT_SECRET_ID_FILE",
                        raw.secret_id_file.as_ref(),
                    ),
                },
                "kubernetes" => vault::VaultAuth::Kubernetes {
                    role: login_role,
                    jwt_file: path_from(None, "TOLLGATE_VAULT_JWT_FILE", raw.jwt_file.as_ref())
                        .unwrap_or_else(|| PathBuf::from(vault::K8S_TOKEN_FILE)),
                },
                "jwt" => vault::VaultAuth::Jwt {
                    role: login_role,
                    jwt_file: path_from(None, "TOLLGATE_VAULT_JWT_FILE", raw.jwt_file.as_ref()),
                },
                other => {
                    return Err(ConfigError::Invalid {
                        what: "Vault auth method".into(),
                        value: other.into(),
                        reason: "expected token, approle, kubernetes or jwt".into(),
                    });
                }
            };
            IdentityConfig::Vault(vault::VaultSettings {
                addr: env
                    .var("TOLLGATE_VAULT_ADDR")
                    .or(raw.addr)
                    .or_else(|| env.var("VAULT_ADDR"))
                    .or_else(|| env.var("BAO_ADDR")),
                namespace: env.var("VAULT_NAMESPACE").or(raw.namespace),
                identity_role: env.var("TOLLGATE_VAULT_ROLE").or(raw.role),
                auth,
                mount: env.var("TOLLGATE_VAULT_AUTH_MOUNT").or(raw.mount),
            })
        }
        "azure" => {
            let raw = file.azure.clone().unwrap_or_default();
            let imds = env_bool(env, "TOLLGATE_AZURE_IMDS") || raw.imds == Some(true);
            IdentityConfig::Azure(AzureSettings {
                resource: env.var("TOLLGATE_AZURE_RESOURCE").or(raw.resource),
                client_id: raw.client_id.or_else(|| env.var("AZURE_CLIENT_ID")),
                tenant_id: env.var("AZURE_TENANT_ID"),
                federated_token_file: env.path("AZURE_FEDERATED_TOKEN_FILE"),
                authority_host: env
                    .var("AZURE_AUTHORITY_HOST")
                    .unwrap_or_else(|| "https://login.microsoftonline.com".into()),
                identity_endpoint: env.var("IDENTITY_ENDPOINT"),
                identity_header: env.var("IDENTITY_HEADER").map(SecretString::from),
                imds_endpoint: imds.then(|| {
                    env.var("TOLLGATE_AZURE_IMDS_ENDPOINT")
                        .unwrap_or_else(|| "http://169.254.169.254".into())
                }),
            })
        }
        "azure-cli" => {
            let raw = file.azure_cli.clone().unwrap_or_default();
            let resource = env
                .var("TOLLGATE_AZURE_RESOURCE")
                .map(|v| ("TOLLGATE_AZURE_RESOURCE", v))
                .or_else(|| raw.resource.map(|v| ("azure_cli.resource", v)))
                .or_else(|| {
                    file.azure
                        .as_ref()
                        .and_then(|a| a.resource.clone())
                        .map(|v| ("azure.resource", v))
                });
            if let Some((what, v)) = &resource {
                check_az_arg(what, v)?;
            }
            let tenant = env
                .var("TOLLGATE_AZURE_CLI_TENANT")
                .map(|v| ("TOLLGATE_AZURE_CLI_TENANT", v))
                .or_else(|| raw.tenant.map(|v| ("azure_cli.tenant", v)));
            if let Some((what, v)) = &tenant {
                check_az_arg(what, v)?;
            }
            let az = match (env.path("TOLLGATE_AZ"), raw.az) {
                (Some(p), _) => expand_path(&p, None, env),
                (None, Some(p)) if p.components().count() > 1 => expand_path(&p, c.config_dir, env),
                (None, Some(p)) => p,
                (None, None) => PathBuf::from("az"),
            };
            IdentityConfig::AzureCli(crate::identity::azure_cli::AzureCliSettings {
                resource: resource.map(|(_, v)| v),
                tenant: tenant.map(|(_, v)| v),
                az,
                path_var: env.var_os("PATH"),
                config_dir: env
                    .path("AZURE_CONFIG_DIR")
                    .map(|p| expand_path(&p, None, env))
                    .or_else(|| home(".azure")),
            })
        }
        "chain" if allow_chain => {
            let names: Vec<String> = match env.var("TOLLGATE_CHAIN") {
                Some(v) => v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                None => file
                    .chain
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CHAIN.iter().map(|s| s.to_string()).collect()),
            };
            if names.is_empty() {
                return Err(ConfigError::Invalid {
                    what: "chain".into(),
                    value: String::new(),
                    reason: "list at least one identity source".into(),
                });
            }
            IdentityConfig::Chain(
                names
                    .iter()
                    .map(|n| resolve_identity(n, c, false))
                    .collect::<Result<_, _>>()?,
            )
        }
        "chain" => {
            return Err(ConfigError::Invalid {
                what: "chain".into(),
                value: "chain".into(),
                reason: "a chain cannot contain a chain".into(),
            });
        }
        "login" if allow_chain => IdentityConfig::Login,
        "login" => {
            return Err(ConfigError::Invalid {
                what: "chain".into(),
                value: "login".into(),
                reason:
                    "a person's sign-in is not a workload identity source; use --identity login"
                        .into(),
            });
        }
        _ => return Err(ConfigError::UnknownIdentity(name.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::MapEnv;
    use secrecy::ExposeSecret;

    fn write_config(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("tollgate").join("config.toml");
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, body).expect("write");
        p
    }

    #[test]
    fn container_credentials_uri_follows_the_sdks_rule() {
        for ok in [
            "http://127.0.0.1:8080/creds",
            "http://localhost/creds",
            "http://169.254.170.2/v2/credentials/x",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "http://[::1]:9/c",
            "https://creds.internal.example/c",
        ] {
            assert_eq!(check_container_uri(ok).expect(ok), ok);
        }
        for bad in [
            "http://192.0.2.10/creds",
            "http://169.254.169.254/latest",
            "http://creds.internal.example/c",
            "ftp://127.0.0.1/c",
            "not a url",
        ] {
            let e = check_container_uri(bad).expect_err(bad).to_string();
            assert!(e.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"), "{e}");
        }
    }

    #[test]
    fn defaults_with_only_a_broker() {
        let tmp = tempfile::tempdir().expect("tmp");
        let home = tmp.path().to_str().expect("utf8");
        let env = MapEnv::new([("HOME", home), ("TOLLGATE_BROKER", "https://b.example/")]);
        let s = resolve(&Flags::default(), &env).expect("resolve");
        assert_eq!(s.broker, "https://b.example");
        assert_eq!(s.broker_source, Source::Env);
        assert_eq!(s.audience, "tollgate");
        assert_eq!(s.profile, "default");
        assert_eq!(s.refresh_margin_secs, 300);
        assert_eq!(s.timeout_ms, 4000);
        assert_eq!(s.ttl_secs, None);
        assert_eq!(
            s.config_path,
            tmp.path().join(".config/tollgate/config.toml")
        );
        assert_eq!(s.cache_dir, Some(tmp.path().join(".cache/tollgate")));
        assert!(matches!(
            s.identity,
            IdentityConfig::Static(StaticCredential::None)
        ));
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        write_config(
            tmp.path(),
            "[profiles.work]\nbroker = \"https://file.example\"\naudience = \"file-aud\"\nttl_secs = 100\n\
             refresh_margin_secs = 10\ntimeout_ms = 1000\ncredential_file = \"cred\"\n",
        );
        let xdg = tmp.path().to_str().expect("utf8");
        let env = MapEnv::new([
            ("XDG_CONFIG_HOME", xdg),
            ("XDG_CACHE_HOME", xdg),
            ("TOLLGATE_PROFILE", "work"),
            ("TOLLGATE_AUDIENCE", "env-aud"),
            ("TOLLGATE_TTL_SECS", "200"),
        ]);
        let flags = Flags {
            ttl_secs: Some(300),
            ..Flags::default()
        };
        let s = resolve(&flags, &env).expect("resolve");
        assert_eq!(s.profile, "work");
        assert_eq!(s.broker, "https://file.example");
        assert_eq!(s.broker_source, Source::File);
        assert_eq!(s.audience, "env-aud");
        assert_eq!(s.ttl_secs, Some(300));
        assert_eq!(s.refresh_margin_secs, 10);
        assert_eq!(s.timeout_ms, 1000);
        assert_eq!(s.cache_dir, Some(tmp.path().join("tollgate")));
        match s.identity {
            IdentityConfig::Static(StaticCredential::File(p)) => {
                assert_eq!(p, tmp.path().join("tollgate/cred"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn inline_credential_beats_file_path_from_env_and_config() {
        let env = MapEnv::new([
            ("HOME", "/nonexistent-home"),
            ("TOLLGATE_BROKER", "http://127.0.0.1:1"),
            ("TOLLGATE_CREDENTIAL", "s3cret"),
            ("TOLLGATE_CREDENTIAL_FILE", "/x"),
        ]);
        let s = resolve(&Flags::default(), &env).expect("resolve");
        match &s.identity {
            IdentityConfig::Static(StaticCredential::Inline(c)) => {
                assert_eq!(c.expose_secret(), "s3cret")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!format!("{s:?}").contains("s3cret"), "Debug must redact");
        let flags = Flags {
            credential_file: Some("/flag".into()),
            ..Flags::default()
        };
        let s = resolve(&flags, &env).expect("resolve");
        assert!(
            matches!(s.identity, IdentityConfig::Static(StaticCredential::File(p)) if p == Path::new("/flag"))
        );
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let tmp = tempfile::tempdir().expect("tmp");
        write_config(
            tmp.path(),
            "# comment\n[profiles.default]\nbroker = \"https://b\"\nbrokr = \"x\"\n",
        );
        let env = MapEnv::new([("XDG_CONFIG_HOME", tmp.path().to_str().expect("utf8"))]);
        let err = resolve(&Flags::default(), &env)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("line 4, column 1"), "{err}");
        assert!(err.contains("brokr"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let tmp = tempfile::tempdir().expect("tmp");
        write_config(
            tmp.path(),
            "[profiles.default]\nbroker = \"https://b\"\nttl_secs = \"soon\"\n",
        );
        let env = MapEnv::new([("XDG_CONFIG_HOME", tmp.path().to_str().expect("utf8"))]);
        let err = resolve(&Flags::default(), &env)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("line 3, column 12: `ttl_secs`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn explicit_missing_profile_and_config_are_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let xdg = tmp.path().to_str().expect("utf8");
        let env = MapEnv::new([("XDG_CONFIG_HOME", xdg), ("TOLLGATE_BROKER", "https://b")]);
        let flags = Flags {
            profile: Some("nope".into()),
            ..Flags::default()
        };
        assert!(matches!(
            resolve(&flags, &env),
            Err(ConfigError::NoConfigForProfile { .. })
        ));
        write_config(tmp.path(), "[profiles.other]\n");
        assert!(matches!(
            resolve(&flags, &env),
            Err(ConfigError::UnknownProfile { .. })
        ));
        let flags = Flags {
            config: Some(tmp.path().join("missing.toml")),
            ..Flags::default()
        };
        assert!(matches!(
            resolve(&flags, &env),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let env = MapEnv::new([("HOME", "/h"), ("TOLLGATE_BROKER", "ftp://x")]);
        assert!(matches!(
            resolve(&Flags::default(), &env),
            Err(ConfigError::Invalid { .. })
        ));
        let env = MapEnv::new([("HOME", "/h"), ("TOLLGATE_BROKER", "https://user:pw@x")]);
        let err = resolve(&Flags::default(), &env)
            .expect_err("userinfo")
            .to_string();
        assert!(!err.contains("pw"), "{err}");
        let env = MapEnv::new([
            ("HOME", "/h"),
            ("TOLLGATE_BROKER", "https://x"),
            ("TOLLGATE_TTL_SECS", "ten"),
        ]);
        assert!(
            resolve(&Flags::default(), &env)
                .expect_err("ttl")
                .to_string()
                .contains("TOLLGATE_TTL_SECS")
        );
        let env = MapEnv::new([
            ("HOME", "/h"),
            ("TOLLGATE_BROKER", "https://x"),
            ("TOLLGATE_IDENTITY", "kerberos"),
        ]);
        assert!(matches!(
            resolve(&Flags::default(), &env),
            Err(ConfigError::UnknownIdentity(_))
        ));
        let env = MapEnv::new([("HOME", "/h")]);
        assert!(matches!(
            resolve(&Flags::default(), &env),
            Err(ConfigError::NoBroker { .. })
        ));
    }

    #[test]
    fn a_broker_url_with_v1_says_what_to_drop() {
        for (raw, dropped, base) in [
            ("http://h:8787/v1", "/v1", "http://h:8787"),
            ("http://h:8787/v1/", "/v1", "http://h:8787"),
            (
                "https://corp.example/tollgate/v1",
                "/v1",
                "https://corp.example/tollgate",
            ),
            (
                "https://corp.example/V1/responses",
                "/V1/responses",
                "https://corp.example",
            ),
        ] {
            let e = normalize_broker(raw).expect_err(raw);
            let text = e.to_string();
            assert!(text.contains(&format!("drop `{dropped}`")), "{text}");
            assert!(
                text.contains(&format!("broker's base URL, {base} ")),
                "{text}"
            );
            let env = MapEnv::new([("HOME", "/h"), ("TOLLGATE_BROKER", raw)]);
            assert!(matches!(
                resolve(&Flags::default(), &env),
                Err(ConfigError::Invalid { .. })
            ));
        }
        // A path prefix is fine, and so is a segment that merely starts with v1.
        assert_eq!(
            normalize_broker("https://corp.example/tollgate/").expect("ok"),
            "https://corp.example/tollgate"
        );
        assert_eq!(
            normalize_broker("https://corp.example/v10").expect("ok"),
            "https://corp.example/v10"
        );
    }

    #[test]
    fn the_helper_reads_its_own_config_variable_not_the_brokers() {
        let tmp = tempfile::tempdir().expect("tmp");
        // The broker's config, as exported for the broker: not a helper config at all.
        let broker_cfg = tmp.path().join("broker.toml");
        std::fs::write(&broker_cfg, "[server]\nlisten = \"127.0.0.1:8787\"\n").expect("write");
        let helper_cfg = tmp.path().join("helper.toml");
        std::fs::write(
            &helper_cfg,
            "[profiles.default]\nbroker = \"https://from-file.example\"\n",
        )
        .expect("write");
        let home = tmp.path().to_str().expect("utf8");
        let (b, h) = (
            broker_cfg.to_str().expect("utf8"),
            helper_cfg.to_str().expect("utf8"),
        );
        let env = MapEnv::new([
            ("HOME", home),
            ("TOLLGATE_CONFIG", b),
            ("TOLLGATE_BROKER", "https://b.example"),
        ]);
        let s = resolve(&Flags::default(), &env).expect("TOLLGATE_CONFIG is ignored");
        assert_eq!(s.broker, "https://b.example");
        assert_eq!(
            s.config_path,
            tmp.path().join(".config/tollgate/config.toml")
        );

        let env = MapEnv::new([("HOME", home), ("TOLLGATE_CONFIG", b), (CONFIG_ENV, h)]);
        let s = resolve(&Flags::default(), &env).expect("TOLLGATE_TOKEN_CONFIG is read");
        assert_eq!(s.broker, "https://from-file.example");
        assert_eq!(s.config_path, helper_cfg);

        // Nothing configured but the broker's variable: the error says which one the helper reads.
        let env = MapEnv::new([("HOME", home), ("TOLLGATE_CONFIG", b)]);
        let e = resolve(&Flags::default(), &env)
            .expect_err("no broker")
            .to_string();
        assert!(e.contains("the helper reads TOLLGATE_TOKEN_CONFIG"), "{e}");
        let env = MapEnv::new([("HOME", home)]);
        let e = resolve(&Flags::default(), &env)
            .expect_err("no broker")
            .to_string();
        assert!(!e.contains("TOLLGATE_CONFIG"), "{e}");
    }

    #[test]
    fn failure_memory_setting_and_codex_args_precedence() {
        let env = MapEnv::new([("HOME", "/h"), ("TOLLGATE_BROKER", "https://x")]);
        assert_eq!(
            resolve(&Flags::default(), &env)
                .expect("ok")
                .failure_memory_secs,
            DEFAULT_FAILURE_MEMORY_SECS
        );
        let env = MapEnv::new([
            ("HOME", "/h"),
            ("TOLLGATE_BROKER", "https://x"),
            ("TOLLGATE_FAILURE_MEMORY_SECS", "0"),
        ]);
        assert_eq!(
            resolve(&Flags::default(), &env)
                .expect("ok")
                .failure_memory_secs,
            0
        );
        // Flags typed by the user beat the ones from Codex's config, which beat the environment.
        let typed = Flags {
            audience: Some("typed".into()),
            ..Flags::default()
        };
        let codex = Flags {
            audience: Some("codex".into()),
            broker: Some("https://codex.example".into()),
            no_cache: true,
            ..Flags::default()
        };
        let s = resolve(&typed.over(codex), &env).expect("ok");
        assert_eq!(
            (s.audience.as_str(), s.broker.as_str(), s.cache_dir),
            ("typed", "https://codex.example", None)
        );
    }

    #[test]
    fn no_cache_from_flag_or_env() {
        let env = MapEnv::new([
            ("HOME", "/h"),
            ("TOLLGATE_BROKER", "https://x"),
            ("TOLLGATE_NO_CACHE", "1"),
        ]);
        assert_eq!(
            resolve(&Flags::default(), &env).expect("ok").cache_dir,
            None
        );
    }

    #[test]
    fn identity_sources_resolve_from_environment() {
        let base = [("HOME", "/h"), ("TOLLGATE_BROKER", "https://x")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = base.to_vec();
            v.extend_from_slice(extra);
            resolve(&Flags::default(), &MapEnv::new(v))
        };
        match with(&[("TOLLGATE_IDENTITY", "aws"), ("AWS_REGION", "eu-west-1")])
            .expect("aws")
            .identity
        {
            IdentityConfig::Aws(a) => {
                assert_eq!(a.region, "eu-west-1");
                assert_eq!(a.sts_url, "https://sts.eu-west-1.amazonaws.com/");
                assert_eq!(a.server_id, "tollgate", "defaults to the audience");
                assert!(a.imds_endpoint.is_some());
                assert_eq!(
                    a.credentials_file,
                    Some(PathBuf::from("/h/.aws/credentials"))
                );
            }
            other => panic!("{other:?}"),
        }
        match with(&[
            ("TOLLGATE_IDENTITY", "aws"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ])
        .expect("aws")
        .identity
        {
            IdentityConfig::Aws(a) => assert!(a.imds_endpoint.is_none()),
            other => panic!("{other:?}"),
        }
        match with(&[("TOLLGATE_IDENTITY", "chain")])
            .expect("chain")
            .identity
        {
            IdentityConfig::Chain(m) => assert_eq!(
                m.iter().map(IdentityConfig::name).collect::<Vec<_>>(),
                DEFAULT_CHAIN
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            with(&[
                ("TOLLGATE_IDENTITY", "chain"),
                ("TOLLGATE_CHAIN", "aws,chain")
            ])
            .is_err()
        );
        assert!(
            with(&[
                ("TOLLGATE_IDENTITY", "vault"),
                ("TOLLGATE_VAULT_AUTH", "ldap")
            ])
            .is_err()
        );
        match with(&[("TOLLGATE_IDENTITY", "azure")])
            .expect("azure")
            .identity
        {
            IdentityConfig::Azure(a) => {
                assert!(a.imds_endpoint.is_none(), "VM IMDS is opt-in");
                assert!(a.resource.is_none());
            }
            other => panic!("{other:?}"),
        }
        // Not configured here: a chain member that does not apply is NotConfigured, not an error.
        let s = with(&[("TOLLGATE_IDENTITY", "azure")]).expect("azure");
        assert!(matches!(
            crate::identity::load(&s.identity),
            Err(crate::error::IdentityError::NotConfigured { .. })
        ));
    }

    #[test]
    fn developer_sign_ins_resolve_and_errors_name_the_field() {
        let tmp = tempfile::tempdir().expect("tmp");
        let home = tmp.path().to_str().expect("utf8");
        write_config(
            tmp.path(),
            "[profiles.default]\nbroker = \"https://b\"\nidentity = \"azure-cli\"\n\
             [profiles.default.azure]\nresource = \"api://from-azure\"\n\
             [profiles.cli]\nbroker = \"https://b\"\nidentity = \"azure-cli\"\n\
             [profiles.cli.azure_cli]\nresource = \"api://tollgate\"\ntenant = \"contoso.onmicrosoft.com\"\naz = \"bin/az\"\n",
        );
        let env = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![
                ("HOME", home),
                ("XDG_CONFIG_HOME", home),
                ("PATH", "/usr/bin"),
            ];
            v.extend_from_slice(extra);
            MapEnv::new(v)
        };
        let cli = |flags: &Flags, e: &MapEnv| match resolve(flags, e).map(|s| s.identity) {
            Ok(IdentityConfig::AzureCli(a)) => Ok(a),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        // `[azure] resource` serves the CLI source too; `az` on PATH; the CLI's config dir under HOME.
        let a = cli(&Flags::default(), &env(&[])).expect("default");
        assert_eq!(a.resource.as_deref(), Some("api://from-azure"));
        assert_eq!(a.az, PathBuf::from("az"));
        assert_eq!(a.path_var, Some("/usr/bin".into()));
        assert_eq!(a.config_dir, Some(tmp.path().join(".azure")));
        let profile = Flags {
            profile: Some("cli".into()),
            ..Flags::default()
        };
        let a = cli(&profile, &env(&[])).expect("cli");
        assert_eq!(a.resource.as_deref(), Some("api://tollgate"));
        assert_eq!(a.tenant.as_deref(), Some("contoso.onmicrosoft.com"));
        assert_eq!(
            a.az,
            tmp.path().join("tollgate/bin/az"),
            "relative to the config file"
        );
        let a = cli(
            &profile,
            &env(&[
                ("TOLLGATE_AZ", "/opt/az/bin/az"),
                ("TOLLGATE_AZURE_RESOURCE", "api://env"),
                ("AZURE_CONFIG_DIR", "/cfg/azure"),
            ]),
        )
        .expect("env wins");
        assert_eq!(
            (a.az, a.resource.as_deref(), a.config_dir),
            (
                PathBuf::from("/opt/az/bin/az"),
                Some("api://env"),
                Some(PathBuf::from("/cfg/azure"))
            )
        );
        // Values handed to `az` as arguments: the error names where they came from.
        for (extra, field) in [
            (
                ("TOLLGATE_AZURE_RESOURCE", "--debug"),
                "TOLLGATE_AZURE_RESOURCE",
            ),
            (
                ("TOLLGATE_AZURE_CLI_TENANT", "a b"),
                "TOLLGATE_AZURE_CLI_TENANT",
            ),
        ] {
            let e = cli(&profile, &env(&[extra])).expect_err(field);
            assert!(e.starts_with(&format!("invalid {field} ")), "{e}");
        }
        write_config(
            tmp.path(),
            "[profiles.default]\nbroker = \"https://b\"\n[profiles.default.azure_cli]\nresource = \"api://x\"\nscope = \"y\"\n",
        );
        let e = resolve(&Flags::default(), &env(&[]))
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("line 5") && e.contains("`scope`"), "{e}");
        write_config(
            tmp.path(),
            "[profiles.default]\nbroker = \"https://b\"\n[profiles.default.azure_cli]\ntenant = \"-x\"\n",
        );
        let flags = Flags {
            identity: Some("azure-cli".into()),
            ..Flags::default()
        };
        let e = cli(&flags, &env(&[])).expect_err("tenant");
        assert!(e.starts_with("invalid azure_cli.tenant \"-x\""), "{e}");
    }

    #[test]
    fn aws_sso_files_and_endpoint_overrides() {
        let aws = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![
                ("HOME", "/h"),
                ("TOLLGATE_BROKER", "https://x"),
                ("TOLLGATE_IDENTITY", "aws"),
            ];
            v.extend_from_slice(extra);
            match resolve(&Flags::default(), &MapEnv::new(v)).map(|s| s.identity) {
                Ok(IdentityConfig::Aws(a)) => Ok(a),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        let a = aws(&[]).expect("defaults");
        assert_eq!(a.config_file, Some(PathBuf::from("/h/.aws/config")));
        assert_eq!(a.sso_cache_dir, Some(PathBuf::from("/h/.aws/sso/cache")));
        assert!(a.sso_endpoint.is_none());
        let a = aws(&[
            ("AWS_CONFIG_FILE", "~/work/aws-config"),
            ("AWS_ENDPOINT_URL", "https://global.example"),
        ])
        .expect("global");
        assert_eq!(a.config_file, Some(PathBuf::from("/h/work/aws-config")));
        let url = |e: &Option<crate::identity::aws_sso::EndpointOverride>| {
            e.as_ref().map(|e| format!("{}={}", e.var, e.url))
        };
        assert_eq!(
            url(&a.sso_endpoint).as_deref(),
            Some("AWS_ENDPOINT_URL=https://global.example")
        );
        assert_eq!(
            url(&a.sso_oidc_endpoint).as_deref(),
            Some("AWS_ENDPOINT_URL=https://global.example")
        );
        let a = aws(&[("AWS_ENDPOINT_URL_SSO_OIDC", "http://localhost:9")]).expect("oidc");
        assert_eq!(
            (url(&a.sso_endpoint), url(&a.sso_oidc_endpoint).as_deref()),
            (None, Some("AWS_ENDPOINT_URL_SSO_OIDC=http://localhost:9"))
        );
        for (vars, want) in [
            (
                vec![
                    ("AWS_ENDPOINT_URL_SSO", "http://127.0.0.1:9"),
                    ("AWS_ENDPOINT_URL", "https://global.example"),
                ],
                Some("AWS_ENDPOINT_URL_SSO=http://127.0.0.1:9"),
            ),
            (
                vec![
                    ("AWS_ENDPOINT_URL_SSO", "http://127.0.0.1:9"),
                    ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
                ],
                None,
            ),
            // Checked only when an SSO profile uses it (`aws_sso`): a LocalStack URL in the shell must not
            // break static keys.
            (
                vec![("AWS_ENDPOINT_URL", "http://localstack:4566")],
                Some("AWS_ENDPOINT_URL=http://localstack:4566"),
            ),
        ] {
            let a = aws(&vars).expect("resolves");
            assert_eq!(url(&a.sso_endpoint).as_deref(), want, "{vars:?}");
        }
    }
}
