//! `[alerts]` and `[[alerts.sinks]]`: where budget alerts and the weekly report go (webhook or Slack), and
//! how deliveries are retried. The sinks' URLs and secrets may come from the environment or from files,
//! read through the injected [`Env`].

use super::source::{ConfigError, Env, Source};
use secrecy::SecretString;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// `[alerts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Wait before the first retry of a failed delivery, milliseconds; doubles per attempt, at most
    /// 5 minutes. Default 1000.
    pub retry_initial_ms: Option<Spanned<u64>>,
    /// Attempts per event and sink before the delivery counts as failed. Default 8.
    pub max_attempts: Option<Spanned<u32>>,
    /// Timeout of one attempt, milliseconds. Default 5000.
    pub timeout_ms: Option<Spanned<u64>>,
    /// Send last week's spend, grouped by this dimension (`principal`, `team`, `org`, `model`,
    /// `provider`), to every sink once the week has turned (Monday 00:00 UTC). Default: no weekly report.
    pub weekly_report: Option<Spanned<String>>,
    #[serde(default)]
    pub sinks: Vec<Spanned<RawSink>>,
}

/// `[[alerts.sinks]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `[a-z0-9_-]{1,32}`, unique: the `sink` label of the delivery metric.
    pub name: Spanned<String>,
    /// `webhook` (the event as JSON, HMAC-signed) or `slack` (an incoming-webhook `{"text": …}` payload).
    pub kind: Spanned<String>,
    /// The endpoint. Exactly one of `url`, `url_env`, `url_file` (a Slack webhook URL carries its token:
    /// keep it out of the config file).
    pub url: Option<Spanned<String>>,
    pub url_env: Option<Spanned<String>>,
    pub url_file: Option<Spanned<PathBuf>>,
    /// `webhook` only, required: the HMAC-SHA256 key, from this environment variable or file.
    pub secret_env: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<PathBuf>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    Webhook,
    Slack,
}

/// A validated sink. `Debug` does not show the URL or the secret.
#[derive(Clone)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub url: SecretString,
    pub secret: Option<SecretString>,
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// `[alerts]`, validated.
#[derive(Clone, Debug)]
pub struct AlertsConfig {
    pub sinks: Vec<SinkConfig>,
    /// Sinks configured with an environment variable that is not set: left out, warned about at start.
    pub disabled: Vec<String>,
    pub retry_initial: Duration,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub weekly_report: Option<crate::governance::store::Dimension>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            weekly_report: None,
            sinks: Vec::new(),
            disabled: Vec::new(),
            retry_initial: Duration::from_millis(1000),
            max_attempts: 8,
            timeout: Duration::from_millis(5000),
        }
    }
}

/// Validate `[alerts]`: the delivery settings, then each sink.
pub(super) fn validate(
    s: &Source,
    raw: &RawAlerts,
    env: &dyn Env,
) -> Result<AlertsConfig, ConfigError> {
    let mut out = AlertsConfig::default();
    if let Some(v) = &raw.retry_initial_ms {
        out.retry_initial =
            Duration::from_millis(s.in_range(v, "alerts.retry_initial_ms", 600_000)?);
    }
    if let Some(v) = &raw.max_attempts {
        out.max_attempts = s.in_range(v, "alerts.max_attempts", 100)?;
    }
    if let Some(v) = &raw.timeout_ms {
        out.timeout = Duration::from_millis(s.in_range(v, "alerts.timeout_ms", 120_000)?);
    }
    if let Some(w) = &raw.weekly_report {
        out.weekly_report = Some(
            crate::governance::store::Dimension::parse(w.get_ref()).ok_or_else(|| {
                s.error_at(
                    w.span(),
                    "alerts.weekly_report",
                    format_args!(
                        "unknown dimension {:?} (use principal, team, org, model or provider)",
                        w.get_ref()
                    ),
                )
            })?,
        );
    }
    for raw_sink in &raw.sinks {
        let name = sink_name(s, &raw_sink.get_ref().name)?;
        if out.sinks.iter().any(|x| x.name == name) || out.disabled.contains(&name) {
            return Err(s.error_at(
                raw_sink.get_ref().name.span(),
                "alerts.sinks.name",
                format_args!("duplicate sink name {name:?}"),
            ));
        }
        match sink(s, raw_sink, name.clone(), env)? {
            Some(sink) => out.sinks.push(sink),
            // An unset environment variable leaves the sink out (as for a provider's key), with a warning
            // at start.
            None => out.disabled.push(name),
        }
    }
    Ok(out)
}

/// `name`: `[a-z0-9_-]{1,32}` (it is a metric label).
fn sink_name(s: &Source, name: &Spanned<String>) -> Result<String, ConfigError> {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(s.error_at(
            name.span(),
            "alerts.sinks.name",
            "must be 1-32 characters of a-z 0-9 - _",
        ));
    }
    Ok(n.clone())
}

/// One `[[alerts.sinks]]`: its kind, URL and (webhook) secret. `None` when the URL or the secret names an
/// environment variable that is not set.
fn sink(
    s: &Source,
    raw: &Spanned<RawSink>,
    name: String,
    env: &dyn Env,
) -> Result<Option<SinkConfig>, ConfigError> {
    let span = raw.span();
    let r = raw.get_ref();
    let kind = match r.kind.get_ref().as_str() {
        "webhook" => SinkKind::Webhook,
        "slack" => SinkKind::Slack,
        other => {
            return Err(s.error_at(
                r.kind.span(),
                "alerts.sinks.kind",
                format_args!("unknown kind {other:?} (use webhook or slack)"),
            ));
        }
    };
    let field = format!("alerts.sinks.{name}");
    let read_file = |p: &Spanned<PathBuf>, what: &str| {
        let path = s.resolve(p.get_ref());
        env.read_file(&path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                s.error_at(
                    p.span(),
                    &format!("{field}.{what}"),
                    format_args!("cannot read {}: {e}", path.display()),
                )
            })
    };
    let url = match (&r.url, &r.url_env, &r.url_file) {
        (Some(u), None, None) => Some(u.get_ref().clone()),
        (None, Some(v), None) => env.var(v.get_ref()),
        (None, None, Some(f)) => Some(read_file(f, "url_file")?),
        _ => {
            return Err(s.error_at(
                span,
                &format!("{field}.url"),
                "set exactly one of url, url_env and url_file",
            ));
        }
    };
    if let Some(u) = &url {
        let ok = reqwest::Url::parse(u)
            .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host().is_some());
        if !ok {
            // Not echoed: the URL may carry a token.
            return Err(s.error_at(
                span,
                &format!("{field}.url"),
                "must be an http:// or https:// URL",
            ));
        }
    }
    // `Some(None)`: a webhook whose secret variable is not set.
    let secret = match (kind, &r.secret_env, &r.secret_file) {
        (SinkKind::Slack, None, None) => None,
        (SinkKind::Slack, _, _) => {
            return Err(s.error_at(
                span,
                &format!("{field}.secret_env"),
                "a slack sink is not signed (Slack authenticates by the URL): remove the secret",
            ));
        }
        (SinkKind::Webhook, Some(v), None) => Some(env.var(v.get_ref())),
        (SinkKind::Webhook, None, Some(f)) => {
            let t = read_file(f, "secret_file")?;
            if t.len() < 16 {
                return Err(s.error_at(
                    f.span(),
                    &format!("{field}.secret_file"),
                    "the secret must be at least 16 characters",
                ));
            }
            Some(Some(t))
        }
        (SinkKind::Webhook, _, _) => {
            return Err(s.error_at(
                span,
                &format!("{field}.secret_env"),
                "a webhook sink needs exactly one of secret_env and secret_file (the HMAC-SHA256 key)",
            ));
        }
    };
    Ok(match (url, secret) {
        (Some(url), None) => Some(SinkConfig {
            name,
            kind,
            url: url.into(),
            secret: None,
        }),
        (Some(url), Some(Some(secret))) => Some(SinkConfig {
            name,
            kind,
            url: url.into(),
            secret: Some(secret.into()),
        }),
        _ => None,
    })
}
