//! The governance store: budget counters, reservations (with leases), settled spend, revocations and
//! signing keys. Two implementations share one body of SQL: SQLite (embedded default, WAL, one file) and
//! PostgreSQL (several replicas).
//!
//! Every write that admits spend is a conditional `UPDATE … WHERE spent + reserved + $est <= $amount` inside
//! one transaction over all budgets in scope: there is no read-then-write window. In PostgreSQL a concurrent
//! updater of the same row blocks on the row lock and then re-evaluates the `WHERE` against the committed
//! row; SQLite serialises writers. Counter rows are touched in a fixed (sorted) order, so two transactions
//! never wait on each other in a cycle.

use crate::config::store::{StoreConfig, StoreKind};
use crate::session::CodexSession;
use async_trait::async_trait;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("store migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("store setup: {0}")]
    Setup(String),
    /// A store file, or its directory, that others can get at (the message names the path and the fix).
    #[error(transparent)]
    Files(#[from] crate::keys::KeyError),
    /// Another replica using this store issues tokens under another `public_url`.
    #[error(
        "the replicas using this store issue tokens as {store_issuer:?} (one was alive until {}), but this broker's [server] public_url is {issuer:?}. Every replica must have the same public_url: tokens minted by one are refused by the others. Set public_url = {store_issuer:?}; or, if the URL changed for every replica, stop them all and start again after that time.",
        crate::governance::window::rfc3339(*live_until)
    )]
    IssuerMismatch {
        store_issuer: String,
        issuer: String,
        live_until: i64,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e)
    }
}

/// One budget counter: a budget, for one subject (jti, principal, team or org), in one window instance.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct CounterKey {
    pub budget_id: String,
    pub subject: String,
    pub period_start: i64,
}

/// This process's allotment reservation ("pool"): one row in `reservations` whose items are the allotments
/// this process holds per counter. `exists` is what the process believes; a grow that finds a pool it
/// believed in gone reports [`GrowOutcome::PoolLost`] (another replica expired it).
#[derive(Clone, Copy, Debug)]
pub struct PoolRef<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub now: i64,
    pub expires_at: i64,
    pub exists: bool,
}

/// Grow the allotment on `key` by `need`, plus up to `chunk` more while the counter has headroom: the extra
/// is `min(chunk, (limit − spent − reserved − need) / 8)`, so it shrinks as the budget nears its limit.
#[derive(Clone, Debug)]
pub struct GrowItem {
    pub key: CounterKey,
    pub need: i64,
    pub chunk: i64,
    pub limit: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrowOutcome {
    /// Amount added to each item's allotment, in the order given.
    Granted(Vec<i64>),
    /// `items[index]` cannot take even its `need`: its counter as it stood.
    Refused {
        index: usize,
        spent: i64,
        reserved: i64,
    },
    /// The pool this process believed in is gone (expired by another replica); nothing was changed.
    PoolLost,
}

/// One queued write of the settlement writer (applied in batches by [`Store::apply`]).
#[derive(Clone, Debug)]
pub enum Apply {
    /// A settled request: `spent += record.cost` on every key; `releases[i]` moves out of the pool's item
    /// and `reserved` on `keys[i]` — only where that item still exists (a pool expired by another replica has
    /// already given its amounts back). Applied once per `record.id` (a retried batch is not re-applied).
    Spend {
        pool: Option<String>,
        keys: Vec<CounterKey>,
        releases: Vec<i64>,
        record: Box<SpendRecord>,
    },
    /// Give `amount` of unused allotment on `key` back to the budget.
    Return {
        pool: String,
        key: CounterKey,
        amount: i64,
    },
}

/// A settled request, as recorded in `spend`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SpendRecord {
    pub id: String,
    pub settled_at: i64,
    pub principal: String,
    pub team: Option<String>,
    pub org: Option<String>,
    pub jti: String,
    pub model: String,
    pub provider: String,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost: i64,
    pub reserved: i64,
    pub usage_reported: bool,
    pub end_reason: String,
    /// The price table entry that charged it (`builtin-2025-11-01`, `litellm-…`, `config-…`).
    pub price_version: String,
    /// The service tier and long-context band charged (`standard`, `priority above 272000`).
    pub price_tier: String,
}

/// The `end_reason` of a request charged its reserved estimate because its broker died before settling it
/// (its in-flight lease ran out, see [`Store::charge_expired_inflight`]).
pub const END_ESTIMATED: &str = "estimated";

/// An admitted request not yet settled in the store, as its replica writes it ([`Store::sync_inflight`]):
/// the spend row that charges its reserved estimate should its broker die, and the counters it was
/// admitted against.
#[derive(Clone, Debug)]
pub struct InflightRow {
    pub keys: Vec<CounterKey>,
    /// `end_reason` [`END_ESTIMATED`], `cost` = `reserved` = the estimate, `usage_reported` false.
    pub record: SpendRecord,
}

/// The select list of [`Sums`], the same text for SQLite and PostgreSQL (zeros over no rows); a macro so
/// that fixed queries can `concat!` it.
macro_rules! sums_sql {
    () => {
        "COUNT(*), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT), \
         CAST(COALESCE(SUM(cost), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN end_reason = 'estimated' THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN end_reason = 'estimated' THEN cost ELSE 0 END), 0) AS BIGINT)"
    };
}

/// Sums over settled `spend` rows: the one shape the report, session and usage queries read (SQLite and
/// PostgreSQL alike).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sums {
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_nanos: i64,
    /// Of these, the requests charged their reserved estimate because their broker died before settling
    /// them (`end_reason = 'estimated'`), and what they cost; in JSON only when not zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub estimated_requests: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub estimated_cost_nanos: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Sums {
    /// The select list of the sums (the `sums_sql!` text).
    const SQL: &'static str = sums_sql!();
    /// How many columns [`Sums::SQL`] selects.
    const COLUMNS: usize = 9;

    /// The sums from a result row whose [`Sums::SQL`] columns start at `at`.
    fn read<R>(r: &R, at: usize) -> Result<Sums, sqlx::Error>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Sums {
            requests: r.try_get(at)?,
            input_tokens: r.try_get(at + 1)?,
            cached_input_tokens: r.try_get(at + 2)?,
            cache_write_tokens: r.try_get(at + 3)?,
            output_tokens: r.try_get(at + 4)?,
            reasoning_tokens: r.try_get(at + 5)?,
            cost_nanos: r.try_get(at + 6)?,
            estimated_requests: r.try_get(at + 7)?,
            estimated_cost_nanos: r.try_get(at + 8)?,
        })
    }

    /// Add another group's sums to these.
    pub fn add(&mut self, o: &Sums) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
        self.output_tokens += o.output_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.cost_nanos += o.cost_nanos;
        self.estimated_requests += o.estimated_requests;
        self.estimated_cost_nanos += o.estimated_cost_nanos;
    }
}

/// A principal's settled requests over a period, as the store records them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UsageTotals {
    #[serde(flatten)]
    pub sums: Sums,
    /// Requests that did not end `completed` (incomplete, failed, truncated).
    pub incomplete_streams: i64,
}

impl UsageTotals {
    /// Count one settled spend row.
    fn count(&mut self, r: &SpendRecord) {
        let estimated = r.end_reason == END_ESTIMATED;
        self.sums.add(&Sums {
            requests: 1,
            input_tokens: r.input_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cache_write_tokens: r.cache_write_tokens,
            output_tokens: r.output_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_nanos: r.cost,
            estimated_requests: i64::from(estimated),
            estimated_cost_nanos: if estimated { r.cost } else { 0 },
        });
        self.incomplete_streams += i64::from(r.end_reason != "completed");
    }
}

/// The UTC day (its first second) of a Unix time.
fn day_of(t: i64) -> i64 {
    t - t.rem_euclid(86_400)
}

/// What newly inserted spend rows add to `spend_daily`, by `(day, principal)` (in key order: replicas
/// upsert the rows in the same order, so they cannot deadlock on them).
#[derive(Default)]
struct Daily<'a>(std::collections::BTreeMap<(i64, &'a str), UsageTotals>);

impl<'a> Daily<'a> {
    /// Count a spend row inserted with `settled_at`.
    fn count(&mut self, r: &'a SpendRecord, settled_at: i64) {
        self.0
            .entry((day_of(settled_at), r.principal.as_str()))
            .or_default()
            .count(r);
    }
}

/// A revocation: of one token (`jti`) or of every token of a principal issued before it.
/// What a spend report groups by besides the UTC day: a column of `spend`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Principal,
    Team,
    Org,
    Model,
    Provider,
    /// The Codex session (`session-id`); empty for requests without one.
    Session,
    /// `turn` or `compaction` (Codex's turn metadata); empty for requests without one.
    #[serde(rename = "request_kind")]
    RequestKind,
}

impl Dimension {
    pub const ALL: [Dimension; 7] = [
        Dimension::Principal,
        Dimension::Team,
        Dimension::Org,
        Dimension::Model,
        Dimension::Provider,
        Dimension::Session,
        Dimension::RequestKind,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Principal => "principal",
            Dimension::Team => "team",
            Dimension::Org => "org",
            Dimension::Model => "model",
            Dimension::Provider => "provider",
            Dimension::Session => "session",
            Dimension::RequestKind => "request_kind",
        }
    }

    /// The SQL expression (a fixed column name, never user input). `team` and `org` may be NULL.
    fn sql(self) -> &'static str {
        match self {
            Dimension::Principal => "principal",
            Dimension::Team => "COALESCE(team, '')",
            Dimension::Org => "COALESCE(org, '')",
            Dimension::Model => "model",
            Dimension::Provider => "provider",
            Dimension::Session => "COALESCE(session_id, '')",
            Dimension::RequestKind => "COALESCE(request_kind, '')",
        }
    }
}

/// One Codex session's settled spend: split by `request_kind` × `subagent`, with its extent.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionUsage {
    /// Requests recorded with this session id.
    pub requests: i64,
    /// First and last settlement (Unix seconds); `None` when the session has no rows.
    pub first_settled_at: Option<i64>,
    pub last_settled_at: Option<i64>,
    /// Distinct threads (the root agent's and each sub-agent's) and turns seen.
    pub threads: i64,
    pub turns: i64,
    /// Who sent requests with this session id (the id is the client's: normally one principal), at most
    /// [`SESSION_PRINCIPALS`].
    pub principals: Vec<String>,
    /// Sums by (`request_kind`, `subagent`), `None` where a request carried none; ordered by both.
    pub rows: Vec<SessionRow>,
}

/// The most principals a session answer lists.
pub const SESSION_PRINCIPALS: i64 = 100;

/// The sums of one (`request_kind`, `subagent`) group of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRow {
    pub request_kind: Option<String>,
    pub subagent: Option<String>,
    #[serde(flatten)]
    pub sums: Sums,
}

/// Settled spend between `from` (inclusive) and `to` (exclusive), Unix seconds, grouped by UTC day
/// (`by_day`) and/or one [`Dimension`]; with neither, one row of totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportQuery {
    pub from: i64,
    pub to: i64,
    pub by_day: bool,
    pub by: Option<Dimension>,
}

/// One group of a spend report, summed from `spend` rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReportRow {
    /// Start of the UTC day (Unix seconds), when grouped by day.
    pub day: Option<i64>,
    /// The dimension's value; `None` for a request without one (no team, no org).
    pub key: Option<String>,
    #[serde(flatten)]
    pub sums: Sums,
}

impl ReportQuery {
    /// The one report query, the same text for SQLite and PostgreSQL: integer division gives the UTC day.
    fn sql(&self) -> String {
        let mut cols = Vec::new();
        if self.by_day {
            cols.push("(settled_at / 86400) * 86400".to_string());
        }
        if let Some(d) = self.by {
            cols.push(d.sql().to_string());
        }
        let select: String = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} AS g{i}, "))
            .collect();
        let group = if cols.is_empty() {
            String::new()
        } else {
            let g: Vec<String> = (0..cols.len()).map(|i| format!("g{i}")).collect();
            format!(" GROUP BY {0} ORDER BY {0}", g.join(", "))
        };
        format!(
            "SELECT {select}{} FROM spend WHERE settled_at >= $1 AND settled_at < $2{group}",
            Sums::SQL
        )
    }

    /// A result row (its group columns first, then the sums) as a [`ReportRow`].
    fn row<R>(&self, r: &R) -> Result<ReportRow, sqlx::Error>
    where
        R: sqlx::Row,
        usize: sqlx::ColumnIndex<R>,
        i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
        String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    {
        let mut i = 0;
        let day = if self.by_day {
            i += 1;
            Some(r.try_get::<i64, _>(i - 1)?)
        } else {
            None
        };
        let key = if self.by.is_some() {
            i += 1;
            Some(r.try_get::<String, _>(i - 1)?).filter(|k| !k.is_empty())
        } else {
            None
        };
        Ok(ReportRow {
            day,
            key,
            sums: Sums::read(r, i)?,
        })
    }
}

/// A revocation: of one token (`jti`) or of every token of a principal issued at or before `revoked_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub seq: i64,
    pub kind: RevocationKind,
    pub value: String,
    pub revoked_at: i64,
    /// Principal revocations: a UUIDv7 taken when the revocation was made. Token ids are UUIDv7s, which sort
    /// by creation (milliseconds, then a counter that keeps one process's ids strictly increasing), so the
    /// tokens this revocation refuses are exactly those whose `jti` sorts at or below it. `None` for a
    /// revocation recorded before cutoffs existed: then every token issued in or before `revoked_at`'s
    /// second is refused.
    pub cutoff: Option<String>,
}

/// Revocations as one replica knows them: the set checked on every request (in memory, kept current by
/// polling the store's revocation sequence).
#[derive(Debug, Default)]
pub struct RevocationSet {
    /// Highest revocation sequence applied.
    pub seq: i64,
    jtis: std::collections::HashSet<String>,
    principals: std::collections::HashMap<String, PrincipalRevoked>,
}

#[derive(Clone, Copy, Debug, Default)]
struct PrincipalRevoked {
    /// Highest cutoff (a UUIDv7 as a number): token ids at or below it are refused.
    cutoff: Option<u128>,
    /// Highest `revoked_at` of the revocations without a cutoff: tokens issued up to that second are refused.
    legacy_secs: Option<i64>,
    /// Highest `revoked_at` of all: the rule for a token whose id is not a UUIDv7.
    any_secs: Option<i64>,
}

/// The creation order of a token id: `Some` for a UUIDv7 (every token this broker mints).
fn v7_order(jti: &str) -> Option<u128> {
    uuid::Uuid::try_parse(jti)
        .ok()
        .filter(|u| u.get_version_num() == 7)
        .map(|u| u.as_u128())
}

impl RevocationSet {
    /// Add revocations (from the store's sequence, or one just made here).
    pub fn apply(&mut self, rows: Vec<Revocation>) {
        for row in rows {
            self.seq = self.seq.max(row.seq);
            match row.kind {
                RevocationKind::Jti => {
                    self.jtis.insert(row.value);
                }
                RevocationKind::Principal => {
                    let e = self.principals.entry(row.value).or_default();
                    e.any_secs = e.any_secs.max(Some(row.revoked_at));
                    match row.cutoff.as_deref().and_then(v7_order) {
                        Some(c) => e.cutoff = e.cutoff.max(Some(c)),
                        None => e.legacy_secs = e.legacy_secs.max(Some(row.revoked_at)),
                    }
                }
            }
        }
    }

    /// Is the token `jti` of `principal`, really issued at `issued_secs` (unix seconds), revoked?
    pub fn refuses(&self, jti: &str, principal: &str, issued_secs: i64) -> bool {
        if self.jtis.contains(jti) {
            return true;
        }
        let Some(p) = self.principals.get(principal) else {
            return false;
        };
        if p.legacy_secs.is_some_and(|at| issued_secs <= at) {
            return true;
        }
        match v7_order(jti) {
            Some(order) => p.cutoff.is_some_and(|c| order <= c),
            None => p.any_secs.is_some_and(|at| issued_secs <= at),
        }
    }
}

/// A new principal-revocation cutoff: ordered after every token id this process minted before, and before
/// every one it mints after (see [`Revocation::cutoff`]).
pub fn revocation_cutoff() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationKind {
    Jti,
    Principal,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Jti => "jti",
            RevocationKind::Principal => "principal",
        }
    }
}

/// A signing key as stored (PKCS#8 DER; the store is as sensitive as the state directory).
#[derive(Clone)]
pub struct StoredKey {
    pub generation: i64,
    pub kid: String,
    pub created: i64,
    pub pkcs8: Vec<u8>,
}

/// The pool behind a store, for other subsystems that keep their own tables (e.g. the audit log).
#[derive(Clone, Debug)]
pub enum StorePool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Grow this process's allotments (one transaction over all items; items and counters in sorted order).
    /// Creates the pool row when `pool.exists` is false, and extends its lease.
    async fn grow(&self, pool: PoolRef<'_>, items: &[GrowItem]) -> Result<GrowOutcome, StoreError>;

    /// Apply a batch of settlements and returns in one transaction (group commit). Returns every counter
    /// whose `spent` the batch moved, with its `spent` after the batch (for alert thresholds).
    async fn apply(&self, batch: &[Apply]) -> Result<Vec<(CounterKey, i64)>, StoreError> {
        self.apply_with_sessions(batch, &[]).await
    }

    /// [`Store::apply`], recording `sessions[i]` (the Codex session context, validated at the edge) in the
    /// session columns of `batch[i]`'s spend row; a missing or `None` entry leaves them NULL.
    async fn apply_with_sessions(
        &self,
        batch: &[Apply],
        sessions: &[Option<Box<CodexSession>>],
    ) -> Result<Vec<(CounterKey, i64)>, StoreError>;

    /// Claim a scheduled report's run (`name`, the start of the period it covers): `true` for exactly one
    /// caller across every replica.
    async fn claim_report(
        &self,
        name: &str,
        period_start: i64,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Claim an alert mark (`threshold`: `80%`, `soft`) of a counter: `true` for exactly one caller across
    /// every replica (the row's primary key), `false` for everyone after.
    async fn claim_alert(
        &self,
        key: &CounterKey,
        threshold: &str,
        spent: i64,
        now: i64,
    ) -> Result<bool, StoreError>;

    /// Give back everything a pool holds and delete it (graceful shutdown). Returns whether it existed.
    async fn release_pool(&self, id: &str) -> Result<bool, StoreError>;

    /// Extend the lease of every live reservation of `owner` (this process).
    async fn renew(&self, owner: &str, expires_at: i64) -> Result<u64, StoreError>;

    /// Release reservations whose lease ran out (their broker died). Returns how many.
    async fn expire(&self, now: i64) -> Result<u64, StoreError>;

    /// Bring `owner`'s in-flight rows up to date in one transaction: insert `add` (leased until
    /// `expires_at`, renewed by [`Store::renew`]) and delete the rows of `remove` (settled in the store, or
    /// released without a charge).
    async fn sync_inflight(
        &self,
        owner: &str,
        expires_at: i64,
        add: &[InflightRow],
        remove: &[String],
    ) -> Result<(), StoreError>;

    /// Charge every in-flight row whose lease ran out before `now` (its broker died) its reserved estimate,
    /// in one transaction: the rows are deleted (`DELETE … RETURNING`, so of two replicas only one gets
    /// them), each becomes a `spend` row (`end_reason = 'estimated'`; `ON CONFLICT DO NOTHING`, so a
    /// request whose real settlement landed is not charged again) and only the rows inserted now move
    /// their counters' `spent`. Returns the records charged, and every counter moved with its `spent`
    /// afterwards.
    async fn charge_expired_inflight(
        &self,
        now: i64,
    ) -> Result<(Vec<SpendRecord>, Vec<(CounterKey, i64)>), StoreError>;

    /// `(spent, reserved)` of each counter (zeros for a counter that does not exist yet).
    async fn counters(&self, keys: &[CounterKey]) -> Result<Vec<(i64, i64)>, StoreError>;

    async fn revoke(
        &self,
        kind: RevocationKind,
        value: &str,
        now: i64,
        cutoff: Option<&str>,
    ) -> Result<i64, StoreError>;
    async fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError>;

    /// Record that the replicas using this store issue tokens as `issuer` (their `public_url`), alive until
    /// `live_until` (renewed with the leases, see [`Store::renew`]). Fails with
    /// [`StoreError::IssuerMismatch`] while a replica with another issuer was seen alive after `now`; takes
    /// the store over from an issuer nobody advertises any more, returning that issuer.
    async fn claim_issuer(
        &self,
        issuer: &str,
        now: i64,
        live_until: i64,
    ) -> Result<Option<String>, StoreError>;

    /// Insert the key of `generation` unless one exists; return the keys of generations ≥ `min_generation`.
    async fn ensure_key(&self, key: &StoredKey) -> Result<(), StoreError>;
    async fn keys_since(&self, min_generation: i64) -> Result<Vec<StoredKey>, StoreError>;
    /// Record a forced rotation: `key` signs from `key.created`; `key.generation` is the generation
    /// `created` falls in (for retention).
    async fn add_rotated_key(&self, key: &StoredKey, requested_at: i64) -> Result<(), StoreError>;
    /// Forced-rotation keys of generations ≥ `min_generation`.
    async fn rotated_keys_since(&self, min_generation: i64) -> Result<Vec<StoredKey>, StoreError>;
    /// Retire a signing key now (by `kid`): it leaves every JWKS and its tokens are refused. Returns false
    /// when it was already retired (the first retirement's time stays).
    async fn retire_key(
        &self,
        kid: &str,
        now: i64,
        reason: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Every retired key: `(kid, retired_at)`.
    async fn retired_keys(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Replace a stored key's bytes (`old` → `new`, e.g. sealing a key stored in the clear) in whichever key
    /// table holds `kid`, only if they are still `old` (a concurrent replica may have done it). Returns
    /// whether a row changed.
    async fn reseal_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError>;
    /// Make overwritten values unrecoverable from the database files where the store can (SQLite: the
    /// freed cells are zeroed by `secure_delete`, and the WAL, which still holds old page images, is
    /// checkpointed and truncated). PostgreSQL keeps old row versions until `VACUUM`: see docs/operations.md.
    async fn purge_overwritten(&self) -> Result<(), StoreError>;

    /// Claim a single-use key (e.g. a hashed AWS signature) until `expires_at`: `true` if it was free (absent,
    /// or only held by an expired claim), `false` if another request — on any replica — holds it. Atomic:
    /// of two concurrent claims exactly one wins.
    async fn claim_once(&self, key: &str, now: i64, expires_at: i64) -> Result<bool, StoreError>;

    /// Give a claim back (the proof turned out not to be usable, so it was never really spent).
    async fn release_claim(&self, key: &str) -> Result<(), StoreError>;

    /// Drop claims that expired before `now`. Returns how many.
    async fn prune_claims(&self, now: i64) -> Result<u64, StoreError>;

    /// A principal's settled requests from the UTC day holding `since` (unix seconds) on, summed (from
    /// `spend_daily`, which the settlement keeps by day).
    async fn usage_since(&self, principal: &str, since: i64) -> Result<UsageTotals, StoreError>;
    /// Settled spend summed by day and/or one dimension (see [`ReportQuery`]), ordered by its groups.
    async fn report(&self, q: &ReportQuery) -> Result<Vec<ReportRow>, StoreError>;
    /// One Codex session's settled spend (all time), split by `request_kind` and `subagent`.
    async fn session_usage(&self, session_id: &str) -> Result<SessionUsage, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
    fn pool(&self) -> StorePool;
}

pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection the frequent write transactions take (settlement batches, allotment growth, the
    /// in-flight journal, dropped reservations): see [`open`].
    writer: SqlitePool,
    /// The issuer this replica claimed ([`Store::claim_issuer`]); its liveness is renewed with the leases.
    issuer: std::sync::OnceLock<String>,
}

pub struct PgStore {
    pool: PgPool,
    /// The same pool as `pool`: PostgreSQL has no per-connection page cache to keep warm.
    writer: PgPool,
    issuer: std::sync::OnceLock<String>,
}

/// Open (and migrate) the configured store.
pub async fn open(cfg: &StoreConfig) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match cfg.kind {
        StoreKind::Sqlite => {
            // The file holds the signing keys: 0600 in a private directory from creation (the -wal and -shm
            // files SQLite creates take the database file's mode), refused if others can get at it.
            crate::keys::prepare_sqlite_file(
                &cfg.sqlite_path,
                crate::keys::SqliteRole::GovernanceStore,
            )?;
            let opts = SqliteConnectOptions::new()
                .filename(&cfg.sqlite_path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // NORMAL in WAL mode: a commit is in the WAL (OS page cache) when it returns, so a killed
                // broker (kill -9, OOM) loses nothing; only a machine crash can lose the last commits.
                // FULL fsynced every reserve and every settle: ~1 ms each here, which made governance
                // ~2 ms of the proxy's added latency (docs/benchmarks.md, "SQLite fsync").
                .synchronous(SqliteSynchronous::Normal)
                // Deleted and overwritten cells are zeroed where that costs no extra I/O, so a key
                // resealed in place does not linger in the page it was in.
                .pragma("secure_delete", "FAST")
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.clone())
                .await?;
            sqlx::migrate!("./migrations/sqlite")
                .run(&pool)
                .await
                .map_err(StoreError::Migrate)?;
            // SQLite takes one writer at a time, and a connection drops its whole page cache whenever
            // another connection has written since its last transaction. Settlement batches spread over
            // the pool began on a cold cache each time, re-reading their pages from the file and parking
            // on the write lock in SQLite's busy handler. One writer connection keeps its cache warm, and
            // writers queue for it in the pool, in order (docs/benchmarks.md, issue #19).
            //
            // Its statement journals stay in memory (`temp_store`). A multi-row write inside a transaction
            // keeps the pages it changes in one, to undo that statement alone; a batch of spend rows
            // outgrew SQLite's 64 KiB spill threshold, and every batch created, unlinked and wrote a
            // temporary file page by page. Only this connection's writes are bounded batches; the
            // reports' sorts on the other connections keep spilling to disk as before.
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.pragma("temp_store", "MEMORY"))
                .await?;
            Ok(std::sync::Arc::new(SqliteStore {
                pool,
                writer,
                issuer: std::sync::OnceLock::new(),
            }))
        }
        StoreKind::Postgres => {
            let url = cfg
                .url
                .as_ref()
                .ok_or_else(|| StoreError::Setup("no postgres url".into()))?;
            let mut opts = PgConnectOptions::from_str(url.expose_secret())
                .map_err(|_| StoreError::Setup("the postgres url is not valid".into()))?;
            if let Some(schema) = &cfg.schema {
                // Validated at config load: [a-z0-9_]{1,63}.
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone())
                    .await?;
                let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
                if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await {
                    // A concurrent replica may have created it between the check and the insert.
                    tracing::debug!(error = %e, "create schema");
                }
                admin.close().await;
                opts = opts.options([("search_path", schema.as_str())]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(cfg.max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts)
                .await?;
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .map_err(StoreError::Migrate)?;
            Ok(std::sync::Arc::new(PgStore {
                writer: pool.clone(),
                pool,
                issuer: std::sync::OnceLock::new(),
            }))
        }
    }
}

/// At start: claim the store for this replica's issuer (its `public_url`), refusing when replicas with
/// another issuer are alive ([`Store::claim_issuer`]); liveness lasts a lease and is renewed with the
/// leases.
pub async fn claim_issuer(
    store: &dyn Store,
    issuer: &str,
    now_secs: u64,
    lease_secs: u64,
) -> Result<(), StoreError> {
    let now = i64::try_from(now_secs).unwrap_or(i64::MAX);
    let until = now.saturating_add(i64::try_from(lease_secs).unwrap_or(30));
    if let Some(previous) = store.claim_issuer(issuer, now, until).await? {
        tracing::warn!(
            previous = %previous,
            issuer = %issuer,
            "the store's token issuer changes (no replica with the previous one is alive); tokens minted as the previous issuer are no longer accepted"
        );
    }
    Ok(())
}

/// `$rows_dear`: whether each row a statement returns costs a hand-off of its own (SQLite's connection
/// thread), so that a write avoids returning rows it can do without.
/// `$serial`: whether the database runs one write transaction at a time (SQLite), so that one statement may
/// move many rows in whatever order it visits them. Where writers run concurrently (PostgreSQL), counters
/// and items are updated one statement each, in key order, so that two replicas' batches lock them in the
/// same order and cannot deadlock.
macro_rules! impl_store {
    ($ty:ident, $db:ty, $variant:ident, $rows_dear:literal, $serial:literal) => {
        impl $ty {
            /// One multi-row insert of spend rows (`ON CONFLICT DO NOTHING`: a row already stored stays as
            /// it is), returning the ids it inserted when `returning`.
            fn insert_spend(
                chunk: &[(&SpendRecord, Option<&CodexSession>)],
                returning: bool,
            ) -> sqlx::QueryBuilder<$db> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO spend (id, settled_at, principal, team, org, jti, model, provider, \
                     input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, \
                     cost, reserved, usage_reported, end_reason, price_version, price_tier, \
                     session_id, thread_id, turn_id, request_kind, originator, subagent) ",
                );
                qb.push_values(chunk, |mut b, (r, s)| {
                    let s = *s;
                    b.push_bind(r.id.as_str())
                        .push_bind(r.settled_at)
                        .push_bind(r.principal.as_str())
                        .push_bind(r.team.as_deref())
                        .push_bind(r.org.as_deref())
                        .push_bind(r.jti.as_str())
                        .push_bind(r.model.as_str())
                        .push_bind(r.provider.as_str())
                        .push_bind(r.input_tokens)
                        .push_bind(r.cached_input_tokens)
                        .push_bind(r.cache_write_tokens)
                        .push_bind(r.output_tokens)
                        .push_bind(r.reasoning_tokens)
                        .push_bind(r.cost)
                        .push_bind(r.reserved)
                        .push_bind(i64::from(r.usage_reported))
                        .push_bind(r.end_reason.as_str())
                        .push_bind(r.price_version.as_str())
                        .push_bind(r.price_tier.as_str())
                        .push_bind(s.and_then(|s| s.session_id.as_deref()))
                        .push_bind(s.and_then(|s| s.thread_id.as_deref()))
                        .push_bind(s.and_then(|s| s.turn_id.as_deref()))
                        .push_bind(s.and_then(CodexSession::request_kind_str))
                        .push_bind(s.and_then(|s| s.originator.as_deref()))
                        .push_bind(s.and_then(|s| s.subagent.as_deref()));
                });
                qb.push(if returning {
                    " ON CONFLICT DO NOTHING RETURNING id"
                } else {
                    " ON CONFLICT DO NOTHING"
                });
                qb
            }

            /// Add `daily` to `spend_daily`, one upsert per (power-of-two) chunk of rows.
            async fn add_daily(
                conn: &mut <$db as sqlx::Database>::Connection,
                daily: &Daily<'_>,
            ) -> Result<(), StoreError> {
                let rows: Vec<(&(i64, &str), &UsageTotals)> = daily.0.iter().collect();
                for chunk in crate::sqlbatch::pow2_chunks(&rows, 64) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO spend_daily (day, principal, requests, input_tokens, cached_input_tokens, \
                         cache_write_tokens, output_tokens, reasoning_tokens, cost, estimated_requests, \
                         estimated_cost, incomplete) ",
                    );
                    qb.push_values(chunk, |mut b, ((day, principal), t)| {
                        let s = &t.sums;
                        b.push_bind(*day)
                            .push_bind(*principal)
                            .push_bind(s.requests)
                            .push_bind(s.input_tokens)
                            .push_bind(s.cached_input_tokens)
                            .push_bind(s.cache_write_tokens)
                            .push_bind(s.output_tokens)
                            .push_bind(s.reasoning_tokens)
                            .push_bind(s.cost_nanos)
                            .push_bind(s.estimated_requests)
                            .push_bind(s.estimated_cost_nanos)
                            .push_bind(t.incomplete_streams);
                    });
                    qb.push(
                        " ON CONFLICT (day, principal) DO UPDATE SET \
                         requests = spend_daily.requests + excluded.requests, \
                         input_tokens = spend_daily.input_tokens + excluded.input_tokens, \
                         cached_input_tokens = spend_daily.cached_input_tokens + excluded.cached_input_tokens, \
                         cache_write_tokens = spend_daily.cache_write_tokens + excluded.cache_write_tokens, \
                         output_tokens = spend_daily.output_tokens + excluded.output_tokens, \
                         reasoning_tokens = spend_daily.reasoning_tokens + excluded.reasoning_tokens, \
                         cost = spend_daily.cost + excluded.cost, \
                         estimated_requests = spend_daily.estimated_requests + excluded.estimated_requests, \
                         estimated_cost = spend_daily.estimated_cost + excluded.estimated_cost, \
                         incomplete = spend_daily.incomplete + excluded.incomplete",
                    );
                    qb.build().execute(&mut *conn).await?;
                }
                Ok(())
            }

            /// The one conditional write every admission goes through: make sure the counter row exists,
            /// then add `amount` to its `reserved` only if `spent + reserved + amount <= limit`. False: it
            /// would go over (nothing written).
            async fn reserve_on_counter(
                conn: &mut <$db as sqlx::Database>::Connection,
                key: &CounterKey,
                amount: i64,
                limit: i64,
            ) -> Result<bool, StoreError> {
                sqlx::query::<$db>(
                    "INSERT INTO budget_counters (budget_id, subject, period_start, spent, reserved) \
                     VALUES ($1, $2, $3, 0, 0) ON CONFLICT DO NOTHING",
                )
                .bind(&key.budget_id)
                .bind(&key.subject)
                .bind(key.period_start)
                .execute(&mut *conn)
                .await?;
                let done = sqlx::query::<$db>(
                    "UPDATE budget_counters SET reserved = reserved + $4 \
                     WHERE budget_id = $1 AND subject = $2 AND period_start = $3 \
                     AND spent + reserved + $4 <= $5",
                )
                .bind(&key.budget_id)
                .bind(&key.subject)
                .bind(key.period_start)
                .bind(amount)
                .bind(limit)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                Ok(done == 1)
            }

            /// The counters a settlement batch moves, in key order, each with what it spent and what it
            /// released (counters with neither left out).
            fn touched<'k>(
                spent: &std::collections::BTreeMap<&'k CounterKey, i64>,
                released: &std::collections::BTreeMap<&'k CounterKey, i64>,
            ) -> Vec<(&'k CounterKey, i64, i64)> {
                let mut keys: Vec<&CounterKey> = spent.keys().chain(released.keys()).copied().collect();
                keys.sort();
                keys.dedup();
                keys.into_iter()
                    .map(|k| (k, spent.get(k).copied().unwrap_or(0), released.get(k).copied().unwrap_or(0)))
                    .filter(|&(_, s, r)| s != 0 || r != 0)
                    .collect()
            }

            /// Take amounts out of reservation items, one statement for the chunk (`$serial` stores only:
            /// the rows are visited in the database's order). Returns each item that still existed with the
            /// amount taken and what is left of it; an expired pool's items are gone, and their amounts do
            /// not move.
            async fn take_items<'k>(
                conn: &mut <$db as sqlx::Database>::Connection,
                chunk: &[((&'k str, &'k CounterKey), i64)],
            ) -> Result<Vec<(&'k str, &'k CounterKey, i64, i64)>, StoreError> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE reservation_items AS i SET amount = i.amount - v.column5 FROM (",
                );
                qb.push_values(crate::sqlbatch::padded(chunk), |mut b, item| match item {
                    Some(((pool, k), amount)) => {
                        b.push_bind(*pool)
                            .push_bind(k.budget_id.as_str())
                            .push_bind(k.subject.as_str())
                            .push_bind(k.period_start)
                            .push_bind(*amount);
                    }
                    None => {
                        b.push_bind(None::<&str>)
                            .push_bind(None::<&str>)
                            .push_bind(None::<&str>)
                            .push_bind(None::<i64>)
                            .push_bind(None::<i64>);
                    }
                });
                qb.push(
                    ") AS v WHERE i.reservation_id = v.column1 AND i.budget_id = v.column2 \
                     AND i.subject = v.column3 AND i.period_start = v.column4 \
                     RETURNING reservation_id, budget_id, subject, period_start, amount",
                );
                let rows: Vec<(String, String, String, i64, i64)> =
                    qb.build_query_as().fetch_all(&mut *conn).await?;
                let mut out = Vec::with_capacity(rows.len());
                for (pool, budget_id, subject, period_start, left) in rows {
                    let key = CounterKey { budget_id, subject, period_start };
                    let Ok(i) = chunk
                        .binary_search_by(|((p, k), _)| (*p, *k).cmp(&(pool.as_str(), &key)))
                    else {
                        // Not possible: the statement updates only the items of the chunk.
                        continue;
                    };
                    let ((p, k), amount) = chunk[i];
                    out.push((p, k, amount, left));
                }
                Ok(out)
            }

            /// Delete a reservation item that is used up.
            async fn delete_used_up(
                conn: &mut <$db as sqlx::Database>::Connection,
                pool: &str,
                k: &CounterKey,
            ) -> Result<(), StoreError> {
                sqlx::query::<$db>(
                    "DELETE FROM reservation_items WHERE reservation_id = $1 AND budget_id = $2 \
                     AND subject = $3 AND period_start = $4 AND amount <= 0",
                )
                .bind(pool)
                .bind(&k.budget_id)
                .bind(&k.subject)
                .bind(k.period_start)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// Move the counters of a chunk (`spent += spent`, `reserved -= released`) in one statement
            /// (`$serial` stores only). Returns `spent` afterwards of each counter that exists and spent
            /// something, in no particular order.
            async fn charge_counters(
                conn: &mut <$db as sqlx::Database>::Connection,
                chunk: &[(&CounterKey, i64, i64)],
            ) -> Result<Vec<(CounterKey, i64)>, StoreError> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE budget_counters AS c SET spent = c.spent + v.column4, \
                     reserved = c.reserved - v.column5 FROM (",
                );
                qb.push_values(crate::sqlbatch::padded(chunk), |mut b, counter| match counter {
                    Some((k, s, r)) => {
                        b.push_bind(k.budget_id.as_str())
                            .push_bind(k.subject.as_str())
                            .push_bind(k.period_start)
                            .push_bind(*s)
                            .push_bind(*r);
                    }
                    None => {
                        b.push_bind(None::<&str>)
                            .push_bind(None::<&str>)
                            .push_bind(None::<i64>)
                            .push_bind(None::<i64>)
                            .push_bind(None::<i64>);
                    }
                });
                qb.push(
                    ") AS v WHERE c.budget_id = v.column1 AND c.subject = v.column2 \
                     AND c.period_start = v.column3 RETURNING budget_id, subject, period_start, spent",
                );
                let rows: Vec<(String, String, i64, i64)> =
                    qb.build_query_as().fetch_all(&mut *conn).await?;
                let mut out = Vec::with_capacity(rows.len());
                for (budget_id, subject, period_start, after) in rows {
                    let key = CounterKey { budget_id, subject, period_start };
                    let Ok(i) = chunk.binary_search_by(|(k, _, _)| (*k).cmp(&key)) else {
                        // Not possible: the statement updates only the counters of the chunk.
                        continue;
                    };
                    if chunk[i].1 != 0 {
                        out.push((key, after));
                    }
                }
                Ok(out)
            }

            /// Move a counter: `spent += spent`, `reserved -= released` (settlements and releases). Returns
            /// the counter's `spent` afterwards (`None` if it does not exist).
            async fn charge_counter(
                conn: &mut <$db as sqlx::Database>::Connection,
                key: &CounterKey,
                spent: i64,
                released: i64,
            ) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::query_as::<$db, (i64,)>(
                    "UPDATE budget_counters SET spent = spent + $4, reserved = reserved - $5 \
                     WHERE budget_id = $1 AND subject = $2 AND period_start = $3 RETURNING spent",
                )
                .bind(&key.budget_id)
                .bind(&key.subject)
                .bind(key.period_start)
                .bind(spent)
                .bind(released)
                .fetch_optional(&mut *conn)
                .await?
                .map(|(s,)| s))
            }

            /// `(spent, reserved)` of one counter; zeros when it does not exist yet.
            async fn counter_row<'e, E>(exec: E, key: &CounterKey) -> Result<(i64, i64), StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                Ok(sqlx::query_as::<$db, (i64, i64)>(
                    "SELECT spent, reserved FROM budget_counters \
                     WHERE budget_id = $1 AND subject = $2 AND period_start = $3",
                )
                .bind(&key.budget_id)
                .bind(&key.subject)
                .bind(key.period_start)
                .fetch_optional(exec)
                .await?
                .unwrap_or((0, 0)))
            }

            /// Delete a reservation (only if expired at `now`, when given) and give its items back, one
            /// transaction. The items are deleted with `RETURNING`, so an item a concurrent settlement is
            /// updating is read after that settlement commits: nothing is released twice.
            async fn drop_reservation(&self, id: &str, now: Option<i64>) -> Result<bool, StoreError> {
                let mut tx = self.writer.begin().await?;
                let gone = sqlx::query::<$db>(
                    "DELETE FROM reservations WHERE id = $1 AND ($2 IS NULL OR expires_at < $2)",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if gone != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let mut items = sqlx::query_as::<$db, (String, String, i64, i64)>(
                    "DELETE FROM reservation_items WHERE reservation_id = $1 \
                     RETURNING budget_id, subject, period_start, amount",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                items.sort();
                for (budget_id, subject, period_start, amount) in items {
                    if amount == 0 {
                        continue;
                    }
                    let key = CounterKey { budget_id, subject, period_start };
                    Self::charge_counter(&mut tx, &key, 0, amount).await?;
                }
                tx.commit().await?;
                Ok(true)
            }
        }

        #[async_trait]
        impl Store for $ty {
            async fn grow(&self, pool: PoolRef<'_>, items: &[GrowItem]) -> Result<GrowOutcome, StoreError> {
                let mut order: Vec<usize> = (0..items.len()).collect();
                order.sort_by(|a, b| items[*a].key.cmp(&items[*b].key));
                // First with the chunk, then (if that would go over) with exactly the need.
                let rounds: &[bool] = if items.iter().any(|it| it.chunk > 0) { &[false, true] } else { &[true] };
                for &exact in rounds {
                    let mut tx = self.writer.begin().await?;
                    // Lock order everywhere: the pool row, its items (sorted), the counters (sorted).
                    let renewed = sqlx::query::<$db>("UPDATE reservations SET expires_at = $2 WHERE id = $1")
                        .bind(pool.id)
                        .bind(pool.expires_at)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    match (renewed, pool.exists) {
                        (0, true) => {
                            tx.rollback().await?;
                            return Ok(GrowOutcome::PoolLost);
                        }
                        (0, false) => {
                            sqlx::query::<$db>(
                                "INSERT INTO reservations (id, owner, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                            )
                            .bind(pool.id)
                            .bind(pool.owner)
                            .bind(pool.now)
                            .bind(pool.expires_at)
                            .execute(&mut *tx)
                            .await?;
                        }
                        _ => {}
                    }
                    let mut grant = vec![0i64; items.len()];
                    for &i in &order {
                        let it = &items[i];
                        grant[i] = it.need;
                        if !exact && it.chunk > 0 {
                            let (spent, reserved) = Self::counter_row(&mut *tx, &it.key).await?;
                            let headroom = it.limit - spent - reserved - it.need;
                            grant[i] += it.chunk.min(headroom / 8).max(0);
                        }
                    }
                    for &i in &order {
                        let it = &items[i];
                        sqlx::query::<$db>(
                            "INSERT INTO reservation_items (reservation_id, budget_id, subject, period_start, amount) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (reservation_id, budget_id, subject, period_start) \
                             DO UPDATE SET amount = reservation_items.amount + excluded.amount",
                        )
                        .bind(pool.id)
                        .bind(&it.key.budget_id)
                        .bind(&it.key.subject)
                        .bind(it.key.period_start)
                        .bind(grant[i])
                        .execute(&mut *tx)
                        .await?;
                    }
                    let mut refused = None;
                    for &i in &order {
                        let it = &items[i];
                        if !Self::reserve_on_counter(&mut tx, &it.key, grant[i], it.limit).await? {
                            refused = Some(i);
                            break;
                        }
                    }
                    match refused {
                        None => {
                            tx.commit().await?;
                            return Ok(GrowOutcome::Granted(grant));
                        }
                        Some(i) => {
                            tx.rollback().await?;
                            if !exact && grant[i] > items[i].need {
                                continue;
                            }
                            let it = &items[i];
                            let (spent, reserved) = Self::counter_row(&self.pool, &it.key).await?;
                            return Ok(GrowOutcome::Refused { index: i, spent, reserved });
                        }
                    }
                }
                // The exact round always returns; this is reached only with no rounds at all.
                Ok(GrowOutcome::Granted(vec![0; items.len()]))
            }

            async fn apply_with_sessions(
                &self,
                batch: &[Apply],
                sessions: &[Option<Box<CodexSession>>],
            ) -> Result<Vec<(CounterKey, i64)>, StoreError> {
                use std::collections::{BTreeMap, HashSet};
                if batch.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.writer.begin().await?;
                // The spend rows first: only rows inserted now are applied (a batch retried after a commit
                // whose answer was lost is not applied twice).
                let records: Vec<(&SpendRecord, Option<&CodexSession>)> = batch
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| match a {
                        Apply::Spend { record, .. } => {
                            Some((record.as_ref(), sessions.get(i).and_then(|s| s.as_deref())))
                        }
                        Apply::Return { .. } => None,
                    })
                    .collect();
                // Every row is new but for a batch retried after a commit whose answer was lost, or a row a
                // sweep of a dead broker's requests stored first. Where returned rows are dear
                // (`$rows_dear`: SQLite's thread hands each one back to the task on its own, a wake-up
                // each), the rows go in returning nothing, and only when fewer went in than were sent are
                // they taken back to the savepoint and inserted again, returning the ids that are new.
                // PostgreSQL returns the ids with the insert (they arrive together). A power-of-two row
                // count per statement: a few SQL texts, each prepared once per connection and cached.
                let mut all_new = records.is_empty();
                if $rows_dear && !all_new {
                    sqlx::query::<$db>("SAVEPOINT spend_rows").execute(&mut *tx).await?;
                    let mut inserted = 0u64;
                    for chunk in crate::sqlbatch::pow2_chunks(&records, 256) {
                        inserted += Self::insert_spend(chunk, false).build().execute(&mut *tx).await?.rows_affected();
                    }
                    all_new = inserted == records.len() as u64;
                    if !all_new {
                        sqlx::query::<$db>("ROLLBACK TO SAVEPOINT spend_rows").execute(&mut *tx).await?;
                    }
                }
                // `None`: all of them.
                let mut new_ids: Option<HashSet<String>> = None;
                if !all_new {
                    let mut ids = HashSet::new();
                    for chunk in crate::sqlbatch::pow2_chunks(&records, 256) {
                        let rows: Vec<(String,)> =
                            Self::insert_spend(chunk, true).build_query_as().fetch_all(&mut *tx).await?;
                        ids.extend(rows.into_iter().map(|(id,)| id));
                    }
                    new_ids = Some(ids);
                }
                let mut items: BTreeMap<(&str, &CounterKey), i64> = BTreeMap::new();
                let mut spent: BTreeMap<&CounterKey, i64> = BTreeMap::new();
                let mut daily = Daily::default();
                for a in batch {
                    match a {
                        Apply::Spend { pool, keys, releases, record } => {
                            if new_ids.as_ref().is_some_and(|ids| !ids.contains(&record.id)) {
                                continue;
                            }
                            daily.count(record, record.settled_at);
                            for (k, release) in keys.iter().zip(releases) {
                                *spent.entry(k).or_default() += record.cost;
                                if let Some(p) = pool
                                    && *release > 0
                                {
                                    *items.entry((p.as_str(), k)).or_default() += *release;
                                }
                            }
                        }
                        Apply::Return { pool, key, amount } => {
                            if *amount > 0 {
                                *items.entry((pool.as_str(), key)).or_default() += *amount;
                            }
                        }
                    }
                }
                let mut released: BTreeMap<&CounterKey, i64> = BTreeMap::new();
                let mut moved = Vec::new();
                if $serial {
                    // One statement per 64 items, and one per 64 counters, instead of one per row: on SQLite
                    // each statement is a round trip to the connection's thread, and a batch touches three
                    // counters (and three items) for every principal in it. Each statement's rows are
                    // padded to a power of two with rows that match nothing ([`crate::sqlbatch::padded`]).
                    let items: Vec<((&str, &CounterKey), i64)> = items.into_iter().collect();
                    for chunk in items.chunks(64) {
                        for (p, k, amount, left) in Self::take_items(&mut tx, chunk).await? {
                            *released.entry(k).or_default() += amount;
                            if left <= 0 {
                                Self::delete_used_up(&mut tx, p, k).await?;
                            }
                        }
                    }
                    let touched = Self::touched(&spent, &released);
                    for chunk in touched.chunks(64) {
                        moved.extend(Self::charge_counters(&mut tx, chunk).await?);
                    }
                    // The order the statement-per-counter path gives: by key.
                    moved.sort_by(|a: &(CounterKey, i64), b| a.0.cmp(&b.0));
                } else {
                    for ((pool, k), amount) in &items {
                        // Only amounts whose item still exists move out of `reserved`: an expired pool
                        // gave its items back already. What is left of the item comes back with the
                        // update, and the item is deleted only when that is nothing (one round trip per
                        // item, not two).
                        let left = sqlx::query_as::<$db, (i64,)>(
                            "UPDATE reservation_items SET amount = amount - $5 \
                             WHERE reservation_id = $1 AND budget_id = $2 AND subject = $3 AND period_start = $4 \
                             RETURNING amount",
                        )
                        .bind(*pool)
                        .bind(&k.budget_id)
                        .bind(&k.subject)
                        .bind(k.period_start)
                        .bind(*amount)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some((left,)) = left else { continue };
                        *released.entry(*k).or_default() += *amount;
                        if left <= 0 {
                            Self::delete_used_up(&mut tx, pool, k).await?;
                        }
                    }
                    for (k, s, r) in Self::touched(&spent, &released) {
                        let after = Self::charge_counter(&mut tx, k, s, r).await?;
                        if let Some(after) = after
                            && s != 0
                        {
                            moved.push((k.clone(), after));
                        }
                    }
                }
                Self::add_daily(&mut tx, &daily).await?;
                tx.commit().await?;
                Ok(moved)
            }

            async fn claim_report(&self, name: &str, period_start: i64, now: i64) -> Result<bool, StoreError> {
                let n = sqlx::query::<$db>(
                    "INSERT INTO scheduled_reports (name, period_start, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(name)
                .bind(period_start)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn claim_alert(
                &self,
                key: &CounterKey,
                threshold: &str,
                spent: i64,
                now: i64,
            ) -> Result<bool, StoreError> {
                let n = sqlx::query::<$db>(
                    "INSERT INTO budget_alerts (budget_id, subject, period_start, threshold, spent, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(&key.budget_id)
                .bind(&key.subject)
                .bind(key.period_start)
                .bind(threshold)
                .bind(spent)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn release_pool(&self, id: &str) -> Result<bool, StoreError> {
                self.drop_reservation(id, None).await
            }

            async fn renew(&self, owner: &str, expires_at: i64) -> Result<u64, StoreError> {
                if let Some(issuer) = self.issuer.get() {
                    // This replica is alive and issues as the store's issuer (see `claim_issuer`).
                    sqlx::query::<$db>(
                        "UPDATE store_meta SET live_until = $2 \
                         WHERE name = 'issuer' AND value = $1 AND live_until < $2",
                    )
                    .bind(issuer)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                }
                // This replica's requests in flight are alive as long as it is.
                sqlx::query::<$db>("UPDATE inflight SET expires_at = $2 WHERE owner = $1")
                    .bind(owner)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(sqlx::query::<$db>("UPDATE reservations SET expires_at = $2 WHERE owner = $1")
                    .bind(owner)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn sync_inflight(
                &self,
                owner: &str,
                expires_at: i64,
                add: &[InflightRow],
                remove: &[String],
            ) -> Result<(), StoreError> {
                if add.is_empty() && remove.is_empty() {
                    return Ok(());
                }
                let mut tx = self.writer.begin().await?;
                for chunk in crate::sqlbatch::pow2_chunks(remove, 256) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("DELETE FROM inflight WHERE id IN (");
                    let mut ids = qb.separated(", ");
                    for id in chunk {
                        ids.push_bind(id.clone());
                    }
                    ids.push_unseparated(")");
                    qb.build().execute(&mut *tx).await?;
                }
                let encoded: Vec<(String, String, String)> = add
                    .iter()
                    .map(|r| {
                        Ok((
                            r.record.id.clone(),
                            serde_json::to_string(&r.keys)?,
                            serde_json::to_string(&r.record)?,
                        ))
                    })
                    .collect::<Result<_, serde_json::Error>>()
                    .map_err(|e| StoreError::Setup(format!("in-flight row: {e}")))?;
                for chunk in crate::sqlbatch::pow2_chunks(&encoded, 256) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO inflight (id, owner, expires_at, keys, record) ",
                    );
                    qb.push_values(chunk, |mut b, (id, keys, record)| {
                        b.push_bind(id.clone())
                            .push_bind(owner.to_string())
                            .push_bind(expires_at)
                            .push_bind(keys.clone())
                            .push_bind(record.clone());
                    });
                    qb.push(" ON CONFLICT DO NOTHING");
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn charge_expired_inflight(
                &self,
                now: i64,
            ) -> Result<(Vec<SpendRecord>, Vec<(CounterKey, i64)>), StoreError> {
                use std::collections::BTreeMap;
                let mut tx = self.writer.begin().await?;
                let rows = sqlx::query_as::<$db, (String, String, String)>(
                    "DELETE FROM inflight WHERE expires_at < $1 RETURNING id, keys, record",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    tx.rollback().await?;
                    return Ok((Vec::new(), Vec::new()));
                }
                let mut rows: Vec<(Vec<CounterKey>, SpendRecord)> = rows
                    .into_iter()
                    .filter_map(|(id, keys, record)| {
                        match (serde_json::from_str(&keys), serde_json::from_str(&record)) {
                            (Ok(k), Ok(r)) => Some((k, r)),
                            _ => {
                                tracing::error!(request = %id, "unreadable in-flight row; not charged");
                                None
                            }
                        }
                    })
                    .collect();
                rows.sort_by(|a, b| a.1.id.cmp(&b.1.id));
                let mut charged = Vec::new();
                let mut spent: BTreeMap<CounterKey, i64> = BTreeMap::new();
                for (keys, r) in rows {
                    let new = sqlx::query_as::<$db, (String,)>(
                        "INSERT INTO spend (id, settled_at, principal, team, org, jti, model, provider, \
                         input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, \
                         cost, reserved, usage_reported, end_reason, price_version, price_tier) \
                         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19) \
                         ON CONFLICT DO NOTHING RETURNING id",
                    )
                    .bind(&r.id)
                    .bind(now)
                    .bind(&r.principal)
                    .bind(&r.team)
                    .bind(&r.org)
                    .bind(&r.jti)
                    .bind(&r.model)
                    .bind(&r.provider)
                    .bind(r.input_tokens)
                    .bind(r.cached_input_tokens)
                    .bind(r.cache_write_tokens)
                    .bind(r.output_tokens)
                    .bind(r.reasoning_tokens)
                    .bind(r.cost)
                    .bind(r.reserved)
                    .bind(i64::from(r.usage_reported))
                    .bind(&r.end_reason)
                    .bind(&r.price_version)
                    .bind(&r.price_tier)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if new.is_none() {
                        // Its settlement landed (or another replica charged it): nothing more to charge.
                        continue;
                    }
                    for k in keys {
                        *spent.entry(k).or_default() += r.cost;
                    }
                    charged.push(SpendRecord { settled_at: now, ..r });
                }
                let mut moved = Vec::new();
                for (k, s) in &spent {
                    if let Some(after) = Self::charge_counter(&mut tx, k, *s, 0).await? {
                        moved.push((k.clone(), after));
                    }
                }
                let mut daily = Daily::default();
                for r in &charged {
                    daily.count(r, r.settled_at);
                }
                Self::add_daily(&mut tx, &daily).await?;
                tx.commit().await?;
                Ok((charged, moved))
            }

            async fn expire(&self, now: i64) -> Result<u64, StoreError> {
                let ids = sqlx::query_as::<$db, (String,)>(
                    "SELECT id FROM reservations WHERE expires_at < $1 ORDER BY expires_at LIMIT 500",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                let mut n = 0;
                for (id,) in ids {
                    if self.drop_reservation(&id, Some(now)).await? {
                        n += 1;
                    }
                }
                Ok(n)
            }

            async fn counters(&self, keys: &[CounterKey]) -> Result<Vec<(i64, i64)>, StoreError> {
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let row = sqlx::query_as::<$db, (i64, i64)>(
                        "SELECT spent, reserved FROM budget_counters \
                         WHERE budget_id = $1 AND subject = $2 AND period_start = $3",
                    )
                    .bind(&k.budget_id)
                    .bind(&k.subject)
                    .bind(k.period_start)
                    .fetch_optional(&self.pool)
                    .await?;
                    out.push(row.unwrap_or((0, 0)));
                }
                Ok(out)
            }

            async fn revoke(
                &self,
                kind: RevocationKind,
                value: &str,
                now: i64,
                cutoff: Option<&str>,
            ) -> Result<i64, StoreError> {
                let (seq,) = sqlx::query_as::<$db, (i64,)>(
                    "INSERT INTO revocations (kind, value, revoked_at, cutoff) VALUES ($1, $2, $3, $4) RETURNING seq",
                )
                .bind(kind.as_str())
                .bind(value)
                .bind(now)
                .bind(cutoff)
                .fetch_one(&self.pool)
                .await?;
                Ok(seq)
            }

            async fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError> {
                let rows = sqlx::query_as::<$db, (i64, String, String, i64, Option<String>)>(
                    "SELECT seq, kind, value, revoked_at, cutoff FROM revocations WHERE seq > $1 ORDER BY seq",
                )
                .bind(seq)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(seq, kind, value, revoked_at, cutoff)| {
                        let kind = match kind.as_str() {
                            "jti" => RevocationKind::Jti,
                            "principal" => RevocationKind::Principal,
                            _ => return None,
                        };
                        Some(Revocation { seq, kind, value, revoked_at, cutoff })
                    })
                    .collect())
            }

            async fn claim_issuer(
                &self,
                issuer: &str,
                now: i64,
                live_until: i64,
            ) -> Result<Option<String>, StoreError> {
                sqlx::query::<$db>(
                    "INSERT INTO store_meta (name, value, live_until) VALUES ('issuer', $1, $2) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(issuer)
                .bind(live_until)
                .execute(&self.pool)
                .await?;
                // Ours already, or nobody with another issuer was seen alive since `now`: take it. One
                // statement, so two replicas with different issuers cannot both win.
                let (previous,): (String,) = sqlx::query_as::<$db, (String,)>(
                    "SELECT value FROM store_meta WHERE name = 'issuer'",
                )
                .fetch_one(&self.pool)
                .await?;
                let taken = sqlx::query::<$db>(
                    "UPDATE store_meta SET value = $1, live_until = $2 \
                     WHERE name = 'issuer' AND (value = $1 OR live_until < $3)",
                )
                .bind(issuer)
                .bind(live_until)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                if taken == 1 {
                    let _ = self.issuer.set(issuer.to_string());
                    return Ok((previous != issuer).then_some(previous));
                }
                let (value, until) = sqlx::query_as::<$db, (String, i64)>(
                    "SELECT value, live_until FROM store_meta WHERE name = 'issuer'",
                )
                .fetch_one(&self.pool)
                .await?;
                Err(StoreError::IssuerMismatch {
                    store_issuer: value,
                    issuer: issuer.to_string(),
                    live_until: until,
                })
            }

            async fn ensure_key(&self, key: &StoredKey) -> Result<(), StoreError> {
                sqlx::query::<$db>(
                    "INSERT INTO signing_keys (generation, kid, created, pkcs8) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(key.generation)
                .bind(&key.kid)
                .bind(key.created)
                .bind(&key.pkcs8)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn keys_since(&self, min_generation: i64) -> Result<Vec<StoredKey>, StoreError> {
                let rows = sqlx::query_as::<$db, (i64, String, i64, Vec<u8>)>(
                    "SELECT generation, kid, created, pkcs8 FROM signing_keys WHERE generation >= $1 \
                     ORDER BY generation DESC",
                )
                .bind(min_generation)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(generation, kid, created, pkcs8)| StoredKey { generation, kid, created, pkcs8 })
                    .collect())
            }

            async fn add_rotated_key(&self, key: &StoredKey, requested_at: i64) -> Result<(), StoreError> {
                sqlx::query::<$db>(
                    "INSERT INTO signing_key_rotations (generation, kid, requested_at, created, pkcs8) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(key.generation)
                .bind(&key.kid)
                .bind(requested_at)
                .bind(key.created)
                .bind(&key.pkcs8)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn rotated_keys_since(&self, min_generation: i64) -> Result<Vec<StoredKey>, StoreError> {
                let rows = sqlx::query_as::<$db, (i64, String, i64, Vec<u8>)>(
                    "SELECT generation, kid, created, pkcs8 FROM signing_key_rotations \
                     WHERE generation >= $1 ORDER BY created DESC, id DESC",
                )
                .bind(min_generation)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(generation, kid, created, pkcs8)| StoredKey { generation, kid, created, pkcs8 })
                    .collect())
            }

            async fn retire_key(&self, kid: &str, now: i64, reason: Option<&str>) -> Result<bool, StoreError> {
                let n = sqlx::query::<$db>(
                    "INSERT INTO signing_key_retirements (kid, retired_at, reason) VALUES ($1, $2, $3) \
                     ON CONFLICT (kid) DO NOTHING",
                )
                .bind(kid)
                .bind(now)
                .bind(reason)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn retired_keys(&self) -> Result<Vec<(String, i64)>, StoreError> {
                Ok(sqlx::query_as::<$db, (String, i64)>(
                    "SELECT kid, retired_at FROM signing_key_retirements ORDER BY retired_at, kid",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn reseal_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
                let mut n = 0;
                for sql in [
                    "UPDATE signing_keys SET pkcs8 = $3 WHERE kid = $1 AND pkcs8 = $2",
                    "UPDATE signing_key_rotations SET pkcs8 = $3 WHERE kid = $1 AND pkcs8 = $2",
                ] {
                    n += sqlx::query::<$db>(sql)
                        .bind(kid)
                        .bind(old)
                        .bind(new)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                }
                Ok(n > 0)
            }

            async fn purge_overwritten(&self) -> Result<(), StoreError> {
                Self::purge(&self.pool).await
            }

            async fn claim_once(&self, key: &str, now: i64, expires_at: i64) -> Result<bool, StoreError> {
                // Insert, or take over a row whose claim has run out; a live row is left alone, and then
                // no row is affected. One statement, so the row lock (PostgreSQL) or the single writer
                // (SQLite) makes it atomic.
                let n = sqlx::query::<$db>(
                    "INSERT INTO replay_guard (claim_key, expires_at) VALUES ($1, $2) \
                     ON CONFLICT (claim_key) DO UPDATE SET expires_at = excluded.expires_at \
                     WHERE replay_guard.expires_at < $3",
                )
                .bind(key)
                .bind(expires_at)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn release_claim(&self, key: &str) -> Result<(), StoreError> {
                sqlx::query::<$db>("DELETE FROM replay_guard WHERE claim_key = $1")
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn prune_claims(&self, now: i64) -> Result<u64, StoreError> {
                Ok(sqlx::query::<$db>("DELETE FROM replay_guard WHERE expires_at < $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn usage_since(&self, principal: &str, since: i64) -> Result<UsageTotals, StoreError> {
                use sqlx::Row as _;
                let r = sqlx::query::<$db>(
                    "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(cost), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(estimated_requests), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(estimated_cost), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(incomplete), 0) AS BIGINT) \
                     FROM spend_daily WHERE day >= $2 AND principal = $1",
                )
                .bind(principal)
                .bind(day_of(since))
                .fetch_one(&self.pool)
                .await?;
                Ok(UsageTotals {
                    sums: Sums::read(&r, 0)?,
                    incomplete_streams: r.try_get(Sums::COLUMNS)?,
                })
            }

            async fn report(&self, q: &ReportQuery) -> Result<Vec<ReportRow>, StoreError> {
                let rows = sqlx::query::<$db>(sqlx::AssertSqlSafe(q.sql()))
                    .bind(q.from)
                    .bind(q.to)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.iter().map(|r| q.row(r)).collect::<Result<_, _>>()?)
            }

            async fn session_usage(&self, session_id: &str) -> Result<SessionUsage, StoreError> {
                use sqlx::Row as _;
                let rows = sqlx::query::<$db>(concat!(
                    "SELECT COALESCE(request_kind, ''), COALESCE(subagent, ''), ",
                    sums_sql!(),
                    " FROM spend WHERE session_id = $1 \
                     GROUP BY COALESCE(request_kind, ''), COALESCE(subagent, '') \
                     ORDER BY COALESCE(request_kind, ''), COALESCE(subagent, '')"
                ))
                    .bind(session_id)
                    .fetch_all(&self.pool)
                    .await?;
                let (requests, first, last, threads, turns) =
                    sqlx::query_as::<$db, (i64, Option<i64>, Option<i64>, i64, i64)>(
                        "SELECT COUNT(*), MIN(settled_at), MAX(settled_at), COUNT(DISTINCT thread_id), \
                         COUNT(DISTINCT turn_id) FROM spend WHERE session_id = $1",
                    )
                    .bind(session_id)
                    .fetch_one(&self.pool)
                    .await?;
                let principals = sqlx::query_as::<$db, (String,)>(
                    "SELECT DISTINCT principal FROM spend WHERE session_id = $1 ORDER BY principal LIMIT $2",
                )
                .bind(session_id)
                .bind(SESSION_PRINCIPALS)
                .fetch_all(&self.pool)
                .await?;
                let some = |s: String| (!s.is_empty()).then_some(s);
                Ok(SessionUsage {
                    requests,
                    first_settled_at: first,
                    last_settled_at: last,
                    threads,
                    turns,
                    principals: principals.into_iter().map(|(p,)| p).collect(),
                    rows: rows
                        .iter()
                        .map(|r| {
                            Ok(SessionRow {
                                request_kind: some(r.try_get(0)?),
                                subagent: some(r.try_get(1)?),
                                sums: Sums::read(r, 2)?,
                            })
                        })
                        .collect::<Result<_, sqlx::Error>>()?,
                })
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query::<$db>("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            fn pool(&self) -> StorePool {
                StorePool::$variant(self.pool.clone())
            }
        }
    };
}

impl_store!(SqliteStore, sqlx::Sqlite, Sqlite, true, true);
impl_store!(PgStore, sqlx::Postgres, Postgres, false, false);

impl SqliteStore {
    async fn purge(pool: &SqlitePool) -> Result<(), StoreError> {
        // Every page image written before now leaves the WAL (it is truncated to nothing).
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(pool)
            .await?;
        Ok(())
    }
}

impl PgStore {
    async fn purge(_pool: &PgPool) -> Result<(), StoreError> {
        // Old row versions stay until VACUUM, which cannot run in the pool's transactions here and needs
        // the table owner: docs/operations.md tells the operator to run it once after enabling sealing.
        Ok(())
    }
}
