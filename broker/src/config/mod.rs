//! Broker configuration: strict raw TOML structs, validated into runtime types.
//!
//! Unknown keys are rejected. Every error names the file, line and column, and the field.
//! Relative paths are resolved against the directory holding the config file.
//!
//! Each section lives in its own module with its raw struct (as written), its validated type and its
//! validator; [`Config::from_source`] only assembles them, one line per section. Where text comes from
//! and how errors point into it is [`source`] (a leaf every section uses). A new section: a module here
//! (or beside the code it configures, using only [`source`]), a field of `RawConfig` and `Config`, and its
//! line in `from_source`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

pub mod accounting;
pub mod admin;
pub mod affinity;
pub mod alerts;
pub mod audit;
pub mod budgets;
pub mod credentials;
pub mod limits;
pub mod models;
pub mod oauth;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod routes;
pub mod routing;
pub mod server;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod vault;

pub use crate::identity::config::IdentityConfig;
pub use admin::AdminConfig;
pub use alerts::AlertsConfig;
pub use budgets::{BudgetConfig, Scope};
pub use credentials::StaticCredential;
pub use limits::LimitsConfig;
pub use pricing::PricingConfig;
pub use providers::{AzurePath, ProviderConfig, ProviderKind, VaultKeyRef};
pub use routes::{Route, Target};
pub use routing::RoutingConfig;
pub use server::{LogFormat, ServerConfig};
pub use source::{ConfigError, Env, ProcessEnv, Source};
pub use store::{StoreConfig, StoreKind};
pub use tokens::{TTL_CEILING_SECS, TokenConfig};
pub use vault::VaultConfig;

/// The config file as written: one field per section, each section's raw struct in its module.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: server::RawServer,
    #[serde(default)]
    tokens: tokens::RawTokens,
    /// Path of the policy file (identity → grant rules). Relative to this file.
    policy_file: Spanned<PathBuf>,
    #[serde(default)]
    credentials: Vec<credentials::RawCredential>,
    #[serde(default)]
    providers: BTreeMap<String, Spanned<providers::RawProvider>>,
    #[serde(default)]
    routes: Vec<Spanned<routes::RawRoute>>,
    /// Per-model Codex metadata (`GET /v1/models` → `models`): opt-in, see codex-models.md.
    #[serde(default)]
    models: BTreeMap<String, models::RawModelMeta>,
    /// Workload-identity verifiers (`[identity.aws]`, `[[identity.oidc]]`, `[[identity.azure]]`).
    #[serde(default)]
    identity: crate::identity::config::RawIdentity,
    #[serde(default)]
    routing: routing::RawRouting,
    /// Vault (or OpenBao) for upstream keys held in KV v2.
    vault: Option<Spanned<vault::RawVault>>,
    #[serde(default)]
    store: store::RawStore,
    #[serde(default)]
    pricing: pricing::RawPricing,
    #[serde(default)]
    budgets: Vec<Spanned<budgets::RawBudget>>,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    metrics: crate::metrics::RawMetricsConfig,
    #[serde(default)]
    telemetry: telemetry::RawTelemetry,
    #[serde(default)]
    audit: audit::RawAudit,
    /// Budget alert sinks (`[alerts]`, `[[alerts.sinks]]`).
    #[serde(default)]
    alerts: alerts::RawAlerts,
    /// Session affinity and reasoning domains (`[affinity]`).
    #[serde(default)]
    affinity: affinity::RawAffinity,
    #[serde(default)]
    accounting: accounting::RawAccounting,
    /// People sign-in: the broker as an OAuth authorization server (`[oauth]`, `[[oauth.idp]]`, `[[oauth.client]]`).
    oauth: Option<Spanned<oauth::RawOAuth>>,
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
    pub identity: IdentityConfig,
    /// People sign-in (`[oauth]`); `None` when the section is absent.
    pub oauth: Option<oauth::OAuthConfig>,
    pub routing: RoutingConfig,
    pub vault: Option<VaultConfig>,
    pub store: StoreConfig,
    pub pricing: PricingConfig,
    pub budgets: Vec<BudgetConfig>,
    pub limits: LimitsConfig,
    pub admin: AdminConfig,
    pub metrics: crate::metrics::MetricsConfig,
    pub telemetry: telemetry::TelemetryConfig,
    pub audit: audit::AuditConfig,
    pub alerts: AlertsConfig,
    pub affinity: affinity::AffinityConfig,
    pub accounting: accounting::AccountingConfig,
    /// The outbound proxy for upstreams, from the environment ([`proxy::ProxyEnv`]).
    pub upstream_proxy: proxy::ProxyEnv,
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        Self::from_source(Source::read(path)?, env)
    }

    /// Start-up check of every file the broker keeps secrets or the ledger in, before it opens any of them:
    /// the SQLite store and audit trail (directories private, files 0600 or refused) and the signing-key
    /// file. The broker exits 78 (EX_CONFIG) with the returned message.
    pub fn check_state_files(&self) -> Result<(), crate::keys::KeyError> {
        if self.store.kind == StoreKind::Sqlite {
            crate::keys::prepare_sqlite_file(
                &self.store.sqlite_path,
                crate::keys::SqliteRole::GovernanceStore,
            )?;
            if self.audit.enabled {
                crate::keys::prepare_sqlite_file(
                    &self.audit.sqlite_path,
                    crate::keys::SqliteRole::AuditTrail,
                )?;
            }
        }
        if let Some(path) = &self.tokens.signing_key_file {
            crate::keys::check_operator_secret(
                path,
                "the token-signing key (tokens.signing_key_file)",
                "Anyone who could read it can mint tokens for any identity: treat the key as exposed and replace it",
            )?;
        }
        Ok(())
    }

    /// Validate every section (each in its own module) and assemble them. Sections that depend on
    /// another take what they need from it as an argument.
    pub fn from_source(source: Source, env: &dyn Env) -> Result<Self, ConfigError> {
        let raw: RawConfig = source.parse()?;
        let s = &source;
        let server = server::validate(s, &raw.server)?;
        let tokens = tokens::validate(s, &raw.tokens, env)?;
        let credentials = credentials::validate(s, &raw.credentials)?;
        let providers = providers::validate(s, &raw.providers, raw.vault.is_some(), env)?;
        let routes = routes::validate(s, &raw.routes, &providers)?;
        let codex_models = models::validate(s, &raw.models)?;
        let store = store::validate(s, &raw.store, &server.state_dir, env)?;
        let pricing = pricing::validate(s, &raw.pricing)?;
        let budgets = budgets::validate(s, &raw.budgets)?;
        let alerts = alerts::validate(s, &raw.alerts, env)?;
        let affinity = affinity::config(s, &raw.affinity, &providers)?;
        let accounting = accounting::validate(s, &raw.accounting)?;
        let limits = limits::validate(s, &raw.limits)?;
        let admin = admin::validate(s, &raw.admin)?;
        let routing = routing::validate(s, &raw.routing)?;
        let vault = vault::validate(s, &raw.vault, env)?;
        let identity = IdentityConfig::validate(&raw.identity, s)?;
        let oauth = oauth::validate(&raw.oauth, s, env)?;
        let metrics = crate::metrics::MetricsConfig::from(&raw.metrics);
        let telemetry = telemetry::validate(s, &raw.telemetry)?;
        let audit = audit::validate(
            s,
            &raw.audit,
            &server.state_dir,
            store.kind == StoreKind::Postgres,
        )?;
        Ok(Config {
            upstream_proxy: proxy::ProxyEnv::read(env),
            oauth,
            affinity,
            accounting,
            alerts,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::window::Window;
    use tollgate::{Nanos, Price};

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

    /// Files the config names for secrets are read through the injected [`Env`]: these paths exist only
    /// in memory. A file the environment cannot give is an error naming the field and the line.
    #[test]
    fn secret_files_are_read_through_the_injected_env() {
        use secrecy::ExposeSecret;
        struct MemEnv(BTreeMap<PathBuf, String>);
        impl Env for MemEnv {
            fn var(&self, _: &str) -> Option<String> {
                None
            }
            fn read_file(&self, path: &Path) -> std::io::Result<String> {
                self.0
                    .get(path)
                    .cloned()
                    .ok_or_else(|| std::io::ErrorKind::NotFound.into())
            }
        }
        let dir = PathBuf::from("/nonexistent-tollgate-config");
        let env = MemEnv(
            [
                ("up.key", "sk-from-memory\n"),
                ("vault.token", "hvs.from-memory\n"),
                ("hook.url", "https://hooks.example/a\n"),
                ("hook.secret", "0123456789abcdef-secret\n"),
            ]
            .into_iter()
            .map(|(f, t)| (dir.join(f), t.to_string()))
            .collect(),
        );
        let text = "policy_file = \"p.toml\"\n\
            [providers.up]\nkind = \"openai\"\nbase_url = \"https://api.example\"\napi_key_file = \"up.key\"\n\
            [vault]\naddress = \"https://vault.example\"\ntoken_file = \"vault.token\"\n\
            [[alerts.sinks]]\nname = \"ops\"\nkind = \"webhook\"\nurl_file = \"hook.url\"\nsecret_file = \"hook.secret\"\n";
        let load = |text: &str| {
            Config::from_source(
                Source {
                    path: dir.join("broker.toml"),
                    text: text.into(),
                },
                &env,
            )
        };
        let c = load(text).expect("valid");
        let key = c.providers["up"].api_key.as_ref().expect("key");
        assert_eq!(key.expose_secret(), "sk-from-memory");
        assert_eq!(
            c.vault.as_ref().expect("vault").token.expose_secret(),
            "hvs.from-memory"
        );
        let sink = &c.alerts.sinks[0];
        assert_eq!(sink.url.expose_secret(), "https://hooks.example/a");
        assert_eq!(
            sink.secret.as_ref().expect("secret").expose_secret(),
            "0123456789abcdef-secret"
        );
        let e = load(&text.replace("\"up.key\"", "\"gone.key\"")).expect_err("missing file");
        let m = e.to_string();
        assert!(
            m.contains("broker.toml:2:") && m.contains("providers.up.api_key_file"),
            "{m}"
        );
    }
}
