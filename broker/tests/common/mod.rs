//! An in-process broker on 127.0.0.1:0 in front of the testkit mock upstream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::SystemClock;
use tollgate_broker::config::{Config, Source};
use tollgate_broker::routes::router;

pub const CREDENTIAL: &str = "quickstart-dev-credential";
pub const CREDENTIAL_SHA: &str = "1abad926f9f1d76dac33c6271d7974dd6fa77bde33630e8b7009501bfb410306";
pub const ADMIN_KEY: &str = "admin-key-for-tests";

pub fn sha256_hex(s: &str) -> String {
    tollgate_broker::identity::static_cred::hash_credential(s)
}

/// The text of a broker's `/metrics`, read with the admin key (what an operator's scraper sends).
pub async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    http.get(format!("{url}/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub struct Broker {
    pub url: String,
    pub state: Arc<AppState>,
    pub dir: tempfile::TempDir,
    pub mock: tollgate_testkit::MockHandle,
    pub http: reqwest::Client,
    /// The broker's clock (starts at the real time; tests advance it instead of sleeping).
    pub clock: tollgate_broker::clock::FakeClock,
}

/// Broker config text: the mock as provider `mock`, `gpt-5.5` literal and `claude-*` glob routes, an
/// admin key, and `extra` appended.
pub fn config_text(mock_base: &str, extra: &str) -> String {
    format!(
        r#"policy_file = "policy.toml"
[server]
listen = "127.0.0.1:0"
state_dir = "state"
[admin]
key_sha256 = "{admin}"
[[credentials]]
subject = "alice"
sha256 = "{CREDENTIAL_SHA}"
[[credentials]]
subject = "bob"
sha256 = "{bob}"
[providers.mock]
kind = "openai"
base_url = "{mock_base}"
[[routes]]
model = "gpt-5.5"
targets = [{{ provider = "mock" }}]
[[routes]]
model = "claude-*"
targets = [{{ provider = "mock", model = "gpt-5.5" }}]
[pricing]
unpriced = "charge"
unpriced_price = {{ input = "3", output = "15" }}
[pricing.models]
"gpt-5.5" = {{ input = "1.25", cached_input = "0.125", output = "10" }}
[[budgets]]
id = "team-daily"
scope = "team"
amount_usd = "50.00"
window = "daily"
{extra}
"#,
        admin = sha256_hex(ADMIN_KEY),
        bob = sha256_hex("bob-credential"),
    )
}

pub const POLICY: &str = r#"
[[rule]]
name = "alice"
match = { kind = "static", subject = "alice" }
team = "payments"
models = ["gpt-5.5", "claude-*"]

[[rule]]
name = "bob"
match = { kind = "static", subject = "bob" }
team = "search"
models = ["gpt-5.5"]
"#;

pub fn write_config(dir: &Path, mock_base: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let path = dir.join("broker.toml");
    std::fs::write(&path, config_text(mock_base, extra)).unwrap();
    path
}

pub async fn start(extra: &str) -> Broker {
    start_opts(extra, true).await
}

/// `admin = false` drops the `[admin]` section (admin surface disabled).
pub async fn start_opts(extra: &str, admin: bool) -> Broker {
    let mock = tollgate_testkit::spawn(tollgate_testkit::MockConfig {
        input_tokens: Some(100),
        output_tokens: Some(20),
        cached_tokens: 40,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &mock.base_url(), extra);
    if !admin {
        let text = std::fs::read_to_string(&path).unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("[admin]") && !l.starts_with("key_sha256"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
    }
    let config = Config::from_source(
        Source::read(&path).unwrap(),
        &BTreeMap::<String, String>::new(),
    )
    .unwrap();
    let clock = tollgate_broker::clock::FakeClock::new(tollgate_broker::clock::Clock::now_secs(
        &SystemClock,
    ));
    let state = AppState::build(&config, Arc::new(clock.clone()))
        .await
        .unwrap();
    state.spawn_background();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Broker {
        url,
        state,
        dir,
        mock,
        http: reqwest::Client::new(),
        clock,
    }
}

impl Broker {
    /// Wait until `n` proxied requests have settled (settlement runs on its own task) and their audit
    /// records are stored.
    pub async fn settled(&self, n: usize) {
        let audit = self.state.audit().as_ref().unwrap();
        for _ in 0..200 {
            audit.flush().await;
            let recs = audit.sink().scan(0, 100_000).await.unwrap();
            let done = recs
                .iter()
                .filter(|r| r.event.kind.map(|k| k.as_str()) == Some("request"))
                .count();
            if done >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("{n} requests did not settle");
    }

    pub async fn mint(&self, credential: &str) -> String {
        let r = self
            .http
            .post(format!("{}/oauth/token", self.url))
            .form(&[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", credential),
                ("subject_token_type", tollgate::exchange::TOKEN_TYPE_STATIC),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "mint: {}",
            r.text().await.unwrap_or_default()
        );
        let v: serde_json::Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    pub async fn responses(&self, token: &str, model: &str, stream: bool) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}/v1/responses", self.url))
            .bearer_auth(token)
            .json(&serde_json::json!({"model": model, "input": "hi", "stream": stream}))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.text().await.unwrap())
    }

    pub async fn metrics_text(&self) -> String {
        metrics_text(&self.http, &self.url).await
    }

    pub async fn admin_get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or_default())
    }

    pub async fn admin_post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or_default())
    }
}
