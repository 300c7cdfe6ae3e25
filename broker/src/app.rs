//! Application state: what every handler shares, built once from a validated config, and its background
//! work. The HTTP surface that serves it is [`crate::routes`]; nothing here imports a handler.

use crate::accounting::Accounting;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::governance::Governance;
use crate::identity::Verifiers;
use crate::keys;
use crate::policy::Policy;
use crate::router::Router as ModelRouter;
use crate::token::limits::TokenEndpoint;
use crate::token::{KeyRing, TokenService};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub struct AppState {
    tokens: TokenService,
    verifiers: Verifiers,
    policy: RwLock<Arc<Policy>>,
    /// When (unix seconds) the policy in force was loaded: a token minted under another policy version at
    /// or before this is refused (401), so its holder re-mints and gets the new grant at once.
    policy_since: std::sync::atomic::AtomicU64,
    /// Where the policy is (re)loaded from.
    policy_file: std::path::PathBuf,
    router: ModelRouter,
    /// Longest `Retry-After` the proxy waits out itself.
    retry_after_max_wait_secs: u64,
    codex_models: BTreeMap<String, serde_json::Value>,
    /// Which target each session was last served by (encrypted reasoning, prompt cache).
    affinity: Arc<crate::proxy::affinity::Affinity>,
    auth_cache: moka::sync::Cache<[u8; 32], Arc<tollgate::Claims>>,
    /// Prices, budgets, rate limits, revocation.
    governance: Arc<Governance>,
    /// What happens to a request once admitted: settlement, metrics, audit, the log line.
    accounting: Arc<Accounting>,
    clock: SharedClock,
    max_body_bytes: usize,
    /// `/oauth/token`'s settings and per-address limiter.
    token_endpoint: TokenEndpoint,
    metrics: Arc<crate::metrics::Metrics>,
    /// `None` when `[audit] enabled = false`.
    audit: Option<Arc<crate::audit::AuditLog>>,
    /// Admin key checks and dashboard sessions.
    admin: crate::admin::auth::AdminAuth,
    /// Budget definitions, for the dashboard and the consent page.
    budgets: Vec<crate::config::BudgetConfig>,
    /// The authorization server for people (`[oauth]`); `None` without it.
    oauth: Option<Arc<crate::oauth::OAuth>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error("identity verifiers: {0}")]
    Identity(String),
    #[error(transparent)]
    Store(#[from] crate::governance::store::StoreError),
    #[error("people sign-in: {0}")]
    OAuth(#[from] crate::oauth::OAuthSetupError),
}

impl AppState {
    /// Build the state from a validated config: load the policy, open (and migrate) the governance store,
    /// load signing keys from the key file or from the store (generating and rotating them there).
    pub async fn build(config: &Config, clock: SharedClock) -> Result<Arc<Self>, BuildError> {
        let policy = Policy::load(&config.policy_file)?;
        let now = clock.now_secs();
        let metrics = Arc::new(crate::metrics::Metrics::new(
            config.metrics.clone(),
            &config.routes,
        ));
        let governance = Arc::new(Governance::open(config, clock.clone(), metrics.clone()).await?);
        // Before anything is served: every revocation (a restarted replica must not accept a revoked token
        // until its first poll), and this replica's issuer checked against the other replicas'.
        governance.load_revocations().await?;
        if config.server.issuer_is_ephemeral() {
            tracing::warn!(
                issuer = %config.server.public_url,
                "no [server] public_url and port 0: tokens are issued as this process's own address; other replicas refuse them (set public_url to run several)"
            );
        } else {
            crate::governance::store::claim_issuer(
                governance.store.as_ref(),
                &config.server.public_url,
                now,
                governance.lease_secs(),
            )
            .await?;
        }
        let ring = Arc::new(KeyRing::default());
        match (&config.tokens.signing_key_file, &governance.keys) {
            (Some(path), _) => ring.replace(vec![keys::load_file(path, now)?]),
            (None, Some(km)) => km.sync(governance.store.as_ref(), &ring, now).await?,
            (None, None) => ring.replace(keys::load_or_generate(&config.server.state_dir, now)?),
        }
        let audit_sink: Option<Arc<dyn crate::audit::AuditSink>> = if config.audit.enabled {
            Some(match governance.store.pool() {
                // Replicas sharing PostgreSQL share one chain in it.
                crate::governance::store::StorePool::Postgres(pool) => {
                    Arc::new(crate::audit::postgres::PgAudit::new(pool))
                }
                crate::governance::store::StorePool::Sqlite(_) => Arc::new(
                    crate::audit::sqlite::SqliteAudit::open(&config.audit.sqlite_path),
                ),
            })
        } else {
            None
        };
        let verifiers = Verifiers::from_config(config, clock.clone(), governance.store.clone())
            .map_err(|e| BuildError::Identity(e.to_string()))?;
        let audit = audit_sink
            .map(|sink| {
                crate::audit::AuditLog::new(sink)
                    .with_checkpoints(
                        config.audit.checkpoints,
                        Arc::new(crate::audit::checkpoint::RingSigner {
                            keys: ring.clone(),
                            issuer: config.server.public_url.clone(),
                        }),
                        clock.clone(),
                    )
                    .with_journal(&config.audit.journal)
                    .map(Arc::new)
            })
            .transpose()?;
        let oauth = config
            .oauth
            .clone()
            .map(|o| {
                crate::oauth::OAuth::new(
                    o,
                    governance.store.pool(),
                    clock.clone(),
                    &config.server.public_url,
                    &config.tokens.audience,
                )
                .map(Arc::new)
            })
            .transpose()?;
        let accounting = Accounting::with_capacity(
            governance.clone(),
            metrics.clone(),
            audit.clone(),
            clock.clone(),
            config.accounting.settlement_queue_capacity,
        );
        let state = Arc::new(AppState {
            tokens: TokenService {
                keys: ring.clone(),
                issuer: config.server.public_url.clone(),
                audience: config.tokens.audience.clone(),
                leeway_secs: config.tokens.leeway_secs,
                clock: clock.clone(),
            },
            verifiers,
            policy: RwLock::new(Arc::new(policy)),
            policy_since: std::sync::atomic::AtomicU64::new(now),
            policy_file: config.policy_file.clone(),
            router: ModelRouter::new(config, clock.clone()),
            retry_after_max_wait_secs: config.routing.retry_after_max_wait_secs,
            codex_models: config.codex_models.clone(),
            affinity: Arc::new(crate::proxy::affinity::Affinity::new(
                &config.affinity,
                &config.limits,
            )),
            auth_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            governance,
            accounting,
            metrics,
            audit,
            admin: crate::admin::auth::AdminAuth::new(config.admin.key_sha256),
            budgets: config.budgets.clone(),
            oauth,
            clock,
            max_body_bytes: config.server.max_body_bytes,
            token_endpoint: TokenEndpoint::new(&config.tokens),
        });
        state.router.attach_metrics(&state.metrics);
        // A key that leaves the ring (retired) takes its tokens with it, cached verifications included.
        let cache = state.auth_cache.clone();
        ring.on_removal(move || cache.invalidate_all());
        Ok(state)
    }

    /// Background governance work: revocation and key polling, lease renewal, expiry of dead brokers'
    /// reservations, settlement retries. Stops when the state is dropped.
    pub fn spawn_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let g = self.governance.clone();
        tokio::spawn(async move {
            let lease = Duration::from_secs(g.lease_secs());
            let mut last_renew = std::time::Instant::now();
            let mut last_expire = std::time::Instant::now();
            let mut last_keys = std::time::Instant::now();
            let mut last_prune = std::time::Instant::now();
            loop {
                tokio::time::sleep(g.poll_interval()).await;
                let Some(app) = weak.upgrade() else { return };
                let renew = last_renew.elapsed() >= lease / 3;
                let expire = last_expire.elapsed() >= lease / 2;
                if renew {
                    last_renew = std::time::Instant::now();
                }
                if expire {
                    last_expire = std::time::Instant::now();
                }
                let charged = g.tick(renew, expire).await;
                if !charged.records.is_empty() || !charged.moved.is_empty() {
                    app.accounting.record_estimated(charged).await;
                }
                app.metrics.upkeep();
                app.token_endpoint.upkeep();
                if last_prune.elapsed() >= Duration::from_secs(60)
                    && let Some(o) = &app.oauth
                {
                    last_prune = std::time::Instant::now();
                    if let Err(e) = o.store.prune(o.now()).await {
                        tracing::warn!(error = %e, "could not prune expired sign-in state");
                    }
                }
                if last_keys.elapsed() >= Duration::from_secs(1) {
                    last_keys = std::time::Instant::now();
                    if let Err(e) = app.sync_keys().await {
                        tracing::warn!(error = %e, "could not sync signing keys");
                    }
                }
            }
        });
    }

    /// One key poll: publish keys other replicas created (scheduled or forced) and drop retired ones.
    /// The background loop calls it every second; public so tests drive it without timers.
    pub async fn sync_keys(&self) -> Result<(), crate::governance::store::StoreError> {
        let g = &self.governance;
        match &g.keys {
            Some(km) => {
                km.sync(g.store.as_ref(), &self.tokens.keys, self.clock.now_secs())
                    .await
            }
            None => Ok(()),
        }
    }

    /// Load the policy file again and swap it in. Requests in flight keep the policy they started with
    /// (each holds its own `Arc`); an invalid file is rejected, logged with its line and column, and the
    /// old policy stays in force.
    pub fn reload_policy(&self) -> Result<usize, crate::config::ConfigError> {
        match Policy::load(&self.policy_file) {
            Ok(p) => {
                let n = p.rules.len();
                let mut cur = self
                    .policy
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if cur.versions_differ(&p) {
                    self.policy_since
                        .store(self.clock.now_secs(), std::sync::atomic::Ordering::Relaxed);
                }
                *cur = Arc::new(p);
                drop(cur);
                tracing::info!(file = %self.policy_file.display(), rules = n, "policy reloaded");
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload rejected; the previous policy stays in force");
                Err(e)
            }
        }
    }

    /// Was `claims` decided under a policy that has since been replaced here? (Tokens without a version, or
    /// minted after this replica loaded its policy — another replica may be ahead — are not.)
    pub fn grant_outdated(&self, claims: &tollgate::Claims) -> bool {
        let Some(pv) = &claims.pv else { return false };
        let issued = claims.iat + crate::token::SKEW_SECS;
        self.policy().rule_version(&claims.grant.identity.rule) != Some(pv.as_str())
            && issued <= self.policy_since.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The policy in force (requests keep the one they started with).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    // ------------------------------------------------------------ accessors (the fields are private)

    /// Minting and verifying Tollgate tokens.
    pub fn tokens(&self) -> &TokenService {
        &self.tokens
    }

    /// One verifier per identity proof kind.
    pub fn verifiers(&self) -> &Verifiers {
        &self.verifiers
    }

    /// Where the policy is (re)loaded from.
    pub fn policy_file(&self) -> &std::path::Path {
        &self.policy_file
    }

    /// The model router: model → chain of targets, with their health.
    pub fn router(&self) -> &ModelRouter {
        &self.router
    }

    /// Longest `Retry-After` the proxy waits out itself, seconds.
    pub fn retry_after_max_wait_secs(&self) -> u64 {
        self.retry_after_max_wait_secs
    }

    /// Codex metadata for `GET /v1/models`, by model name.
    pub fn codex_models(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.codex_models
    }

    /// Verified tokens by the hash of their text (emptied when a signing key leaves the ring).
    pub fn auth_cache(&self) -> &moka::sync::Cache<[u8; 32], Arc<tollgate::Claims>> {
        &self.auth_cache
    }

    /// Prices, budgets, rate limits, revocation.
    pub fn governance(&self) -> &Arc<Governance> {
        &self.governance
    }

    /// What happens to a request once admitted: settlement, metrics, audit, the log line.
    pub fn accounting(&self) -> &Arc<Accounting> {
        &self.accounting
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Largest request body the proxy reads, bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// `/oauth/token`'s settings and per-address limiter.
    pub fn token_endpoint(&self) -> &TokenEndpoint {
        &self.token_endpoint
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The audit trail; `None` when `[audit] enabled = false`.
    pub fn audit(&self) -> &Option<Arc<crate::audit::AuditLog>> {
        &self.audit
    }

    /// Admin key checks and dashboard sessions.
    pub fn admin(&self) -> &crate::admin::auth::AdminAuth {
        &self.admin
    }

    /// Budget definitions, for the dashboard.
    pub fn budgets(&self) -> &[crate::config::BudgetConfig] {
        &self.budgets
    }

    /// Which target each session was last served by (encrypted reasoning, prompt cache).
    pub fn affinity(&self) -> &Arc<crate::proxy::affinity::Affinity> {
        &self.affinity
    }

    /// The authorization server for people (`[oauth]`); `None` without it.
    pub fn oauth(&self) -> &Option<Arc<crate::oauth::OAuth>> {
        &self.oauth
    }
}
