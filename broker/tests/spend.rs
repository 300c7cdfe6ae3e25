//! Issue 18, spend you can see coming: reports computed from the store (SQLite and PostgreSQL, a generated
//! month of traffic on a fake clock), the admin report API and `tollgate-broker admin report`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source, StoreConfig, StoreKind};
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
    }
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
                .admit(who, model, 600 + i as u64 * 10, Some(256))
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
    let (n, total) = st.spend_total().await.expect("total");
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
    let (n, total) = b.state.governance.store.spend_total().await.unwrap();
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
        "model,requests,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,cost_usd,cost_nanos"
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
