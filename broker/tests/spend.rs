//! Issue 18, spend you can see coming: reports computed from the store (SQLite and PostgreSQL, a generated
//! month of traffic on a fake clock), the admin report API and `tollgate-broker admin report`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source, StoreConfig, StoreKind};
use tollgate_broker::governance::pricing::ServiceTier;
use tollgate_broker::governance::report::{Report, ReportParams, day_string, usd9};
use tollgate_broker::governance::store::{self, Apply, Dimension, SpendRecord, Store};
use tollgate_broker::governance::{Finished, Governance};
use tollgate_broker::usage::Usage;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DAY: i64 = 86_400;
/// 2026-11-01T00:00:00Z.
const NOV_1: i64 = 1_793_491_200;

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

fn metrics(c: &Config) -> Arc<tollgate_broker::metrics::Metrics> {
    Arc::new(tollgate_broker::metrics::Metrics::new(
        c.metrics.clone(),
        &c.routes,
    ))
}

async fn open_store(kind: StoreKind, dir: &std::path::Path, schema: &str) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        kind,
        sqlite_path: dir.join("g.db"),
        url: (kind == StoreKind::Postgres).then(|| PG_URL.to_string().into()),
        schema: (kind == StoreKind::Postgres).then(|| schema.to_string()),
        fail_open: false,
        reservation_lease_secs: 30,
        poll_interval_ms: 250,
        max_connections: 4,
    })
    .await
    .expect("open store")
}

async fn drop_schema(st: &Arc<dyn Store>, schema: &str) {
    if let store::StorePool::Postgres(pool) = st.pool() {
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
    }
}

fn claims(principal: &str, team: Option<&str>, org: Option<&str>, jti: &str) -> tollgate::Claims {
    let mut grant = serde_json::json!({"principal": principal, "models": ["*"],
        "identity": {"kind": "static", "subject": principal, "rule": "r"}});
    if let Some(t) = team {
        grant["team"] = t.into();
    }
    if let Some(o) = org {
        grant["org"] = o.into();
    }
    serde_json::from_value(serde_json::json!({
        "iss": "i", "aud": "a", "sub": principal, "iat": NOV_1, "nbf": NOV_1, "exp": NOV_1 + 90 * DAY,
        "jti": jti, "tollgate": grant
    }))
    .expect("claims")
}

/// The sums a report row must equal, computed from the settlement records themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Sums {
    requests: i64,
    input: i64,
    cached: i64,
    write: i64,
    output: i64,
    reasoning: i64,
    cost: i64,
}

fn key_of(r: &SpendRecord, d: Dimension) -> Option<String> {
    match d {
        Dimension::Principal => Some(r.principal.clone()),
        Dimension::Team => r.team.clone(),
        Dimension::Org => r.org.clone(),
        Dimension::Model => Some(r.model.clone()),
        Dimension::Provider => Some(r.provider.clone()),
        // Stored through `Store::apply`, without a Codex session (broker/tests/sessions.rs has them).
        Dimension::Session | Dimension::RequestKind => None,
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

/// A month of traffic (plus a day on each side, and requests on the exact day boundaries) through
/// governance on a fake clock: admitted, settled, and stored in batches through the store API, as the
/// accounting task does. Returns every stored record.
async fn generate_month(st: Arc<dyn Store>) -> Vec<SpendRecord> {
    let c = config(
        "policy_file = \"p.toml\"\n\
         [pricing]\ndefaults = false\n\
         [pricing.models.\"gpt-a\"]\ninput = \"1.25\"\ncached_input = \"0.125\"\noutput = \"10\"\n\
         [pricing.models.\"claude-b\"]\ninput = \"3\"\ncached_input = \"0.3\"\ncache_write = \"3.75\"\noutput = \"15\"\n\
         [[budgets]]\nid = \"team-monthly\"\nscope = \"team\"\namount_usd = \"1000\"\nwindow = \"monthly\"\n\
         [[budgets]]\nid = \"alice-daily\"\nscope = \"principal\"\nmatch = \"alice\"\namount_usd = \"50\"\nwindow = \"daily\"\n",
    );
    let clock = FakeClock::new((NOV_1 - DAY) as u64);
    let g = Governance::with_store(st.clone(), &c, Arc::new(clock.clone()), None, metrics(&c));
    let people = [
        claims("alice", Some("payments"), Some("acme"), "j-alice"),
        claims("bob", Some("search"), Some("acme"), "j-bob"),
        claims("carol", Some("payments"), None, "j-carol"),
        claims("dave", None, None, "j-dave"),
        claims("erin", Some("infra"), Some("globex"), "j-erin"),
    ];
    let models = [("gpt-a", "openai-east"), ("claude-b", "anthropic")];
    let mut records = Vec::new();
    // From the day before November to the day after it.
    for d in -1..31i64 {
        let day_start = NOV_1 + d * DAY;
        let n = 3 + (d * 7).rem_euclid(6);
        let mut batch = Vec::new();
        for i in 0..n {
            // The first request of a day at 00:00:00, the last at 23:59:59, the rest in between.
            let offset = match i {
                0 => 0,
                i if i == n - 1 => DAY - 1,
                i => (i * 3_607 + d * 61).rem_euclid(DAY),
            };
            clock.set((day_start + offset) as u64);
            let who = &people[((d + 31) * 3 + i).rem_euclid(5) as usize];
            let (model, provider) = models[((d + i).rem_euclid(2)) as usize];
            let r = g
                .admit_tier(
                    who,
                    model,
                    600 + i as u64 * 10,
                    Some(256),
                    ServiceTier::Standard,
                )
                .await
                .expect("admitted");
            let input = 100 + ((d + 40) * 37 + i * 11) as u64 % 2_000;
            let usage = Usage {
                input_tokens: input,
                cached_input_tokens: input / 3,
                cache_write_tokens: if model == "claude-b" { input / 5 } else { 0 },
                output_tokens: 10 + (i as u64 * 17) % 250,
                reasoning_tokens: (i as u64 * 5) % 40,
            };
            let s = g.settle(
                who,
                r,
                Finished {
                    model,
                    provider,
                    usage: Some(usage),
                    end: "completed",
                    streamed_text_bytes: 0,
                },
            );
            let Apply::Spend { record, .. } = &s.apply else {
                panic!("a settlement is a spend")
            };
            assert_eq!(record.cost, s.cost.0);
            assert_eq!(record.settled_at, day_start + offset);
            records.push((**record).clone());
            batch.push(s.apply);
        }
        st.apply(&batch).await.expect("apply");
    }
    g.shutdown().await;
    records
}

/// Every grouping of the November report equals the sums of the settlements recorded in November; rows
/// outside the range are not counted; the totals equal the store's Σ cost over the range.
async fn check_month_report(st: Arc<dyn Store>) {
    let records = generate_month(st.clone()).await;
    let november: Vec<&SpendRecord> = records
        .iter()
        .filter(|r| (NOV_1..NOV_1 + 30 * DAY).contains(&r.settled_at))
        .collect();
    assert!(november.len() < records.len(), "traffic on both sides");
    assert!(november.len() > 100, "{} requests", november.len());
    let mut groupings: Vec<String> = vec!["day".into(), String::new()];
    for d in Dimension::ALL {
        groupings.push(d.as_str().into());
        groupings.push(format!("day,{}", d.as_str()));
    }
    for by in groupings {
        let req = ReportParams {
            from: Some("2026-11-01".into()),
            to: Some("2026-11-30".into()),
            by: Some(by.clone()),
            format: None,
        }
        .validate(0)
        .expect("params");
        let report = Report::run(st.as_ref(), &req).await.expect("report");
        let mut want: BTreeMap<(Option<String>, Option<Option<String>>), Sums> = BTreeMap::new();
        for r in &november {
            let day = req.grouping.by_day.then(|| day_string(r.settled_at));
            let key = req.grouping.by.map(|d| key_of(r, d));
            let e = want.entry((day, key)).or_default();
            e.requests += 1;
            e.input += r.input_tokens;
            e.cached += r.cached_input_tokens;
            e.write += r.cache_write_tokens;
            e.output += r.output_tokens;
            e.reasoning += r.reasoning_tokens;
            e.cost += r.cost;
        }
        let mut got: BTreeMap<(Option<String>, Option<Option<String>>), Sums> = BTreeMap::new();
        for l in &report.rows {
            let s = &l.sums;
            assert_eq!(s.cost_usd, usd9(s.cost_nanos));
            let prev = got.insert(
                (l.day.clone(), l.group.clone()),
                Sums {
                    requests: s.requests,
                    input: s.input_tokens,
                    cached: s.cached_input_tokens,
                    write: s.cache_write_tokens,
                    output: s.output_tokens,
                    reasoning: s.reasoning_tokens,
                    cost: s.cost_nanos,
                },
            );
            assert!(prev.is_none(), "one row per group ({by})");
        }
        assert_eq!(got, want, "report by {by:?}");
        let total: i64 = november.iter().map(|r| r.cost).sum();
        assert_eq!(report.totals.cost_nanos, total, "{by}");
        assert_eq!(report.totals.requests, november.len() as i64, "{by}");
        if by.starts_with("day") {
            assert_eq!(
                report.rows.first().and_then(|l| l.day.clone()).as_deref(),
                Some("2026-11-01")
            );
            assert_eq!(
                report.rows.last().and_then(|l| l.day.clone()).as_deref(),
                Some("2026-11-30")
            );
        }
    }
    // Every row records the price that charged it (both stores' migrations add the columns).
    const Q: &str = "SELECT DISTINCT price_version, price_tier FROM spend ORDER BY 1, 2";
    let versions: Vec<(String, String)> = match st.pool() {
        store::StorePool::Sqlite(p) => sqlx::query_as(Q).fetch_all(&p).await.expect("q"),
        store::StorePool::Postgres(p) => sqlx::query_as(Q).fetch_all(&p).await.expect("q"),
    };
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(
        versions
            .iter()
            .all(|(v, t)| v.starts_with("config-") && t == "standard"),
        "{versions:?}"
    );
    assert_ne!(
        versions[0].0, versions[1].0,
        "one version per configured price"
    );
    // The whole generated range equals the store's own total.
    let all = ReportParams {
        from: Some("2026-10-31".into()),
        to: Some("2026-12-01".into()),
        by: Some("model".into()),
        format: None,
    }
    .validate(0)
    .expect("params");
    let report = Report::run(st.as_ref(), &all).await.expect("report");
    let (n, total) = spend_total(st.as_ref()).await;
    assert_eq!(
        (report.totals.requests, report.totals.cost_nanos),
        (n, total)
    );
    assert_eq!(total, records.iter().map(|r| r.cost).sum::<i64>());
}

#[tokio::test]
async fn month_report_equals_the_settlements_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = open_store(StoreKind::Sqlite, dir.path(), "").await;
    check_month_report(st).await;
}

#[tokio::test]
async fn month_report_equals_the_settlements_postgres() {
    let dir = tempfile::tempdir().expect("tmp");
    let schema = format!("spend_report_{}", uuid::Uuid::new_v4().simple());
    let st = open_store(StoreKind::Postgres, dir.path(), &schema).await;
    check_month_report(st.clone()).await;
    drop_schema(&st, &schema).await;
}

async fn cli(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-broker"));
    cmd.args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_ADMIN_URL")
        .env("TOLLGATE_ADMIN_KEY", common::ADMIN_KEY)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The admin API serves the report as JSON and CSV, strictly authenticated and validated, and the CLI
/// prints it as a table, CSV or JSON — all the store's numbers.
#[tokio::test]
async fn report_api_and_cli() {
    let b = common::start("").await;
    let alice = b.mint(common::CREDENTIAL).await;
    let bob = b.mint("bob-credential").await;
    for (t, m) in [(&alice, "gpt-5.5"), (&alice, "claude-x"), (&bob, "gpt-5.5")] {
        assert_eq!(b.responses(t, m, false).await.0, 200);
    }
    // No waiting for settlement: the report flushes this replica's queue first.
    let (s, v) = b.admin_get("/admin/v1/report?by=day,team").await;
    assert_eq!(s, 200, "{v}");
    let (n, total) = spend_total(b.state.governance().store.as_ref()).await;
    assert_eq!(n, 3);
    assert_eq!(v["totals"]["requests"], 3);
    assert_eq!(v["totals"]["cost_nanos"], total);
    assert_eq!(v["by"], serde_json::json!(["day", "team"]));
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    let today = day_string(tollgate_broker::clock::Clock::now_secs(&b.clock) as i64);
    assert!(rows.iter().all(|r| r["day"] == today.as_str()), "{v}");
    let payments = rows.iter().find(|r| r["team"] == "payments").unwrap();
    assert_eq!(payments["requests"], 2);
    assert_eq!(payments["input_tokens"], 200);
    assert_eq!(payments["cached_input_tokens"], 80);
    assert_eq!(payments["output_tokens"], 40);

    let r = b
        .http
        .get(format!("{}/admin/v1/report?by=model&format=csv", b.url))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/csv; charset=utf-8"
    );
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "model,requests,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,estimated_requests,estimated_cost_nanos,cost_usd,cost_nanos"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    let csv_total: i64 = lines[1..]
        .iter()
        .map(|l| l.rsplit(',').next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(csv_total, total);

    for (q, want) in [
        ("by=colour", "unknown grouping"),
        ("from=2026-02-30", "from: expected YYYY-MM-DD"),
        ("from=2026-11-02&to=2026-11-01", "after"),
        ("format=xml", "json or csv"),
    ] {
        let (s, v) = b.admin_get(&format!("/admin/v1/report?{q}")).await;
        assert_eq!(s, 400, "{q}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{q}: {v}"
        );
    }
    let r = b
        .http
        .get(format!("{}/admin/v1/report", b.url))
        .bearer_auth("not-the-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let url = b.url.clone();
    let (code, out, err) = cli(&["admin", "--url", &url, "report", "--by", "day,principal"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("principal") && out.contains("alice") && out.contains("bob"),
        "{out}"
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("total") && last.ends_with(&usd9(total)),
        "{out}"
    );
    let (code, out, err) = cli(&[
        "admin", "--url", &url, "report", "--by", "provider", "--format", "csv",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("provider,requests,"), "{out}");
    assert!(out.contains("\r\nmock,3,300,120,0,60,"), "{out:?}");
    let (code, out, err) = cli(&["admin", "--url", &url, "report", "--format", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"]["cost_nanos"], total);
    let (code, _, err) = cli(&["admin", "--url", &url, "report", "--from", "yesterday"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("400") && err.contains("from: expected YYYY-MM-DD"),
        "{err}"
    );
}

// ---------------------------------------------------------------- prices that match the invoice

/// A LiteLLM price file with a service tier and a long-context band, as operators download it (floats).
const LITELLM: &str = r#"{
  "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "mode": "documentation"},
  "gpt-t": {
    "litellm_provider": "openai", "mode": "responses", "max_input_tokens": 400000,
    "input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-07,
    "input_cost_per_token_priority": 2.5e-06, "output_cost_per_token_priority": 2e-05,
    "cache_read_input_token_cost_priority": 2.5e-07,
    "input_cost_per_token_flex": 6.25e-07, "output_cost_per_token_flex": 5e-06,
    "cache_read_input_token_cost_flex": 6.25e-08,
    "input_cost_per_token_batches": 6.25e-07, "supports_reasoning": true
  },
  "claude-t": {
    "litellm_provider": "anthropic", "mode": "chat",
    "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
    "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
    "input_cost_per_token_above_200k_tokens": 6e-06, "output_cost_per_token_above_200k_tokens": 2.25e-05,
    "cache_read_input_token_cost_above_200k_tokens": 6e-07,
    "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06
  },
  "tiny-t": {"input_cost_per_token": 1.875e-11, "output_cost_per_token": 3.3e-11}
}"#;

fn config_in(dir: &std::path::Path, text: &str) -> Result<Config, String> {
    std::fs::write(dir.join("broker.toml"), text).unwrap();
    Config::from_source(
        Source::read(&dir.join("broker.toml")).unwrap(),
        &BTreeMap::<String, String>::new(),
    )
    .map_err(|e| e.to_string())
}

fn settle_one(
    g: &Governance,
    who: &tollgate::Claims,
    model: &str,
    r: tollgate_broker::governance::Reservation,
    usage: Usage,
) -> SpendRecord {
    let s = g.settle(
        who,
        r,
        Finished {
            model,
            provider: "p",
            usage: Some(usage),
            end: "completed",
            streamed_text_bytes: 0,
        },
    );
    match s.apply {
        Apply::Spend { record, .. } => *record,
        Apply::Return { .. } => panic!("a settlement is a spend"),
    }
}

/// `[pricing] litellm_file` prices requests per tier and band, `[pricing.models]` still wins, every spend
/// row names the version and tier that charged it, and a bad file is refused at load naming both files'
/// lines.
#[tokio::test]
async fn litellm_file_prices_tiers_and_bands_and_records_the_version() {
    use tollgate_broker::governance::pricing::ServiceTier;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prices.json"), LITELLM).unwrap();
    let c = config_in(
        dir.path(),
        "policy_file = \"p.toml\"\n[pricing]\ndefaults = false\nlitellm_file = \"prices.json\"\n\
         litellm_version = \"litellm-2025-12-01\"\n\
         [pricing.models.\"tiny-t\"]\ninput = \"1\"\noutput = \"2\"\n",
    )
    .expect("config");
    let st = open_store(StoreKind::Sqlite, dir.path(), "").await;
    let clock = FakeClock::new(NOV_1 as u64);
    let g = Governance::with_store(st.clone(), &c, Arc::new(clock), None, metrics(&c));
    let who = claims("alice", Some("payments"), None, "j1");
    let u = |i, cached, write, o| Usage {
        input_tokens: i,
        cached_input_tokens: cached,
        cache_write_tokens: write,
        output_tokens: o,
        reasoning_tokens: 0,
    };
    let mut records = Vec::new();
    // Standard, priority (asked for), flex (asked for priority, served flex as the answer says).
    /// (model, tier asked, tier served, usage, cost, price_tier).
    type Case<'a> = (
        &'a str,
        ServiceTier,
        Option<ServiceTier>,
        Usage,
        i64,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "gpt-t",
            ServiceTier::Standard,
            None,
            u(1000, 800, 0, 100),
            350_000 + 1_000_000,
            "standard",
        ),
        (
            "gpt-t",
            ServiceTier::Priority,
            None,
            u(1000, 800, 0, 100),
            700_000 + 2_000_000,
            "priority",
        ),
        (
            "gpt-t",
            ServiceTier::Priority,
            Some(ServiceTier::Flex),
            u(1000, 800, 0, 100),
            175_000 + 500_000,
            "flex",
        ),
        // 3,000 plain + 2,000 read + 5,000 written, 1,000 out.
        (
            "claude-t",
            ServiceTier::Standard,
            None,
            u(10_000, 2_000, 5_000, 1_000),
            43_350_000,
            "standard",
        ),
        // Above 200k: every token at the band's price.
        (
            "claude-t",
            ServiceTier::Standard,
            None,
            u(250_000, 0, 0, 1_000),
            1_522_500_000,
            "standard above 200000",
        ),
        // The anthropic model has no priority price: standard.
        (
            "claude-t",
            ServiceTier::Priority,
            None,
            u(1_000, 0, 0, 0),
            3_000_000,
            "standard",
        ),
        // [pricing.models] beats the file: $1 / $2 per Mtok.
        (
            "tiny-t",
            ServiceTier::Standard,
            None,
            u(1_000_000, 0, 0, 1_000_000),
            3_000_000_000,
            "standard",
        ),
    ];
    for (model, asked, served, usage, want, tier) in cases {
        let mut r = g
            .admit_tier(&who, model, 400, Some(2_000), asked)
            .await
            .expect("admitted");
        if let Some(t) = served {
            r.served_at(t);
        }
        let rec = settle_one(&g, &who, model, r, usage);
        assert_eq!(
            (rec.cost, rec.price_tier.as_str()),
            (want, tier),
            "{model} {asked:?}"
        );
        let version = if model == "tiny-t" {
            "config-"
        } else {
            "litellm-2025-12-01"
        };
        assert!(
            rec.price_version.starts_with(version),
            "{}",
            rec.price_version
        );
        records.push(rec);
    }
    let batch: Vec<Apply> = records
        .iter()
        .map(|r| Apply::Spend {
            pool: None,
            keys: vec![],
            releases: vec![],
            record: Box::new(r.clone()),
        })
        .collect();
    st.apply(&batch).await.expect("apply");
    let store::StorePool::Sqlite(pool) = st.pool() else {
        panic!("sqlite")
    };
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT price_version, price_tier, cost FROM spend ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut want: Vec<(String, String, i64)> = records
        .iter()
        .map(|r| (r.price_version.clone(), r.price_tier.clone(), r.cost))
        .collect();
    let mut got = rows.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);

    // A bad file: refused at load, with the config's line and the file's line.
    std::fs::write(
        dir.path().join("bad.json"),
        "{\n  \"m\": {\n    \"input_cost_per_token\": -1,\n    \"output_cost_per_token\": 1e-6\n  }\n}\n",
    )
    .unwrap();
    let e = config_in(
        dir.path(),
        "policy_file = \"p.toml\"\n[pricing]\nlitellm_file = \"bad.json\"\n",
    )
    .expect_err("bad file");
    assert!(
        e.contains("broker.toml:3:")
            && e.contains("pricing.litellm_file")
            && e.contains("bad.json:3:5")
            && e.contains("input_cost_per_token"),
        "{e}"
    );
    let e = config_in(
        dir.path(),
        "policy_file = \"p.toml\"\n[pricing]\nlitellm_file = \"missing.json\"\n",
    )
    .expect_err("missing file");
    assert!(e.contains("missing.json: cannot read"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Prices written as decimals in a LiteLLM file (up to 15 significant digits, as floats in JSON) are
    /// charged exactly: a request settled through governance is never below the file's price for its
    /// reported usage at its tier and band, and at most four nano-dollars (per-component rounding) above it.
    #[test]
    fn litellm_charge_never_below_the_file(
        // femto-USD per token, i.e. the file's decimal × 10^15, at most $0.1 per token.
        prices in proptest::collection::vec(0u64..100_000_000_000_000, 16),
        input in 0u64..500_000, cached_pct in 0u64..=100, write_pct in 0u64..=100,
        output in 0u64..100_000, tier in 0usize..3,
    ) {
        use tollgate_broker::governance::pricing::ServiceTier;
        let dec = |femto: u64| format!("{}.{:015}", femto / 1_000_000_000_000_000, femto % 1_000_000_000_000_000);
        // Rounded to 15 significant digits, so the JSON float reads back as the same decimal.
        let prices: Vec<u64> = prices.iter().map(|p| {
            let digits = p.to_string().len();
            if digits > 15 { let m = 10u64.pow((digits - 15) as u32); p / m * m } else { *p }
        }).collect();
        let names = ["input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost", "cache_creation_input_token_cost"];
        let mut fields = Vec::new();
        for (i, suffix) in ["", "_priority", "_flex", "_above_128k_tokens"].iter().enumerate() {
            for (j, n) in names.iter().enumerate() {
                fields.push(format!("\"{n}{suffix}\": {}", dec(prices[i * 4 + j])));
            }
        }
        let json = format!("{{\"m\": {{{}}}}}", fields.join(", "));
        let file = tollgate_broker::governance::litellm::parse(&json, std::path::Path::new("p.json"), None)
            .expect("valid file");
        let mut c = config("policy_file = \"p.toml\"\n[pricing]\ndefaults = false\n");
        c.pricing.table = tollgate_broker::governance::pricing::PriceTable::layered(
            false, file.entries, vec![], tollgate_broker::governance::pricing::Unpriced::Refuse);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rec = rt.block_on(async {
            let st = open_store(StoreKind::Sqlite, dir.path(), "").await;
            let g = Governance::with_store(st, &c, Arc::new(FakeClock::new(NOV_1 as u64)), None, metrics(&c));
            let who = claims("alice", None, None, "j");
            let tier = [ServiceTier::Standard, ServiceTier::Priority, ServiceTier::Flex][tier];
            let r = g.admit_tier(&who, "m", 100, Some(10), tier).await.expect("admit");
            let cached = input * cached_pct / 100;
            let write = (input - cached) * write_pct / 100;
            let rec = settle_one(&g, &who, "m", r, Usage {
                input_tokens: input, cached_input_tokens: cached, cache_write_tokens: write,
                output_tokens: output, reasoning_tokens: 0,
            });
            (rec, cached, write, tier)
        });
        let (rec, cached, write, tier) = rec;
        // The file's price for this request: the band above 128k replaces the standard rates (the file
        // gives no tier prices inside the band, so a tier there is the highest of both).
        let base = |t: usize| [prices[t * 4], prices[t * 4 + 2], prices[t * 4 + 3], prices[t * 4 + 1]];
        let t = match tier { ServiceTier::Standard => 0, ServiceTier::Priority => 1, ServiceTier::Flex => 2 };
        let rates: [u64; 4] = if input > 128_000 {
            let band = base(3);
            if t == 0 { band } else {
                let tr = base(t);
                [band[0].max(tr[0]), band[1].max(tr[1]), band[2].max(tr[2]), band[3].max(tr[3])]
            }
        } else {
            base(t)
        };
        let plain = input - cached - write;
        let exact = u128::from(plain) * u128::from(rates[0]) + u128::from(cached) * u128::from(rates[1])
            + u128::from(write) * u128::from(rates[2]) + u128::from(output) * u128::from(rates[3]);
        let charged = rec.cost as u128 * 1_000_000;
        proptest::prop_assert!(charged >= exact, "charged {} n$ < file {} fn$", rec.cost, exact);
        proptest::prop_assert!(charged < exact + 4_000_000, "charged {} n$ vs file {} fn$", rec.cost, exact);
    }
}

// ---------------------------------------------------------------- soft limits and alerts

/// What a local webhook receiver got: (path, headers, body).
type Hooks = Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap, bytes::Bytes)>>>;

/// A webhook receiver on 127.0.0.1:0 that answers 200 to every POST and keeps what it got.
async fn receiver() -> (String, Hooks) {
    let hooks: Hooks = Arc::default();
    let h = hooks.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let h = h.clone();
            async move {
                h.lock()
                    .unwrap()
                    .push((uri.path().to_string(), headers, body));
                axum::http::StatusCode::OK
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hooks)
}

/// The receiver's own check of a generic webhook: HMAC-SHA256 over "{timestamp}.{body}" with the shared
/// secret, computed here independently of the broker's code.
fn signature_ok(secret: &str, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
    use aws_lc_rs::hmac;
    let (Some(ts), Some(sig)) = (
        headers
            .get("x-tollgate-timestamp")
            .and_then(|v| v.to_str().ok()),
        headers
            .get("x-tollgate-signature")
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        &signed,
    );
    sig == format!("v1={}", hex::encode(tag.as_ref()))
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

const SECRET: &str = "a-shared-webhook-secret-0123456789";

/// Three replicas sharing PostgreSQL settle a burst that takes one budget counter past its soft limit and
/// 50 %, 80 % and 100 % at the same moment: each mark is emitted exactly once across the replicas (one row
/// each in `budget_alerts`), delivered once to the signed webhook and once to the Slack-compatible sink, and
/// the receiver verifies every signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alerts_once_across_three_replicas_postgres() {
    use tollgate_broker::accounting::{Accounting, Served};
    use tollgate_broker::usage::StreamEnd;
    let (url, hooks) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
    let c = config_in(
        dir.path(),
        &format!(
            "policy_file = \"p.toml\"\n\
             [pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"10\"\n\
             [[budgets]]\nid = \"alice-daily\"\nscope = \"principal\"\namount_usd = \"1.00\"\nwindow = \"daily\"\n\
             thresholds = [80, 50, 100]\nsoft_usd = \"0.30\"\n\
             [alerts]\nretry_initial_ms = 10\nmax_attempts = 3\n\
             [[alerts.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}/hook\"\nsecret_file = \"secret.txt\"\n\
             [[alerts.sinks]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"{url}/slack\"\n"
        ),
    )
    .expect("config");
    assert_eq!(c.budgets[0].thresholds, vec![50, 80, 100]);
    let schema = format!("spend_alerts_{}", uuid::Uuid::new_v4().simple());
    let clock = FakeClock::new(NOV_1 as u64 + 3_600);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let st = open_store(StoreKind::Postgres, dir.path(), &schema).await;
        let m = metrics(&c);
        let g = Arc::new(Governance::with_store(
            st,
            &c,
            Arc::new(clock.clone()),
            None,
            m.clone(),
        ));
        let acc = Accounting::new(g.clone(), m.clone(), None, Arc::new(clock.clone()));
        replicas.push((g, acc, m));
    }
    let alice = Arc::new(claims("alice", Some("payments"), None, "j-alice"));
    // Ten requests in flight on each replica, each estimated at a fraction of a cent…
    let mut inflight = Vec::new();
    for _ in 0..10 {
        for (g, acc, _) in &replicas {
            let r = g
                .admit_tier(&alice, "gpt-test", 300, Some(100), ServiceTier::Standard)
                .await
                .expect("admitted");
            inflight.push(acc.start(
                alice.clone(),
                "gpt-test".into(),
                "/v1/responses",
                std::time::Instant::now(),
                r,
            ));
        }
    }
    // …all finishing at once, each at $0.05: $1.50 in all, past every mark.
    for f in inflight {
        f.finish(
            Served {
                provider: "mock".into(),
                provider_kind: "openai",
                status: 200,
            },
            Some(Usage {
                input_tokens: 0,
                output_tokens: 5_000,
                ..Usage::default()
            }),
            StreamEnd::Completed,
            0,
        );
    }
    for (_, acc, _) in &replicas {
        assert!(
            acc.flush(std::time::Duration::from_secs(30)).await,
            "settled"
        );
    }
    wait_for("deliveries", || {
        replicas.iter().all(|(g, _, _)| g.alerter().pending() == 0)
    })
    .await;
    let got = hooks.lock().unwrap().clone();
    let webhooks: Vec<&(String, axum::http::HeaderMap, bytes::Bytes)> =
        got.iter().filter(|(p, ..)| p == "/hook").collect();
    let slack: Vec<&(String, axum::http::HeaderMap, bytes::Bytes)> =
        got.iter().filter(|(p, ..)| p == "/slack").collect();
    assert_eq!(webhooks.len(), 4, "one webhook per mark: {got:?}");
    assert_eq!(slack.len(), 4, "one slack message per mark");
    let mut marks = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (_, headers, body) in &webhooks {
        assert!(
            signature_ok(SECRET, headers, body),
            "signature verified by the receiver"
        );
        assert!(!signature_ok("another-secret-0123456789", headers, body));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["budget_id"], "alice-daily");
        assert_eq!(v["subject"], "alice");
        assert_eq!(v["scope"], "principal");
        assert_eq!(
            headers["x-tollgate-delivery"].to_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        assert!(v["spent_nanos"].as_i64().unwrap() >= v["threshold_nanos"].as_i64().unwrap());
        ids.insert(v["id"].as_str().unwrap().to_string());
        marks.push(v["threshold"].as_str().unwrap().to_string());
    }
    marks.sort();
    assert_eq!(marks, ["100%", "50%", "80%", "soft"]);
    assert_eq!(ids.len(), 4);
    for (_, headers, body) in &slack {
        assert!(
            headers.get("x-tollgate-signature").is_none(),
            "slack payloads are not signed"
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.starts_with("Tollgate: daily budget 'alice-daily' for principal alice"),
            "{text}"
        );
    }
    let emitted: u64 = replicas
        .iter()
        .map(|(_, _, m)| {
            m.render()
                .lines()
                .filter(|l| l.starts_with("tollgate_alerts_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(emitted, 4, "four alerts emitted across the three replicas");
    let st = replicas[0].0.store.clone();
    let store::StorePool::Postgres(pool) = st.pool() else {
        panic!("pg")
    };
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM budget_alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 4);
    // More spend in the same window emits nothing new.
    let (g, acc, _) = &replicas[1];
    let r = g
        .admit_tier(&alice, "gpt-test", 300, Some(100), ServiceTier::Standard)
        .await;
    assert!(r.is_err(), "the hard limit still refuses");
    let _ = acc;
    for (g, _, _) in &replicas {
        g.shutdown().await;
    }
    drop_schema(&st, &schema).await;
}

/// Through the broker: a soft limit warns (alert, audit record, log) and refuses nothing; a sink that hangs
/// and a sink that refuses connections slow no request and no settlement; the refused deliveries are
/// retried and counted as failed; each mark alerts once however much more is spent.
#[tokio::test]
async fn soft_limit_warns_without_refusing_and_a_down_sink_slows_nothing() {
    let (url, hooks) = receiver().await;
    // Accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    // Refuses connections: a port nobody listens on any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let extra = format!(
        "[[budgets]]\nid = \"alice-soft\"\nscope = \"principal\"\nmatch = \"alice\"\namount_usd = \"100\"\n\
         window = \"daily\"\nsoft_usd = \"0.0001\"\nthresholds = [100]\n\
         [alerts]\nretry_initial_ms = 10\nmax_attempts = 3\ntimeout_ms = 30000\n\
         [[alerts.sinks]]\nname = \"ok\"\nkind = \"webhook\"\nurl = \"{url}/hook\"\nsecret_file = \"{s}\"\n\
         [[alerts.sinks]]\nname = \"hang\"\nkind = \"webhook\"\nurl = \"http://{hang_addr}/\"\nsecret_file = \"{s}\"\n\
         [[alerts.sinks]]\nname = \"refused\"\nkind = \"slack\"\nurl = \"http://{closed}/\"\n",
        s = secret.display()
    );
    let b = common::start(&extra).await;
    let alice = b.mint(common::CREDENTIAL).await;
    let started = std::time::Instant::now();
    // The first request's $0.00028 passes the $0.0001 soft limit; none is refused.
    for _ in 0..3 {
        let t = std::time::Instant::now();
        assert_eq!(b.responses(&alice, "gpt-5.5", false).await.0, 200);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "a request took {:?}",
            t.elapsed()
        );
    }
    // The usage call waits for this replica's settlements (and so for the alert claim): no sink delays it.
    let r = b
        .http
        .get(format!("{}/v1/tollgate/usage", b.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "served and settled in {:?} while a sink hangs for 30 s",
        started.elapsed()
    );
    wait_for("the webhook", || hooks.lock().unwrap().len() == 1).await;
    let metric = |sink: &str, outcome: &str| -> u64 {
        b.state
            .metrics()
            .render()
            .lines()
            .find(|l| {
                l.starts_with("tollgate_alert_deliveries_total{")
                    && l.contains(&format!("sink=\"{sink}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    wait_for("the refused sink to give up", || {
        metric("refused", "failed") == 1
    })
    .await;
    assert_eq!(
        metric("refused", "retried"),
        2,
        "three attempts: two retries"
    );
    assert_eq!(metric("ok", "delivered"), 1);
    assert_eq!(
        metric("hang", "failed"),
        0,
        "still waiting on its first attempt"
    );
    assert_eq!(
        b.state.governance().alerter().pending(),
        1,
        "the hanging delivery, off every request's path"
    );
    {
        let got = hooks.lock().unwrap();
        let (path, headers, body) = &got[0];
        assert_eq!(path, "/hook");
        assert!(signature_ok(SECRET, headers, body));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["type"], "budget.soft_limit");
        assert_eq!(v["threshold"], "soft");
        assert_eq!(v["budget_id"], "alice-soft");
    }
    // More requests over the soft limit: still served, no second alert.
    for _ in 0..2 {
        assert_eq!(b.responses(&alice, "gpt-5.5", false).await.0, 200);
    }
    b.settled(5).await;
    assert!(
        b.state
            .accounting()
            .flush(std::time::Duration::from_secs(5))
            .await
    );
    assert_eq!(
        hooks.lock().unwrap().len(),
        1,
        "one alert per mark and window"
    );
    // The audit trail has the alert once.
    let audit = b.state.audit().as_ref().unwrap();
    audit.flush().await;
    let alerts: Vec<_> = audit
        .sink()
        .scan(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event.detail["action"] == "budget_alert")
        .collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].event.actor, "system");
    assert_eq!(alerts[0].event.principal.as_deref(), Some("alice"));
    assert_eq!(alerts[0].event.detail["threshold"], "soft");
}

/// Alert config is validated at load with the line and the field.
#[test]
fn alert_config_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short"), "short").unwrap();
    let base = "policy_file = \"p.toml\"\n";
    let budget =
        "[[budgets]]\nid = \"b\"\nscope = \"team\"\namount_usd = \"10\"\nwindow = \"daily\"\n";
    for (text, place, needle) in [
        (
            format!("{base}{budget}thresholds = [50, 120]\n"),
            ":7:",
            "budgets.thresholds: 120 is not a percentage",
        ),
        (
            format!("{base}{budget}thresholds = [50, 50]\n"),
            ":7:",
            "listed twice",
        ),
        (
            format!("{base}{budget}soft_usd = \"11\"\n"),
            ":7:",
            "budgets.soft_usd: soft_usd must be above zero and at most",
        ),
        (
            format!("{base}{budget}soft_usd = \"-1\"\n"),
            ":7:",
            "negative",
        ),
        (
            format!(
                "{base}[[alerts.sinks]]\nname = \"x\"\nkind = \"email\"\nurl = \"http://h/\"\n"
            ),
            ":4:",
            "alerts.sinks.kind: unknown kind \"email\"",
        ),
        (
            format!(
                "{base}[[alerts.sinks]]\nname = \"x\"\nkind = \"webhook\"\nurl = \"http://h/\"\n"
            ),
            ":2:",
            "needs exactly one of secret_env and secret_file",
        ),
        (
            format!(
                "{base}[[alerts.sinks]]\nname = \"x\"\nkind = \"webhook\"\nurl = \"http://h/\"\nsecret_file = \"short\"\n"
            ),
            ":6:",
            "at least 16 characters",
        ),
        (
            format!("{base}[[alerts.sinks]]\nname = \"x\"\nkind = \"slack\"\nurl = \"ftp://h/\"\n"),
            ":2:",
            "must be an http:// or https:// URL",
        ),
        (
            format!("{base}[[alerts.sinks]]\nname = \"x\"\nkind = \"slack\"\n"),
            ":2:",
            "set exactly one of url, url_env and url_file",
        ),
        (
            format!(
                "{base}[[alerts.sinks]]\nname = \"x\"\nkind = \"slack\"\nurl = \"http://h/\"\n[[alerts.sinks]]\nname = \"x\"\nkind = \"slack\"\nurl = \"http://h/\"\n"
            ),
            ":7:",
            "duplicate sink name",
        ),
        (
            format!("{base}[alerts]\nmax_attempts = 0\n"),
            ":3:",
            "alerts.max_attempts",
        ),
    ] {
        let e = config_in(dir.path(), &text).expect_err(&text);
        assert!(e.contains(place) && e.contains(needle), "{text:?} gave {e}");
    }
    // An unset url_env leaves the sink out, named for the start-up warning.
    let c = config_in(
        dir.path(),
        &format!("{base}[[alerts.sinks]]\nname = \"x\"\nkind = \"slack\"\nurl_env = \"TOLLGATE_TEST_UNSET_URL\"\n"),
    )
    .expect("valid");
    assert!(c.alerts.sinks.is_empty());
    assert_eq!(c.alerts.disabled, vec!["x".to_string()]);
}

/// `[alerts] weekly_report`: once the week has turned, exactly one of two replicas sends last week's spend
/// (by team) to the sinks, equal to the settlements of that week; nothing more is sent until the next week.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weekly_report_sent_once_by_one_replica_postgres() {
    let (url, hooks) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
    let c = config_in(
        dir.path(),
        &format!(
            "policy_file = \"p.toml\"\n\
             [pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"10\"\n\
             [alerts]\nweekly_report = \"team\"\n\
             [[alerts.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}/hook\"\nsecret_file = \"secret.txt\"\n\
             [[alerts.sinks]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"{url}/slack\"\n"
        ),
    )
    .expect("config");
    let schema = format!("spend_weekly_{}", uuid::Uuid::new_v4().simple());
    let clock = FakeClock::new(NOV_1 as u64);
    let (s1, s2) = (
        open_store(StoreKind::Postgres, dir.path(), &schema).await,
        open_store(StoreKind::Postgres, dir.path(), &schema).await,
    );
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
    let people = [
        claims("alice", Some("payments"), None, "ja"),
        claims("bob", Some("search"), None, "jb"),
        claims("dave", None, None, "jd"),
    ];
    // 2026-11-14 … 2026-11-24; the reported week is Monday 16 to Sunday 22.
    let mon = NOV_1 + 15 * DAY;
    let mut in_week = 0i64;
    let mut n = 0i64;
    for d in 13..24i64 {
        for i in 0..3i64 {
            let at = NOV_1 + d * DAY + i * 20_000;
            clock.set(at as u64);
            let who = &people[((d + i) % 3) as usize];
            let r = g1
                .admit_tier(who, "gpt-test", 300, Some(100), ServiceTier::Standard)
                .await
                .expect("admit");
            let rec = settle_one(
                &g1,
                who,
                "gpt-test",
                r,
                Usage {
                    input_tokens: 100 + d as u64,
                    output_tokens: 10 * i as u64,
                    ..Usage::default()
                },
            );
            if (mon..mon + 7 * DAY).contains(&at) {
                in_week += rec.cost;
                n += 1;
            }
            s1.apply(&[Apply::Spend {
                pool: None,
                keys: vec![],
                releases: vec![],
                record: Box::new(rec),
            }])
            .await
            .expect("apply");
        }
    }
    // Monday 23rd, ten seconds past midnight: both replicas' background rounds run at once.
    let now = mon + 7 * DAY + 10;
    clock.set(now as u64);
    tokio::join!(g1.weekly(now), g2.weekly(now));
    wait_for("deliveries", || {
        g1.alerter().pending() + g2.alerter().pending() == 0
    })
    .await;
    let got = hooks.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one webhook and one slack message: {got:?}");
    let (_, headers, body) = got.iter().find(|(p, ..)| p == "/hook").unwrap();
    assert!(signature_ok(SECRET, headers, body));
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["type"], "report.weekly");
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (Some("2026-11-16"), Some("2026-11-22"))
    );
    assert_eq!(v["by"], serde_json::json!(["team"]));
    assert_eq!(v["totals"]["cost_nanos"], in_week);
    assert_eq!(v["totals"]["requests"], n);
    let teams: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["team"].as_str().unwrap_or("(none)"))
        .collect();
    assert_eq!(teams.len(), 3, "{v}");
    let (_, _, slack) = got.iter().find(|(p, ..)| p == "/slack").unwrap();
    let text: serde_json::Value = serde_json::from_slice(slack).unwrap();
    assert!(
        text["text"]
            .as_str()
            .unwrap()
            .starts_with("Tollgate weekly spend 2026-11-16 to 2026-11-22: $"),
        "{text}"
    );
    // Later rounds in the same week send nothing; the next week sends the next report.
    for t in [now + 60, mon + 9 * DAY] {
        clock.set(t as u64);
        tokio::join!(g1.weekly(t), g2.weekly(t));
    }
    wait_for("deliveries", || {
        g1.alerter().pending() + g2.alerter().pending() == 0
    })
    .await;
    assert_eq!(hooks.lock().unwrap().len(), 2);
    let next = mon + 14 * DAY + 5;
    clock.set(next as u64);
    tokio::join!(g1.weekly(next), g2.weekly(next));
    wait_for("the next report", || hooks.lock().unwrap().len() == 4).await;
    let got = hooks.lock().unwrap().clone();
    let (_, _, body) = got.iter().rev().find(|(p, ..)| p == "/hook").unwrap();
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["from"], "2026-11-23");
    drop_schema(&s1, &schema).await;
}

/// The remaining-budget hint for the response headers: nothing known at first (a background read fills
/// it, off the request path), then the amount less the settled spend this replica has seen.
#[tokio::test]
async fn remaining_budget_hint_for_the_response_headers() {
    use tollgate_broker::accounting::{Accounting, Served};
    use tollgate_broker::governance::BudgetHint;
    use tollgate_broker::usage::StreamEnd;
    let dir = tempfile::tempdir().unwrap();
    let c = config_in(
        dir.path(),
        "policy_file = \"p.toml\"\n\
         [pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"1\"\noutput = \"10\"\n\
         [[budgets]]\nid = \"alice-daily\"\nscope = \"principal\"\namount_usd = \"1.00\"\nwindow = \"daily\"\n\
         [[budgets]]\nid = \"team-monthly\"\nscope = \"team\"\namount_usd = \"100\"\nwindow = \"monthly\"\n",
    )
    .expect("config");
    let st = open_store(StoreKind::Sqlite, dir.path(), "").await;
    let clock = FakeClock::new(NOV_1 as u64 + 3_600);
    let m = metrics(&c);
    let g = Arc::new(Governance::with_store(
        st,
        &c,
        Arc::new(clock.clone()),
        None,
        m.clone(),
    ));
    let acc = Accounting::new(g.clone(), m, None, Arc::new(clock.clone()));
    let alice = Arc::new(claims("alice", Some("payments"), None, "j"));
    let r = g
        .admit_tier(&alice, "gpt-test", 300, Some(100), ServiceTier::Standard)
        .await
        .expect("admit");
    assert_eq!(
        g.budget_hint(&r),
        None,
        "nothing known yet; read in the background"
    );
    for _ in 0..200 {
        if g.budget_hint(&r).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let h = g.budget_hint(&r).expect("known after the background read");
    assert_eq!(
        (h.budget_id.as_str(), h.remaining),
        ("alice-daily", tollgate::Nanos(1_000_000_000))
    );
    let f = acc.start(
        alice.clone(),
        "gpt-test".into(),
        "/v1/responses",
        std::time::Instant::now(),
        r,
    );
    f.finish(
        Served {
            provider: "mock".into(),
            provider_kind: "openai",
            status: 200,
        },
        Some(Usage {
            input_tokens: 1_000,
            output_tokens: 20_000,
            ..Usage::default()
        }),
        StreamEnd::Completed,
        0,
    );
    assert!(acc.flush(std::time::Duration::from_secs(10)).await);
    let r = g
        .admit_tier(&alice, "gpt-test", 300, Some(100), ServiceTier::Standard)
        .await
        .expect("admit");
    let h = g.budget_hint(&r).expect("known");
    // $0.001 + $0.20 settled: the daily budget is the tightest.
    assert_eq!(h.remaining, tollgate::Nanos(1_000_000_000 - 201_000_000));
    let mut headers = axum::http::HeaderMap::new();
    h.insert_into(&mut headers);
    assert_eq!(headers[BudgetHint::HEADER], "alice-daily");
    assert_eq!(headers[BudgetHint::HEADER_REMAINING], "0.799000000");
    assert_eq!(headers[BudgetHint::HEADER_RESETS], "2026-11-02T00:00:00Z");
    g.release(r);
}

async fn run_chromium(profile: &std::path::Path, args: &[String]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    // Port 0 may land on a port Chromium blocks as unsafe: allow ours explicitly.
    if let Some(port) = args
        .last()
        .and_then(|u| u.split("://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .and_then(|hostport| hostport.rsplit(':').next())
    {
        cmd.arg(format!("--explicitly-allowed-ports={port}"));
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(std::time::Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium timed out")
        .expect("chromium runs (scripts/install-test-tools.sh installs it)")
}

/// The dashboard draws each budget's alert thresholds and soft limit on its bar (per team and per
/// principal), checked in headless Chromium, with a screenshot.
#[tokio::test]
async fn dashboard_draws_thresholds_in_headless_chromium() {
    let b = common::start(
        "thresholds = [50, 80, 100]\nsoft_usd = \"30\"\n\
         [[budgets]]\nid = \"alice-daily\"\nscope = \"principal\"\namount_usd = \"1\"\nwindow = \"daily\"\n\
         thresholds = [25, 50]\nsoft_usd = \"0.0001\"\n",
    )
    .await;
    let alice = b.mint(common::CREDENTIAL).await;
    assert_eq!(b.responses(&alice, "gpt-5.5", false).await.0, 200);
    b.settled(1).await;
    let link = || {
        let http = b.http.clone();
        let url = format!("{}/admin/v1/dashboard-link", b.url);
        async move {
            let v: serde_json::Value = http
                .post(url)
                .bearer_auth(common::ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["url"].as_str().unwrap().to_string()
        }
    };
    let profile = tempfile::tempdir().unwrap();
    let out = run_chromium(profile.path(), &["--dump-dom".into(), link().await]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<section id=\"budgets\">"), "{dom}");
    // The team budget (team-daily, from the common config) with its three thresholds and soft limit, and
    // alice's principal budget with two.
    for (budget, marks) in [
        ("team-daily", &["soft", "50%", "80%", "100%"][..]),
        ("alice-daily", &["soft", "25%", "50%"][..]),
    ] {
        for m in marks {
            assert!(
                dom.contains(&format!("data-budget=\"{budget}\" data-threshold=\"{m}\"")),
                "{budget} {m} not drawn: {dom}"
            );
        }
    }
    assert!(dom.contains("data-scope=\"team:payments\""), "per team");
    assert!(
        dom.contains("data-scope=\"principal:alice\""),
        "per principal"
    );
    let shot = option_env!("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("tollgate-dashboard-thresholds.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out = run_chromium(
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,1600".into(),
            link().await,
        ],
    )
    .await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
