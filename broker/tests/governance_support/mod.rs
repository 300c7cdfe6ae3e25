//! Shared helpers for the governance black-box tests: broker processes on port 0 with a given store, a
//! mock upstream, token minting, streaming requests, and direct reads of the store.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_testkit::procs::{BrokerCmd, ChildGuard};

pub const ADMIN_KEY: &str = "test-admin-key";
pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub fn credential(principal: &str) -> String {
    format!("{principal}-credential")
}

/// A unique PostgreSQL schema name for this test run.
pub fn unique_schema(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Store section for SQLite (the default) or PostgreSQL with `schema`.
pub fn store_toml(pg_schema: Option<&str>, lease_secs: u64) -> String {
    match pg_schema {
        None => format!("[store]\nkind = \"sqlite\"\nreservation_lease_secs = {lease_secs}\n"),
        Some(s) => format!(
            "[store]\nkind = \"postgres\"\nurl = \"{PG_URL}\"\nschema = \"{s}\"\nreservation_lease_secs = {lease_secs}\nmax_connections = 16\n"
        ),
    }
}

/// The `public_url` every broker of these tests shares: replicas of one store must issue tokens as one
/// issuer (with port 0 and no public_url each would issue as its own address).
pub const PUBLIC_URL: &str = "http://tollgate.test";

/// Write broker.toml + policy.toml into `dir`. Principals get credentials `<name>-credential`, team `t1`.
pub fn write_config(dir: &Path, mock_base: &str, principals: &[&str], extra: &str) -> PathBuf {
    let mut creds = String::new();
    for p in principals {
        creds.push_str(&format!(
            "[[credentials]]\nsubject = \"{p}\"\nsha256 = \"{}\"\n",
            sha_hex(&credential(p))
        ));
    }
    let toml = format!(
        "policy_file = \"policy.toml\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{PUBLIC_URL}\"\nstate_dir = \"state\"\n\
         [tokens]\naudience = \"tollgate\"\n\
         {creds}\
         [providers.mock]\nkind = \"openai\"\nbase_url = \"{mock_base}/v1\"\ntimeout_ms = 60000\n\
         [[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"mock\" }}]\n\
         [admin]\nkey_sha256 = \"{}\"\n\
         {extra}",
        sha_hex(ADMIN_KEY)
    );
    std::fs::write(dir.join("broker.toml"), toml).expect("write config");
    std::fs::write(
        dir.join("policy.toml"),
        "[[rule]]\nname = \"all\"\nmatch = { kind = \"static\", subject = \"*\" }\nprincipal = \"{subject}\"\nteam = \"t1\"\norg = \"o1\"\nmodels = [\"*\"]\n",
    )
    .expect("write policy");
    dir.join("broker.toml")
}

pub struct Broker {
    pub guard: ChildGuard,
    pub url: String,
}

impl Broker {
    pub async fn start(config: &Path, log_name: &str) -> Broker {
        let b = BrokerCmd::new(env!("CARGO_BIN_EXE_tollgate-broker"), config)
            .log_to(config.with_file_name(format!("{log_name}.log")))
            .env("RUST_LOG", "info")
            .start(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Broker {
            guard: b.guard,
            url: b.url,
        }
    }
}

impl Broker {
    /// Graceful stop (SIGTERM): drains, stores queued settlements, gives its allotments back.
    pub async fn terminate(mut self) {
        self.guard
            .signal_group(nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM");
        let status = self
            .guard
            .wait_timeout(Duration::from_secs(30))
            .await
            .expect("wait");
        assert!(
            status.is_some(),
            "broker did not stop within 30 s of SIGTERM"
        );
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

pub async fn mint(
    c: &reqwest::Client,
    broker: &str,
    principal: &str,
) -> (String, serde_json::Value) {
    let r = c
        .post(format!("{broker}/oauth/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", credential(principal).as_str()),
            (
                "subject_token_type",
                "urn:tollgate:params:token-type:static-credential",
            ),
        ])
        .send()
        .await
        .expect("mint");
    assert_eq!(r.status(), 200, "mint refused: {:?}", r.text().await);
    let v: serde_json::Value = r.json().await.expect("json");
    let token = v["access_token"].as_str().expect("token").to_string();
    // The jti, read from the unverified payload (the test only needs the identifier).
    let payload = token.split('.').nth(1).expect("jwt");
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("claims");
    (token, claims)
}

/// A streaming Responses request; returns (status, body text).
pub async fn stream(
    c: &reqwest::Client,
    broker: &str,
    token: &str,
    model: &str,
    input: &str,
    max_output_tokens: Option<u64>,
) -> (u16, String) {
    let mut body = serde_json::json!({"model": model, "stream": true, "input": input});
    if let Some(m) = max_output_tokens {
        body["max_output_tokens"] = m.into();
    }
    match c
        .post(format!("{broker}/v1/responses"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Direct, read-only access to the governance tables.
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Db {
    pub async fn sqlite(path: &Path) -> Db {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        Db::Sqlite(sqlx::SqlitePool::connect_with(opts).await.expect("sqlite"))
    }

    pub async fn pg(schema: &str) -> Db {
        use std::str::FromStr;
        let opts = sqlx::postgres::PgConnectOptions::from_str(PG_URL)
            .expect("url")
            .options([("search_path", schema)]);
        Db::Pg(sqlx::PgPool::connect_with(opts).await.expect("pg"))
    }

    /// Σ spent, Σ reserved over a budget's counters.
    pub async fn counter(&self, budget: &str) -> (i64, i64) {
        const Q: &str = "SELECT CAST(COALESCE(SUM(spent),0) AS BIGINT), CAST(COALESCE(SUM(reserved),0) AS BIGINT) FROM budget_counters WHERE budget_id = $1";
        match self {
            Db::Sqlite(p) => sqlx::query_as(Q)
                .bind(budget)
                .fetch_one(p)
                .await
                .expect("q"),
            Db::Pg(p) => sqlx::query_as(Q)
                .bind(budget)
                .fetch_one(p)
                .await
                .expect("q"),
        }
    }

    /// (requests, Σ cost, Σ max(cost − reserved, 0), Σ input tokens, Σ output tokens) of a principal's spend.
    pub async fn spend(&self, principal: &str) -> (i64, i64, i64, i64, i64) {
        const Q: &str = "SELECT COUNT(*), CAST(COALESCE(SUM(cost),0) AS BIGINT), \
            CAST(COALESCE(SUM(CASE WHEN cost > reserved THEN cost - reserved ELSE 0 END),0) AS BIGINT), \
            CAST(COALESCE(SUM(input_tokens),0) AS BIGINT), CAST(COALESCE(SUM(output_tokens),0) AS BIGINT) \
            FROM spend WHERE principal = $1";
        match self {
            Db::Sqlite(p) => sqlx::query_as(Q)
                .bind(principal)
                .fetch_one(p)
                .await
                .expect("q"),
            Db::Pg(p) => sqlx::query_as(Q)
                .bind(principal)
                .fetch_one(p)
                .await
                .expect("q"),
        }
    }

    pub async fn live_reservations(&self) -> i64 {
        const Q: &str = "SELECT COUNT(*) FROM reservations";
        let (n,): (i64,) = match self {
            Db::Sqlite(p) => sqlx::query_as(Q).fetch_one(p).await.expect("q"),
            Db::Pg(p) => sqlx::query_as(Q).fetch_one(p).await.expect("q"),
        };
        n
    }

    /// Σ of the allotments brokers hold on `budget` (their pool reservations' items).
    pub async fn pool_held(&self, budget: &str) -> i64 {
        const Q: &str = "SELECT CAST(COALESCE(SUM(amount),0) AS BIGINT) FROM reservation_items WHERE budget_id = $1";
        let (n,): (i64,) = match self {
            Db::Sqlite(p) => sqlx::query_as(Q)
                .bind(budget)
                .fetch_one(p)
                .await
                .expect("q"),
            Db::Pg(p) => sqlx::query_as(Q)
                .bind(budget)
                .fetch_one(p)
                .await
                .expect("q"),
        };
        n
    }

    /// Wait until `principal` has `n` spend rows (every request settled), up to `timeout`; returns the
    /// count seen.
    pub async fn wait_spend(&self, principal: &str, n: i64, timeout: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.spend(principal).await.0;
            if got >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until no reservation of `budget` is held (every request settled, every allotment given back),
    /// up to `timeout`.
    pub async fn wait_settled(&self, budget: &str, timeout: Duration) -> (i64, i64) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.counter(budget).await;
            if c.1 == 0 || tokio::time::Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Db {
    /// Another handle on the same database.
    pub fn clone_pool(&self) -> Db {
        match self {
            Db::Sqlite(p) => Db::Sqlite(p.clone()),
            Db::Pg(p) => Db::Pg(p.clone()),
        }
    }

    /// Wait until `sql` (a `SELECT COUNT(*) …`) answers `n`, up to `timeout`; returns the last answer.
    pub async fn wait_count(&self, sql: &'static str, n: i64, timeout: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (got,): (i64,) = match self {
                Db::Sqlite(p) => sqlx::query_as(sql).fetch_one(p).await.expect("q"),
                Db::Pg(p) => sqlx::query_as(sql).fetch_one(p).await.expect("q"),
            };
            if got == n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the store records `n` requests in flight (every broker's), up to `timeout`.
    pub async fn wait_inflight(&self, n: i64, timeout: Duration) -> i64 {
        self.wait_count("SELECT COUNT(*) FROM inflight", n, timeout)
            .await
    }

    /// (usage_reported, end_reason, input_tokens, output_tokens, cost, reserved) of every spend row of a principal.
    pub async fn spend_rows(&self, principal: &str) -> Vec<(i64, String, i64, i64, i64, i64)> {
        const Q: &str = "SELECT usage_reported, end_reason, input_tokens, output_tokens, cost, reserved FROM spend WHERE principal = $1";
        match self {
            Db::Sqlite(p) => sqlx::query_as(Q)
                .bind(principal)
                .fetch_all(p)
                .await
                .expect("q"),
            Db::Pg(p) => sqlx::query_as(Q)
                .bind(principal)
                .fetch_all(p)
                .await
                .expect("q"),
        }
    }
}

/// Remove a test run's PostgreSQL schema (after its brokers are gone).
pub async fn drop_schema(schema: &str) {
    if let Db::Pg(pool) = Db::pg(schema).await {
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await {
            eprintln!("could not drop schema {schema}: {e}");
        }
    }
}
