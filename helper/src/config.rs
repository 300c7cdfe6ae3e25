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
//! ```
//!
//! Raw structs are strict (`deny_unknown_fields`) and are turned into a validated [`Settings`].
//! Nothing here reads the process environment: an [`Env`] is passed in.

use crate::error::{ConfigError, line_col, one_line};
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
    /// Identity source: static (aws, vault, azure, oidc-file, chain: coming) [env: TOLLGATE_IDENTITY] [default: static]
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
    /// Config file [env: TOLLGATE_CONFIG] [default: $XDG_CONFIG_HOME/tollgate/config.toml]
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
}

impl IdentityConfig {
    pub fn kind(&self) -> IdentityKindSpec {
        match self {
            IdentityConfig::Static(_) => IdentityKindSpec::Static,
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

    let (config_path, config_explicit) =
        match flags.config.clone().or_else(|| env.path("TOLLGATE_CONFIG")) {
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
    let config_dir = config_path.parent().map(Path::to_owned);

    let (broker_raw, broker_source) = pick(
        flags.broker.clone(),
        env.var("TOLLGATE_BROKER"),
        file.broker,
    )
    .ok_or_else(|| ConfigError::NoBroker {
        profile: profile.clone(),
        path: config_path.clone(),
    })?;
    let broker = normalize_broker(&broker_raw)?;

    let audience = pick(
        flags.audience.clone(),
        env.var("TOLLGATE_AUDIENCE"),
        file.audience,
    )
    .map_or_else(|| DEFAULT_AUDIENCE.to_owned(), |(v, _)| v);
    check_name("audience", &audience)?;

    let identity_name = pick(
        flags.identity.clone(),
        env.var("TOLLGATE_IDENTITY"),
        file.identity,
    )
    .map_or_else(|| "static".to_owned(), |(v, _)| v);
    let identity = match identity_name.as_str() {
        "static" => {
            // The most specific source wins: a flag, then the credential itself, then a path.
            let cred = if let Some(p) = &flags.credential_file {
                StaticCredential::File(expand_path(p, None, env))
            } else if let Some(v) = env.var("TOLLGATE_CREDENTIAL") {
                StaticCredential::Inline(SecretString::from(v))
            } else if let Some(p) = env.path("TOLLGATE_CREDENTIAL_FILE") {
                StaticCredential::File(expand_path(&p, None, env))
            } else if let Some(p) = &file.credential_file {
                StaticCredential::File(expand_path(p, config_dir.as_deref(), env))
            } else {
                StaticCredential::None
            };
            IdentityConfig::Static(cred)
        }
        "aws" | "vault" | "azure" | "oidc-file" | "chain" => {
            return Err(ConfigError::IdentityNotBuilt(identity_name));
        }
        _ => return Err(ConfigError::UnknownIdentity(identity_name)),
    };

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
            ("TOLLGATE_IDENTITY", "aws"),
        ]);
        assert!(matches!(
            resolve(&Flags::default(), &env),
            Err(ConfigError::IdentityNotBuilt(_))
        ));
        let env = MapEnv::new([("HOME", "/h")]);
        assert!(matches!(
            resolve(&Flags::default(), &env),
            Err(ConfigError::NoBroker { .. })
        ));
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
}
