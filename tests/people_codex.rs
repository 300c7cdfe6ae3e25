//! Codex signs in by itself (`gateway_oauth`) and keeps working, end to end with the real Codex in every
//! pinned version (0.171.0 and 0.169.0 both speak `gateway_oauth`), the broker in process with a fake
//! clock, the company IdP (npm `oidc-provider`) and a person at headless Chromium
//! (`tests/support/people.rs`). What the binaries do, verified here:
//!
//! - Codex plans its refresh by the token answer's `expires_in` on its own clock (30 s before the end) and
//!   refreshes silently through the token endpoint: the refresh token rotates, Codex presents the one it
//!   was given last, no browser step, the turn completes;
//! - it does not refresh after a 401 (with or without `error="invalid_token"`): a token the broker refuses
//!   before Codex's clock says it is due (revoked, expired early) ends the turn after 6 tries with the
//!   broker's message, which says what happened;
//! - an administrator revokes the person's sign-ins with the real `tollgate-broker admin` CLI: when Codex
//!   next refreshes, the broker refuses (`invalid_grant`) and Codex asks the person to sign in again (the
//!   authorization URL, once), and the turn goes through after it;
//! - a stolen refresh token used before Codex uses it makes Codex's own use a replay: the family is
//!   revoked (the thief's new tokens too), and Codex asks for a new sign-in;
//! - the device flow: `codex exec` offers only the browser; Codex's app server (the TUI's and the IDE
//!   extensions' backend) signs in with the device grant (`account/gatewayOAuth/login` with `deviceAuth`)
//!   when the config names `device_authorization_url`; driven end to end, the person types the code on
//!   the broker's device page.
//!
//! Codex's clock cannot be moved (a static binary): where a test needs Codex to consider its token due, the
//! broker's answers tell it `expires_in = 30` (its refresh margin) rather than waiting.

mod support;

use serde_json::{Value, json};
use support::people::{CODEX_AUTHORIZE, Laptop, Options, PeopleBroker};

/// Past an access token's life (600 s, the policy rule's cap) and the verifier's leeway.
const PAST_EXPIRY_SECS: u64 = 600 + 120;

fn assert_authorize_url(url: &str, broker: &str, what: &str) {
    assert!(
        url.starts_with(&format!(
            "{broker}/oauth/authorize?response_type=code&client_id=codex&redirect_uri=http%3A%2F%2F127.0.0.1%3A"
        )) && url.contains("&code_challenge_method=S256&state=")
            && url.contains("&scope=models+offline_access"),
        "{what}: {url}"
    );
}

/// The first sign-in: Codex prints the authorization URL once, the person signs in, the turn completes.
async fn first_sign_in(version: &str, broker: &PeopleBroker, laptop: &Laptop) {
    let run = laptop.codex_exec(version, broker, Some("alice")).await;
    run.assert_turn_completed(&format!("{version}: first turn"));
    assert_eq!(run.auth_urls.len(), 1, "{version}: {}", run.stderr);
    assert_authorize_url(&run.auth_urls[0], &broker.url, version);
    let codes = broker.traffic.grants("authorization_code");
    assert_eq!(codes.len(), 1, "{version}: {codes:?}");
    assert_eq!(codes[0].status, 200, "{version}: {codes:?}");
    assert_eq!(codes[0].client_id.as_deref(), Some("codex"));
}

/// The refresh token Codex holds now: the last one the token endpoint issued.
fn codex_refresh_token(broker: &PeopleBroker) -> String {
    broker
        .traffic
        .all()
        .iter()
        .rev()
        .find_map(|s| s.refresh_token_issued.clone())
        .expect("a refresh token was issued")
}

/// The token endpoint's refresh grants since the last `clear`: each answered 200 and presented the
/// token the one before issued (starting with `held`), each issued a new one. Returns the last.
fn assert_rotating_refreshes(broker: &PeopleBroker, held: &str, what: &str) -> String {
    let refreshes = broker.traffic.grants("refresh_token");
    assert!(!refreshes.is_empty(), "{what}: Codex refreshed");
    let mut held = held.to_string();
    let mut seen = std::collections::BTreeSet::from([held.clone()]);
    for r in &refreshes {
        assert_eq!(
            (r.status, r.client_id.as_deref()),
            (200, Some("codex")),
            "{what}: {r:?}"
        );
        assert_eq!(
            r.refresh_token_sent.as_deref(),
            Some(held.as_str()),
            "{what}: Codex presents the refresh token it was given last"
        );
        let next = r.refresh_token_issued.clone().expect("a new refresh token");
        assert!(seen.insert(next.clone()), "{what}: rotated, never reissued");
        held = next;
    }
    held
}

/// `tollgate-token setup --oauth` writes Codex's `gateway_oauth` from the broker's metadata (keeping the
/// person's TOML); Codex's first turn prints the broker's authorization URL, the person signs in at the
/// broker (the IdP behind it), Codex takes the code on its own loopback port, and the turn goes through
/// the broker with the broker's token, as a sign-in of client `codex`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_signs_in_by_itself_through_the_broker_and_the_turn_completes() {
    for version in support::codex_versions() {
        let broker = PeopleBroker::start(Options::default()).await;
        let laptop = Laptop::new(&broker);
        let b = &broker.url;
        let config = laptop.setup_codex().await;
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
        first_sign_in(&version, &broker, &laptop).await;
        // RFC 8707: Codex names the broker as the resource when it redeems the code.
        let code = &broker.traffic.grants("authorization_code")[0];
        assert_eq!(code.form.get("resource"), Some(b), "{version}");
        let sessions = broker.sign_ins("alice@example.com", false).await;
        assert_eq!(sessions.len(), 1, "{version}: {sessions:?}");
        assert_eq!(sessions[0]["client_id"], "codex", "{version}");
        assert_eq!(broker.traffic.turns().last(), Some(&200), "{version}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_refreshes_silently_and_rotates_its_refresh_token() {
    for version in support::codex_versions() {
        let broker = PeopleBroker::start(Options::default()).await;
        let laptop = Laptop::new(&broker);
        laptop.setup_codex().await;
        // Codex refreshes 30 s before `expires_in` runs out, on its own clock: told 30 s, every later use
        // is due (the broker's token itself lives 600 s).
        broker.traffic.set_expires_in(30);
        first_sign_in(&version, &broker, &laptop).await;
        let mut held = codex_refresh_token(&broker);

        for round in 1..=2 {
            let what = format!("{version}, turn {}", round + 1);
            broker.traffic.clear();
            let run = laptop.codex_exec(&version, &broker, None).await;
            run.assert_turn_completed(&what);
            assert!(
                run.auth_urls.is_empty() && !run.stderr.contains(CODEX_AUTHORIZE),
                "{what}: no sign-in asked: {}",
                run.stderr
            );
            assert_eq!(
                broker.traffic.count("GET", "/oauth/authorize"),
                0,
                "{what}: no browser step"
            );
            assert!(
                broker.traffic.grants("authorization_code").is_empty(),
                "{what}"
            );
            held = assert_rotating_refreshes(&broker, &held, &what);
            // Refreshed before the call: no model call was refused.
            let turns = broker.traffic.turns();
            assert!(
                !turns.is_empty() && turns.iter().all(|s| *s == 200),
                "{what}: {turns:?}"
            );
        }
        // One sign-in, live; the audit trail has it and its refreshes.
        let families = broker.sign_ins("alice@example.com", true).await;
        assert_eq!(families.len(), 1, "{version}: {families:?}");
        assert_eq!(families[0]["client_id"], "codex");
        assert!(families[0]["revoked_at"].is_null(), "{families:?}");
        let audit = broker.audit_text().await;
        let grants: Vec<String> = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["detail"]["oauth"]["grant"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            grants.first().map(String::as_str),
            Some("sign-in"),
            "{version}: {grants:?}"
        );
        assert!(
            grants.len() >= 3 && grants[1..].iter().all(|g| g == "refresh"),
            "{version}: {grants:?}"
        );
    }
}

/// An administrator ends the person's sign-ins with the real `tollgate-broker admin` CLI. When Codex
/// next needs a token it refreshes, the broker refuses (`invalid_grant`), and Codex asks the person to
/// sign in again: the authorization URL, once; after the sign-in the turn goes through on a new sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sign_in_makes_codex_ask_the_person_to_sign_in_again() {
    for version in support::codex_versions() {
        let broker = PeopleBroker::start(Options::default()).await;
        let laptop = Laptop::new(&broker);
        laptop.setup_codex().await;
        broker.traffic.set_expires_in(30);
        first_sign_in(&version, &broker, &laptop).await;
        let held = codex_refresh_token(&broker);

        let (code, out, err) = broker
            .admin_cli(
                &["sign-ins", "alice@example.com"],
                Some(support::people::ADMIN_KEY),
            )
            .await;
        assert_eq!((code, err.as_str()), (0, ""), "{out}");
        let listed: Value = serde_json::from_str(&out).expect("JSON");
        let family = listed["sessions"][0]["family_id"]
            .as_str()
            .expect("family")
            .to_string();
        assert_eq!(listed["sessions"][0]["client_id"], "codex", "{listed}");
        let (code, out, err) = broker
            .admin_cli(
                &[
                    "revoke-sign-in",
                    "--who",
                    "alice@example.com",
                    "--reason",
                    "laptop lost",
                ],
                Some(support::people::ADMIN_KEY),
            )
            .await;
        assert_eq!((code, err.as_str()), (0, ""), "{out}");
        assert_eq!(
            serde_json::from_str::<Value>(&out).expect("JSON"),
            json!({"revoked": [family]})
        );
        broker.reload_revocations().await;

        broker.traffic.clear();
        let run = laptop.codex_exec(&version, &broker, Some("alice")).await;
        let what = format!("{version}: after the revocation");
        run.assert_turn_completed(&what);
        assert_eq!(run.auth_urls.len(), 1, "{what}: asked once: {}", run.stderr);
        assert_authorize_url(&run.auth_urls[0], &broker.url, &what);
        let refused = broker.traffic.grants("refresh_token");
        assert!(!refused.is_empty(), "{what}");
        assert_eq!(
            refused[0].refresh_token_sent.as_deref(),
            Some(held.as_str()),
            "{what}"
        );
        assert_eq!(
            (refused[0].status, refused[0].error.as_deref()),
            (400, Some("invalid_grant")),
            "{what}"
        );
        assert_eq!(
            broker.traffic.grants("authorization_code").len(),
            1,
            "{what}: a new sign-in"
        );
        let all = broker.sign_ins("alice@example.com", true).await;
        assert_eq!(all.len(), 2, "{what}: {all:?}");
        let old = all
            .iter()
            .find(|f| f["family_id"] == family.as_str())
            .expect("old");
        assert_eq!(old["revoked_reason"], "laptop lost", "{old}");
        assert!(
            all.iter()
                .any(|f| f["family_id"] != family.as_str() && f["revoked_at"].is_null())
        );
    }
}

/// What Codex does with an access token the broker refuses before Codex's own clock says it is due
/// (revoked, or expired early at the broker): 0.171.0 and 0.169.0 do not refresh after a 401 (with or
/// without `WWW-Authenticate: Bearer error="invalid_token"`), and `codex logout` does not clear a
/// gateway sign-in. They retry the same token (6 calls) and end the turn with the broker's message,
/// which must say what happened and when Codex will ask for a sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_before_codex_expects_it_ends_the_turn_with_the_brokers_message() {
    for version in support::codex_versions() {
        let broker = PeopleBroker::start(Options::default()).await;
        let laptop = Laptop::new(&broker);
        laptop.setup_codex().await;
        first_sign_in(&version, &broker, &laptop).await;
        let (code, _, err) = broker
            .admin_cli(
                &["revoke-sign-in", "--who", "alice@example.com"],
                Some(support::people::ADMIN_KEY),
            )
            .await;
        assert_eq!(code, 0, "{err}");
        broker.reload_revocations().await;

        // Revoked: the message says the sign-in ended and when Codex asks again (its token had 600 s).
        broker.traffic.clear();
        let run = laptop.codex_exec(&version, &broker, None).await;
        let what = format!("{version}: revoked");
        assert_eq!(run.status, Some(1), "{what}: {}", run.stderr);
        assert!(run.auth_urls.is_empty(), "{what}: {}", run.stderr);
        assert_eq!(broker.traffic.turns(), [401; 6], "{what}: bounded retries");
        assert!(
            broker.traffic.grants("refresh_token").is_empty(),
            "{what}: no refresh after a 401"
        );
        assert!(
            run.stderr.contains(
                "401 Unauthorized: Tollgate: your sign-in was ended (revoked by an administrator, or signed out), \
                 so its access token is refused. Sign in again: `tollgate-token login`; Codex signed in by itself \
                 asks you to sign in again when it renews this token, in about 10 minute(s)."
            ),
            "{what}: {}",
            run.stderr
        );

        // Expired early at the broker (its clock moved past the token's life and leeway): the plain message.
        let broker = PeopleBroker::start(Options::default()).await;
        let laptop = Laptop::new(&broker);
        laptop.setup_codex().await;
        first_sign_in(&version, &broker, &laptop).await;
        broker.traffic.clear();
        broker.advance(PAST_EXPIRY_SECS);
        let run = laptop.codex_exec(&version, &broker, None).await;
        let what = format!("{version}: expired at the broker");
        assert_eq!(run.status, Some(1), "{what}: {}", run.stderr);
        assert_eq!(broker.traffic.turns(), [401; 6], "{what}");
        assert!(broker.traffic.grants("refresh_token").is_empty(), "{what}");
        assert!(
            run.stderr
                .contains("401 Unauthorized: Tollgate: missing, expired or invalid access token."),
            "{what}: {}",
            run.stderr
        );
    }
}

/// A stolen refresh token: the thief uses Codex's current refresh token first (and gets a new one);
/// Codex's own use of it is then a replay. The broker revokes the whole sign-in, the thief's new tokens
/// with it, and Codex asks the person to sign in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_token_revokes_the_sign_in_and_codex_asks_again() {
    for version in support::codex_versions() {
        let broker = PeopleBroker::start(Options::default()).await;
        let laptop = Laptop::new(&broker);
        laptop.setup_codex().await;
        broker.traffic.set_expires_in(30);
        first_sign_in(&version, &broker, &laptop).await;
        let held = codex_refresh_token(&broker);
        let family = broker.sign_ins("alice@example.com", false).await[0]["family_id"].clone();

        // The thief redeems Codex's refresh token at the token endpoint.
        let http = reqwest::Client::new();
        let stolen: Value = http
            .post(format!("{}/oauth/token", broker.url))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", "codex"),
                ("refresh_token", held.as_str()),
            ])
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let thief_rt = stolen["refresh_token"]
            .as_str()
            .expect("the thief got one")
            .to_string();
        let thief_at = stolen["access_token"].as_str().expect("at").to_string();

        broker.traffic.clear();
        let run = laptop.codex_exec(&version, &broker, Some("alice")).await;
        let what = format!("{version}: after the theft");
        run.assert_turn_completed(&what);
        assert_eq!(run.auth_urls.len(), 1, "{what}: asked once: {}", run.stderr);
        let replay = &broker.traffic.grants("refresh_token")[0];
        assert_eq!(
            replay.refresh_token_sent.as_deref(),
            Some(held.as_str()),
            "{what}"
        );
        assert_eq!(
            (replay.status, replay.error.as_deref()),
            (400, Some("invalid_grant")),
            "{what}"
        );
        assert!(
            replay.refresh_token_issued.is_none() && replay.access_token_issued.is_none(),
            "{what}"
        );

        // The sign-in is over for the thief too.
        let all = broker.sign_ins("alice@example.com", true).await;
        let old = all
            .iter()
            .find(|f| f["family_id"] == family)
            .expect("old sign-in");
        assert_eq!(old["revoked_reason"], "refresh_replayed", "{what}: {old}");
        let r = http
            .post(format!("{}/oauth/token", broker.url))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", "codex"),
                ("refresh_token", thief_rt.as_str()),
            ])
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400, "{what}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"], "invalid_grant", "{what}");
        assert!(body.get("access_token").is_none(), "{what}");
        broker.reload_revocations().await;
        let r = http
            .post(format!("{}/v1/responses", broker.url))
            .bearer_auth(&thief_at)
            .json(&json!({"model": "demo", "input": "hi", "stream": false}))
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.status(),
            401,
            "{what}: the thief's access token is revoked"
        );
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "sign_in_revoked", "{what}: {body}");
    }
}

/// Codex's app server over stdio (JSON-RPC, one message a line): what the TUI and the IDE extensions use.
struct AppServer {
    /// Kept for its drop: the app server's process group is killed with it.
    _child: tollgate_testkit::procs::ChildGuard,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
    /// Every message the server sent, for failure messages.
    seen: Vec<Value>,
}

impl AppServer {
    fn start(version: &str, laptop: &Laptop) -> AppServer {
        use std::process::Stdio;
        let mut cmd = tokio::process::Command::new(support::codex_bin_for(version));
        cmd.arg("app-server")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", laptop.home.path())
            .env("CODEX_HOME", laptop.codex_home())
            .env("RUST_LOG", "error")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = tollgate_testkit::procs::ChildGuard::spawn(cmd).expect("app-server");
        let stdin = child.child().stdin.take().expect("stdin");
        let stdout = child.take_stdout().expect("stdout");
        use tokio::io::AsyncBufReadExt;
        AppServer {
            _child: child,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
            next_id: 1,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, v: Value) {
        use tokio::io::AsyncWriteExt;
        let mut line = v.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.expect("write");
        self.stdin.flush().await.expect("flush");
    }

    /// The next message that `pick` accepts (others are kept in `seen`), within 60 s.
    async fn wait_for(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what} within 60 s: {:#?}", self.seen))
                .expect("read")
                .unwrap_or_else(|| panic!("app server closed before {what}: {:#?}", self.seen));
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            self.seen.push(v.clone());
            if pick(&v) {
                return v;
            }
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, "method": method, "params": params}))
            .await;
        let v = self
            .wait_for(method, |v| {
                v["id"] == json!(id) && v.get("method").is_none()
            })
            .await;
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }
}

/// The device flow with Codex: `codex exec` only offers the browser flow, but Codex's app server (the
/// TUI's and the IDE extensions' backend) signs in to a gateway with the device grant when the config
/// names `device_authorization_url` (`account/gatewayOAuth/login` with `deviceAuth`). The person opens
/// the verification URL on another device, signs in at the IdP and approves on the broker's device
/// page; Codex's poll gets the tokens; `codex exec` then works without a sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_signs_in_with_the_device_flow_through_its_app_server() {
    for version in support::codex_versions() {
        let broker = PeopleBroker::start(Options::default()).await;
        let laptop = Laptop::new(&broker);
        laptop.setup_codex().await;
        broker.traffic.keep_clock_with_real_time(&broker.clock);
        let mut app = AppServer::start(&version, &laptop);
        app.request(
            "initialize",
            json!({"clientInfo": {"name": "tollgate-test", "title": null, "version": "0"},
                   "capabilities": {"experimentalApi": true, "requestAttestation": false,
                                    "explicitGatewayOauth": true}}),
        )
        .await;
        app.send(json!({"method": "initialized"})).await;
        let read = app.request("account/gatewayOAuth/read", json!({})).await;
        assert_eq!(
            read,
            json!({"error": null, "providerId": "tollgate", "providerName": "Tollgate", "required": true,
                   "status": "notReady", "supportsDeviceAuth": true}),
            "{version}: the device flow is offered because the config names device_authorization_url"
        );
        let login = app
            .request("account/gatewayOAuth/login", json!({"deviceAuth": true}))
            .await;
        let prompt = &login["prompt"];
        assert_eq!(
            prompt["verificationUrl"],
            format!("{}/oauth/device", broker.url),
            "{version}: {login}"
        );
        let user_code = prompt["userCode"].as_str().expect("user code").to_string();
        assert!(
            user_code.len() == 9
                && user_code.as_bytes()[4] == b'-'
                && user_code
                    .chars()
                    .filter(|c| *c != '-')
                    .all(|c| c.is_ascii_uppercase()),
            "{version}: {user_code}"
        );
        let login_id = prompt["loginId"].clone();
        assert_eq!(
            broker.traffic.count("POST", "/oauth/device_authorization"),
            1,
            "{version}"
        );

        // The person, on another device: the verification page, the code, the IdP, the consent.
        let page = broker
            .person_signs_in_with_code(&format!("{}/oauth/device", broker.url), &user_code, "alice")
            .await;
        assert_eq!(
            page["steps"],
            json!([
                "broker-device",
                "idp-login",
                "idp-consent",
                "broker-consent",
                "stop:/oauth/consent"
            ]),
            "{version}: {page}"
        );
        assert_eq!(
            page["text"],
            format!(
                "Device signed in\n\nThe device showing {user_code} is signed in. You can close this window."
            ),
            "{version}"
        );
        let done = app
            .wait_for("account/gatewayOAuth/changed", |v| {
                v["method"] == "account/gatewayOAuth/changed" && v["params"]["loginId"] == login_id
            })
            .await;
        assert_eq!(
            done["params"],
            json!({"authUrl": null, "error": null, "loginId": login_id, "providerId": "tollgate",
                   "status": "succeeded"}),
            "{version}"
        );
        let polls = broker
            .traffic
            .grants("urn:ietf:params:oauth:grant-type:device_code");
        assert_eq!(
            polls.last().map(|p| p.status),
            Some(200),
            "{version}: {polls:?}"
        );
        assert!(
            polls[..polls.len() - 1]
                .iter()
                .all(|p| p.error.as_deref() == Some("authorization_pending")),
            "{version}: polled at the interval: {polls:?}"
        );
        assert!(
            broker.traffic.grants("authorization_code").is_empty(),
            "{version}"
        );
        drop(app);

        // `codex exec` uses the device sign-in: no browser, the turn completes as alice.
        let run = laptop.codex_exec(&version, &broker, None).await;
        run.assert_turn_completed(&format!("{version}: after the device sign-in"));
        assert!(run.auth_urls.is_empty(), "{version}: {}", run.stderr);
        let families = broker.sign_ins("alice@example.com", false).await;
        assert_eq!(families.len(), 1, "{version}: {families:?}");
        assert_eq!(families[0]["client_id"], "codex", "{version}");
    }
}
