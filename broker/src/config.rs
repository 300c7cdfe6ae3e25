//! Broker configuration: strict raw TOML structs, validated into runtime types.
//!
//! Unknown keys are rejected. Every error names the file, line and column, and the field.
//! Relative paths are resolved against the directory holding the config file.

use crate::governance::pricing::{Estimator, ModelPrice, PriceTable, Unpriced};
use crate::governance::window::Window;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tollgate::{ModelPattern, Nanos, Price};
use toml::Spanned;

pub mod accounting;
pub mod affinity;
pub mod oauth;
pub mod ops;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
}

/// Where a value sits in a source file, for error messages.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            // The path as resolved (absolute): a relative one says nothing about where it was looked for.
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            source,
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
        })
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// An error at a span, naming the field.
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        field: &str,
        message: impl std::fmt::Display,
    ) -> ConfigError {
        let (line, col) = self.line_col(span.start);
        ConfigError::Invalid {
            path: self.path.clone(),
            line,
            col,
            message: format!("{field}: {message}"),
        }
    }

    /// Parse the whole file into `T`, mapping TOML/serde errors to file:line:col.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |s| self.line_col(s.start));
            ConfigError::Invalid {
                path: self.path.clone(),
                line,
                col,
                message: e.message().trim().to_string(),
            }
        })
    }

    /// Resolve a path from this file against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

// ---------------------------------------------------------------- raw (as written)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    tokens: RawTokens,
    /// Path of the policy file (identity → grant rules). Relative to this file.
    policy_file: Spanned<PathBuf>,
    #[serde(default)]
    credentials: Vec<RawCredential>,
    #[serde(default)]
    providers: BTreeMap<String, Spanned<RawProvider>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    /// Per-model Codex metadata (`GET /v1/models` → `models`): opt-in, see codex-models.md.
    #[serde(default)]
    models: BTreeMap<String, RawModelMeta>,
    /// Workload-identity verifiers (`[identity.aws]`, `[[identity.oidc]]`, `[[identity.azure]]`).
    #[serde(default)]
    identity: crate::identity::config::RawIdentity,
    #[serde(default)]
    routing: RawRouting,
    /// Vault (or OpenBao) for upstream keys held in KV v2.
    vault: Option<Spanned<RawVault>>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    pricing: RawPricing,
    #[serde(default)]
    budgets: Vec<Spanned<RawBudget>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    metrics: ops::RawMetricsConfig,
    #[serde(default)]
    telemetry: ops::RawTelemetry,
    #[serde(default)]
    audit: ops::RawAudit,
    /// Budget alert sinks (`[alerts]`, `[[alerts.sinks]]`).
    #[serde(default)]
    alerts: crate::governance::alerts::RawAlerts,
    /// Session affinity and reasoning domains (`[affinity]`).
    #[serde(default)]
    affinity: affinity::RawAffinity,
    #[serde(default)]
    accounting: accounting::RawAccounting,
    /// People sign-in: the broker as an OAuth authorization server (`[oauth]`, `[[oauth.idp]]`, `[[oauth.client]]`).
    oauth: Option<Spanned<oauth::RawOAuth>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    /// Consecutive failures that open a target's circuit breaker. Default 3.
    breaker_failures: Option<Spanned<u32>>,
    /// Seconds an open breaker parks its target before one probe is let through. Default 30.
    breaker_cooldown_secs: Option<u64>,
    /// Longest `Retry-After` the broker waits out itself when every target is parked. Default 2 s;
    /// anything longer goes back to the client as 429 with `Retry-After`.
    retry_after_max_wait_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    /// `http(s)://host:port` of the Vault/OpenBao server.
    address: String,
    /// Environment variable holding the Vault token.
    token_env: Option<String>,
    /// File holding the Vault token (trimmed).
    token_file: Option<PathBuf>,
    /// How often keys are re-read, seconds. Default 300.
    refresh_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultKey {
    /// KV v2 mount. Default `secret`.
    mount: Option<String>,
    /// Secret path under the mount.
    path: String,
    /// Field of the secret holding the key. Default `api_key`.
    field: Option<String>,
}

/// A number written as a decimal string (exact) or a TOML number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDecimal {
    Text(String),
    Int(i64),
    Float(f64),
}

impl RawDecimal {
    fn text(&self) -> String {
        match self {
            RawDecimal::Text(s) => s.clone(),
            RawDecimal::Int(i) => i.to_string(),
            RawDecimal::Float(f) => format!("{f}"),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    /// `sqlite` (default) or `postgres`.
    kind: Option<Spanned<String>>,
    /// SQLite file, relative to `server.state_dir`. Default `governance.db`.
    path: Option<PathBuf>,
    /// PostgreSQL URL; default from the environment variable named by `url_env`.
    url: Option<Spanned<String>>,
    /// Environment variable holding the PostgreSQL URL. Default `TOLLGATE_DATABASE_URL`.
    url_env: Option<String>,
    /// PostgreSQL schema to use (created if missing). Default: the server's search_path.
    schema: Option<Spanned<String>>,
    /// `refuse` (default: fail closed with 503) or `allow` when the store cannot be reached.
    on_unavailable: Option<Spanned<String>>,
    /// Lifetime of a reservation without renewal, seconds. Default 30.
    reservation_lease_secs: Option<Spanned<u64>>,
    /// How often to poll for revocations and new signing keys, milliseconds. Default 250.
    poll_interval_ms: Option<Spanned<u64>>,
    /// Connection pool size. Default 8.
    max_connections: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    /// Include the built-in dated price table. Default true.
    defaults: Option<bool>,
    /// `refuse` (default) or `charge` (use `unpriced_price`).
    unpriced: Option<Spanned<String>>,
    unpriced_price: Option<Spanned<RawPrice>>,
    /// Default 3.
    input_bytes_per_token: Option<Spanned<u64>>,
    /// Default 4096.
    output_reserve_cap_tokens: Option<Spanned<u64>>,
    #[serde(default)]
    models: BTreeMap<String, Spanned<RawPrice>>,
    /// A LiteLLM `model_prices_and_context_window.json` (relative to this file): its token prices, service
    /// tiers and long-context bands on top of the built-in table, under `[pricing.models]`. Default: none.
    litellm_file: Option<Spanned<PathBuf>>,
    /// The version recorded with requests charged from `litellm_file`. Default `litellm-` and the first 12
    /// hex digits of the file's SHA-256.
    litellm_version: Option<Spanned<String>>,
}

/// USD per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: RawDecimal,
    /// Default: the input price.
    cached_input: Option<RawDecimal>,
    /// Default: the input price.
    cache_write: Option<RawDecimal>,
    output: RawDecimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    id: Spanned<String>,
    /// `token`, `principal`, `team` or `org`.
    scope: Spanned<String>,
    /// Only this principal/team/org (or jti); default: every one separately.
    #[serde(rename = "match")]
    matches: Option<String>,
    amount_usd: Spanned<RawDecimal>,
    /// `daily`, `weekly`, `monthly` (UTC calendar) or `lifetime`.
    window: Spanned<String>,
    /// Percentages of `amount_usd` that each emit one alert per window (`[alerts]`), e.g. `[50, 80, 100]`.
    /// Default: none.
    thresholds: Option<Spanned<Vec<u32>>>,
    /// A soft limit: reaching it emits one alert per window and refuses nothing. Default: none.
    soft_usd: Option<Spanned<RawDecimal>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    /// Per principal, unless the grant sets its own. Default: unlimited.
    requests_per_minute: Option<Spanned<u32>>,
    tokens_per_minute: Option<Spanned<u32>>,
    /// Per team (all principals of a team together). Default: unlimited.
    team_requests_per_minute: Option<Spanned<u32>>,
    team_tokens_per_minute: Option<Spanned<u32>>,
    /// `redis://host:port`: share the limits between replicas. Default: per process.
    redis_url: Option<Spanned<String>>,
    /// Key prefix in Redis. Default `tollgate:`.
    redis_prefix: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Lower-case hex SHA-256 of the admin key. No admin API without it.
    key_sha256: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    state_dir: Option<PathBuf>,
    max_body_bytes: Option<Spanned<u64>>,
    log_format: Option<LogFormat>,
    shutdown_grace_secs: Option<u64>,
    tls: Option<ops::RawTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    audience: Option<String>,
    default_ttl_secs: Option<Spanned<u64>>,
    max_ttl_secs: Option<Spanned<u64>>,
    leeway_secs: Option<Spanned<u64>>,
    signing_key_file: Option<PathBuf>,
    /// Signing keys (kept in the store) rotate every this many seconds. Default 86400.
    rotate_secs: Option<Spanned<u64>>,
    /// Largest `/oauth/token` request body, in bytes. Default 16384 (1024–1048576).
    max_request_bytes: Option<Spanned<u64>>,
    /// Token exchanges one client address may make per minute (burst: a tenth of it, at least 10).
    /// Default 600; 0 turns the limit off.
    exchanges_per_minute_per_address: Option<Spanned<u32>>,
    /// File holding the key-encryption key (32 bytes, base64 or hex) that seals store-held signing keys
    /// at rest. Default: none (keys stored in the clear; the store is then as secret as the keys).
    key_encryption_key_file: Option<PathBuf>,
    /// Environment variable holding the key-encryption key instead. Default: none.
    key_encryption_key_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    subject: Spanned<String>,
    /// Lower-case hex SHA-256 of the credential. The credential itself is never in config.
    sha256: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: ProviderKind,
    base_url: Option<String>,
    /// Environment variable holding the upstream API key.
    api_key_env: Option<String>,
    /// File holding the upstream API key (trimmed).
    api_key_file: Option<PathBuf>,
    /// Vault KV v2 secret holding the upstream API key (needs a top-level `[vault]`).
    api_key_vault: Option<RawVaultKey>,
    /// Azure OpenAI `api-version` query value (required for `azure_path = "deployments"`).
    api_version: Option<String>,
    /// Azure OpenAI URL style: `v1` (`{base}/openai/v1/...`, default) or `deployments`
    /// (`{base}/openai/deployments/{deployment}/...`; the target's `model` is the deployment).
    azure_path: Option<AzurePath>,
    /// `max_tokens` for Anthropic when the request sets none. Default 32000.
    max_tokens: Option<u64>,
    /// Total request timeout, milliseconds. Default 600000.
    timeout_ms: Option<u64>,
    /// Connect timeout, milliseconds. Default 5000.
    connect_timeout_ms: Option<u64>,
    /// Time to the first byte of the answer, milliseconds. Default 60000.
    first_byte_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    model: String,
    targets: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    provider: String,
    /// Upstream model id; defaults to the requested model.
    model: Option<String>,
    /// A standby target is used only when no other target in the chain is configured (e.g. the demo
    /// provider stands in while no upstream key is set).
    #[serde(default)]
    standby: bool,
    /// Share of traffic among targets of equal priority. Default 1; 0 = only when the others are down.
    weight: Option<u32>,
    /// Lower is tried first; targets of equal priority share load by weight. Default: the target's
    /// position in the list (a plain ordered chain).
    priority: Option<u32>,
    /// Overrides the provider's timeouts for this target, milliseconds.
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelMeta {
    /// Codex `ModelInfo` entry, passed through verbatim in `GET /v1/models` → `models`.
    codex: Option<toml::Table>,
}

// ---------------------------------------------------------------- validated

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Canned, well-formed answers; for offline trials.
    Demo,
    /// OpenAI Responses API (pass-through) and Chat Completions.
    Openai,
    /// Azure OpenAI: deployment or v1 URLs, `api-version` query, `api-key` header.
    AzureOpenai,
    /// Any OpenAI-compatible Chat Completions endpoint; Responses requests are translated.
    OpenaiChat,
    /// Anthropic Messages; Responses requests are translated.
    Anthropic,
}

impl ProviderKind {
    /// Every kind (each has an adapter in `proxy/providers/`; its test walks this list).
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Demo,
        ProviderKind::Openai,
        ProviderKind::AzureOpenai,
        ProviderKind::OpenaiChat,
        ProviderKind::Anthropic,
    ];

    /// The kind's name as written in the config (`openai-chat`): metric labels, spans, logs.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Demo => "demo",
            ProviderKind::Openai => "openai",
            ProviderKind::AzureOpenai => "azure-openai",
            ProviderKind::OpenaiChat => "openai-chat",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AzurePath {
    #[default]
    V1,
    Deployments,
}

#[derive(Debug)]
pub struct Config {
    pub source: Source,
    pub server: ServerConfig,
    pub tokens: TokenConfig,
    pub policy_file: PathBuf,
    pub credentials: Vec<StaticCredential>,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub routes: Vec<Route>,
    /// Codex metadata entries for `GET /v1/models`, keyed by model name.
    pub codex_models: BTreeMap<String, serde_json::Value>,
    /// Workload-identity verifiers.
    pub identity: crate::identity::config::IdentityConfig,
    /// People sign-in (`[oauth]`); `None` when the section is absent.
    pub oauth: Option<oauth::OAuthConfig>,
    pub routing: RoutingConfig,
    pub vault: Option<VaultConfig>,
    pub store: StoreConfig,
    pub pricing: PricingConfig,
    pub budgets: Vec<BudgetConfig>,
    pub limits: LimitsConfig,
    pub admin: AdminConfig,
    pub metrics: ops::MetricsConfig,
    pub telemetry: ops::TelemetryConfig,
    pub audit: ops::AuditConfig,
    pub alerts: crate::governance::alerts::AlertsConfig,
    pub affinity: affinity::AffinityConfig,
    pub accounting: accounting::AccountingConfig,
}

#[derive(Clone, Debug)]
pub struct RoutingConfig {
    pub breaker_failures: u32,
    pub breaker_cooldown_secs: u64,
    pub retry_after_max_wait_secs: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            breaker_failures: 3,
            breaker_cooldown_secs: 30,
            retry_after_max_wait_secs: 2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct VaultConfig {
    pub address: String,
    pub token: SecretString,
    pub refresh_secs: u64,
}

/// Where in Vault KV v2 a provider's key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultKeyRef {
    pub mount: String,
    pub path: String,
    pub field: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub sqlite_path: PathBuf,
    pub url: Option<SecretString>,
    pub schema: Option<String>,
    /// Let requests through (unbudgeted, logged) when the store is down, instead of 503.
    pub fail_open: bool,
    pub reservation_lease_secs: u64,
    pub poll_interval_ms: u64,
    pub max_connections: u32,
}

#[derive(Clone, Debug)]
pub struct PricingConfig {
    pub table: PriceTable,
    pub estimator: Estimator,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Token,
    Principal,
    Team,
    Org,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Token => "token",
            Scope::Principal => "principal",
            Scope::Team => "team",
            Scope::Org => "org",
        }
    }
}

#[derive(Clone, Debug)]
pub struct BudgetConfig {
    pub id: String,
    pub scope: Scope,
    pub matches: Option<String>,
    pub amount: Nanos,
    pub window: Window,
    /// Percentages of `amount` that alert (once per window), ascending.
    pub thresholds: Vec<u32>,
    /// The soft limit: alerts, never refuses.
    pub soft: Option<Nanos>,
}

#[derive(Clone, Debug, Default)]
pub struct LimitsConfig {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub team_requests_per_minute: Option<u32>,
    pub team_tokens_per_minute: Option<u32>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
}

#[derive(Clone, Debug, Default)]
pub struct AdminConfig {
    pub key_sha256: Option<[u8; 32]>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Issuer of our tokens and base of discovery; no trailing slash.
    pub public_url: String,
    /// Whether `public_url` was configured (else it is derived from the address the broker listens on).
    pub public_url_set: bool,
    pub state_dir: PathBuf,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub shutdown_grace_secs: u64,
    pub tls: Option<ops::TlsConfig>,
}

impl ServerConfig {
    /// No `public_url` is configured and the port is 0: the broker advertises (and issues tokens as) the
    /// address it was given by the system, which no other replica shares, so it takes no part in the
    /// store's shared-issuer check (docs/operations.md, "Several replicas").
    pub fn issuer_is_ephemeral(&self) -> bool {
        !self.public_url_set && self.listen.port() == 0
    }
}

#[derive(Clone, Debug)]
pub struct TokenConfig {
    pub audience: String,
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub leeway_secs: u64,
    pub signing_key_file: Option<PathBuf>,
    pub rotate_secs: u64,
    /// Largest `/oauth/token` request body, in bytes.
    pub max_request_bytes: usize,
    /// Token exchanges per client address per minute; 0 = unlimited.
    pub exchanges_per_minute_per_address: u32,
    /// Seals store-held signing keys at rest (`key_encryption_key_file` / `key_encryption_key_env`).
    pub key_encryption_key: Option<std::sync::Arc<crate::keys::KeyEncryptionKey>>,
}

#[derive(Clone, Debug)]
pub struct StaticCredential {
    pub subject: String,
    pub sha256: [u8; 32],
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    /// `None` when the provider needs no key (demo) or its key source is unset (then `enabled` is false).
    pub api_key: Option<SecretString>,
    /// Read from Vault KV v2 at start-up and refreshed periodically.
    pub api_key_vault: Option<VaultKeyRef>,
    pub api_version: Option<String>,
    pub azure_path: AzurePath,
    pub max_tokens: Option<u64>,
    pub enabled: bool,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub pattern: ModelPattern,
    pub targets: Vec<Target>,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub provider: String,
    pub model: Option<String>,
    pub standby: bool,
    pub weight: u32,
    pub priority: u32,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// The environment as the config loader sees it (injected so tests never touch the process env).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Absolute ceiling for any token lifetime: 24 h. Short TTLs are the point.
pub const TTL_CEILING_SECS: u64 = 24 * 3600;

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        Self::from_source(Source::read(path)?, env)
    }

    pub fn from_source(source: Source, env: &dyn Env) -> Result<Self, ConfigError> {
        let raw: RawConfig = source.parse()?;
        let s = &source;

        let listen_raw = raw
            .server
            .listen
            .as_ref()
            .map_or("127.0.0.1:8787", |l| l.get_ref().as_str());
        let listen: SocketAddr = listen_raw.parse().map_err(|e| match &raw.server.listen {
            Some(l) => s.error_at(
                l.span(),
                "server.listen",
                format_args!("{listen_raw:?} is not an address:port ({e})"),
            ),
            None => s.error_at(0..0, "server.listen", e),
        })?;
        let public_url = match &raw.server.public_url {
            Some(u) => {
                let v = u.get_ref().trim_end_matches('/').to_string();
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(s.error_at(
                        u.span(),
                        "server.public_url",
                        "must start with http:// or https://",
                    ));
                }
                v
            }
            None => format!("http://{listen}"),
        };
        let max_body_bytes = match &raw.server.max_body_bytes {
            Some(m) if *m.get_ref() < 1024 || *m.get_ref() > 256 * 1024 * 1024 => {
                return Err(s.error_at(
                    m.span(),
                    "server.max_body_bytes",
                    "must be between 1024 and 268435456",
                ));
            }
            Some(m) => *m.get_ref() as usize,
            None => 16 * 1024 * 1024,
        };
        let server = ServerConfig {
            listen,
            public_url_set: raw.server.public_url.is_some(),
            public_url,
            state_dir: s.resolve(
                raw.server
                    .state_dir
                    .as_deref()
                    .unwrap_or(Path::new(".tollgate")),
            ),
            max_body_bytes,
            log_format: raw.server.log_format.unwrap_or_default(),
            shutdown_grace_secs: raw.server.shutdown_grace_secs.unwrap_or(30),
            tls: ops::tls(s, &raw.server.tls)?,
        };

        let ttl =
            |v: &Option<Spanned<u64>>, field: &str, default: u64| -> Result<u64, ConfigError> {
                match v {
                    Some(t) if *t.get_ref() == 0 || *t.get_ref() > TTL_CEILING_SECS => Err(s
                        .error_at(
                            t.span(),
                            field,
                            format_args!("must be between 1 and {TTL_CEILING_SECS} seconds"),
                        )),
                    Some(t) => Ok(*t.get_ref()),
                    None => Ok(default),
                }
            };
        let max_ttl_secs = ttl(&raw.tokens.max_ttl_secs, "tokens.max_ttl_secs", 3600)?;
        let default_ttl_secs = ttl(
            &raw.tokens.default_ttl_secs,
            "tokens.default_ttl_secs",
            max_ttl_secs.min(3600),
        )?;
        if default_ttl_secs > max_ttl_secs {
            let span = raw
                .tokens
                .default_ttl_secs
                .as_ref()
                .map_or(0..0, Spanned::span);
            return Err(s.error_at(
                span,
                "tokens.default_ttl_secs",
                "must not exceed tokens.max_ttl_secs",
            ));
        }
        let leeway_secs = match &raw.tokens.leeway_secs {
            Some(l) if *l.get_ref() > 300 => {
                return Err(s.error_at(l.span(), "tokens.leeway_secs", "must be at most 300"));
            }
            Some(l) => *l.get_ref(),
            None => 30,
        };
        let tokens = TokenConfig {
            audience: raw
                .tokens
                .audience
                .unwrap_or_else(|| "tollgate".to_string()),
            default_ttl_secs,
            max_ttl_secs,
            leeway_secs,
            signing_key_file: raw.tokens.signing_key_file.as_deref().map(|p| s.resolve(p)),
            rotate_secs: match &raw.tokens.rotate_secs {
                Some(r) if !(10..=365 * 86_400).contains(r.get_ref()) => {
                    return Err(s.error_at(
                        r.span(),
                        "tokens.rotate_secs",
                        "must be between 10 and 31536000",
                    ));
                }
                Some(r) => *r.get_ref(),
                None => 86_400,
            },
            max_request_bytes: match &raw.tokens.max_request_bytes {
                Some(b) if !(1024..=1_048_576).contains(b.get_ref()) => {
                    return Err(s.error_at(
                        b.span(),
                        "tokens.max_request_bytes",
                        "must be between 1024 and 1048576",
                    ));
                }
                Some(b) => usize::try_from(*b.get_ref()).unwrap_or(16_384),
                None => 16_384,
            },
            exchanges_per_minute_per_address: raw
                .tokens
                .exchanges_per_minute_per_address
                .as_ref()
                .map_or(600, |r| *r.get_ref()),
            key_encryption_key: crate::keys::key_encryption_key(
                raw.tokens
                    .key_encryption_key_file
                    .as_deref()
                    .map(|p| s.resolve(p))
                    .as_deref(),
                raw.tokens.key_encryption_key_env.as_deref(),
                env,
            )
            .map_err(|(field, message)| s.error_at(0..0, field, message))?,
        };

        let mut credentials = Vec::new();
        for c in &raw.credentials {
            let hexs = c.sha256.get_ref();
            let mut digest = [0u8; 32];
            if hexs.len() != 64 || hex::decode_to_slice(hexs, &mut digest).is_err() {
                return Err(s.error_at(
                    c.sha256.span(),
                    "credentials.sha256",
                    "must be 64 hex characters (sha256 of the credential)",
                ));
            }
            if c.subject.get_ref().trim().is_empty() {
                return Err(s.error_at(
                    c.subject.span(),
                    "credentials.subject",
                    "must not be empty",
                ));
            }
            credentials.push(StaticCredential {
                subject: c.subject.get_ref().clone(),
                sha256: digest,
            });
        }

        let mut providers = BTreeMap::new();
        for (name, p) in &raw.providers {
            let span = p.span();
            let p = p.get_ref();
            let field = format!("providers.{name}");
            let base_url = match (p.kind, &p.base_url) {
                (ProviderKind::Demo, _) => String::new(),
                (_, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {
                    u.trim_end_matches('/').to_string()
                }
                (_, Some(_)) => {
                    return Err(s.error_at(
                        span,
                        &format!("{field}.base_url"),
                        "must start with http:// or https://",
                    ));
                }
                (_, None) => {
                    return Err(s.error_at(
                        span,
                        &format!("{field}.base_url"),
                        "is required for this provider kind",
                    ));
                }
            };
            let sources = usize::from(p.api_key_env.is_some())
                + usize::from(p.api_key_file.is_some())
                + usize::from(p.api_key_vault.is_some());
            if sources > 1 {
                return Err(s.error_at(
                    span,
                    &field,
                    "set only one of api_key_env, api_key_file and api_key_vault",
                ));
            }
            if p.api_key_vault.is_some() && raw.vault.is_none() {
                return Err(s.error_at(
                    span,
                    &format!("{field}.api_key_vault"),
                    "needs a top-level [vault] section",
                ));
            }
            if p.kind == ProviderKind::AzureOpenai
                && p.azure_path == Some(AzurePath::Deployments)
                && p.api_version.is_none()
            {
                return Err(s.error_at(
                    span,
                    &format!("{field}.api_version"),
                    "is required with azure_path = \"deployments\"",
                ));
            }
            let api_key = match (&p.api_key_env, &p.api_key_file) {
                (Some(_), Some(_)) => None,
                (Some(var), None) => env.var(var).map(SecretString::from),
                (None, Some(file)) => {
                    let path = s.resolve(file);
                    match std::fs::read_to_string(&path) {
                        Ok(k) => Some(SecretString::from(k.trim().to_string())),
                        Err(e) => {
                            return Err(s.error_at(
                                span,
                                &format!("{field}.api_key_file"),
                                format_args!("cannot read {}: {e}", path.display()),
                            ));
                        }
                    }
                }
                (None, None) => None,
            };
            let api_key_vault = p.api_key_vault.as_ref().map(|v| VaultKeyRef {
                mount: v.mount.clone().unwrap_or_else(|| "secret".into()),
                path: v.path.clone(),
                field: v.field.clone().unwrap_or_else(|| "api_key".into()),
            });
            let needs_key = p.api_key_env.is_some() || p.api_key_file.is_some();
            let enabled = !needs_key || api_key.is_some();
            providers.insert(
                name.clone(),
                ProviderConfig {
                    name: name.clone(),
                    kind: p.kind,
                    base_url,
                    api_key,
                    api_key_vault,
                    api_version: p.api_version.clone(),
                    azure_path: p.azure_path.unwrap_or_default(),
                    max_tokens: p.max_tokens,
                    enabled,
                    timeout_ms: p.timeout_ms.unwrap_or(600_000),
                    connect_timeout_ms: p.connect_timeout_ms.unwrap_or(5_000),
                    first_byte_timeout_ms: p.first_byte_timeout_ms.unwrap_or(60_000),
                },
            );
        }

        let mut routes = Vec::new();
        for r in &raw.routes {
            let span = r.span();
            let r = r.get_ref();
            let pattern = ModelPattern::new(r.model.clone())
                .map_err(|e| s.error_at(span.clone(), "routes.model", e))?;
            if r.targets.is_empty() {
                return Err(s.error_at(
                    span,
                    "routes.targets",
                    "a route needs at least one target",
                ));
            }
            let mut targets = Vec::new();
            for (position, t) in r.targets.iter().enumerate() {
                if !providers.contains_key(&t.provider) {
                    return Err(s.error_at(
                        span,
                        "routes.targets.provider",
                        format_args!("unknown provider {:?}", t.provider),
                    ));
                }
                targets.push(Target {
                    provider: t.provider.clone(),
                    model: t.model.clone(),
                    standby: t.standby,
                    weight: t.weight.unwrap_or(1),
                    priority: t
                        .priority
                        .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX)),
                    connect_timeout_ms: t.connect_timeout_ms,
                    first_byte_timeout_ms: t.first_byte_timeout_ms,
                    timeout_ms: t.timeout_ms,
                });
            }
            routes.push(Route { pattern, targets });
        }

        let mut codex_models = BTreeMap::new();
        for (name, meta) in raw.models {
            if let Some(codex) = meta.codex {
                let mut v = serde_json::to_value(codex)
                    .map_err(|e| s.error_at(0..0, &format!("models.{name}.codex"), e))?;
                if let Some(obj) = v.as_object_mut() {
                    obj.entry("slug")
                        .or_insert_with(|| serde_json::Value::String(name.clone()));
                }
                codex_models.insert(name, v);
            }
        }

        let store = store_config(s, &raw.store, &server.state_dir, env)?;
        let pricing = pricing_config(s, &raw.pricing)?;
        let budgets = budget_configs(s, &raw.budgets)?;
        let alerts = crate::governance::alerts::config(s, &raw.alerts, env)?;
        let affinity = affinity::config(s, &raw.affinity, &providers)?;
        let limits = limits_config(s, &raw.limits)?;
        let admin = AdminConfig {
            key_sha256: match &raw.admin.key_sha256 {
                None => None,
                Some(h) => {
                    let mut d = [0u8; 32];
                    if h.get_ref().len() != 64 || hex::decode_to_slice(h.get_ref(), &mut d).is_err()
                    {
                        return Err(s.error_at(
                            h.span(),
                            "admin.key_sha256",
                            "must be 64 hex characters (sha256 of the admin key)",
                        ));
                    }
                    Some(d)
                }
            },
        };

        let routing = {
            let d = RoutingConfig::default();
            let breaker_failures = match &raw.routing.breaker_failures {
                Some(f) if *f.get_ref() == 0 => {
                    return Err(s.error_at(
                        f.span(),
                        "routing.breaker_failures",
                        "must be at least 1",
                    ));
                }
                Some(f) => *f.get_ref(),
                None => d.breaker_failures,
            };
            RoutingConfig {
                breaker_failures,
                breaker_cooldown_secs: raw
                    .routing
                    .breaker_cooldown_secs
                    .unwrap_or(d.breaker_cooldown_secs),
                retry_after_max_wait_secs: raw
                    .routing
                    .retry_after_max_wait_secs
                    .unwrap_or(d.retry_after_max_wait_secs),
            }
        };
        let vault = match &raw.vault {
            None => None,
            Some(v) => {
                let span = v.span();
                let v = v.get_ref();
                if !(v.address.starts_with("http://") || v.address.starts_with("https://")) {
                    return Err(s.error_at(
                        span,
                        "vault.address",
                        "must start with http:// or https://",
                    ));
                }
                let token = match (&v.token_env, &v.token_file) {
                    (Some(var), None) => env.var(var),
                    (None, Some(file)) => {
                        let path = s.resolve(file);
                        match std::fs::read_to_string(&path) {
                            Ok(t) => Some(t.trim().to_string()),
                            Err(e) => {
                                return Err(s.error_at(
                                    span,
                                    "vault.token_file",
                                    format_args!("cannot read {}: {e}", path.display()),
                                ));
                            }
                        }
                    }
                    _ => {
                        return Err(s.error_at(
                            span,
                            "vault",
                            "set exactly one of token_env and token_file",
                        ));
                    }
                };
                let Some(token) = token.filter(|t| !t.is_empty()) else {
                    return Err(s.error_at(span, "vault.token_env", "the Vault token is not set"));
                };
                Some(VaultConfig {
                    address: v.address.trim_end_matches('/').to_string(),
                    token: SecretString::from(token),
                    refresh_secs: v.refresh_secs.unwrap_or(300).max(1),
                })
            }
        };

        let identity = crate::identity::config::IdentityConfig::validate(&raw.identity, s)?;
        let oauth = oauth::validate(&raw.oauth, s, env)?;

        let metrics = ops::MetricsConfig::from(&raw.metrics);
        let telemetry = ops::telemetry(s, &raw.telemetry)?;
        let audit = ops::audit(
            s,
            &raw.audit,
            &server.state_dir,
            store.kind == StoreKind::Postgres,
        )?;
        Ok(Config {
            accounting: accounting::validate(s, &raw.accounting)?,
            oauth,
            alerts,
            affinity,
            metrics,
            telemetry,
            audit,
            identity,
            routing,
            vault,
            store,
            pricing,
            budgets,
            limits,
            admin,
            policy_file: s.resolve(raw.policy_file.get_ref()),
            source,
            server,
            tokens,
            credentials,
            providers,
            routes,
            codex_models,
        })
    }
}

fn store_config(
    s: &Source,
    raw: &RawStore,
    state_dir: &Path,
    env: &dyn Env,
) -> Result<StoreConfig, ConfigError> {
    let kind = match &raw.kind {
        None => StoreKind::Sqlite,
        Some(k) => match k.get_ref().as_str() {
            "sqlite" => StoreKind::Sqlite,
            "postgres" | "postgresql" => StoreKind::Postgres,
            other => {
                return Err(s.error_at(
                    k.span(),
                    "store.kind",
                    format_args!("unknown store {other:?} (use \"sqlite\" or \"postgres\")"),
                ));
            }
        },
    };
    let url = match &raw.url {
        Some(u) => Some(u.get_ref().clone()),
        None => env.var(raw.url_env.as_deref().unwrap_or("TOLLGATE_DATABASE_URL")),
    };
    if kind == StoreKind::Postgres {
        match &url {
            None => {
                let span = raw.kind.as_ref().map_or(0..0, Spanned::span);
                return Err(s.error_at(
                    span,
                    "store.url",
                    "a postgres store needs `url` or the environment variable named by `url_env` (default TOLLGATE_DATABASE_URL)",
                ));
            }
            Some(u) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => {
                let span = raw.url.as_ref().map_or(0..0, Spanned::span);
                return Err(s.error_at(span, "store.url", "must start with postgres://"));
            }
            Some(_) => {}
        }
    }
    if let Some(schema) = &raw.schema {
        let v = schema.get_ref();
        if v.is_empty()
            || v.len() > 63
            || !v
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(s.error_at(
                schema.span(),
                "store.schema",
                "must be 1-63 characters of a-z, 0-9 and _",
            ));
        }
    }
    let fail_open = match &raw.on_unavailable {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            "refuse" => false,
            "allow" => true,
            other => {
                return Err(s.error_at(
                    v.span(),
                    "store.on_unavailable",
                    format_args!("unknown value {other:?} (use \"refuse\" or \"allow\")"),
                ));
            }
        },
    };
    let ranged = |v: &Option<Spanned<u64>>, field: &str, lo: u64, hi: u64, default: u64| match v {
        Some(x) if !(lo..=hi).contains(x.get_ref()) => Err(s.error_at(
            x.span(),
            field,
            format_args!("must be between {lo} and {hi}"),
        )),
        Some(x) => Ok(*x.get_ref()),
        None => Ok(default),
    };
    let max_connections = match &raw.max_connections {
        Some(x) if !(1..=256).contains(x.get_ref()) => {
            return Err(s.error_at(
                x.span(),
                "store.max_connections",
                "must be between 1 and 256",
            ));
        }
        Some(x) => *x.get_ref(),
        None => 8,
    };
    Ok(StoreConfig {
        kind,
        sqlite_path: state_dir.join(raw.path.as_deref().unwrap_or(Path::new("governance.db"))),
        url: url.map(SecretString::from),
        schema: raw.schema.as_ref().map(|x| x.get_ref().clone()),
        fail_open,
        reservation_lease_secs: ranged(
            &raw.reservation_lease_secs,
            "store.reservation_lease_secs",
            2,
            86_400,
            30,
        )?,
        poll_interval_ms: ranged(
            &raw.poll_interval_ms,
            "store.poll_interval_ms",
            50,
            60_000,
            250,
        )?,
        max_connections,
    })
}

fn price_of(
    s: &Source,
    span: std::ops::Range<usize>,
    field: &str,
    raw: &RawPrice,
) -> Result<ModelPrice, ConfigError> {
    let one = |d: &RawDecimal, name: &str| {
        Price::parse_usd_per_mtok(&d.text())
            .map_err(|e| s.error_at(span.clone(), &format!("{field}.{name}"), e))
    };
    let input = one(&raw.input, "input")?;
    Ok(ModelPrice {
        input,
        cached_input: raw
            .cached_input
            .as_ref()
            .map_or(Ok(input), |d| one(d, "cached_input"))?,
        cache_write: raw
            .cache_write
            .as_ref()
            .map_or(Ok(input), |d| one(d, "cache_write"))?,
        output: one(&raw.output, "output")?,
    })
}

fn pricing_config(s: &Source, raw: &RawPricing) -> Result<PricingConfig, ConfigError> {
    let mut overrides = Vec::new();
    for (name, p) in &raw.models {
        let field = format!("pricing.models.{name}");
        let pattern =
            ModelPattern::new(name.clone()).map_err(|e| s.error_at(p.span(), &field, e))?;
        overrides.push((pattern, price_of(s, p.span(), &field, p.get_ref())?));
    }
    let unpriced = match raw
        .unpriced
        .as_ref()
        .map(|u| (u.span(), u.get_ref().as_str()))
    {
        None | Some((_, "refuse")) => Unpriced::Refuse,
        Some((span, "charge")) => match &raw.unpriced_price {
            Some(p) => Unpriced::Charge(price_of(
                s,
                p.span(),
                "pricing.unpriced_price",
                p.get_ref(),
            )?),
            None => {
                return Err(s.error_at(
                    span,
                    "pricing.unpriced_price",
                    "unpriced = \"charge\" needs unpriced_price = { input = \"...\", output = \"...\" }",
                ));
            }
        },
        Some((span, other)) => {
            return Err(s.error_at(
                span,
                "pricing.unpriced",
                format_args!("unknown value {other:?} (use \"refuse\" or \"charge\")"),
            ));
        }
    };
    let mut estimator = Estimator::default();
    if let Some(b) = &raw.input_bytes_per_token {
        if !(1..=16).contains(b.get_ref()) {
            return Err(s.error_at(
                b.span(),
                "pricing.input_bytes_per_token",
                "must be between 1 and 16",
            ));
        }
        estimator.input_bytes_per_token = *b.get_ref();
    }
    if let Some(c) = &raw.output_reserve_cap_tokens {
        if !(1..=1_000_000).contains(c.get_ref()) {
            return Err(s.error_at(
                c.span(),
                "pricing.output_reserve_cap_tokens",
                "must be between 1 and 1000000",
            ));
        }
        estimator.output_reserve_cap_tokens = *c.get_ref();
    }
    let file = match &raw.litellm_file {
        None => Vec::new(),
        Some(f) => {
            if let Some(v) = &raw.litellm_version
                && (v.get_ref().is_empty()
                    || v.get_ref().len() > 64
                    || v.get_ref()
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(s.error_at(
                    v.span(),
                    "pricing.litellm_version",
                    "must be 1-64 characters without spaces",
                ));
            }
            crate::governance::litellm::load(
                &s.resolve(f.get_ref()),
                raw.litellm_version.as_ref().map(|v| v.get_ref().as_str()),
            )
            .map_err(|e| s.error_at(f.span(), "pricing.litellm_file", e))?
            .entries
        }
    };
    Ok(PricingConfig {
        table: PriceTable::layered(raw.defaults.unwrap_or(true), file, overrides, unpriced),
        estimator,
    })
}

fn budget_configs(
    s: &Source,
    raw: &[Spanned<RawBudget>],
) -> Result<Vec<BudgetConfig>, ConfigError> {
    let mut out: Vec<BudgetConfig> = Vec::new();
    for b in raw {
        let b = b.get_ref();
        let id = b.id.get_ref();
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        {
            return Err(s.error_at(
                b.id.span(),
                "budgets.id",
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if out.iter().any(|o| &o.id == id) {
            return Err(s.error_at(
                b.id.span(),
                "budgets.id",
                format_args!("duplicate budget id {id:?}"),
            ));
        }
        let scope = match b.scope.get_ref().as_str() {
            "token" => Scope::Token,
            "principal" => Scope::Principal,
            "team" => Scope::Team,
            "org" => Scope::Org,
            other => {
                return Err(s.error_at(
                    b.scope.span(),
                    "budgets.scope",
                    format_args!("unknown scope {other:?} (use token, principal, team or org)"),
                ));
            }
        };
        let window = Window::parse(b.window.get_ref()).ok_or_else(|| {
            s.error_at(
                b.window.span(),
                "budgets.window",
                format_args!(
                    "unknown window {:?} (use daily, weekly, monthly or lifetime)",
                    b.window.get_ref()
                ),
            )
        })?;
        let amount = Nanos::parse_usd(&b.amount_usd.get_ref().text())
            .map_err(|e| s.error_at(b.amount_usd.span(), "budgets.amount_usd", e))?;
        if let Some(m) = &b.matches
            && m.trim().is_empty()
        {
            return Err(s.error_at(b.id.span(), "budgets.match", "must not be empty"));
        }
        let soft = b
            .soft_usd
            .as_ref()
            .map(|v| {
                Nanos::parse_usd(&v.get_ref().text())
                    .map_err(|e| s.error_at(v.span(), "budgets.soft_usd", e))
            })
            .transpose()?;
        let mut thresholds = b
            .thresholds
            .as_ref()
            .map_or(Vec::new(), |t| t.get_ref().clone());
        crate::governance::alerts::validate_marks(&thresholds, soft, amount).map_err(
            |e| match (&b.thresholds, &b.soft_usd) {
                (_, Some(v)) if e.starts_with("soft_usd") => {
                    s.error_at(v.span(), "budgets.soft_usd", e)
                }
                (Some(t), _) => s.error_at(t.span(), "budgets.thresholds", e),
                _ => s.error_at(b.id.span(), "budgets", e),
            },
        )?;
        thresholds.sort_unstable();
        out.push(BudgetConfig {
            id: id.clone(),
            scope,
            matches: b.matches.clone(),
            amount,
            window,
            thresholds,
            soft,
        });
    }
    Ok(out)
}

fn limits_config(s: &Source, raw: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    let one = |v: &Option<Spanned<u32>>, field: &str| match v {
        Some(x) if *x.get_ref() == 0 => Err(s.error_at(
            x.span(),
            field,
            "0 would refuse everything; remove the limit or deny by policy",
        )),
        Some(x) => Ok(Some(*x.get_ref())),
        None => Ok(None),
    };
    Ok(LimitsConfig {
        requests_per_minute: one(&raw.requests_per_minute, "limits.requests_per_minute")?,
        tokens_per_minute: one(&raw.tokens_per_minute, "limits.tokens_per_minute")?,
        team_requests_per_minute: one(
            &raw.team_requests_per_minute,
            "limits.team_requests_per_minute",
        )?,
        team_tokens_per_minute: one(&raw.team_tokens_per_minute, "limits.team_tokens_per_minute")?,
        redis_url: match &raw.redis_url {
            Some(u)
                if !u.get_ref().starts_with("redis://")
                    || u.get_ref().len() <= "redis://".len() =>
            {
                return Err(s.error_at(
                    u.span(),
                    "limits.redis_url",
                    "must look like redis://host:port",
                ));
            }
            Some(u) => Some(u.get_ref().clone()),
            None => None,
        },
        redis_prefix: raw
            .redis_prefix
            .clone()
            .unwrap_or_else(|| "tollgate:".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = [("UP_KEY".to_string(), "sk-test".to_string())].into();
        Config::from_source(
            Source {
                path: "/etc/tollgate/broker.toml".into(),
                text: text.into(),
            },
            &env,
        )
    }

    const MIN: &str = "policy_file = \"policy.toml\"\n";

    #[test]
    fn minimal_config_has_strict_defaults() {
        let c = load(MIN).expect("valid");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(c.tokens.max_ttl_secs, 3600);
        assert_eq!(c.policy_file, PathBuf::from("/etc/tollgate/policy.toml"));
        assert_eq!(c.server.state_dir, PathBuf::from("/etc/tollgate/.tollgate"));
    }

    #[test]
    fn unknown_key_names_field_and_line() {
        let e =
            load("policy_file = \"p.toml\"\n[server]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n")
                .expect_err("unknown");
        let msg = e.to_string();
        assert!(msg.starts_with("/etc/tollgate/broker.toml:4:"), "{msg}");
        assert!(msg.contains("listne"), "{msg}");
    }

    #[test]
    fn bad_values_name_field_and_line() {
        let e = load("policy_file = \"p.toml\"\n\n[tokens]\nmax_ttl_secs = 0\n").expect_err("ttl");
        assert!(
            e.to_string().contains(":4:") && e.to_string().contains("tokens.max_ttl_secs"),
            "{e}"
        );
        let e =
            load("policy_file = \"p.toml\"\n[[credentials]]\nsubject = \"a\"\nsha256 = \"zz\"\n")
                .expect_err("sha");
        assert!(
            e.to_string().contains(":4:") && e.to_string().contains("credentials.sha256"),
            "{e}"
        );
        let e = load("policy_file = \"p.toml\"\n[[routes]]\nmodel = \"*\"\ntargets = [{ provider = \"nope\" }]\n").expect_err("route");
        assert!(e.to_string().contains("unknown provider \"nope\""), "{e}");
        let e =
            load("policy_file = \"p.toml\"\n[server]\nlisten = \"nowhere\"\n").expect_err("listen");
        assert!(
            e.to_string().contains(":3:") && e.to_string().contains("server.listen"),
            "{e}"
        );
    }

    #[test]
    fn provider_key_from_env_enables_it() {
        let c = load(&format!(
            "{MIN}[providers.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1/\"\napi_key_env = \"UP_KEY\"\n\
             [providers.off]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"MISSING\"\n"
        ))
        .expect("valid");
        assert!(c.providers["up"].enabled);
        assert_eq!(c.providers["up"].base_url, "http://127.0.0.1:9/v1");
        assert!(!c.providers["off"].enabled);
        // The key is a secret: Debug must not show it.
        assert!(!format!("{:?}", c.providers["up"]).contains("sk-test"));
    }

    #[test]
    fn governance_sections_parse() {
        let c = load(&format!(
            "{MIN}[store]\nkind = \"sqlite\"\nreservation_lease_secs = 5\n\
             [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"2\", output = \"8\" }}\n\
             [pricing.models.\"my-model\"]\ninput = 1.25\noutput = \"10\"\n\
             [[budgets]]\nid = \"team-daily\"\nscope = \"team\"\nmatch = \"platform\"\namount_usd = \"50.00\"\nwindow = \"daily\"\n\
             [limits]\nrequests_per_minute = 60\n"
        ))
        .expect("valid");
        assert_eq!(c.store.reservation_lease_secs, 5);
        assert_eq!(c.budgets[0].amount, Nanos(50_000_000_000));
        assert_eq!(c.budgets[0].window, Window::Daily);
        assert_eq!(
            c.pricing.table.lookup("my-model").map(|p| p.input),
            Some(Price(1_250_000))
        );
        assert_eq!(
            c.pricing.table.lookup("unknown").map(|p| p.output),
            Some(Price(8_000_000))
        );
        assert_eq!(c.limits.requests_per_minute, Some(60));
    }

    #[test]
    fn bad_budgets_name_field_and_line() {
        let cases = [
            (
                "[[budgets]]\nid = \"b\"\nscope = \"team\"\namount_usd = \"-5\"\nwindow = \"daily\"\n",
                ":5:",
                "budgets.amount_usd",
            ),
            (
                "[[budgets]]\nid = \"b\"\nscope = \"team\"\namount_usd = -5\nwindow = \"daily\"\n",
                ":5:",
                "negative",
            ),
            (
                "[[budgets]]\nid = \"b\"\nscope = \"team\"\namount_usd = \"1e12\"\nwindow = \"daily\"\n",
                ":5:",
                "budgets.amount_usd",
            ),
            (
                "[[budgets]]\nid = \"b\"\nscope = \"team\"\namount_usd = \"5000000000\"\nwindow = \"daily\"\n",
                ":5:",
                "too large",
            ),
            (
                "[[budgets]]\nid = \"b\"\nscope = \"team\"\namount_usd = \"5\"\nwindow = \"hourly\"\n",
                ":6:",
                "unknown window \"hourly\"",
            ),
            (
                "[[budgets]]\nid = \"b\"\namount_usd = \"5\"\nwindow = \"daily\"\n",
                ":2:",
                "missing field `scope`",
            ),
            (
                "[[budgets]]\nid = \"b\"\nscope = \"galaxy\"\namount_usd = \"5\"\nwindow = \"daily\"\n",
                ":4:",
                "budgets.scope",
            ),
            ("[store]\nkind = \"mysql\"\n", ":3:", "store.kind"),
            (
                "[limits]\nrequests_per_minute = 0\n",
                ":3:",
                "limits.requests_per_minute",
            ),
            (
                "[pricing.models.m]\ninput = \"-1\"\noutput = \"1\"\n",
                ":2:",
                "pricing.models.m.input",
            ),
        ];
        for (text, line, needle) in cases {
            let e = load(&format!("{MIN}{text}")).expect_err(text);
            let msg = e.to_string();
            assert!(
                msg.contains(line) && msg.contains(needle),
                "{text:?} gave {msg}"
            );
        }
    }

    #[test]
    fn routing_providers_and_key_sources_are_validated() {
        let e = load(&format!("{MIN}[providers.a]\nkind = \"anthropic\"\nbase_url = \"http://x/v1\"\napi_key_vault = {{ path = \"p\" }}\n"))
            .expect_err("vault needs [vault]");
        assert!(e.to_string().contains("needs a top-level [vault]"), "{e}");
        let e = load(&format!("{MIN}[providers.a]\nkind = \"azure-openai\"\nbase_url = \"http://x\"\nazure_path = \"deployments\"\n"))
            .expect_err("deployments need api_version");
        assert!(e.to_string().contains("api_version"), "{e}");
        let e = load(&format!("{MIN}[routing]\nbreaker_failures = 0\n")).expect_err("0");
        assert!(
            e.to_string().contains(":3:") && e.to_string().contains("routing.breaker_failures"),
            "{e}"
        );
        let e = load(&format!("{MIN}[providers.a]\nkind = \"openai\"\nbase_url = \"http://x\"\napi_key_env = \"UP_KEY\"\napi_key_file = \"k\"\n"))
            .expect_err("two sources");
        assert!(e.to_string().contains("only one of"), "{e}");
        let e = load(&format!(
            "{MIN}[vault]\naddress = \"http://127.0.0.1:8200\"\ntoken_env = \"NOPE\"\n"
        ))
        .expect_err("token");
        assert!(e.to_string().contains("vault.token_env"), "{e}");
        let c = load(&format!(
            "{MIN}[vault]\naddress = \"http://127.0.0.1:8200/\"\ntoken_env = \"UP_KEY\"\n\
             [providers.a]\nkind = \"anthropic\"\nbase_url = \"http://x/v1\"\napi_key_vault = {{ path = \"tollgate/a\" }}\n\
             [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"a\", weight = 2, priority = 5, first_byte_timeout_ms = 100 }}]\n"
        ))
        .expect("valid");
        assert!(
            c.providers["a"].enabled,
            "a vault-keyed provider is enabled"
        );
        assert_eq!(
            c.providers["a"]
                .api_key_vault
                .as_ref()
                .map(|v| (v.mount.as_str(), v.field.as_str())),
            Some(("secret", "api_key"))
        );
        assert_eq!(
            c.vault.as_ref().map(|v| v.address.as_str()),
            Some("http://127.0.0.1:8200")
        );
        assert!(
            !format!("{:?}", c.vault).contains("sk-test"),
            "the vault token is redacted"
        );
        let t = &c.routes[0].targets[0];
        assert_eq!(
            (t.weight, t.priority, t.first_byte_timeout_ms),
            (2, 5, Some(100))
        );
    }

    #[test]
    fn audit_section_checkpoints_and_postgres() {
        let c = load("policy_file = \"p.toml\"\n").expect("defaults");
        assert_eq!(c.audit.checkpoints.every, 1000);
        assert_eq!(c.audit.checkpoints.interval_secs, 60);
        let c = load("policy_file = \"p.toml\"\n[audit]\ncheckpoint_every = 0\ncheckpoint_interval_secs = 5\n")
            .expect("set");
        assert_eq!(
            (c.audit.checkpoints.every, c.audit.checkpoints.interval_secs),
            (0, 5)
        );
        let e = load(
            "policy_file = \"p.toml\"\n[store]\nkind = \"postgres\"\nurl = \"postgres://x@h/db\"\n[audit]\nsqlite_path = \"a.sqlite\"\n",
        )
        .expect_err("sqlite_path with postgres");
        let m = e.to_string();
        assert!(
            m.contains(":6:") && m.contains("audit.sqlite_path") && m.contains("PostgreSQL"),
            "{m}"
        );
        let e = load("policy_file = \"p.toml\"\n[audit]\ncheckpoint_evry = 3\n")
            .expect_err("unknown key");
        assert!(e.to_string().contains("checkpoint_evry"), "{e}");
    }
}
