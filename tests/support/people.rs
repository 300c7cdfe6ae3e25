//! The people path end to end: the broker in process (an OAuth 2.1 authorization server for people, on
//! 127.0.0.1:0, with a [`FakeClock`] the test moves), one or more company IdPs (npm `oidc-provider`,
//! [`tollgate_testkit::people::CompanyIdp`]), a person at headless Chromium
//! ([`tollgate_testkit::people::browser`]), a laptop with the real helper, and the real Codex signing in
//! by itself (`gateway_oauth`).
//!
//! Every request to `/oauth/*` and `/v1/*` is recorded on the side ([`Traffic`]): which grant reached the
//! token endpoint with which refresh token, what it answered, and the status of each model call. That is
//! how a test proves Codex refreshed silently and rotated its refresh token.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source};
use tollgate_testkit::people::{CompanyIdp, browser, port_of};

pub const IDP_SECRET: &str = "idp-client-secret-for-people-login";
pub const ADMIN_KEY: &str = "admin-key-for-people-login";

/// What Codex prints before the authorization URL (0.169.0 and 0.171.0 alike).
pub const CODEX_AUTHORIZE: &str = "Authorize the model provider by opening this URL:";

pub const POLICY: &str = r#"
[[rule]]
name = "engineers"
match = { kind = "user", attributes = { groups = "eng" } }
principal = "{attr.email}"
team = "eng"
models = ["gpt-5*", "demo"]
max_ttl_secs = 600
"#;

/// One request the broker answered, as a test needs to see it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `/oauth/token`: the form's `grant_type`, `client_id` and `refresh_token`.
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub refresh_token_sent: Option<String>,
    /// `/oauth/token`: the answer's `refresh_token`, `access_token` and `error`.
    pub refresh_token_issued: Option<String>,
    pub access_token_issued: Option<String>,
    pub error: Option<String>,
    /// Whether an `Authorization` header was sent.
    pub authorization: bool,
    /// The request's query string.
    pub query: String,
    /// `/oauth/token` and `/oauth/revoke`: the whole form, and the answer as sent.
    pub form: BTreeMap<String, String>,
    pub answer: String,
}

/// Every request to `/oauth/*` and `/v1/*`, in order; and the life clients are told a token has
/// ([`Traffic::set_expires_in`]).
#[derive(Clone, Default)]
pub struct Traffic(
    Arc<Mutex<Vec<Seen>>>,
    Arc<Mutex<Option<u64>>>,
    Arc<Mutex<Option<FakeClock>>>,
);

impl Traffic {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
    /// Tell clients that every token the token endpoint issues from now on lives `secs` (the answer's
    /// `expires_in`; the token itself is unchanged). Codex plans its refresh by `expires_in` on its own
    /// clock, which a test cannot move (a static binary): told 30 s, its refresh margin, Codex refreshes
    /// before every later use, without the test waiting for time to pass.
    pub fn set_expires_in(&self, secs: u64) {
        if let Ok(mut t) = self.1.lock() {
            *t = Some(secs);
        }
    }

    /// Before each call to the token endpoint, bring the broker's clock up to the real time (it never goes
    /// back): for a client that keeps time by the real clock, such as Codex polling a device code every
    /// `interval` seconds.
    pub fn keep_clock_with_real_time(&self, clock: &FakeClock) {
        if let Ok(mut c) = self.2.lock() {
            *c = Some(clock.clone());
        }
    }

    pub fn clear(&self) {
        if let Ok(mut v) = self.0.lock() {
            v.clear();
        }
    }
    /// The token endpoint's calls with this grant type.
    pub fn grants(&self, grant_type: &str) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| s.path == "/oauth/token" && s.grant_type.as_deref() == Some(grant_type))
            .collect()
    }
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.all()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }
    /// Statuses of the model calls (`POST /v1/responses`), in order.
    pub fn turns(&self) -> Vec<u16> {
        self.all()
            .iter()
            .filter(|s| s.method == "POST" && s.path == "/v1/responses")
            .map(|s| s.status)
            .collect()
    }
}

async fn record(
    axum::extract::State(traffic): axum::extract::State<Traffic>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let authorization = req
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION);
    let query = req.uri().query().unwrap_or("").to_string();
    if !(path.starts_with("/oauth/") || path.starts_with("/v1/")) {
        return next.run(req).await;
    }
    let token_call = path == "/oauth/token" || path == "/oauth/revoke";
    let (req, form) = if token_call {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let form: BTreeMap<String, String> =
            serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        (
            axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes)),
            form,
        )
    } else {
        (req, BTreeMap::new())
    };
    if token_call && let Some(clock) = traffic.2.lock().ok().and_then(|c| c.clone()) {
        use tollgate_broker::clock::Clock;
        clock.set(clock.now_secs().max(now_secs()));
    }
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let (resp, answer, raw) = if token_call {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let bytes = match traffic.1.lock().ok().and_then(|t| *t) {
            Some(secs) if v.get("expires_in").is_some() => {
                v["expires_in"] = Value::from(secs);
                axum::body::Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            _ => bytes,
        };
        let mut parts = parts;
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        let raw = String::from_utf8_lossy(&bytes).to_string();
        (
            axum::response::Response::from_parts(parts, axum::body::Body::from(bytes)),
            v,
            raw,
        )
    } else {
        (resp, Value::Null, String::new())
    };
    let s = |v: &Value| v.as_str().map(str::to_string);
    if let Ok(mut t) = traffic.0.lock() {
        t.push(Seen {
            method,
            path,
            status,
            grant_type: form.get("grant_type").cloned(),
            client_id: form.get("client_id").cloned(),
            refresh_token_sent: form.get("refresh_token").cloned(),
            refresh_token_issued: s(&answer["refresh_token"]),
            access_token_issued: s(&answer["access_token"]),
            error: s(&answer["error"]),
            authorization,
            query,
            form,
            answer: raw,
        });
    }
    resp
}

/// A company IdP the broker trusts: its `[[oauth.idp]]` name and what the choice page calls it.
pub struct IdpSpec {
    pub name: &'static str,
    pub display_name: &'static str,
}

pub const CORP: IdpSpec = IdpSpec {
    name: "corp",
    display_name: "Example SSO",
};

pub struct Options {
    /// `oauth.access_ttl_secs` (default: the policy rule's 600).
    pub access_ttl_secs: Option<u64>,
    pub idps: Vec<IdpSpec>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            access_ttl_secs: None,
            idps: vec![CORP],
        }
    }
}

pub struct PeopleBroker {
    pub url: String,
    pub state: Arc<AppState>,
    pub clock: FakeClock,
    /// The IdPs, in the order of `Options::idps`.
    pub idps: Vec<(String, CompanyIdp)>,
    pub traffic: Traffic,
    pub dir: tempfile::TempDir,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

impl PeopleBroker {
    pub async fn start(opts: Options) -> PeopleBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("policy.toml"), POLICY).expect("policy");
        let admin_sha = super::sha256_hex(ADMIN_KEY);
        let mut idps = Vec::new();
        let mut idp_toml = String::new();
        for spec in &opts.idps {
            // One client at each IdP, the same callback: the broker's.
            let idp = CompanyIdp::start(
                "tollgate-broker",
                IDP_SECRET,
                &format!("{url}/oauth/callback"),
            );
            idp_toml.push_str(&format!(
                "[[oauth.idp]]\nname = \"{}\"\ndisplay_name = \"{}\"\nissuer = \"{}\"\nclient_id = \"tollgate-broker\"\n\
                 client_secret_env = \"IDP_SECRET\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\n",
                spec.name, spec.display_name, idp.issuer
            ));
            idps.push((spec.name.to_string(), idp));
        }
        let ttl = opts
            .access_ttl_secs
            .map(|t| format!("access_ttl_secs = {t}\n"))
            .unwrap_or_default();
        let text = format!(
            r#"
policy_file = "policy.toml"
[server]
state_dir = "state"
public_url = "{url}"
[tokens]
audience = "tollgate"
default_ttl_secs = 600
[admin]
key_sha256 = "{admin_sha}"
[providers.demo]
kind = "demo"
[[routes]]
model = "*"
targets = [{{ provider = "demo" }}]
[pricing]
unpriced = "charge"
unpriced_price = {{ input = "1", output = "2" }}
[oauth]
{ttl}{idp_toml}"#
        );
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, &text).expect("config");
        let env: BTreeMap<String, String> =
            [("IDP_SECRET".to_string(), IDP_SECRET.to_string())].into();
        let config = Config::from_source(Source { path, text }, &env).expect("valid config");
        let clock = FakeClock::new(now_secs());
        let state = AppState::build(&config, Arc::new(clock.clone()))
            .await
            .expect("state");
        let traffic = Traffic::default();
        let app = tollgate_broker::routes::router(state.clone()).layer(
            axum::middleware::from_fn_with_state(traffic.clone(), record),
        );
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        PeopleBroker {
            url,
            state,
            clock,
            idps,
            traffic,
            dir,
        }
    }

    /// The loopback ports the person's browser may visit: the broker's and every IdP's.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.idps.iter().map(|(_, i)| i.port()).collect();
        p.extend(port_of(&self.url));
        p
    }

    /// Move the broker's clock: never behind the real time (the IdP stamps ID tokens with it), plus `secs`.
    pub fn advance(&self, secs: u64) {
        use tollgate_broker::clock::Clock;
        self.clock.set(self.clock.now_secs().max(now_secs()) + secs);
    }

    /// The person signs in at `url` (an authorization or device URL) through the real pages.
    pub async fn person_signs_in(&self, url: &str, user: &str, idp: Option<&str>) -> Value {
        self.advance(0);
        browser(json!({
            "start": url,
            "user": user,
            "consent": "approve",
            "idp": idp,
            "allow_ports": self.ports(),
        }))
        .await
    }

    /// The person opens a device flow's verification URL on another device, types `user_code` if the
    /// page asks, signs in and approves.
    pub async fn person_signs_in_with_code(&self, url: &str, user_code: &str, user: &str) -> Value {
        self.advance(0);
        browser(json!({
            "start": url,
            "user": user,
            "consent": "approve",
            "user_code": user_code,
            "allow_ports": self.ports(),
        }))
        .await
    }

    /// A client (`codex`, `tollgate-token`) signs `user` in with the browser flow, played by the test:
    /// PKCE S256, an exact `state`, a loopback redirect the browser stops at (nothing listens there), the
    /// person at the real pages (picking `idp` on the choice page, if given), the code redeemed. Returns
    /// the token endpoint's answer and what the browser saw.
    pub async fn client_signs_in(
        &self,
        client: &str,
        user: &str,
        idp: Option<&str>,
    ) -> (Value, Value) {
        use base64::Engine;
        let verifier = format!("{}{}", uuid_like(), uuid_like());
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
        let state = uuid_like();
        // A port nobody listens on: the browser stops at the redirect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port();
        let redirect = format!("http://127.0.0.1:{port}/callback");
        let url = format!(
            "{}/oauth/authorize?{}",
            self.url,
            serde_urlencoded::to_string([
                ("response_type", "code"),
                ("client_id", client),
                ("redirect_uri", redirect.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
                ("state", state.as_str()),
                ("scope", "models offline_access"),
                ("resource", self.url.as_str()),
            ])
            .expect("query")
        );
        self.advance(0);
        let seen = browser(json!({
            "start": url,
            "user": user,
            "consent": "approve",
            "idp": idp,
            "stop_prefix": format!("http://127.0.0.1:{port}/"),
            "allow_ports": self.ports(),
        }))
        .await;
        let query: BTreeMap<String, String> = seen["final_url"]
            .as_str()
            .and_then(|u| u.split_once('?'))
            .and_then(|(_, q)| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default();
        assert_eq!(query.get("state"), Some(&state), "exact state: {seen}");
        let code = query
            .get("code")
            .unwrap_or_else(|| panic!("a code: {seen}"));
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/oauth/token", self.url))
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", client),
                ("code", code.as_str()),
                ("redirect_uri", redirect.as_str()),
                ("code_verifier", verifier.as_str()),
            ])
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert!(answer["access_token"].is_string(), "{answer}");
        (answer, seen)
    }

    /// The revocation list as every replica's background round reloads it.
    pub async fn reload_revocations(&self) {
        self.state
            .governance()
            .load_revocations()
            .await
            .expect("reload revocations");
    }

    /// `GET /admin/v1/oauth/sessions?who=…[&all=true]`.
    pub async fn sign_ins(&self, who: &str, all: bool) -> Vec<Value> {
        let v: Value = reqwest::Client::new()
            .get(format!(
                "{}/admin/v1/oauth/sessions?who={who}&all={all}",
                self.url
            ))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        v["sessions"].as_array().cloned().unwrap_or_default()
    }

    /// The audit trail as JSON lines.
    pub async fn audit_text(&self) -> String {
        let audit = self.state.audit().as_ref().expect("audit");
        audit.flush().await;
        let mut buf = Vec::new();
        tollgate_broker::audit::export(audit.sink().as_ref(), &mut buf)
            .await
            .expect("export");
        String::from_utf8(buf).expect("utf-8")
    }

    /// `tollgate-broker admin …` (the real binary) against this broker: exit code, stdout, stderr.
    pub async fn admin_cli(&self, args: &[&str], key: Option<&str>) -> (i32, String, String) {
        let mut cmd = tokio::process::Command::new(super::bin("tollgate-broker"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .arg("admin")
            .arg("--url")
            .arg(&self.url)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(k) = key {
            cmd.env("TOLLGATE_ADMIN_KEY", k);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("admin CLI timed out")
            .expect("admin CLI runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).expect("utf8"),
            String::from_utf8(out.stderr).expect("utf8"),
        )
    }
}

/// The person's laptop: a HOME for the helper and for Codex.
pub struct Laptop {
    pub home: tempfile::TempDir,
    pub broker: String,
}

impl Laptop {
    pub fn new(broker: &PeopleBroker) -> Laptop {
        Laptop {
            home: tempfile::tempdir().expect("home"),
            broker: broker.url.clone(),
        }
    }

    pub fn codex_home(&self) -> PathBuf {
        self.home.path().join("codex")
    }

    /// `tollgate-token` with this laptop's HOME (`$BROWSER` = `browser`, if given): exit code, stdout, stderr.
    pub async fn helper(&self, args: &[&str], browser: Option<&Path>) -> (i32, String, String) {
        let home = self.home.path();
        let mut cmd = tokio::process::Command::new(super::bin("tollgate-token"));
        cmd.env_clear()
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("CODEX_HOME", self.codex_home())
            .env("TOLLGATE_BROKER", &self.broker)
            .env("TOLLGATE_CREDENTIAL_STORE", "file")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(b) = browser {
            cmd.env("BROWSER", b);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("helper timed out")
            .expect("helper runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).expect("utf8"),
            String::from_utf8(out.stderr).expect("utf8"),
        )
    }

    /// `tollgate-token setup --oauth --set-default`: Codex's `gateway_oauth` config for this broker.
    pub async fn setup_codex(&self) -> String {
        std::fs::create_dir_all(self.codex_home()).expect("codex home");
        std::fs::write(
            self.codex_home().join("config.toml"),
            "# mine\nmodel = \"demo\"\n",
        )
        .expect("config");
        let (code, _, err) = self
            .helper(
                &[
                    "setup",
                    "--broker",
                    &self.broker,
                    "--oauth",
                    "--set-default",
                ],
                None,
            )
            .await;
        assert_eq!(code, 0, "{err}");
        std::fs::read_to_string(self.codex_home().join("config.toml")).expect("read")
    }

    /// `codex exec "say hello"` with this laptop's CODEX_HOME. When Codex asks for a sign-in (prints
    /// [`CODEX_AUTHORIZE`] and the URL), `person` signs in at the browser, or, with `None`, nobody does and
    /// Codex is stopped there.
    pub async fn codex_exec(
        &self,
        version: &str,
        broker: &PeopleBroker,
        person: Option<&str>,
    ) -> CodexRun {
        let home = self.home.path();
        let workdir = home.join("work");
        std::fs::create_dir_all(&workdir).expect("workdir");
        let mut cmd = tokio::process::Command::new(super::codex_bin_for(version));
        cmd.args([
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "--color",
            "never",
            "-C",
        ])
        .arg(&workdir)
        .arg("say hello")
        .current_dir(&workdir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CODEX_HOME", self.codex_home())
        // `TOLLGATE_TEST_CODEX_LOG=debug` shows what Codex does (in a failing test's message).
        .env(
            "RUST_LOG",
            std::env::var("TOLLGATE_TEST_CODEX_LOG").unwrap_or_else(|_| "error".into()),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = tollgate_testkit::procs::ChildGuard::spawn(cmd).expect("spawn codex");
        let stdout = child.take_stdout().expect("stdout");
        let stderr = child.take_stderr().expect("stderr");
        let out_task = tokio::spawn(async move {
            let mut s = String::new();
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                s.push_str(&l);
                s.push('\n');
            }
            s
        });
        let (url_tx, mut url_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let err_task = tokio::spawn(async move {
            let mut s = String::new();
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut next_is_url = false;
            while let Ok(Some(l)) = lines.next_line().await {
                if next_is_url {
                    let _ = url_tx.send(l.trim().to_string());
                }
                next_is_url = l.contains(CODEX_AUTHORIZE);
                s.push_str(&l);
                s.push('\n');
            }
            s
        });
        let mut auth_urls = Vec::new();
        let mut signed_in = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        let status = loop {
            tokio::select! {
                s = child.child().wait() => break s.ok().and_then(|s| s.code()),
                Some(url) = url_rx.recv() => {
                    auth_urls.push(url.clone());
                    match person {
                        Some(user) => signed_in.push(broker.person_signs_in(&url, user, None).await),
                        None => {
                            child.kill_group();
                            let _ = child.child().wait().await;
                            break None;
                        }
                    }
                    // A second request for a sign-in in one run: stop there (a loop is a failure).
                    if auth_urls.len() > 1 {
                        child.kill_group();
                        let _ = child.child().wait().await;
                        break None;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    child.kill_group();
                    break None;
                }
            }
        };
        let (stdout, stderr) = (out_task.await.expect("out"), err_task.await.expect("err"));
        CodexRun {
            status,
            stdout,
            stderr,
            auth_urls,
            signed_in,
        }
    }
}

/// 32 random hex characters (a PKCE verifier is two).
fn uuid_like() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One `codex exec`.
#[derive(Debug)]
pub struct CodexRun {
    /// Its exit code; `None` when the test stopped it (waiting for a sign-in nobody does, or a loop).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The authorization URLs it printed.
    pub auth_urls: Vec<String>,
    /// What the browser saw for each sign-in the person did.
    pub signed_in: Vec<Value>,
}

impl CodexRun {
    /// The turn ran to its end: exit 0 with an answer.
    pub fn assert_turn_completed(&self, what: &str) {
        assert_eq!(
            self.status,
            Some(0),
            "{what}: stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stdout.trim().is_empty(),
            "{what}: the turn answered: {}",
            self.stderr
        );
    }
}
