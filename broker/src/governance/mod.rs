//! Governance: prices, budgets with reservations, rate limits, revocation — backed by a [`store::Store`].
//!
//! The request path calls [`Governance::admit_tier`] before forwarding; [`crate::accounting`] calls
//! [`Governance::settle`] exactly once afterwards, from its one settlement queue, and writes the
//! [`store::Apply`] it returns to the store in group-committed batches. Admission is in memory against this
//! process's allotments ([`allot`]) and goes to the store only to grow one. Background work (lease renewal,
//! expiry of dead brokers' reservations, revocation and key polling, giving idle allotments back) runs from
//! [`Governance::tick`]; [`Governance::shutdown`] gives every allotment back.
//!
//! Governance speaks [`GovernanceError`]; what a person reads is written in `crate::error`, the one place
//! errors become HTTP responses.

pub mod alerts;
pub mod allot;
pub mod inflight;
pub mod keys;
pub mod litellm;
pub mod pricing;
pub mod ratelimit;
pub mod report;
pub mod store;
pub mod window;

use crate::clock::SharedClock;
use crate::config::{BudgetConfig, Config, LimitsConfig, Scope};
use crate::metrics::Metrics;
use crate::usage::Usage;
use pricing::{Estimate, Estimator, PriceTable, Pricing, ServiceTier};
use ratelimit::RateLimits;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use store::{
    Apply, CounterKey, GrowItem, GrowOutcome, InflightRow, PoolRef, RevocationKind, SpendRecord,
    Store, StoreError,
};
use tollgate::{Claims, Nanos};
use window::rfc3339;

/// Why governance refused a request. Carries facts, not prose: `crate::error` writes the message.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    /// The token (by `jti`) or its principal is revoked.
    #[error("token revoked")]
    Revoked,
    /// A requests- or tokens-per-minute limit is reached.
    #[error("rate limit reached ({what})")]
    RateLimited { what: String, retry_after_secs: u64 },
    /// The model has no price, so it cannot be budgeted.
    #[error("model {model:?} has no price")]
    Unpriced { model: String },
    /// The grant names a budget this broker does not configure.
    #[error("grant names unconfigured budget {id:?}")]
    UnknownBudget { id: String },
    /// A budget cannot cover the request's estimate.
    #[error("budget {} cannot cover the request", .0.budget_id)]
    BudgetExceeded(Box<BudgetRefusal>),
    /// The store is down (or too contended) and governance fails closed.
    #[error("governance store unavailable")]
    StoreUnavailable,
}

/// The facts of a budget refusal: which budget, for whom, what is left, when it resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    pub budget_id: String,
    pub scope: Scope,
    /// The subject the budget is counted for (a jti for token budgets).
    pub subject: String,
    pub window: &'static str,
    pub amount: Nanos,
    pub spent: Nanos,
    /// Held by requests in flight (never this replica's own free allotment).
    pub in_flight: Nanos,
    /// What the refused request needed.
    pub need: Nanos,
    /// Unix seconds of the next reset; `None` for a lifetime budget.
    pub resets_at: Option<i64>,
}

impl BudgetRefusal {
    /// What is left of the budget: amount − spent − in flight, never below zero.
    pub fn left(&self) -> Nanos {
        Nanos((self.amount.0 - self.spent.0 - self.in_flight.0).max(0))
    }
}

/// What settling one finished request produced: its cost, and the store write that records it (the caller,
/// [`crate::accounting`], group-commits these).
#[derive(Debug)]
pub struct Settlement {
    pub cost: Nanos,
    pub apply: Apply,
    /// The tokens charged (reported, or estimated without usage): what tokens-per-minute limits count.
    pub tokens: u64,
}

/// Requests of dead brokers charged their reserved estimate by this replica
/// ([`Governance::charge_dead_in_flight`]), and the counters that moved (with their `spent` after).
#[derive(Debug, Default)]
pub struct Charged {
    pub records: Vec<SpendRecord>,
    pub moved: Vec<(CounterKey, i64)>,
}

/// What an admitted request holds until it settles.
#[derive(Debug)]
pub struct Reservation {
    pub id: String,
    pub keys: Vec<CounterKey>,
    pub estimate: Estimate,
    /// The model's price as the table had it at admission (settlement charges it, whatever reloads later).
    pub price: Arc<Pricing>,
    /// The service tier charged: as the request asked, unless the answer says it was served at another
    /// ([`Reservation::served_at`]).
    pub tier: ServiceTier,
    /// False when no budget applies, or the store was down and `on_unavailable = "allow"` let the request
    /// through: then nothing of an allotment backs it.
    pub held: bool,
    /// The allotment epoch it was admitted under (see [`allot`]).
    pub epoch: u64,
}

impl Reservation {
    /// The answer reports the service tier it was served at (OpenAI's `service_tier` in the response):
    /// charge that one.
    pub fn served_at(&mut self, tier: ServiceTier) {
        self.tier = tier;
    }
}

/// Revocations as this replica knows them.
type Revoked = store::RevocationSet;

pub struct Governance {
    pub store: Arc<dyn Store>,
    pub prices: PriceTable,
    pub estimator: Estimator,
    budgets: Vec<BudgetConfig>,
    limits: LimitsConfig,
    rates: RateLimits,
    redis: Option<ratelimit::RedisLimits>,
    revoked: RwLock<Revoked>,
    /// This process, as the owner of its reservations (leases are renewed per owner).
    owner: String,
    lease_secs: u64,
    poll_interval: Duration,
    fail_open: bool,
    clock: SharedClock,
    /// This process's allotments (in memory; backed by the pool reservation in the store).
    allot: Mutex<allot::Allotments>,
    /// This process's admitted requests not yet settled in the store, written to it every round so that
    /// they are charged their estimate if this process dies ([`inflight`]).
    inflight: Mutex<inflight::Registry>,
    /// Serialises grows, pool resets and the pool's release (one store round trip at a time per process;
    /// requests waiting for it re-check the allotment another request just grew).
    grow_lock: tokio::sync::Mutex<()>,
    /// False after a store write failed (a settlement or a grow) until one succeeds: then every admission
    /// goes to the store (fail closed, or `allow`) instead of the allotment, so a broker that cannot record
    /// spend stops serving on credit.
    store_ok: std::sync::atomic::AtomicBool,
    /// Until when (unix seconds) this replica's allotment pool is known to be leased to it: set by every
    /// grow and lease renewal. Past it (a long pause, a lost store connection) another replica may have
    /// expired the pool and handed its amounts out again, so the allotment is not spent before the store
    /// has confirmed the lease (see docs/governance.md, "A replica that stops renewing").
    lease_until: std::sync::atomic::AtomicI64,
    metrics: Arc<Metrics>,
    pub keys: Option<keys::KeyManager>,
    /// Delivers budget alerts to the configured sinks.
    alerter: alerts::Alerter,
    /// Alert marks this replica has claimed or seen claimed (so each is tried in the store once per replica).
    alerted: Mutex<HashSet<(CounterKey, alerts::Mark)>>,
    /// Settled spend per counter as this replica last saw it (its own settlement writes, usage reports, a
    /// background read on first use): the remaining-budget response header, without a store read per
    /// request.
    known_spent: Arc<Mutex<HashMap<CounterKey, i64>>>,
    /// `[alerts] weekly_report`: the dimension the weekly report groups by.
    weekly_report: Option<store::Dimension>,
    /// The week (its Monday, Unix seconds) whose previous week's report this replica has dealt with.
    weekly_done: std::sync::atomic::AtomicI64,
}

/// The tightest budget of an admitted request as this replica knows it, for the response headers
/// `x-tollgate-budget`, `x-tollgate-budget-remaining` (USD, nine places) and `x-tollgate-budget-resets`.
/// "Remaining" is the amount less the settled spend this replica has seen (its own settlements at once,
/// other replicas' as of its last read): requests in flight are not subtracted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetHint {
    pub budget_id: String,
    pub remaining: Nanos,
    pub amount: Nanos,
    /// Unix seconds; `None` for a lifetime budget.
    pub resets_at: Option<i64>,
}

impl BudgetHint {
    pub const HEADER: &'static str = "x-tollgate-budget";
    pub const HEADER_REMAINING: &'static str = "x-tollgate-budget-remaining";
    pub const HEADER_RESETS: &'static str = "x-tollgate-budget-resets";

    /// Add the headers to a response.
    pub fn insert_into(&self, headers: &mut http::HeaderMap) {
        use http::{HeaderName, HeaderValue};
        // Names made at compile time (a `&str` key is parsed on every insert).
        const HEADER: HeaderName = HeaderName::from_static(BudgetHint::HEADER);
        const REMAINING: HeaderName = HeaderName::from_static(BudgetHint::HEADER_REMAINING);
        const RESETS: HeaderName = HeaderName::from_static(BudgetHint::HEADER_RESETS);
        if let Ok(v) = HeaderValue::from_str(&self.budget_id) {
            headers.insert(HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&report::usd9(self.remaining.0)) {
            headers.insert(REMAINING, v);
        }
        if let Some(r) = self.resets_at
            && let Ok(v) = HeaderValue::from_str(&rfc3339(r))
        {
            headers.insert(RESETS, v);
        }
    }
}
/// Grow attempts per admission before giving up (only reached when concurrent admissions keep taking the
/// allotment just grown).
const MAX_GROWS: usize = 32;
/// Each grow asks for this many estimates beyond the need (capped at an eighth of the headroom).
const CHUNK_ESTIMATES: i64 = 16;

/// Why admission could not take its estimate.
enum TakeError {
    Refused {
        key: usize,
        spent: i64,
        reserved: i64,
    },
    Store(StoreError),
    Contended,
}

/// The usage a request is charged for: as reported; else, for an answer cut before its usage arrived, the
/// whole estimate (a non-streamed answer was generated in full); else the input estimate plus what was
/// streamed.
fn settled_usage(estimator: &Estimator, r: &Reservation, f: &Finished<'_>) -> Usage {
    match f.usage {
        Some(u) => u,
        None if f.end == "cut" => Usage {
            input_tokens: r.estimate.input_tokens,
            output_tokens: r.estimate.output_tokens,
            ..Usage::default()
        },
        None => estimator.partial_usage(&r.estimate, f.streamed_text_bytes),
    }
}

/// How a forwarded request ended, for settlement.
#[derive(Clone, Copy, Debug)]
pub struct Finished<'a> {
    pub model: &'a str,
    pub provider: &'a str,
    /// Usage as the upstream reported it; `None` when the stream ended without it.
    pub usage: Option<Usage>,
    /// `completed`, `incomplete`, `failed`, `truncated` (a stream without a terminal event) or `cut` (a
    /// non-streamed body broken off).
    pub end: &'a str,
    pub streamed_text_bytes: u64,
}

/// One budget as the token holder sees it.
#[derive(Debug, Serialize)]
pub struct BudgetView {
    pub id: String,
    pub scope: Scope,
    pub subject: String,
    pub window: &'static str,
    pub amount_usd: String,
    pub spent_usd: String,
    pub reserved_usd: String,
    pub remaining_usd: String,
    pub amount_nanos: i64,
    pub spent_nanos: i64,
    pub reserved_nanos: i64,
    pub remaining_nanos: i64,
    pub period_start: String,
    /// `None` for a lifetime budget.
    pub resets_at: Option<String>,
}

/// A principal's usage since the start of the UTC day.
#[derive(Debug, Serialize)]
pub struct UsageToday {
    pub since: String,
    #[serde(flatten)]
    pub totals: store::UsageTotals,
    pub cost_usd: String,
}

fn usd(n: i64) -> String {
    Nanos(n).to_string()
}

impl Governance {
    pub async fn open(
        config: &Config,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let store = store::open(&config.store).await?;
        let keys = if config.tokens.signing_key_file.is_none() {
            // Keys are polled every max(1 s, poll interval); a forced rotation waits several polls.
            let poll_secs = config.store.poll_interval_ms.max(1000).div_ceil(1000);
            Some(
                keys::KeyManager::new(
                    config.tokens.rotate_secs,
                    config.tokens.max_ttl_secs + config.tokens.leeway_secs,
                )
                .with_publish_lead((3 * poll_secs).max(keys::DEFAULT_PUBLISH_LEAD_SECS))
                .with_kek(config.tokens.key_encryption_key.clone()),
            )
        } else {
            None
        };
        Ok(Self::with_store(store, config, clock, keys, metrics))
    }

    pub fn with_store(
        store: Arc<dyn Store>,
        config: &Config,
        clock: SharedClock,
        keys: Option<keys::KeyManager>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let alerter = alerts::Alerter::new(&config.alerts, metrics.clone(), clock.clone());
        Governance {
            store,
            prices: config.pricing.table.clone(),
            estimator: config.pricing.estimator,
            budgets: config.budgets.clone(),
            limits: config.limits.clone(),
            rates: RateLimits::default(),
            redis: config
                .limits
                .redis_url
                .as_deref()
                .and_then(|u| ratelimit::RedisLimits::new(u, &config.limits.redis_prefix)),
            revoked: RwLock::new(Revoked::default()),
            owner: uuid::Uuid::new_v4().simple().to_string(),
            lease_secs: config.store.reservation_lease_secs,
            poll_interval: Duration::from_millis(config.store.poll_interval_ms),
            fail_open: config.store.fail_open,
            clock,
            allot: Mutex::new(allot::Allotments::default()),
            inflight: Mutex::new(inflight::Registry::default()),
            grow_lock: tokio::sync::Mutex::new(()),
            store_ok: std::sync::atomic::AtomicBool::new(true),
            lease_until: std::sync::atomic::AtomicI64::new(0),
            alerter,
            alerted: Mutex::new(HashSet::new()),
            known_spent: Arc::new(Mutex::new(HashMap::new())),
            weekly_report: config.alerts.weekly_report,
            weekly_done: std::sync::atomic::AtomicI64::new(i64::MIN),
            metrics,
            keys,
        }
    }

    /// The budget alert sinks.
    pub fn alerter(&self) -> &alerts::Alerter {
        &self.alerter
    }

    fn alerted(&self) -> std::sync::MutexGuard<'_, HashSet<(CounterKey, alerts::Mark)>> {
        self.alerted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remember counters' settled spend (after a settlement batch is stored, or a store read).
    pub fn note_spent(&self, counters: &[(CounterKey, i64)]) {
        if counters.is_empty() {
            return;
        }
        let mut k = self
            .known_spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, spent) in counters {
            let e = k.entry(key.clone()).or_insert(*spent);
            *e = (*e).max(*spent);
        }
    }

    /// The tightest of an admitted request's budgets, from what this replica knows (no store read on the
    /// request path: a counter it has not seen yet is read in the background and left out this time).
    /// `None` when no budget applies or none is known yet.
    pub fn budget_hint(&self, r: &Reservation) -> Option<BudgetHint> {
        let mut best: Option<BudgetHint> = None;
        let mut unknown = Vec::new();
        {
            let known = self
                .known_spent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for key in &r.keys {
                let Some(b) = self.budgets.iter().find(|b| b.id == key.budget_id) else {
                    continue;
                };
                let Some(spent) = known.get(key) else {
                    unknown.push(key.clone());
                    continue;
                };
                let remaining = Nanos((b.amount.0 - spent).max(0));
                if best.as_ref().is_none_or(|x| remaining < x.remaining) {
                    best = Some(BudgetHint {
                        budget_id: b.id.clone(),
                        remaining,
                        amount: b.amount,
                        resets_at: b
                            .window
                            .period(u64::try_from(key.period_start).unwrap_or(0))
                            .1,
                    });
                }
            }
        }
        if !unknown.is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (store, known) = (self.store.clone(), self.known_spent.clone());
            rt.spawn(async move {
                if let Ok(rows) = store.counters(&unknown).await {
                    let mut k = known
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (key, (spent, _)) in unknown.into_iter().zip(rows) {
                        let e = k.entry(key).or_insert(spent);
                        *e = (*e).max(spent);
                    }
                }
            });
        }
        best
    }

    /// After a settlement batch is stored (`counters`: each counter it moved, with its `spent` after): claim
    /// every alert mark reached that this replica has not seen yet. Returns the alerts this replica won (each
    /// mark is won by exactly one replica); the caller records and delivers them. A store error leaves the
    /// mark to be tried again on the counter's next settlement.
    pub async fn check_thresholds(
        &self,
        counters: &[(CounterKey, i64)],
    ) -> Vec<alerts::AlertEvent> {
        let mut out = Vec::new();
        for (key, spent) in counters {
            let Some(b) = self.budgets.iter().find(|b| b.id == key.budget_id) else {
                continue;
            };
            if b.thresholds.is_empty() && b.soft.is_none() {
                continue;
            }
            let reached: Vec<alerts::Mark> = alerts::reached(b, *spent)
                .into_iter()
                .filter(|m| !self.alerted().contains(&(key.clone(), *m)))
                .collect();
            for m in reached {
                let now = self.now();
                match self.store.claim_alert(key, &m.label(), *spent, now).await {
                    Ok(won) => {
                        self.alerted().insert((key.clone(), m));
                        if won {
                            out.push(alerts::AlertEvent::new(
                                b,
                                &key.subject,
                                key.period_start,
                                m,
                                *spent,
                                now,
                            ));
                        }
                    }
                    Err(e) => {
                        self.metrics.store_error("alert");
                        tracing::warn!(error = %e, budget = %b.id, "could not claim a budget alert; will retry");
                    }
                }
            }
        }
        out
    }

    fn allot(&self) -> std::sync::MutexGuard<'_, allot::Allotments> {
        self.allot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pool_id(&self, epoch: u64) -> String {
        format!("pool-{}-{epoch}", self.owner)
    }

    /// Record the outcome of a settlement write (by [`crate::accounting`]): after a failure, admissions go
    /// to the store until a write succeeds again.
    pub fn note_store_write(&self, ok: bool) {
        self.store_ok
            .store(ok, std::sync::atomic::Ordering::Relaxed);
        if !ok {
            self.metrics.store_error("settle");
        }
    }

    /// Graceful shutdown (after [`crate::accounting::Accounting::flush`]): give this process's allotments
    /// back (delete its pool). Requests still in flight afterwards settle their spend without an allotment.
    pub async fn shutdown(&self) {
        // Settled requests' rows go; requests whose settlement could not be stored stay, to be charged
        // their estimate when this process's lease runs out.
        self.sync_inflight().await;
        let _g = self.grow_lock.lock().await;
        let (id, exists) = {
            let mut a = self.allot();
            let out = (self.pool_id(a.epoch), a.pool_exists);
            a.reset();
            out
        };
        if exists {
            match self.store.release_pool(&id).await {
                Ok(_) => tracing::info!("budget allotments given back"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not give budget allotments back; they expire with their lease")
                }
            }
        }
    }

    /// This process's free allotment on a counter (shown as not in flight in reports).
    pub fn free_allotment(&self, key: &CounterKey) -> i64 {
        self.allot().free(key)
    }

    /// Σ held and Σ used over this process's allotments.
    pub fn allotment_totals(&self) -> (i64, i64) {
        self.allot().totals()
    }

    /// Take `estimate` on every key from the allotments, growing them in the store when short.
    async fn take(
        &self,
        keys: &[CounterKey],
        limits: &[i64],
        estimate: i64,
        now: i64,
    ) -> Result<u64, TakeError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.store_ok.load(Relaxed)
            && now < self.lease_until.load(Relaxed)
            && let Ok(epoch) = self.allot().try_take(keys, estimate, now)
        {
            return Ok(epoch);
        }
        let _g = self.grow_lock.lock().await;
        for _ in 0..MAX_GROWS {
            // Prove the store works (after a failed write) or that the pool is still ours (after the lease
            // ran out unrenewed) before spending the allotment: a write to the pool row does both.
            let probe = !self.store_ok.load(Relaxed) || now >= self.lease_until.load(Relaxed);
            let (short, epoch, exists) = {
                let mut a = self.allot();
                match a.try_take(keys, estimate, now) {
                    Ok(epoch) if !probe => return Ok(epoch),
                    Ok(epoch) => {
                        a.settle(epoch, keys, estimate, 0);
                        (Vec::new(), a.epoch, a.pool_exists)
                    }
                    Err(short) => (short, a.epoch, a.pool_exists),
                }
            };
            let items: Vec<GrowItem> = short
                .iter()
                .map(|&(i, free)| GrowItem {
                    key: keys[i].clone(),
                    need: estimate - free,
                    chunk: estimate.saturating_mul(CHUNK_ESTIMATES),
                    limit: limits[i],
                })
                .collect();
            let id = self.pool_id(epoch);
            let pool = PoolRef {
                id: &id,
                owner: &self.owner,
                now,
                expires_at: now + i64::try_from(self.lease_secs).unwrap_or(30),
                exists,
            };
            let grown = self.store.grow(pool, &items).await;
            self.store_ok.store(grown.is_ok(), Relaxed);
            match grown {
                Ok(GrowOutcome::Granted(amounts)) => {
                    self.metrics.allotment_grow();
                    let mut a = self.allot();
                    if a.epoch == epoch {
                        a.pool_exists = true;
                        // The grow wrote the pool's lease: `now + lease_secs`.
                        self.lease_until
                            .store(now + i64::try_from(self.lease_secs).unwrap_or(30), Relaxed);
                    }
                    for (it, amount) in items.iter().zip(amounts) {
                        a.add(epoch, &it.key, amount, now);
                    }
                    if let Ok(epoch) = a.try_take(keys, estimate, now) {
                        return Ok(epoch);
                    }
                }
                Ok(GrowOutcome::Refused {
                    index,
                    spent,
                    reserved,
                }) => {
                    return Err(TakeError::Refused {
                        key: short[index].0,
                        spent,
                        reserved,
                    });
                }
                Ok(GrowOutcome::PoolLost) => {
                    tracing::warn!(
                        "this broker's budget allotments were expired by another replica (it was presumed dead); starting over"
                    );
                    self.allot().reset();
                }
                Err(e) => return Err(TakeError::Store(e)),
            }
        }
        Err(TakeError::Contended)
    }

    fn now(&self) -> i64 {
        i64::try_from(self.clock.now_secs()).unwrap_or(i64::MAX)
    }

    /// The budgets that apply to these claims, with the subject each is counted for.
    fn in_scope(&self, claims: &Claims) -> Result<Vec<(&BudgetConfig, String)>, GovernanceError> {
        let g = &claims.grant;
        for id in &g.budgets {
            if !self.budgets.iter().any(|b| &b.id == id) {
                tracing::error!(budget = %id, principal = %g.principal, "grant names a budget this broker does not configure");
                return Err(GovernanceError::UnknownBudget { id: id.clone() });
            }
        }
        let mut out = Vec::new();
        for b in &self.budgets {
            let subject = match b.scope {
                Scope::Token => Some(claims.jti.clone()),
                Scope::Principal => Some(g.principal.clone()),
                Scope::Team => g.team.clone(),
                Scope::Org => g.org.clone(),
            };
            let Some(subject) = subject else { continue };
            let listed = g.budgets.contains(&b.id);
            if listed || b.matches.as_ref().is_none_or(|m| m == &subject) {
                out.push((b, subject));
            }
        }
        Ok(out)
    }

    /// Refuse revoked tokens. Purely local: the background poller keeps the set current.
    pub fn check_revoked(&self, claims: &Claims) -> Result<(), GovernanceError> {
        let r = self
            .revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Tokens are minted with iat backdated by SKEW_SECS; the real issue time is iat + SKEW_SECS.
        let issued = i64::try_from(claims.iat + crate::token::SKEW_SECS).unwrap_or(i64::MAX);
        if r.refuses(&claims.jti, &claims.grant.principal, issued) {
            return Err(GovernanceError::Revoked);
        }
        Ok(())
    }

    /// Is a token (by id, principal and real issue time) revoked? For admin listings.
    pub fn is_revoked(&self, jti: &str, principal: &str, issued_at: i64) -> bool {
        let r = self
            .revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.refuses(jti, principal, issued_at)
    }

    fn apply_revocations(&self, rows: Vec<store::Revocation>) {
        if rows.is_empty() {
            return;
        }
        self.revoked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(rows);
    }

    /// Revoke a token or a principal: recorded in the store (other replicas poll it), effective here at once.
    pub async fn revoke(&self, kind: RevocationKind, value: &str) -> Result<i64, StoreError> {
        let now = self.now();
        let cutoff = (kind == RevocationKind::Principal).then(store::revocation_cutoff);
        let seq = self
            .store
            .revoke(kind, value, now, cutoff.as_deref())
            .await?;
        self.apply_revocations(vec![store::Revocation {
            seq: 0,
            kind,
            value: value.to_string(),
            revoked_at: now,
            cutoff,
        }]);
        tracing::info!(kind = kind.as_str(), seq, "revoked");
        Ok(seq)
    }

    fn rate_keys(&self, claims: &Claims) -> Vec<(String, Option<u32>, Option<u32>)> {
        let g = &claims.grant;
        let mut v = vec![(
            format!("principal {}", g.principal),
            g.rate
                .requests_per_minute
                .or(self.limits.requests_per_minute),
            g.rate.tokens_per_minute.or(self.limits.tokens_per_minute),
        )];
        if let Some(t) = &g.team {
            v.push((
                format!("team {t}"),
                self.limits.team_requests_per_minute,
                self.limits.team_tokens_per_minute,
            ));
        }
        v
    }

    /// Rate limits, then the budget reservation, for a request of `body_len` bytes whose output is limited
    /// to `max_out` tokens (the proxy reads both in its one parse of the body) and that asks for the service
    /// tier `tier` (`service_tier`: `priority`, `flex`; else [`ServiceTier::Standard`]): its estimate, and
    /// its charge unless the answer reports another tier, are at that tier's price where the table has one.
    pub async fn admit_tier(
        &self,
        claims: &Claims,
        model: &str,
        body_len: u64,
        max_out: Option<u64>,
        tier: ServiceTier,
    ) -> Result<Reservation, GovernanceError> {
        let r = self
            .admit_unregistered(claims, model, body_len, max_out, tier)
            .await?;
        // Until it is settled in the store, the request is in flight: charged its estimate if this process
        // dies (written to the store by the next round, off the request path).
        self.inflight()
            .register(self.inflight_row(claims, model, &r));
        Ok(r)
    }

    /// The spend row that charges an admitted request its reserved estimate, should its broker die.
    fn inflight_row(&self, claims: &Claims, model: &str, r: &Reservation) -> InflightRow {
        let g = &claims.grant;
        InflightRow {
            keys: r.keys.clone(),
            record: SpendRecord {
                id: r.id.clone(),
                settled_at: 0,
                principal: g.principal.clone(),
                team: g.team.clone(),
                org: g.org.clone(),
                jti: claims.jti.clone(),
                model: model.to_string(),
                // Chosen by the router after admission: not known here.
                provider: "unknown".into(),
                input_tokens: r.estimate.input_tokens as i64,
                cached_input_tokens: 0,
                cache_write_tokens: 0,
                output_tokens: r.estimate.output_tokens as i64,
                reasoning_tokens: 0,
                cost: r.estimate.cost.0,
                reserved: if r.held { r.estimate.cost.0 } else { 0 },
                usage_reported: false,
                end_reason: store::END_ESTIMATED.into(),
                price_version: r.price.version.to_string(),
                price_tier: r.price.rates(r.tier, r.estimate.input_tokens).label(),
            },
        }
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, inflight::Registry> {
        self.inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Settlements stored (by [`crate::accounting`], after their batch committed): those requests are no
    /// longer in flight.
    pub fn note_settled<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut reg = self.inflight();
        for id in ids {
            reg.end(id);
        }
    }

    /// Requests admitted here and not yet settled in the store.
    pub fn in_flight(&self) -> usize {
        self.inflight().len()
    }

    /// Write this process's in-flight requests to the store (see [`inflight`]); on failure they are tried
    /// again on the next round.
    pub async fn sync_inflight(&self) {
        let sync = self.inflight().take();
        if sync.is_empty() {
            return;
        }
        let until = self
            .lease_until
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(self.now() + i64::try_from(self.lease_secs).unwrap_or(30));
        if let Err(e) = self
            .store
            .sync_inflight(&self.owner, until, &sync.add, &sync.remove)
            .await
        {
            tracing::warn!(error = %e, "could not record the requests in flight; will retry");
            self.inflight().restore(sync);
        }
    }

    /// Charge the requests in flight of brokers that died (their lease ran out) their reserved estimate,
    /// once across replicas. Returns what was charged (for the audit trail and alerts).
    pub async fn charge_dead_in_flight(&self, now: i64) -> Charged {
        match self.store.charge_expired_inflight(now).await {
            Ok((records, moved)) => {
                if !records.is_empty() {
                    tracing::warn!(
                        requests = records.len(),
                        cost_nanos = records.iter().map(|r| r.cost).sum::<i64>(),
                        "charged requests a dead broker had in flight their reserved estimate"
                    );
                }
                self.note_spent(&moved);
                Charged { records, moved }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not charge a dead broker's requests in flight; will retry");
                Charged::default()
            }
        }
    }

    async fn admit_unregistered(
        &self,
        claims: &Claims,
        model: &str,
        body_len: u64,
        max_out: Option<u64>,
        tier: ServiceTier,
    ) -> Result<Reservation, GovernanceError> {
        for (key, rpm, tpm) in self.rate_keys(claims) {
            if let Some(tpm) = tpm {
                let shared = match &self.redis {
                    Some(r) => self.redis_or_local(r.check_tokens(&key, tpm).await),
                    None => None,
                };
                shared
                    .unwrap_or_else(|| self.rates.check_tokens(&key, tpm))
                    .map_err(limited)?;
            }
            if let Some(rpm) = rpm {
                let shared = match &self.redis {
                    Some(r) => self.redis_or_local(r.check_request(&key, rpm).await),
                    None => None,
                };
                shared
                    .unwrap_or_else(|| self.rates.check_request(&key, rpm))
                    .map_err(limited)?;
            }
        }
        let price = self.prices.pricing(model).ok_or_else(|| {
            tracing::warn!(model, "refused: model has no price");
            GovernanceError::Unpriced {
                model: model.to_string(),
            }
        })?;
        let estimate = self.estimator.estimate(&price, tier, body_len, max_out);
        let scope = self.in_scope(claims)?;
        let now = self.now();
        let keys: Vec<CounterKey> = scope
            .iter()
            .map(|(b, subject)| CounterKey {
                budget_id: b.id.clone(),
                subject: subject.clone(),
                period_start: b.window.period(now as u64).0,
            })
            .collect();
        let id = uuid::Uuid::now_v7().simple().to_string();
        if keys.is_empty() {
            return Ok(Reservation {
                id,
                keys,
                estimate,
                price,
                tier,
                held: false,
                epoch: 0,
            });
        }
        let limits: Vec<i64> = scope.iter().map(|(b, _)| b.amount.0).collect();
        match self.take(&keys, &limits, estimate.cost.0, now).await {
            Ok(epoch) => Ok(Reservation {
                id,
                keys,
                estimate,
                price,
                tier,
                held: true,
                epoch,
            }),
            Err(TakeError::Refused {
                key,
                spent,
                reserved,
            }) => {
                let (b, subject) = &scope[key];
                // This replica's own free allotment is not held by requests in flight.
                let reserved = (reserved - self.free_allotment(&keys[key])).max(0);
                Err(refusal(b, subject, spent, reserved, estimate.cost.0, now))
            }
            Err(TakeError::Contended) => {
                tracing::error!("could not take a budget allotment after {MAX_GROWS} grows");
                Err(GovernanceError::StoreUnavailable)
            }
            Err(TakeError::Store(e)) => self.store_down(
                e,
                Reservation {
                    id,
                    keys,
                    estimate,
                    price,
                    tier,
                    held: false,
                    epoch: 0,
                },
            ),
        }
    }

    fn store_down(&self, e: StoreError, r: Reservation) -> Result<Reservation, GovernanceError> {
        self.metrics.store_error("reserve");
        if self.fail_open {
            tracing::error!(error = %e, "governance store unavailable; admitting WITHOUT a budget reservation (store.on_unavailable = \"allow\")");
            Ok(r)
        } else {
            tracing::error!(error = %e, "governance store unavailable; refusing (fail closed)");
            Err(GovernanceError::StoreUnavailable)
        }
    }

    /// Release a reservation without charging (every attempt failed before the first byte).
    /// Purely local: the estimate goes back to this process's free allotment.
    pub fn release(&self, r: Reservation) {
        self.inflight().end(&r.id);
        if r.held {
            let _ = self.allot().settle(r.epoch, &r.keys, r.estimate.cost.0, 0);
        }
    }

    /// Settle: charge the reported usage (or, without usage, the input estimate plus the streamed output),
    /// release the rest of the reservation into this process's allotment, and return the cost with the store
    /// write that records it. Never awaits: tokens-per-minute are charged here only when the limits are this
    /// process's own; with Redis the caller charges them with [`Governance::charge_shared_tokens`].
    pub fn settle(&self, claims: &Claims, r: Reservation, f: Finished<'_>) -> Settlement {
        let u = settled_usage(&self.estimator, &r, &f);
        if self.redis.is_none() {
            for (key, _, tpm) in self.rate_keys(claims) {
                if let Some(tpm) = tpm {
                    self.rates.charge_tokens(&key, tpm, u.total());
                }
            }
        }
        self.record_settlement(claims, r, f, u)
    }

    /// Whether tokens-per-minute are shared through Redis (then [`Governance::charge_shared_tokens`] must be
    /// called for every settlement).
    pub fn shares_rate_limits(&self) -> bool {
        self.redis.is_some()
    }

    /// Charge `tokens` against the shared tokens-per-minute limits (Redis; this process's own limiter when
    /// Redis does not answer).
    pub async fn charge_shared_tokens(&self, claims: &Claims, tokens: u64) {
        let Some(redis) = &self.redis else { return };
        for (key, _, tpm) in self.rate_keys(claims) {
            if let Some(tpm) = tpm
                && self
                    .redis_or_local(redis.charge_tokens(&key, tpm, tokens).await)
                    .is_none()
            {
                self.rates.charge_tokens(&key, tpm, tokens);
            }
        }
    }

    /// The settled request's spend record and its allotment consumed.
    fn record_settlement(
        &self,
        claims: &Claims,
        r: Reservation,
        f: Finished<'_>,
        u: Usage,
    ) -> Settlement {
        let reported = f.usage.is_some();
        let (cost, applied) = r.price.cost_at(&u, r.tier);
        let g = &claims.grant;
        let record = SpendRecord {
            id: r.id.clone(),
            settled_at: self.now(),
            principal: g.principal.clone(),
            team: g.team.clone(),
            org: g.org.clone(),
            jti: claims.jti.clone(),
            model: f.model.to_string(),
            provider: f.provider.to_string(),
            input_tokens: u.input_tokens as i64,
            cached_input_tokens: u.cached_input_tokens as i64,
            cache_write_tokens: u.cache_write_tokens as i64,
            output_tokens: u.output_tokens as i64,
            reasoning_tokens: u.reasoning_tokens as i64,
            cost: cost.0,
            reserved: if r.held { r.estimate.cost.0 } else { 0 },
            usage_reported: reported,
            end_reason: f.end.to_string(),
            price_version: r.price.version.to_string(),
            price_tier: applied.label(),
        };
        // The allotment consumed: the cost, as far as the free allotment covers it (≥ min(cost, estimate)).
        let releases = if r.held {
            self.allot()
                .settle(r.epoch, &r.keys, r.estimate.cost.0, cost.0)
        } else {
            vec![0; r.keys.len()]
        };
        Settlement {
            cost,
            tokens: u.total(),
            apply: Apply::Spend {
                pool: r.held.then(|| self.pool_id(r.epoch)),
                keys: r.keys,
                releases,
                record: Box::new(record),
            },
        }
    }

    /// The token holder's budgets: amount, spent, reserved, remaining and when each resets.
    pub async fn report(&self, claims: &Claims) -> Result<Vec<BudgetView>, GovernanceError> {
        let scope = self.in_scope(claims)?;
        let now = self.now();
        let keys: Vec<CounterKey> = scope
            .iter()
            .map(|(b, s)| CounterKey {
                budget_id: b.id.clone(),
                subject: s.clone(),
                period_start: b.window.period(now as u64).0,
            })
            .collect();
        let counters = self.store.counters(&keys).await.map_err(|e| {
            tracing::error!(error = %e, "governance store unavailable (usage report)");
            GovernanceError::StoreUnavailable
        })?;
        let seen: Vec<(CounterKey, i64)> = keys
            .iter()
            .cloned()
            .zip(counters.iter().map(|c| c.0))
            .collect();
        self.note_spent(&seen);
        Ok(scope
            .iter()
            .zip(keys.iter().zip(counters))
            .map(|((b, subject), (key, (spent, reserved)))| {
                let (start, end) = b.window.period(now as u64);
                // This replica's free allotment is not in flight (other replicas' free allotments still
                // show as reserved: this process cannot see them).
                let reserved = (reserved - self.free_allotment(key)).max(0);
                let remaining = (b.amount.0 - spent - reserved).max(0);
                BudgetView {
                    id: b.id.clone(),
                    scope: b.scope,
                    subject: if b.scope == Scope::Token {
                        "this token".into()
                    } else {
                        subject.clone()
                    },
                    window: b.window.as_str(),
                    amount_usd: usd(b.amount.0),
                    spent_usd: usd(spent),
                    reserved_usd: usd(reserved),
                    remaining_usd: usd(remaining),
                    amount_nanos: b.amount.0,
                    spent_nanos: spent,
                    reserved_nanos: reserved,
                    remaining_nanos: remaining,
                    period_start: rfc3339(start),
                    resets_at: end.map(rfc3339),
                }
            })
            .collect())
    }

    /// The principal's settled requests since 00:00 UTC today, from the store (the same on every replica).
    pub async fn usage_today(&self, principal: &str) -> Result<UsageToday, GovernanceError> {
        let (since, _) = window::Window::Daily.period(self.now() as u64);
        let totals = self
            .store
            .usage_since(principal, since)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "governance store unavailable (usage report)");
                GovernanceError::StoreUnavailable
            })?;
        Ok(UsageToday {
            since: rfc3339(since),
            cost_usd: usd(totals.sums.cost_nanos),
            totals,
        })
    }

    /// One round of background work. Public so tests can drive it without timers. Returns the requests of
    /// dead brokers this round charged their estimate (the caller audits them).
    pub async fn tick(&self, renew: bool, expire: bool) -> Charged {
        let now = self.now();
        let mut charged = Charged::default();
        if renew {
            let until = now + i64::try_from(self.lease_secs).unwrap_or(30);
            let _g = self.grow_lock.lock().await;
            match self.store.renew(&self.owner, until).await {
                Ok(0) if self.allot().pool_exists => {
                    tracing::warn!(
                        "this broker's budget allotments were expired by another replica (it was presumed dead); starting over"
                    );
                    self.allot().reset();
                }
                Ok(_) => self
                    .lease_until
                    .store(until, std::sync::atomic::Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "could not renew reservation leases"),
            }
        }
        self.prune_alerted(now);
        self.weekly(now).await;
        let returns = self.return_idle(now);
        if !returns.is_empty()
            && let Err(e) = self.store.apply(&returns).await
        {
            // The amounts stay reserved in the pool until its lease expires: never lost, only late.
            self.note_store_write(false);
            tracing::warn!(error = %e, "could not give idle allotments back; they return when the lease expires");
        }
        if expire {
            match self.store.expire(now).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    released = n,
                    "released expired reservations (a broker stopped without settling)"
                ),
                Err(e) => tracing::warn!(error = %e, "could not expire reservations"),
            }
            if let Err(e) = self.store.prune_claims(now).await {
                tracing::warn!(error = %e, "could not prune expired replay claims");
            }
            charged = self.charge_dead_in_flight(now).await;
        }
        self.sync_inflight().await;
        let seq = self
            .revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seq;
        match self.store.revocations_since(seq).await {
            Ok(rows) => self.apply_revocations(rows),
            Err(e) => tracing::warn!(error = %e, "could not poll revocations"),
        }
        charged
    }

    /// `[alerts] weekly_report`: once the week (Monday 00:00 UTC) has turned, the first replica to claim the
    /// past week's run in the store sends its report to the sinks; the others do nothing. A store error is
    /// retried on the next round.
    pub async fn weekly(&self, now: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(by) = self.weekly_report else { return };
        let (week, _) = window::Window::Weekly.period(u64::try_from(now).unwrap_or(0));
        if self.weekly_done.load(Relaxed) == week {
            return;
        }
        let last = week - 7 * 86_400;
        let name = format!("weekly-{}", by.as_str());
        match self.store.claim_report(&name, last, now).await {
            Ok(false) => {}
            Ok(true) => {
                let req = report::ReportRequest {
                    from_day: last,
                    to_day: week - 86_400,
                    grouping: report::Grouping {
                        by_day: false,
                        by: Some(by),
                    },
                    format: report::Format::Json,
                };
                match report::Report::run(self.store.as_ref(), &req).await {
                    Ok(r) => {
                        tracing::info!(from = %r.from, to = %r.to, cost_nanos = r.totals.cost_nanos, "weekly spend report sent");
                        self.alerter.deliver_report(&r, &name, last);
                    }
                    Err(e) => {
                        // Claimed but not computed: logged; the next week's report is unaffected.
                        tracing::error!(error = %e, "weekly spend report could not be computed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not claim the weekly spend report; will retry");
                return;
            }
        }
        self.weekly_done.store(week, Relaxed);
    }

    /// Forget alert marks of past windows (their counters settle no more).
    fn prune_alerted(&self, now: i64) {
        let mut a = self.alerted();
        if a.is_empty() {
            return;
        }
        a.retain(|(k, _)| {
            self.budgets
                .iter()
                .find(|b| b.id == k.budget_id)
                .is_some_and(|b| b.window.period(now as u64).0 <= k.period_start)
        });
    }

    /// Give back the free allotment of counters unused for a lease period and of past windows: the store
    /// writes that return it (applied by [`Governance::tick`]).
    pub fn return_idle(&self, now: i64) -> Vec<Apply> {
        let idle = i64::try_from(self.lease_secs).unwrap_or(30);
        let (epoch, back) = {
            let mut a = self.allot();
            let back = a.take_free(|k, s| {
                let current = self
                    .budgets
                    .iter()
                    .find(|b| b.id == k.budget_id)
                    .is_some_and(|b| b.window.period(now as u64).0 == k.period_start);
                !current || s.last_used + idle <= now
            });
            (a.epoch, back)
        };
        back.into_iter()
            .map(|(key, amount)| Apply::Return {
                pool: self.pool_id(epoch),
                key,
                amount,
            })
            .collect()
    }

    pub fn lease_secs(&self) -> u64 {
        self.lease_secs
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// Load every revocation from the store. Called before the broker serves (a restarted replica must not
    /// accept a revoked token until its first poll); an error stops the start.
    pub async fn load_revocations(&self) -> Result<usize, StoreError> {
        let seq = self
            .revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seq;
        let rows = self.store.revocations_since(seq).await?;
        let n = rows.len();
        self.apply_revocations(rows);
        Ok(n)
    }
}

fn limited(l: ratelimit::Limited) -> GovernanceError {
    GovernanceError::RateLimited {
        retry_after_secs: l.retry_after.as_secs_f64().ceil().max(1.0) as u64,
        what: l.what,
    }
}

impl Governance {
    /// A Redis answer, or `None` (logged, counted) to fall back to the in-process limiter.
    fn redis_or_local<T>(&self, r: std::io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.metrics.redis_error();
                tracing::warn!(error = %e, "redis unavailable; using this process's rate limits");
                None
            }
        }
    }
}

/// The facts of a budget refusal (the message is written in `crate::error`).
fn refusal(
    b: &BudgetConfig,
    subject: &str,
    spent: i64,
    reserved: i64,
    need: i64,
    now: i64,
) -> GovernanceError {
    let (_, end) = b.window.period(now as u64);
    GovernanceError::BudgetExceeded(Box::new(BudgetRefusal {
        budget_id: b.id.clone(),
        scope: b.scope,
        subject: subject.to_string(),
        window: b.window.as_str(),
        amount: b.amount,
        spent: Nanos(spent),
        in_flight: Nanos(reserved),
        need: Nanos(need),
        resets_at: end,
    }))
}
