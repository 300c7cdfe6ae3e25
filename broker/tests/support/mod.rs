//! Shared pieces of the broker's identity tests: an in-process broker (real config loader, real router,
//! fake clock), token exchange and a proxied request through the demo provider, and the test peers
//! (moto, OpenBao) started on loopback ports picked by binding port 0.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate_broker::app::AppState;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source};
use tollgate_broker::routes::router;
use tower::ServiceExt;

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

/// A broker built from a config text and a policy text, with a fake clock set to now.
pub struct Broker {
    pub state: Arc<AppState>,
    pub clock: FakeClock,
    _dir: tempfile::TempDir,
}

pub const BASE_CONFIG: &str = r#"
policy_file = "policy.toml"
[server]
state_dir = "state"
[tokens]
audience = "tollgate"
[providers.demo]
kind = "demo"
[[routes]]
model = "*"
targets = [{ provider = "demo" }]
[pricing]
unpriced = "charge"
unpriced_price = { input = "1", output = "2" }
"#;

impl Broker {
    pub async fn new(identity_toml: &str, policy_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("policy.toml"), policy_toml).expect("policy");
        let path = dir.path().join("broker.toml");
        let text = format!("{BASE_CONFIG}\n{identity_toml}");
        std::fs::write(&path, &text).expect("config");
        let env: std::collections::BTreeMap<String, String> = Default::default();
        let config = Config::from_source(Source { path, text }, &env).expect("valid config");
        let clock = FakeClock::new(now_secs());
        let state = AppState::build(&config, Arc::new(clock.clone()))
            .await
            .expect("state");
        Broker {
            state,
            clock,
            _dir: dir,
        }
    }

    pub fn clock_now(&self) -> u64 {
        use tollgate_broker::clock::Clock;
        self.clock.now_secs()
    }

    /// POST /oauth/token; returns status and JSON body.
    pub async fn exchange(&self, token_type: &str, subject_token: &str) -> (StatusCode, Value) {
        let body = serde_urlencoded::to_string([
            ("grant_type", tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", token_type),
            ("audience", "tollgate"),
        ])
        .expect("form");
        let req = Request::post("/oauth/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .expect("request");
        let resp = router(self.state.clone())
            .oneshot(req)
            .await
            .expect("serve");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A non-streaming Responses call with the minted token, answered by the demo provider.
    pub async fn responses(&self, access_token: &str) -> (StatusCode, Value) {
        let req = Request::post("/v1/responses")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {access_token}"))
            .body(Body::from(
                r#"{"model":"gpt-5.5","input":"say hello","stream":false}"#,
            ))
            .expect("request");
        let resp = router(self.state.clone())
            .oneshot(req)
            .await
            .expect("serve");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Exchange, expect a grant, and complete a proxied request with it. Returns the grant claims.
    pub async fn grant_and_proxy(&self, token_type: &str, subject_token: &str) -> Value {
        let (status, body) = self.exchange(token_type, subject_token).await;
        assert_eq!(status, StatusCode::OK, "exchange refused: {body}");
        let token = body["access_token"].as_str().expect("access_token");
        let claims = decode_claims(token);
        let (status, resp) = self.responses(token).await;
        assert_eq!(status, StatusCode::OK, "proxied request failed: {resp}");
        assert_eq!(resp["status"], "completed", "{resp}");
        claims
    }

    /// Exchange and expect the one generic refusal: 400 `invalid_grant`, no hint of which check failed.
    pub async fn expect_refused(&self, what: &str, token_type: &str, subject_token: &str) {
        self.expect_refused_as(
            what,
            token_type,
            subject_token,
            "the subject token was not accepted",
        )
        .await;
    }

    /// Like [`expect_refused`](Self::expect_refused), then asks the verifiers directly for the internal
    /// reason (what logs and metrics see), so a test proves *which* check refused the proof.
    pub async fn expect_refused_because(
        &self,
        what: &str,
        reason: &str,
        token_type: &str,
        subject_token: &str,
    ) {
        self.expect_refused(what, token_type, subject_token).await;
        let got = match self
            .state
            .verifiers()
            .verify(token_type, subject_token)
            .await
        {
            Ok(_) => "accepted",
            Err(e) => e.reason(),
        };
        assert_eq!(got, reason, "{what}: refused for the wrong reason");
    }

    /// A verified identity the policy gives nothing (deny rule or no match): also `invalid_grant`.
    pub async fn expect_no_grant(&self, what: &str, token_type: &str, subject_token: &str) {
        self.expect_refused_as(
            what,
            token_type,
            subject_token,
            "the subject token was not accepted",
        )
        .await;
    }

    async fn expect_refused_as(
        &self,
        what: &str,
        token_type: &str,
        subject_token: &str,
        description: &str,
    ) {
        let (status, body) = self.exchange(token_type, subject_token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"], "invalid_grant", "{what}: {body}");
        assert_eq!(
            body["error_description"], description,
            "{what}: the description must not say which check failed: {body}"
        );
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(2),
            "{what}: no extra fields: {body}"
        );
    }
}

/// The payload of a JWT, unverified (test inspection only).
pub fn decode_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("jwt");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("b64");
    serde_json::from_slice(&bytes).expect("json")
}

/// The workspace root (where `.test-tools/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

/// A test peer binary from `.test-tools/venv/bin`; fails loudly if it is not installed.
pub fn peer_bin(name: &str) -> PathBuf {
    let root = std::env::var_os("TOLLGATE_TEST_TOOLS")
        .map_or_else(|| workspace_root().join(".test-tools"), PathBuf::from);
    let p = root.join("venv/bin").join(name);
    assert!(
        p.exists(),
        "test peer {} is not installed: run scripts/install-test-tools.sh (it installs moto and \
         OpenBao into .test-tools/); in a git worktree, symlink .test-tools from the main checkout",
        p.display()
    );
    p
}

/// A free loopback port (bind 0, read it, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process killed (by its own pid) when dropped.
pub struct Peer {
    pub child: Child,
    pub base_url: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_http(url: &str, deadline: Duration, child: &mut Child, what: &str) {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(
            &url.trim_start_matches("http://").parse().expect("addr"),
            Duration::from_millis(200),
        ) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut buf = [0u8; 16];
            if s.read(&mut buf).is_ok_and(|n| n > 0) {
                return;
            }
        }
        assert!(
            start.elapsed() < deadline,
            "{what} did not start in {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// moto with SigV4 enforcement after `no_auth_actions` unauthenticated bootstrap calls.
pub fn start_moto(no_auth_actions: u32) -> Peer {
    let port = free_port();
    let mut child = Command::new(peer_bin("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", no_auth_actions.to_string())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn moto_server");
    let base_url = format!("127.0.0.1:{port}");
    wait_http(
        &base_url,
        Duration::from_secs(20),
        &mut child,
        "moto_server",
    );
    Peer {
        child,
        base_url: format!("http://{base_url}"),
    }
}

/// An OpenBao dev server with root token `root`.
pub fn start_openbao() -> Peer {
    let port = free_port();
    let mut child = Command::new(peer_bin("bao"))
        .args([
            "server",
            "-dev",
            "-dev-root-token-id=root",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .env("BAO_DEV_ROOT_TOKEN_ID", "root")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bao");
    let base_url = format!("127.0.0.1:{port}");
    wait_http(&base_url, Duration::from_secs(20), &mut child, "bao server");
    Peer {
        child,
        base_url: format!("http://{base_url}"),
    }
}

/// Run a Python snippet with the test venv's interpreter (boto3 against moto); returns stdout as JSON.
pub fn venv_python(script: &str, env: &[(&str, &str)]) -> Value {
    let out = Command::new(peer_bin("python"))
        .arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}
