//! Store arithmetic under random operation sequences (proptest, fake clock), checked against a model, on the
//! paths the broker uses: a process's allotment pool grows all-or-nothing (a refusal happens exactly when
//! some counter would go over by the need; the extra chunk is capped by the headroom), settlements and
//! returns in one batch move the released amount out of `reserved` and the cost into `spent` (once per
//! record, even when the batch is retried), lease expiry and shutdown give a pool's items back, a pool
//! another replica expired is reported lost, and a settlement after expiry still charges the cost.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_broker::clock::{Clock, FakeClock};
use tollgate_broker::config::{Config, Source, StoreConfig, StoreKind};
use tollgate_broker::governance::pricing::ServiceTier;
use tollgate_broker::governance::store::{
    self, Apply, CounterKey, END_ESTIMATED, GrowItem, GrowOutcome, InflightRow, PoolRef,
    SpendRecord, Store,
};

#[derive(Clone, Debug)]
enum Op {
    /// Grow the pool by `need` (plus up to `chunk`) on the budgets selected by the bit mask.
    Grow { mask: u8, need: i64, chunk: i64 },
    /// One batch of settlements and returns, applied together.
    Batch(Vec<Entry>),
    /// Apply the last settlement again (a batch retried after its commit's answer was lost).
    Retry,
    /// Advance the fake clock; then expire.
    Advance { secs: u64 },
    /// Renew this owner's leases.
    Renew,
    /// Give the whole pool back (shutdown).
    ReleasePool,
}

#[derive(Clone, Debug)]
enum Entry {
    /// A settled request charged `cost` on the selected budgets, releasing up to `release` of the pool's
    /// allotment on each (`pooled: false`: admitted without a pool, nothing to release).
    Spend {
        mask: u8,
        cost: i64,
        release: i64,
        pooled: bool,
    },
    /// Give up to `amount` of unused allotment on budget `key` back.
    Return { key: usize, amount: i64 },
    /// The last settlement of an earlier batch, in this one again (a retried batch merged with new
    /// records): its row is stored already, so nothing moves for it, while the rest of the batch applies.
    Again,
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        3 => (1u8..8, 0i64..300, 0i64..300, any::<bool>())
            .prop_map(|(mask, cost, release, pooled)| Entry::Spend { mask, cost, release, pooled }),
        1 => (0usize..3, 0i64..300).prop_map(|(key, amount)| Entry::Return { key, amount }),
        1 => Just(Entry::Again),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..8, 0i64..400, prop_oneof![Just(0i64), 0i64..800])
            .prop_map(|(mask, need, chunk)| Op::Grow { mask, need, chunk }),
        4 => proptest::collection::vec(entry(), 1..4).prop_map(Op::Batch),
        1 => Just(Op::Retry),
        1 => (0u64..20).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Renew),
        1 => Just(Op::ReleasePool),
    ]
}

const LIMITS: [i64; 3] = [1000, 1500, 700];
const LEASE: i64 = 10;
const OWNER: &str = "me";

fn key(i: usize) -> CounterKey {
    CounterKey {
        budget_id: format!("b{i}"),
        subject: "s".into(),
        period_start: 0,
    }
}

fn picked(mask: u8) -> Vec<usize> {
    (0..3).filter(|i| mask & (1 << i) != 0).collect()
}

async fn open_sqlite(dir: &std::path::Path) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        kind: StoreKind::Sqlite,
        sqlite_path: dir.join("g.db"),
        url: None,
        schema: None,
        fail_open: false,
        reservation_lease_secs: LEASE as u64,
        poll_interval_ms: 250,
        max_connections: 4,
    })
    .await
    .expect("open")
}

async fn open_pg(schema: &str) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        kind: StoreKind::Postgres,
        sqlite_path: "unused".into(),
        url: Some("postgres://postgres@127.0.0.1:5432/test".to_string().into()),
        schema: Some(schema.to_string()),
        fail_open: false,
        reservation_lease_secs: LEASE as u64,
        poll_interval_ms: 250,
        max_connections: 2,
    })
    .await
    .expect("open pg")
}

async fn run(ops: Vec<Op>, pg: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tmp");
    let schema = format!("gov_prop_{}", uuid::Uuid::new_v4().simple());
    let st = if pg {
        open_pg(&schema).await
    } else {
        open_sqlite(dir.path()).await
    };
    let result = run_on(st.clone(), ops).await;
    if let store::StorePool::Postgres(pool) = st.pool() {
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
    }
    result
}

/// The process's pool as the model knows it.
struct Pool {
    /// Its id (a new one after the store lost it or it was released).
    id: String,
    /// What the process believes: the pool row exists.
    believed: bool,
    /// The pool row really exists in the store (not expired, not released).
    alive: bool,
    expires: i64,
    /// The allotment the process holds per budget (what the store's items hold while `alive`).
    held: [i64; 3],
}

async fn run_on(st: Arc<dyn Store>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = FakeClock::new(1_000);
    let mut spent = [0i64; 3];
    let mut reserved = [0i64; 3];
    // A counter row exists once a grow on it committed; a settlement charges only existing counters.
    let mut exists = [false; 3];
    let mut generation = 0;
    let mut pool = Pool {
        id: "pool-0".into(),
        believed: false,
        alive: false,
        expires: 0,
        held: [0; 3],
    };
    let mut last_spend: Option<Apply> = None;
    let mut settled = (0i64, 0i64);
    for (step, op) in ops.into_iter().enumerate() {
        let now = clock.now_secs() as i64;
        match op {
            Op::Grow { mask, need, chunk } => {
                let keys = picked(mask);
                let items: Vec<GrowItem> = keys
                    .iter()
                    .map(|&i| GrowItem {
                        key: key(i),
                        need,
                        chunk,
                        limit: LIMITS[i],
                    })
                    .collect();
                let pref = PoolRef {
                    id: &pool.id,
                    owner: OWNER,
                    now,
                    expires_at: now + LEASE,
                    exists: pool.believed,
                };
                let got = st.grow(pref, &items).await.expect("grow");
                if pool.believed && !pool.alive {
                    prop_assert_eq!(got, GrowOutcome::PoolLost);
                    // The process starts a new pool; what it held went back with the expired one.
                    generation += 1;
                    pool = Pool {
                        id: format!("pool-{generation}"),
                        believed: false,
                        alive: false,
                        expires: 0,
                        held: [0; 3],
                    };
                    check(&st, &spent, &reserved, settled, step).await?;
                    continue;
                }
                let refused = keys
                    .iter()
                    .position(|&i| spent[i] + reserved[i] + need > LIMITS[i]);
                match (got, refused) {
                    (GrowOutcome::Granted(grant), None) => {
                        prop_assert_eq!(grant.len(), keys.len());
                        for (g, &i) in grant.iter().zip(&keys) {
                            let headroom = LIMITS[i] - spent[i] - reserved[i] - need;
                            prop_assert_eq!(*g, need + chunk.min(headroom / 8).max(0));
                            reserved[i] += g;
                            pool.held[i] += g;
                            exists[i] = true;
                        }
                        pool.believed = true;
                        pool.alive = true;
                        pool.expires = now + LEASE;
                    }
                    (
                        GrowOutcome::Refused {
                            index,
                            spent: s,
                            reserved: r,
                        },
                        Some(at),
                    ) => {
                        prop_assert_eq!(
                            index,
                            at,
                            "refused on the first budget that cannot take the need"
                        );
                        let i = keys[index];
                        prop_assert_eq!((s, r), (spent[i], reserved[i]));
                    }
                    (got, refused) => {
                        prop_assert!(
                            false,
                            "grow answered {:?}, the model refuses at {:?}",
                            got,
                            refused
                        );
                    }
                }
            }
            Op::Batch(entries) => {
                let mut batch = Vec::new();
                let earlier = last_spend.clone();
                for (n, e) in entries.into_iter().enumerate() {
                    match e {
                        Entry::Spend {
                            mask,
                            cost,
                            release,
                            pooled,
                        } => {
                            let keys = picked(mask);
                            let releases: Vec<i64> = keys
                                .iter()
                                .map(|&i| if pooled { release.min(pool.held[i]) } else { 0 })
                                .collect();
                            for (r, &i) in releases.iter().zip(&keys) {
                                if pool.alive {
                                    reserved[i] -= r;
                                }
                                pool.held[i] -= r;
                                if exists[i] {
                                    spent[i] += cost;
                                }
                            }
                            settled = (settled.0 + 1, settled.1 + cost);
                            let a = Apply::Spend {
                                pool: pooled.then(|| pool.id.clone()),
                                keys: keys.iter().map(|&i| key(i)).collect(),
                                releases,
                                record: Box::new(SpendRecord {
                                    id: format!("s{step}-{n}"),
                                    // Two UTC days and three principals for the daily sums.
                                    settled_at: now + (step as i64 % 2) * 86_400,
                                    principal: format!("p{}", mask % 3),
                                    input_tokens: cost * 3,
                                    output_tokens: cost,
                                    end_reason: if cost % 2 == 0 {
                                        "completed"
                                    } else {
                                        "incomplete"
                                    }
                                    .into(),
                                    cost,
                                    ..SpendRecord::default()
                                }),
                            };
                            last_spend = Some(a.clone());
                            batch.push(a);
                        }
                        Entry::Again => {
                            if let Some(a) = &earlier {
                                batch.push(a.clone());
                            }
                        }
                        Entry::Return { key: i, amount } => {
                            let amount = amount.min(pool.held[i]);
                            if pool.alive {
                                reserved[i] -= amount;
                            }
                            pool.held[i] -= amount;
                            batch.push(Apply::Return {
                                pool: pool.id.clone(),
                                key: key(i),
                                amount,
                            });
                        }
                    }
                }
                let moved = st.apply(&batch).await.expect("apply");
                for (k, after) in moved {
                    let i = (0..3).find(|&i| key(i) == k).expect("a known key");
                    prop_assert_eq!(after, spent[i], "spent reported after the batch");
                }
            }
            Op::Retry => {
                if let Some(a) = &last_spend {
                    let moved = st.apply(std::slice::from_ref(a)).await.expect("retry");
                    prop_assert!(moved.is_empty(), "a retried settlement moved {:?}", moved);
                }
            }
            Op::Advance { secs } => {
                clock.advance(secs);
                let now = clock.now_secs() as i64;
                let n = st.expire(now).await.expect("expire");
                let gone = pool.alive && pool.expires < now;
                prop_assert_eq!(n, u64::from(gone));
                if gone {
                    for (r, h) in reserved.iter_mut().zip(pool.held) {
                        *r -= h;
                    }
                    // The process does not know yet: it learns at its next grow (PoolLost).
                    pool.alive = false;
                }
            }
            Op::Renew => {
                let n = st.renew(OWNER, now + LEASE).await.expect("renew");
                prop_assert_eq!(n, u64::from(pool.alive));
                if pool.alive {
                    pool.expires = now + LEASE;
                }
            }
            Op::ReleasePool => {
                let existed = st.release_pool(&pool.id).await.expect("release pool");
                prop_assert_eq!(existed, pool.alive);
                if pool.alive {
                    for (r, h) in reserved.iter_mut().zip(pool.held) {
                        *r -= h;
                    }
                }
                generation += 1;
                pool = Pool {
                    id: format!("pool-{generation}"),
                    believed: false,
                    alive: false,
                    expires: 0,
                    held: [0; 3],
                };
            }
        }
        check(&st, &spent, &reserved, settled, step).await?;
    }
    Ok(())
}

/// After every step: each counter as the model has it, and the spend rows' count and total.
async fn check(
    st: &Arc<dyn Store>,
    spent: &[i64; 3],
    reserved: &[i64; 3],
    settled: (i64, i64),
    step: usize,
) -> Result<(), TestCaseError> {
    let got = st
        .counters(&[key(0), key(1), key(2)])
        .await
        .expect("counters");
    for i in 0..3 {
        prop_assert_eq!(
            got[i],
            (spent[i], reserved[i]),
            "counter {} after step {}",
            i,
            step
        );
        prop_assert!(reserved[i] >= 0);
    }
    prop_assert_eq!(
        spend_total(st.as_ref()).await,
        settled,
        "spend rows after step {}",
        step
    );
    let (daily, from_rows) = daily_and_spend(st.as_ref()).await;
    prop_assert_eq!(daily, from_rows, "spend_daily after step {}", step);
    Ok(())
}

/// A row of `spend_daily`: day, principal, requests, five token sums, cost, estimated requests and cost,
/// incomplete requests.
type DailyRow = (
    i64,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
);

/// `spend_daily` as the settlement keeps it, and as the `spend` rows sum up by UTC day and principal.
async fn daily_and_spend(st: &dyn Store) -> (Vec<DailyRow>, Vec<DailyRow>) {
    const DAILY: &str = "SELECT day, principal, requests, input_tokens, cached_input_tokens, \
        cache_write_tokens, output_tokens, reasoning_tokens, cost, estimated_requests, estimated_cost, \
        incomplete FROM spend_daily ORDER BY day, principal";
    const ROWS: &str = "SELECT (settled_at / 86400) * 86400, principal, COUNT(*), \
        CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(cached_input_tokens) AS BIGINT), \
        CAST(SUM(cache_write_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
        CAST(SUM(reasoning_tokens) AS BIGINT), CAST(SUM(cost) AS BIGINT), \
        CAST(SUM(CASE WHEN end_reason = 'estimated' THEN 1 ELSE 0 END) AS BIGINT), \
        CAST(SUM(CASE WHEN end_reason = 'estimated' THEN cost ELSE 0 END) AS BIGINT), \
        CAST(SUM(CASE WHEN end_reason = 'completed' THEN 0 ELSE 1 END) AS BIGINT) \
        FROM spend GROUP BY (settled_at / 86400) * 86400, principal ORDER BY 1, 2";
    match st.pool() {
        store::StorePool::Sqlite(p) => (
            sqlx::query_as(DAILY).fetch_all(&p).await.expect("daily"),
            sqlx::query_as(ROWS).fetch_all(&p).await.expect("rows"),
        ),
        store::StorePool::Postgres(p) => (
            sqlx::query_as(DAILY).fetch_all(&p).await.expect("daily"),
            sqlx::query_as(ROWS).fetch_all(&p).await.expect("rows"),
        ),
    }
}

/// The usage report reads `spend_daily`, which the settlement keeps in the transaction that inserts the
/// spend rows — only rows inserted then count. Settlements over two days and three principals, one of
/// them sent twice (a retry after a lost answer), and a dead broker's in-flight requests charged their
/// estimate, one of which had settled after all: the daily sums equal the spend rows', and a principal's
/// usage is its day's.
async fn daily_sums_follow_the_spend_rows(st: Arc<dyn Store>) {
    let day = 20_000 * 86_400;
    let rec = |id: &str, principal: &str, settled_at: i64, cost: i64, end: &str| SpendRecord {
        id: id.into(),
        settled_at,
        principal: principal.into(),
        input_tokens: 10 * cost,
        cached_input_tokens: cost,
        cache_write_tokens: 2,
        output_tokens: 3 * cost,
        reasoning_tokens: cost / 2,
        cost,
        reserved: cost,
        end_reason: end.into(),
        ..SpendRecord::default()
    };
    let spend = |r: SpendRecord| Apply::Spend {
        pool: None,
        keys: Vec::new(),
        releases: Vec::new(),
        record: Box::new(r),
    };
    let batch = vec![
        spend(rec("a1", "alice", day - 10, 100, "completed")),
        spend(rec("a2", "alice", day + 5, 40, "completed")),
        spend(rec("a3", "alice", day + 6, 7, "incomplete")),
        spend(rec("b1", "bob", day + 7, 300, "completed")),
        spend(rec("c1", "carol", day + 86_399, 11, "failed")),
    ];
    st.apply(&batch).await.expect("apply");
    // The same settlement again, and one new: only the new one counts.
    st.apply(&[
        batch[1].clone(),
        spend(rec("b2", "bob", day + 9, 5, "completed")),
    ])
    .await
    .expect("retry");
    // A dead broker's two requests: one settled after all ("a2"), one did not.
    let estimate = |id: &str| InflightRow {
        keys: Vec::new(),
        record: SpendRecord {
            usage_reported: false,
            ..rec(id, "alice", 0, 25, END_ESTIMATED)
        },
    };
    st.sync_inflight("dead", day, &[estimate("a2"), estimate("a4")], &[])
        .await
        .expect("inflight");
    let (charged, _) = st.charge_expired_inflight(day + 100).await.expect("charge");
    assert_eq!(
        charged.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a4"]
    );

    let (daily, from_rows) = daily_and_spend(st.as_ref()).await;
    assert_eq!(daily, from_rows);
    assert_eq!(daily.len(), 4, "{daily:?}");
    let alice = st.usage_since("alice", day + 3_600).await.expect("usage");
    assert_eq!(
        (
            alice.sums.requests,
            alice.sums.cost_nanos,
            alice.sums.input_tokens,
            alice.sums.estimated_requests,
            alice.sums.estimated_cost_nanos,
            alice.incomplete_streams
        ),
        (3, 40 + 7 + 25, 400 + 70 + 250, 1, 25, 2),
        "alice's day: a2, a3 and the estimate of a4 (a1 was the day before)"
    );
    let carol = st.usage_since("carol", day).await.expect("usage");
    assert_eq!((carol.sums.requests, carol.incomplete_streams), (1, 1));
    let nobody = st.usage_since("dave", day).await.expect("usage");
    assert_eq!(nobody.sums, store::Sums::default());
}

#[tokio::test]
async fn the_daily_sums_follow_the_spend_rows_on_both_stores() {
    let dir = tempfile::tempdir().expect("tmp");
    daily_sums_follow_the_spend_rows(open_sqlite(dir.path()).await).await;
    let schema = format!("gov_daily_{}", uuid::Uuid::new_v4().simple());
    let pg = open_pg(&schema).await;
    daily_sums_follow_the_spend_rows(pg.clone()).await;
    if let store::StorePool::Postgres(pool) = pg.pool() {
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
    }
}

/// Every settled request in the store, counted and summed, read straight from its `spend` table.
async fn spend_total(st: &dyn Store) -> (i64, i64) {
    const SQL: &str = "SELECT COUNT(*), CAST(COALESCE(SUM(cost), 0) AS BIGINT) FROM spend";
    match st.pool() {
        store::StorePool::Sqlite(p) => sqlx::query_as(SQL).fetch_one(&p).await,
        store::StorePool::Postgres(p) => sqlx::query_as(SQL).fetch_one(&p).await,
    }
    .expect("spend total")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn governance_store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(run(ops, false))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// The same model check against PostgreSQL (same SQL, other engine), one fresh schema per case.
    #[test]
    fn governance_store_matches_model_postgres(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(run(ops, true))?;
    }
}

fn config(text: &str) -> Config {
    let dir = tempfile::tempdir().expect("tmp").keep();
    Config::from_source(
        Source {
            path: dir.join("broker.toml"),
            text: text.into(),
        },
        &BTreeMap::<String, String>::new(),
    )
    .expect("config")
}

fn claims(principal: &str, iat: u64, jti: &str) -> tollgate::Claims {
    serde_json::from_value(serde_json::json!({
        "iss": "i", "aud": "a", "sub": principal, "iat": iat, "nbf": iat, "exp": iat + 3600, "jti": jti,
        "tollgate": {"principal": principal, "team": "t", "models": ["*"],
                     "identity": {"kind": "static", "subject": principal, "rule": "r"}}
    }))
    .expect("claims")
}

/// Principal revocation refuses tokens issued up to the revocation (iat is backdated by 30 s at mint) and
/// accepts tokens minted afterwards; a jti revocation refuses only that token. Fake clock, no sleeping.
#[tokio::test]
async fn governance_revocation_window_on_fake_clock() {
    use tollgate_broker::governance::{Governance, store::RevocationKind};
    let c = config("policy_file = \"p.toml\"\n");
    let clock = FakeClock::new(10_000);
    let st = open_sqlite(&c.server.state_dir).await;
    let g = Governance::with_store(st, &c, Arc::new(clock.clone()), None, metrics(&c));
    let skew = tollgate_broker::token::SKEW_SECS;
    let old = claims("alice", 9_000 - skew, "j1");
    let same_second = claims("alice", 10_000 - skew, "j2");
    let later = claims("alice", 10_001 - skew, "j3");
    assert!(g.check_revoked(&old).is_ok());
    g.revoke(RevocationKind::Principal, "alice")
        .await
        .expect("revoke");
    assert!(g.check_revoked(&old).is_err());
    assert!(g.check_revoked(&same_second).is_err());
    assert!(g.check_revoked(&later).is_ok());
    assert!(g.check_revoked(&claims("bob", 9_000, "j4")).is_ok());
    g.revoke(RevocationKind::Jti, "j3")
        .await
        .expect("revoke jti");
    assert!(g.check_revoked(&later).is_err());
}

/// Keys rotate by generation: the current and the next key are published, the current one signs, and a
/// retired key stays until every token it could have signed has expired. Fake clock.
#[tokio::test]
async fn governance_signing_keys_rotate_through_the_store() {
    use tollgate_broker::governance::keys::KeyManager;
    use tollgate_broker::token::KeyRing;
    let dir = tempfile::tempdir().expect("tmp");
    let st = open_sqlite(dir.path()).await;
    // Rotate every 100 s; tokens live up to 150 s (ttl + leeway).
    let (a, b) = (KeyManager::new(100, 150), KeyManager::new(100, 150));
    let (ring_a, ring_b) = (KeyRing::default(), KeyRing::default());
    a.sync(st.as_ref(), &ring_a, 1_050).await.expect("sync a");
    b.sync(st.as_ref(), &ring_b, 1_050).await.expect("sync b");
    let kids = |r: &KeyRing| {
        let mut v: Vec<String> = r.jwks()["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(kids(&ring_a).len(), 2, "this and the next generation");
    assert_eq!(
        kids(&ring_a),
        kids(&ring_b),
        "replicas agree on one key per generation"
    );
    let signer_10 = ring_a.active_at(1_050).expect("active").kid.clone();
    assert_eq!(ring_b.active_at(1_050).expect("active").kid, signer_10);
    // Generation 11 starts: the pre-published key signs, generation 10's key stays for its tokens.
    a.sync(st.as_ref(), &ring_a, 1_120).await.expect("sync");
    let signer_11 = ring_a.active_at(1_120).expect("active").kid.clone();
    assert_ne!(signer_11, signer_10);
    assert!(kids(&ring_a).contains(&signer_10));
    assert_eq!(kids(&ring_a).len(), 3);
    // At 1_260 generation 10's last token (signed before 1_100, living ≤ 150 s) has expired.
    a.sync(st.as_ref(), &ring_a, 1_260).await.expect("sync");
    assert!(
        !kids(&ring_a).contains(&signer_10),
        "retired key dropped after its tokens expired"
    );
    assert!(kids(&ring_a).contains(&signer_11));
}

/// Forced rotations compose with the schedule: the forced key is published by every replica before it
/// signs, signs from its activation until the next generation's (pre-published) key takes over, stays
/// published until its last token expired, and a rotation requested near a boundary signs through the next
/// generation. Fake clock.
#[tokio::test]
async fn forced_rotation_composes_with_the_schedule() {
    use tollgate_broker::governance::keys::KeyManager;
    use tollgate_broker::token::KeyRing;
    let dir = tempfile::tempdir().expect("tmp");
    let st = open_sqlite(dir.path()).await;
    // Generations of 100 s, tokens live ≤ 150 s, forced keys sign 5 s after the request.
    let a = KeyManager::new(100, 150).with_publish_lead(5);
    let b = KeyManager::new(100, 150).with_publish_lead(5);
    let (ring_a, ring_b) = (KeyRing::default(), KeyRing::default());
    a.sync(st.as_ref(), &ring_a, 1_020).await.expect("sync");
    b.sync(st.as_ref(), &ring_b, 1_020).await.expect("sync");
    let gen10 = ring_a.active_at(1_020).expect("k").kid.clone();
    let gen11 = ring_a.active_at(1_100).expect("k").kid.clone();
    assert_ne!(gen10, gen11);

    let r = a.rotate(st.as_ref(), &ring_a, 1_030).await.expect("rotate");
    assert_eq!(
        (r.activates_at, r.previous_kid.as_deref()),
        (1_035, Some(gen10.as_str()))
    );
    assert!(ring_a.find(&r.kid).is_some(), "published on A at once");
    assert!(ring_b.find(&r.kid).is_none());
    b.sync(st.as_ref(), &ring_b, 1_031).await.expect("poll");
    assert!(
        ring_b.find(&r.kid).is_some(),
        "published on B by its next poll"
    );
    for ring in [&ring_a, &ring_b] {
        assert_eq!(
            ring.active_at(1_034).expect("k").kid,
            gen10,
            "not before activation"
        );
        assert_eq!(ring.active_at(1_035).expect("k").kid, r.kid);
        assert_eq!(ring.active_at(1_099).expect("k").kid, r.kid);
        assert_eq!(
            ring.active_at(1_100).expect("k").kid,
            gen11,
            "the schedule takes over"
        );
    }
    // Generation 10 (and the forced key in it) signed until 1_100: kept until 1_250, gone after.
    b.sync(st.as_ref(), &ring_b, 1_249).await.expect("sync");
    assert!(ring_b.find(&r.kid).is_some() && ring_b.find(&gen10).is_some());
    b.sync(st.as_ref(), &ring_b, 1_260).await.expect("sync");
    assert!(ring_b.find(&r.kid).is_none() && ring_b.find(&gen10).is_none());

    // Near a boundary: requested at 1_298, signs from 1_303 — past generation 13's start — until 1_400.
    let gen13 = {
        b.sync(st.as_ref(), &ring_b, 1_298).await.expect("sync");
        ring_b.active_at(1_300).expect("k").kid.clone()
    };
    let late = b.rotate(st.as_ref(), &ring_b, 1_298).await.expect("rotate");
    assert_eq!(ring_b.active_at(1_302).expect("k").kid, gen13);
    assert_eq!(ring_b.active_at(1_303).expect("k").kid, late.kid);
    assert_eq!(ring_b.active_at(1_399).expect("k").kid, late.kid);
    b.sync(st.as_ref(), &ring_b, 1_400).await.expect("sync");
    assert_ne!(ring_b.active_at(1_400).expect("k").kid, late.kid);
    assert!(
        ring_b.find(&late.kid).is_some(),
        "still verifying its tokens"
    );
}

/// What the two-replica test saw, updated atomically with each admission and settlement.
#[derive(Default)]
struct Tally {
    in_flight: i64,
    settled_cost: i64,
    /// Σ (cost − estimate)⁺: the documented overage.
    excess: i64,
    admitted: u64,
    settled: u64,
    refused: u64,
}

/// Two replicas (two `Governance` instances, each with its own connection pool, as two processes would
/// have) share one PostgreSQL store and hammer one small budget concurrently, admitting from their
/// allotments and growing them in the store. At every admission: Σ settled costs + Σ estimates in flight ≤
/// amount + Σ overage. At the end: spent == Σ settled costs, everything still reserved is the replicas'
/// free allotments (the usage report does not count a replica's own as in flight), and after both give
/// their allotments back nothing is reserved. Fake clock; no sleeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn governance_two_replicas_share_one_budget_postgres() {
    use tollgate_broker::governance::{Finished, Governance};
    use tollgate_broker::usage::Usage;
    const AMOUNT: i64 = 50_000_000; // $0.05
    let c = config(
        "policy_file = \"p.toml\"\n\
         [pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"10\"\n\
         [[budgets]]\nid = \"small\"\nscope = \"principal\"\namount_usd = \"0.05\"\nwindow = \"daily\"\n",
    );
    let schema = format!("gov_two_{}", uuid::Uuid::new_v4().simple());
    let clock = FakeClock::new(1_800_000_000);
    let (s1, s2) = (open_pg(&schema).await, open_pg(&schema).await);
    let g1 = Arc::new(Governance::with_store(
        s1.clone(),
        &c,
        Arc::new(clock.clone()),
        None,
        metrics(&c),
    ));
    let g2 = Arc::new(Governance::with_store(
        s2,
        &c,
        Arc::new(clock.clone()),
        None,
        metrics(&c),
    ));
    let alice = Arc::new(claims("alice", 1_800_000_000, "j1"));
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let g = if t % 2 == 0 { g1.clone() } else { g2.clone() };
        let (alice, tally) = (alice.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..60u64 {
                let max_out = 50 + (t * 7 + i * 13) % 150;
                let body = serde_json::json!({"model": "gpt-test", "input": "hello there", "max_output_tokens": max_out});
                let body = serde_json::to_vec(&body).expect("json");
                match g.admit_tier(&alice, "gpt-test", body.len() as u64, Some(max_out), ServiceTier::Standard).await {
                    Ok(r) => {
                        let e = r.estimate.cost.0;
                        {
                            let mut tl = tally.lock().expect("tally");
                            tl.in_flight += e;
                            tl.admitted += 1;
                            assert!(
                                tl.settled_cost + tl.in_flight <= AMOUNT + tl.excess,
                                "admitted beyond the budget: settled {} + in flight {} > {} + excess {}",
                                tl.settled_cost,
                                tl.in_flight,
                                AMOUNT,
                                tl.excess
                            );
                        }
                        tokio::task::yield_now().await;
                        if i % 11 == 5 {
                            tally.lock().expect("tally").in_flight -= e;
                            g.release(r);
                            continue;
                        }
                        // Real output from 0 to 120 % of the limit: some requests beat their estimate.
                        let out = (max_out * ((t + i) % 13)) / 10;
                        let usage = Usage {
                            input_tokens: 4,
                            output_tokens: out,
                            ..Usage::default()
                        };
                        let cost = r.price.cost(&usage).0;
                        {
                            let mut tl = tally.lock().expect("tally");
                            tl.in_flight -= e;
                            tl.settled_cost += cost;
                            tl.excess += (cost - e).max(0);
                            tl.settled += 1;
                        }
                        let f = Finished {
                            model: "gpt-test",
                            provider: "mock",
                            usage: Some(usage),
                            end: "completed",
                            streamed_text_bytes: 0,
                        };
                        let s = g.settle(&alice, r, f);
                        assert_eq!(s.cost.0, cost);
                        // What the accounting task does with a batch: one write per settlement here.
                        g.store
                            .apply(std::slice::from_ref(&s.apply))
                            .await
                            .expect("apply");
                    }
                    Err(e) => {
                        let msg = format!("{e:?}");
                        assert!(msg.contains("BudgetExceeded"), "unexpected refusal: {msg}");
                        tally.lock().expect("tally").refused += 1;
                    }
                }
            }
        }));
    }
    // Background rounds meanwhile (renewal, expiry, idle return) without moving the clock.
    for _ in 0..5 {
        g1.tick(true, true).await;
        g2.tick(true, true).await;
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.expect("task");
    }
    let tl = std::mem::take(&mut *tally.lock().expect("tally"));
    eprintln!(
        "two replicas: {} admitted, {} refused, settled {} of {} n$ (excess {})",
        tl.admitted, tl.refused, tl.settled_cost, AMOUNT, tl.excess
    );
    assert!(tl.refused > 0, "the budget must have run out");
    assert!(tl.settled_cost <= AMOUNT + tl.excess);
    let day = 1_800_000_000 / 86_400 * 86_400;
    let k = CounterKey {
        budget_id: "small".into(),
        subject: "alice".into(),
        period_start: day,
    };
    let (spent, reserved) = s1
        .counters(std::slice::from_ref(&k))
        .await
        .expect("counters")[0];
    assert_eq!(spent, tl.settled_cost, "spent == Σ settled costs");
    let (held1, used1) = g1.allotment_totals();
    let (held2, used2) = g2.allotment_totals();
    assert_eq!((used1, used2), (0, 0), "nothing in flight");
    assert_eq!(
        reserved,
        held1 + held2,
        "reserved == Σ the replicas' allotments"
    );
    let report = g1.report(&alice).await.expect("report");
    assert_eq!(
        report[0].reserved_nanos,
        reserved - held1,
        "own free allotment is not in flight"
    );
    assert_eq!(report[0].spent_nanos, spent);
    let (n, total) = spend_total(s1.as_ref()).await;
    assert_eq!(total, tl.settled_cost);
    assert_eq!(n as u64, tl.settled, "one spend row per settled request");
    g1.shutdown().await;
    g2.shutdown().await;
    let (spent_end, reserved_end) = s1
        .counters(std::slice::from_ref(&k))
        .await
        .expect("counters")[0];
    assert_eq!(
        (spent_end, reserved_end),
        (tl.settled_cost, 0),
        "all allotments given back"
    );
    if let store::StorePool::Postgres(pool) = s1.pool() {
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
    }
}

fn metrics(c: &tollgate_broker::config::Config) -> Arc<tollgate_broker::metrics::Metrics> {
    Arc::new(tollgate_broker::metrics::Metrics::new(
        c.metrics.clone(),
        &c.routes,
    ))
}

/// A replica that stops renewing its lease (a long pause, a lost store connection) does not spend its
/// in-memory allotment after the lease: another replica may have expired its pool and handed the amounts out
/// again. The next admission goes to the store, finds the pool gone, and starts a new one from the store's
/// counters. Fake clock; no sleeping.
#[tokio::test]
async fn an_allotment_is_not_spent_after_its_lease_ran_out() {
    use tollgate_broker::governance::Governance;
    let c = config(
        "policy_file = \"p.toml\"\n[store]\nreservation_lease_secs = 30\n\
         [pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"10\"\n\
         [[budgets]]\nid = \"b\"\nscope = \"principal\"\namount_usd = \"1.00\"\nwindow = \"lifetime\"\n",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let st = open_sqlite(dir.path()).await;
    let clock = FakeClock::new(1_800_000_000);
    let g1 = Governance::with_store(st.clone(), &c, Arc::new(clock.clone()), None, metrics(&c));
    let g2 = Governance::with_store(st.clone(), &c, Arc::new(clock.clone()), None, metrics(&c));
    let alice = claims("alice", 1_800_000_000, "j1");
    let r1 = g1
        .admit_tier(&alice, "gpt-test", 300, Some(100), ServiceTier::Standard)
        .await
        .expect("admit");
    g1.release(r1);
    // Within the lease the allotment serves the next admission in memory (same epoch).
    let r = g1
        .admit_tier(&alice, "gpt-test", 300, Some(100), ServiceTier::Standard)
        .await
        .expect("admit");
    let epoch = r.epoch;
    g1.release(r);
    // g1 pauses past its lease; g2 presumes it dead and expires its pool.
    clock.advance(31);
    g2.tick(false, true).await;
    let r2 = g1
        .admit_tier(&alice, "gpt-test", 300, Some(100), ServiceTier::Standard)
        .await
        .expect("admit");
    assert!(
        r2.epoch > epoch,
        "the stale allotment was spent in memory after the lease ran out (epoch {} == {epoch})",
        r2.epoch
    );
    let fresh = r2.epoch;
    g1.release(r2);
    // The new pool's lease is confirmed: it serves the next admission in memory again.
    let r3 = g1
        .admit_tier(&alice, "gpt-test", 300, Some(100), ServiceTier::Standard)
        .await
        .expect("admit");
    assert_eq!(r3.epoch, fresh);
    g1.release(r3);
}

/// One settlement batch across many principals, each with its own pool and three counters: 150 counters
/// and items, more than one statement's chunk (64) on SQLite, which moves them a chunk per statement,
/// where PostgreSQL moves them one statement each. Both must end where the arithmetic says, and report
/// the same counters moved: items used up (deleted), items partly used, an expired pool's items (gone:
/// their amounts do not move), returns, and counters that only released.
async fn many_principals_in_one_batch(st: Arc<dyn Store>) -> Vec<(CounterKey, i64)> {
    const PRINCIPALS: usize = 50;
    let now = 1_000;
    let keys = |p: usize| -> Vec<CounterKey> {
        ["daily", "team", "org"]
            .iter()
            .map(|b| CounterKey {
                budget_id: (*b).into(),
                subject: format!("p{p:02}"),
                period_start: 0,
            })
            .collect()
    };
    for p in 0..PRINCIPALS {
        let items: Vec<GrowItem> = keys(p)
            .into_iter()
            .map(|key| GrowItem {
                key,
                need: 100,
                chunk: 0,
                limit: 1_000_000,
            })
            .collect();
        let pool = format!("pool-{p:02}");
        // Every seventh pool belongs to a broker that died: its lease runs out before the batch.
        let (owner, expires_at) = if p % 7 == 3 {
            ("dead", now + 1)
        } else {
            (OWNER, now + LEASE)
        };
        let pref = PoolRef {
            id: &pool,
            owner,
            now,
            expires_at,
            exists: false,
        };
        assert!(matches!(
            st.grow(pref, &items).await.expect("grow"),
            GrowOutcome::Granted(_)
        ));
    }
    assert_eq!(st.expire(now + 2).await.expect("expire"), 7);
    let mut batch = Vec::new();
    for p in 0..PRINCIPALS {
        let pool = format!("pool-{p:02}");
        let k = keys(p);
        match p % 5 {
            // A request that used the whole allotment: the items are used up and deleted.
            0 => batch.push(Apply::Spend {
                pool: Some(pool),
                releases: vec![100; 3],
                keys: k,
                record: Box::new(SpendRecord {
                    id: format!("r{p}"),
                    settled_at: now,
                    cost: 40 + p as i64,
                    ..SpendRecord::default()
                }),
            }),
            // Unused allotment given back on one counter only: it releases, it spends nothing.
            1 => batch.push(Apply::Return {
                pool,
                key: k[1].clone(),
                amount: 30,
            }),
            // A request without a pool: it spends, it releases nothing.
            2 => batch.push(Apply::Spend {
                pool: None,
                releases: vec![0; 3],
                keys: k,
                record: Box::new(SpendRecord {
                    id: format!("r{p}"),
                    settled_at: now,
                    cost: 7,
                    ..SpendRecord::default()
                }),
            }),
            // Two requests of one principal in the batch, partly using the items, then a return.
            _ => {
                for n in 0..2 {
                    batch.push(Apply::Spend {
                        pool: Some(pool.clone()),
                        releases: vec![20, 30, 40],
                        keys: k.clone(),
                        record: Box::new(SpendRecord {
                            id: format!("r{p}-{n}"),
                            settled_at: now,
                            cost: 11,
                            ..SpendRecord::default()
                        }),
                    });
                }
                batch.push(Apply::Return {
                    pool,
                    key: k[0].clone(),
                    amount: 5,
                });
            }
        }
    }
    let moved = st.apply(&batch).await.expect("apply");
    // Each counter against the arithmetic: what its pool held (100, unless the pool expired) minus what
    // the batch released from it; what the batch spent on it.
    for p in 0..PRINCIPALS {
        let dead = p % 7 == 3;
        let got = st.counters(&keys(p)).await.expect("counters");
        for (i, (spent, reserved)) in got.into_iter().enumerate() {
            let (want_spent, released) = match p % 5 {
                0 => (40 + p as i64, 100),
                1 => (0, if i == 1 { 30 } else { 0 }),
                2 => (7, 0),
                _ => (22, [20, 30, 40][i] * 2 + if i == 0 { 5 } else { 0 }),
            };
            let want_reserved = if dead { 0 } else { 100 - released };
            assert_eq!(
                (spent, reserved),
                (want_spent, want_reserved),
                "principal {p}, counter {i}"
            );
        }
    }
    // Used-up items are gone, the rest hold what is left.
    let items: i64 = {
        const SQL: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM reservation_items";
        let (n,): (i64,) = match st.pool() {
            store::StorePool::Sqlite(p) => sqlx::query_as(SQL).fetch_one(&p).await,
            store::StorePool::Postgres(p) => sqlx::query_as(SQL).fetch_one(&p).await,
        }
        .expect("items");
        n
    };
    let live = (0..PRINCIPALS).filter(|p| p % 7 != 3);
    assert_eq!(items, live.filter(|p| p % 5 != 0).count() as i64 * 3);
    moved
}

#[tokio::test]
async fn a_batch_across_many_principals_moves_every_counter_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let sqlite = many_principals_in_one_batch(open_sqlite(dir.path()).await).await;
    let schema = format!("gov_many_{}", uuid::Uuid::new_v4().simple());
    let pg = many_principals_in_one_batch(open_pg(&schema).await).await;
    // Every counter that spent, in key order, with its spent after the batch; the same on both stores.
    assert_eq!(sqlite.len(), 50 / 5 * 4 * 3);
    assert!(sqlite.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(sqlite, pg);
}
