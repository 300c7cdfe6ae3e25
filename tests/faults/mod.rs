//! Shared harness of the fault suite (tests/faults_*.rs): an in-process broker on a real loopback socket
//! (port 0) with an injectable clock, in front of the testkit mock upstream, plus small HTTP helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::SharedClock;
use tollgate_broker::config::{Config, Source};
use tollgate_broker::routes::router;

pub const CREDENTIAL: &str = "fault-suite-credential";
pub const UPSTREAM_KEY: &str = "sk-fault-upstream";

/// A provider block: name, base URL, total timeout.
pub struct ProviderSpec<'a> {
    pub name: &'a str,
    pub base_url: String,
    pub timeout_ms: u64,
}

/// Config and policy for a broker whose `*` route walks `providers` in order.
pub fn write_config(dir: &Path, providers: &[ProviderSpec<'_>]) -> PathBuf {
    let sha = tollgate_broker::identity::static_cred::hash_credential(CREDENTIAL);
    std::fs::write(
        dir.join("policy.toml"),
        "[[rule]]\nname = \"faults\"\nmatch = { kind = \"static\", subject = \"dev\" }\nprincipal = \"{subject}\"\nteam = \"faults\"\norg = \"local\"\nmodels = [\"*\"]\nmax_ttl_secs = 3600\n",
    )
    .expect("policy");
    // One issuer across restarts (a restarted broker gets another port; with port 0 and no public_url each
    // process would issue tokens as its own address).
    let mut text = format!(
        "policy_file = \"policy.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://tollgate.test\"\nstate_dir = \"state\"\n\
         [tokens]\naudience = \"tollgate\"\ndefault_ttl_secs = 600\nmax_ttl_secs = 3600\n\
         [[credentials]]\nsubject = \"dev\"\nsha256 = \"{sha}\"\n\
         [store]\nkind = \"sqlite\"\n[pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"5\", output = \"30\" }}\n\
         [[budgets]]\nid = \"principal-daily\"\nscope = \"principal\"\namount_usd = \"1000\"\nwindow = \"daily\"\n"
    );
    let mut targets = Vec::new();
    for p in providers {
        text.push_str(&format!(
            "[providers.{}]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"FAULT_UPSTREAM_KEY\"\ntimeout_ms = {}\nconnect_timeout_ms = 500\n",
            p.name, p.base_url, p.timeout_ms
        ));
        targets.push(format!("{{ provider = \"{}\" }}", p.name));
    }
    text.push_str(&format!(
        "[[routes]]\nmodel = \"*\"\ntargets = [{}]\n",
        targets.join(", ")
    ));
    let path = dir.join("broker.toml");
    std::fs::write(&path, text).expect("config");
    path
}

pub fn load_config(path: &Path) -> Config {
    let mut env = BTreeMap::new();
    env.insert("FAULT_UPSTREAM_KEY".to_string(), UPSTREAM_KEY.to_string());
    let text = std::fs::read_to_string(path).expect("read config");
    Config::from_source(
        Source {
            path: path.to_path_buf(),
            text,
        },
        &env,
    )
    .expect("valid config")
}

/// A broker serving in this process.
pub struct Broker {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

impl Broker {
    pub async fn start(config: &Config, clock: SharedClock) -> Broker {
        Self::start_with(config, clock, |r| r).await
    }

    /// Start with the router wrapped by `wrap` (e.g. a counting layer).
    pub async fn start_with(
        config: &Config,
        clock: SharedClock,
        wrap: impl FnOnce(axum::Router) -> axum::Router,
    ) -> Broker {
        let state = AppState::build(config, clock).await.expect("app state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = wrap(router(state.clone()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Broker { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Mint a token with the static credential.
pub async fn mint(base: &str) -> String {
    let resp = client()
        .post(format!("{base}/oauth/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", CREDENTIAL),
            ("subject_token_type", tollgate::exchange::TOKEN_TYPE_STATIC),
        ])
        .send()
        .await
        .expect("mint request");
    assert_eq!(resp.status(), 200, "mint failed");
    let v: Value = resp.json().await.expect("mint json");
    v["access_token"].as_str().expect("token").to_string()
}

pub fn responses_body(stream: bool) -> Value {
    serde_json::json!({
        "model": "gpt-5.5",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}],
        "stream": stream,
    })
}

/// POST /v1/responses; returns status, headers and the whole body.
pub async fn responses(
    base: &str,
    token: &str,
    stream: bool,
) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client()
        .post(format!("{base}/v1/responses"))
        .bearer_auth(token)
        .json(&responses_body(stream))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    (status, headers, body)
}

/// `GET /v1/tollgate/usage` totals for the token holder.
pub async fn usage(base: &str, token: &str) -> Value {
    let resp = client()
        .get(format!("{base}/v1/tollgate/usage"))
        .bearer_auth(token)
        .send()
        .await
        .expect("usage");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("usage json");
    v["usage"].clone()
}

/// An address nothing listens on (bound, then released).
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The error JSON must be OpenAI-shaped and must not leak the upstream key.
pub fn assert_openai_error(body: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(
        v["error"]["message"].is_string(),
        "not OpenAI-shaped: {body}"
    );
    assert!(!body.contains(UPSTREAM_KEY), "upstream key leaked: {body}");
}
