//! A person signs in through the broker with `tollgate-token login`, end to end: the real helper binary,
//! the broker (an OAuth 2.1 authorization server for people, in-process on 127.0.0.1:0) and the company
//! IdP behind it (npm `oidc-provider`, `testkit/js/company_idp.mjs`), with a person at headless Chromium
//! (`helper/tests/support/browser.mjs`, opened by the helper through `$BROWSER`) going through the
//! broker's choice of IdP and consent pages and the IdP's own login page. The token the helper then
//! prints is the broker's Tollgate JWT for the person, and a model call with it goes through; renewal
//! rotates the refresh token; an administrator's revocation of the person's sign-ins makes the token path
//! ask for a new sign-in (exit 67) with one line.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source};

const IDP_SECRET: &str = "idp-client-secret-for-people-login";
const ADMIN_KEY: &str = "admin-key-for-people-login";

fn idp_modules() -> PathBuf {
    support::tool("idp/node_modules")
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

struct Idp {
    child: Child,
    issuer: String,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_idp(callback: &str) -> Idp {
    let clients = json!([{
        "client_id": "tollgate-broker",
        "client_secret": IDP_SECRET,
        "redirect_uris": [callback],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }]);
    let mut child = Command::new("node")
        .arg(repo("testkit/js/company_idp.mjs"))
        .arg(idp_modules())
        .env("IDP_CLIENTS", clients.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("idp announces itself");
    let v: Value = serde_json::from_str(&line).expect("idp's first line is JSON");
    Idp {
        child,
        issuer: v["issuer"].as_str().expect("issuer").to_string(),
    }
}

const POLICY: &str = r#"
[[rule]]
name = "engineers"
match = { kind = "user", attributes = { groups = "eng" } }
principal = "{attr.email}"
team = "eng"
models = ["gpt-5*", "demo"]
max_ttl_secs = 600
"#;

struct Broker {
    url: String,
    _state: Arc<AppState>,
    _idp: Idp,
    _dir: tempfile::TempDir,
}

async fn start_broker() -> Broker {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let idp = start_idp(&format!("{url}/oauth/callback"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("policy.toml"), POLICY).expect("policy");
    let admin_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ADMIN_KEY.as_bytes()));
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
[[oauth.idp]]
name = "corp"
display_name = "Example SSO"
issuer = "{issuer}"
client_id = "tollgate-broker"
client_secret_env = "IDP_SECRET"
scopes = ["openid", "email", "profile", "groups"]
"#,
        issuer = idp.issuer
    );
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, &text).expect("config");
    let env: BTreeMap<String, String> = [("IDP_SECRET".to_string(), IDP_SECRET.to_string())].into();
    let config = Config::from_source(Source { path, text }, &env).expect("valid config");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let state = AppState::build(&config, Arc::new(FakeClock::new(now)))
        .await
        .expect("state");
    let app = tollgate_broker::routes::router(state.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Broker {
        url,
        _state: state,
        _idp: idp,
        _dir: dir,
    }
}

fn helper_bin() -> PathBuf {
    let p = tollgate_testkit::procs::target_bin("tollgate-token");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p tollgate-token` (a workspace `cargo test` builds it)",
        p.display()
    );
    p
}

/// The person's laptop: a HOME, the broker, the file store, a `$BROWSER` that is headless Chromium.
struct Laptop {
    home: tempfile::TempDir,
    broker: String,
    browser_log: PathBuf,
}

impl Laptop {
    fn new(broker: &Broker, user: &str) -> Laptop {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().expect("home");
        let browser_log = home.path().join("browser.log");
        let script = home.path().join("browser.sh");
        let tools = idp_modules()
            .parent()
            .and_then(Path::parent)
            .expect("tools")
            .to_owned();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nTOLLGATE_TEST_TOOLS='{}' BROWSER_USER='{user}' exec node '{}' \"$1\" >>'{}' 2>&1\n",
                tools.display(),
                repo("helper/tests/support/browser.mjs").display(),
                browser_log.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Laptop {
            home,
            broker: broker.url.clone(),
            browser_log,
        }
    }

    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let home = self.home.path();
        let out = tokio::process::Command::new(helper_bin())
            .env_clear()
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("TOLLGATE_BROKER", &self.broker)
            .env("TOLLGATE_CREDENTIAL_STORE", "file")
            .env("BROWSER", home.join("browser.sh"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("helper runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).expect("utf8"),
            String::from_utf8(out.stderr).expect("utf8"),
        )
    }
}

fn claims(token: &str) -> Value {
    tollgate_token::exchange::jwt_payload(token).expect("a JWT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_through_the_broker_and_the_helper_renews_until_revoked() {
    let broker = start_broker().await;
    let laptop = Laptop::new(&broker, "alice");
    let b = broker.url.clone();

    let (code, out, err) = laptop.run(&["login"]).await;
    let browser = std::fs::read_to_string(&laptop.browser_log).unwrap_or_default();
    assert_eq!(code, 0, "{err}\nbrowser: {browser}");
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "tollgate-token: opening your browser to sign in; if it does not open, visit: {b}/oauth/authorize?response_type=code&client_id=tollgate-token&redirect_uri=http%3A%2F%2F127.0.0.1%3A"
        )),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with(&format!(
            "&code_challenge_method=S256&state={}&resource={}&scope=models+offline_access",
            lines[0]
                .split("&state=")
                .nth(1)
                .and_then(|s| s.split('&').next())
                .expect("state"),
            b.replace(':', "%3A").replace('/', "%2F")
        )),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!(
            "tollgate-token: signed in to {b} as alice@example.com"
        )) && lines[1].contains("; the refresh token is in ")
            && lines[1].contains("(a fallback, 0600: TOLLGATE_CREDENTIAL_STORE=file)"),
        "{}",
        lines[1]
    );

    // The token path: the broker's Tollgate JWT for the person, for this broker.
    let (code, token, err) = laptop.run(&[]).await;
    assert_eq!((code, err.as_str()), (0, ""), "{token}");
    let c = claims(token.trim_end());
    assert_eq!(c["tollgate"]["principal"], "alice@example.com", "{c}");
    assert_eq!(c["tollgate"]["identity"]["kind"], "user", "{c}");

    // status: the person, and the grant the token carries.
    let (code, out, _) = laptop.run(&["status"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("identity:   login\n"), "{out}");
    assert!(out.contains("principal:  alice@example.com\n"), "{out}");
    assert!(out.contains("signed in:  as alice@example.com"), "{out}");

    // A model call with it goes through the broker.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{b}/v1/responses"))
        .bearer_auth(token.trim_end())
        .json(&json!({"model": "demo", "input": "hello", "stream": false}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // Renewal rotates the refresh token and prints a new access token.
    let (code, renewed, err) = laptop.run(&["refresh", "--print"]).await;
    assert_eq!(code, 0, "{err}");
    assert_ne!(renewed, token);
    assert!(
        err.starts_with("tollgate-token: minted a new token for "),
        "{err}"
    );

    // An administrator revokes the person's sign-ins: the next renewal asks for a new sign-in.
    let r = http
        .post(format!("{b}/admin/v1/oauth/revoke"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"who": "alice@example.com"}))
        .send()
        .await
        .expect("send");
    let revoked = r.status();
    let body = r.text().await.unwrap_or_default();
    assert!(revoked.is_success(), "{revoked}: {body}");
    let (code, out, err) = laptop.run(&["refresh"]).await;
    assert_eq!((code, out.as_str()), (67, ""), "{err}");
    assert!(
        err.starts_with(&format!(
            "tollgate-token: the sign-in to {b} has expired or was revoked (invalid_grant"
        )) && err.ends_with(&format!("): run `tollgate-token login --broker {b}`\n")),
        "{err}"
    );
}

/// Codex 0.171.0 signs the person in by itself (`gateway_oauth`, written by `setup --oauth` from the
/// broker's metadata): its first turn prints the broker's authorization URL, the person signs in at the
/// broker (IdP behind it) in the browser, Codex takes the code on its own loopback port, and the turn
/// goes through the broker with the broker's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_signs_in_by_itself_through_the_broker_and_the_turn_completes() {
    use tokio::io::AsyncBufReadExt;
    let broker = start_broker().await;
    let laptop = Laptop::new(&broker, "alice");
    let b = broker.url.clone();
    let home = laptop.home.path();
    let codex_home = home.join("codex");
    std::fs::create_dir_all(&codex_home).expect("codex home");
    std::fs::write(codex_home.join("config.toml"), "# mine\nmodel = \"demo\"\n").expect("config");
    let out = tokio::process::Command::new(helper_bin())
        .env_clear()
        .env("HOME", home)
        .env("CODEX_HOME", &codex_home)
        .args(["setup", "--broker", &b, "--oauth", "--set-default"])
        .output()
        .await
        .expect("setup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(codex_home.join("config.toml")).expect("read");
    assert!(config.starts_with("# mine\nmodel = \"demo\"\n"), "{config}");
    assert!(
        config.contains(&format!(
            "[model_providers.tollgate.gateway_oauth]\nauthorization_url = \"{b}/oauth/authorize\"\ntoken_url = \"{b}/oauth/token\"\n\
             device_authorization_url = \"{b}/oauth/device_authorization\"\nclient_id = \"codex\"\n\
             scopes = [\"models\", \"offline_access\"]\nresource = \"{b}\"\ncredentials_store = \"file\"\n"
        )),
        "{config}"
    );
    assert!(
        !config.contains("[model_providers.tollgate.auth]"),
        "{config}"
    );

    let workdir = home.join("work");
    std::fs::create_dir_all(&workdir).expect("workdir");
    let mut cmd = tokio::process::Command::new(support::codex_bin_for(support::CODEX_VERSIONS[0]));
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
    .env("CODEX_HOME", &codex_home)
    .env("RUST_LOG", "error")
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
    // Read stderr until Codex prints the authorization URL; then be the person at the browser.
    let (url_tx, url_rx) = tokio::sync::oneshot::channel::<String>();
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut tx = Some(url_tx);
        let mut next_is_url = false;
        while let Ok(Some(l)) = lines.next_line().await {
            if next_is_url && let Some(tx) = tx.take() {
                let _ = tx.send(l.trim().to_string());
            }
            next_is_url = l.contains("Authorize the model provider by opening this URL:");
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let url = tokio::time::timeout(std::time::Duration::from_secs(60), url_rx)
        .await
        .expect("Codex printed no authorization URL")
        .expect("url");
    assert!(
        url.starts_with(&format!(
            "{b}/oauth/authorize?response_type=code&client_id=codex&redirect_uri=http%3A%2F%2F127.0.0.1%3A"
        )) && url.contains("&code_challenge_method=S256&state=")
            && url.contains("&scope=models+offline_access&resource="),
        "{url}"
    );
    let tools = idp_modules()
        .parent()
        .and_then(Path::parent)
        .expect("tools")
        .to_owned();
    let page = tokio::process::Command::new("node")
        .arg(repo("helper/tests/support/browser.mjs"))
        .arg(&url)
        .env("TOLLGATE_TEST_TOOLS", tools)
        .env("BROWSER_USER", "alice")
        .kill_on_drop(true)
        .output()
        .await
        .expect("browser");
    let page_out = String::from_utf8_lossy(&page.stdout).to_string();
    let page_err = String::from_utf8_lossy(&page.stderr).to_string();
    assert!(
        page_out.contains("/callback?code="),
        "{page_out}\n{page_err}"
    );
    let status = child
        .wait_timeout(std::time::Duration::from_secs(120))
        .await
        .expect("wait")
        .expect("codex finished");
    let (out, err) = (out_task.await.expect("out"), err_task.await.expect("err"));
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(!out.trim().is_empty(), "the turn answered: {err}");
    // The broker recorded a sign-in for Codex (client `codex`) as the person.
    let sessions: Value = reqwest::Client::new()
        .get(format!("{b}/admin/v1/oauth/sessions?who=alice@example.com"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(sessions.to_string().contains("\"codex\""), "{sessions}");
}
