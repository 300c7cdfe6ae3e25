//! In-process broker for routing tests: a real config (parsed like production), the real HTTP surface on
//! 127.0.0.1:0, a fake clock, and a bearer token minted through `/oauth/token`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source};
use tollgate_broker::routes::router;

pub const CREDENTIAL: &str = "quickstart-dev-credential";
const CREDENTIAL_SHA256: &str = "1abad926f9f1d76dac33c6271d7974dd6fa77bde33630e8b7009501bfb410306";

pub struct Broker {
    pub url: String,
    pub token: String,
    pub clock: FakeClock,
    pub state: Arc<AppState>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Start a broker whose config is the common head plus `providers_and_routes`.
/// Session affinity is off here: every request of these tests carries the same `prompt_cache_key`, and
/// they prove the plan itself (order, weights, breakers, parking); affinity has its own tests
/// (`routing_affinity.rs`).
pub async fn start(providers_and_routes: &str, env: &[(&str, &str)]) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[rule]]\nname = \"t\"\nmatch = { kind = \"static\", subject = \"dev\" }\nprincipal = \"{subject}\"\n\
         team = \"t\"\norg = \"o\"\nmodels = [\"*\"]\nmax_ttl_secs = 3600\n",
    )
    .unwrap();
    let text = format!(
        "policy_file = \"policy.toml\"\n[server]\nstate_dir = \"state\"\n\
         [[credentials]]\nsubject = \"dev\"\nsha256 = \"{CREDENTIAL_SHA256}\"\n\
         [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1\", output = \"2\" }}\n\
         [affinity]\nttl_secs = 0\n{providers_and_routes}"
    );
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, &text).unwrap();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config =
        Config::from_source(Source { path, text }, &env).unwrap_or_else(|e| panic!("config: {e}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = FakeClock::new(now);
    let state = AppState::build(&config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    // As in production (server.rs): small SSE writes must not wait for Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();
    let resp: serde_json::Value = http
        .post(format!("{url}/oauth/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", CREDENTIAL),
            (
                "subject_token_type",
                "urn:tollgate:params:token-type:static-credential",
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = resp["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("token: {resp}"))
        .to_string();
    Broker {
        url,
        token,
        clock,
        state,
        http,
        _dir: dir,
    }
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn attempts(&self) -> u32 {
        self.header("x-tollgate-attempts")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<serde_json::Value> {
        tollgate_testkit::sse::parse(self.body.as_bytes())
            .iter()
            .filter_map(|e| e.json())
            .collect()
    }
    pub fn event_types(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

impl Broker {
    pub async fn post(&self, path: &str, body: serde_json::Value) -> Answer {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A Codex-like streamed Responses request.
    pub async fn responses(&self, model: &str, prompt: &str) -> Answer {
        self.post("/v1/responses", codex_body(model, prompt, true))
            .await
    }
}

/// A small Codex-shaped Responses request: developer prompt, user prompt, Codex's tool kinds.
pub fn codex_body(model: &str, prompt: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "store": false,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}
        ],
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Run a command.",
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
            {"type": "custom", "name": "apply_patch", "description": "Edit files.",
             "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
            {"type": "namespace", "name": "multi_agent_v1", "tools": []},
            {"type": "web_search"},
            {"type": "tool_search", "execution": "client", "description": "find tools"}
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "s-1"
    })
}

/// A loopback port with nothing listening (bound, then released).
pub async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}
