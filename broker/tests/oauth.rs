//! People sign in (issue 14), end to end with real peers (`tollgate_testkit::people`): the company IdP is
//! the npm `oidc-provider` (OpenID Certified; `testkit/js/company_idp.mjs`) on a loopback port picked by
//! the OS, with test users and groups; a headless Chromium (`testkit/js/browser.mjs`, playwright-core
//! driving the Debian Chromium) plays the person through the broker's real pages and the IdP's own login
//! and consent pages.
//! The broker runs in process on a loopback listener with a fake clock (expiry and polling intervals move
//! the clock; nothing sleeps for it).
//!
//! Every attack is refused with nothing issued: checked by the absence of tokens in the answer and by the
//! code, device code or sign-in being unusable afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate_broker::app::AppState;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source};
use tollgate_testkit::people::CompanyIdp;

const IDP_SECRET: &str = "idp-client-secret-for-tests";
const ADMIN_KEY: &str = "admin-key-for-oauth-tests";
const REDIRECT: &str = "http://127.0.0.1:18992/callback";

const POLICY: &str = r#"
[[rule]]
name = "contractors-out"
effect = "deny"
match = { kind = "user", attributes = { groups = "contractors" } }

[[rule]]
name = "engineers"
match = { kind = "user", attributes = { groups = "eng", email_verified = "true" } }
principal = "{attr.email}"
team = "eng"
models = ["gpt-5*", "demo"]
budgets = ["people-daily"]
max_ttl_secs = 600
"#;

struct Env {
    state: Arc<AppState>,
    clock: FakeClock,
    url: String,
    idp: CompanyIdp,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

async fn start(extra: &str) -> Env {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let idp = CompanyIdp::start(
        "tollgate-broker",
        IDP_SECRET,
        &format!("{url}/oauth/callback"),
    );
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
default_ttl_secs = 300
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
[[budgets]]
id = "people-daily"
scope = "principal"
amount_usd = "5"
window = "daily"
[oauth]
device_poll_interval_secs = 5
device_code_ttl_secs = 600
[[oauth.idp]]
name = "corp"
display_name = "Example SSO"
issuer = "{issuer}"
client_id = "tollgate-broker"
client_secret_env = "IDP_SECRET"
scopes = ["openid", "email", "profile", "groups"]
{extra}
"#,
        issuer = idp.issuer
    );
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, &text).expect("config");
    let env: BTreeMap<String, String> = [("IDP_SECRET".to_string(), IDP_SECRET.to_string())].into();
    let config = Config::from_source(Source { path, text }, &env).expect("valid config");
    let clock = FakeClock::new(now_secs());
    let state = AppState::build(&config, Arc::new(clock.clone()))
        .await
        .expect("state");
    let app = tollgate_broker::routes::router(state.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Env {
        state,
        clock,
        url,
        idp,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        _dir: dir,
    }
}

fn port_of(url: &str) -> u16 {
    reqwest::Url::parse(url).expect("url").port().expect("port")
}

impl Env {
    /// Play the person in Chromium from `start`; see `testkit/js/browser.mjs` for the plan.
    async fn browser(&self, mut plan: Value) -> Value {
        // The IdP stamps ID tokens with the real time: the broker's clock never runs behind it (a test that
        // moved the clock forward keeps its lead).
        {
            use tollgate_broker::clock::Clock;
            self.clock.set(self.clock.now_secs().max(now_secs()));
        }
        plan["allow_ports"] = json!([port_of(&self.url), self.idp.port()]);
        tollgate_testkit::people::browser(plan).await
    }

    async fn form(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .form(form)
            .send()
            .await
            .expect("send");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        self.form("/oauth/token", form).await
    }

    /// A model call with the token: the demo provider answers.
    async fn call(&self, access_token: &str) -> StatusCode {
        self.http
            .post(format!("{}/v1/responses", self.url))
            .bearer_auth(access_token)
            .json(&json!({"model": "gpt-5.5", "input": "hello", "stream": false}))
            .send()
            .await
            .expect("send")
            .status()
    }

    fn authorize_url(&self, client: &str, challenge: &str, state: &str) -> String {
        format!(
            "{}/oauth/authorize?{}",
            self.url,
            serde_urlencoded::to_string([
                ("response_type", "code"),
                ("client_id", client),
                ("redirect_uri", REDIRECT),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
                ("state", state),
                ("scope", "models"),
                ("resource", self.url.as_str()),
            ])
            .expect("query")
        )
    }

    /// A full browser sign-in for `client` as `user`; the query the client's loopback callback got.
    async fn sign_in(&self, client: &str, user: &str, verifier: &str) -> BTreeMap<String, String> {
        let state = format!("state-{}", uuid::Uuid::new_v4());
        let out = self
            .browser(json!({
                "start": self.authorize_url(client, &challenge(verifier), &state),
                "user": user,
                "consent": "approve",
                "stop_prefix": "http://127.0.0.1:18992/",
            }))
            .await;
        let q = query(out["final_url"].as_str().expect("final url"));
        assert_eq!(
            q.get("state").map(String::as_str),
            Some(state.as_str()),
            "exact state echo: {out}"
        );
        assert!(q.contains_key("code"), "a code: {out}");
        assert_eq!(q.get("iss"), Some(&self.url), "RFC 9207 iss: {out}");
        q
    }

    async fn redeem(&self, client: &str, code: &str, verifier: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("client_id", client),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .await
    }

    async fn refresh(&self, client: &str, rt: &str) -> (StatusCode, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("client_id", client),
            ("refresh_token", rt),
        ])
        .await
    }

    async fn admin_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    }

    async fn admin_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .expect("send");
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
}

fn challenge(verifier: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()))
}

fn verifier() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn query(url: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(url)
        .expect("url")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("jwt");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("json")
}

fn issued_nothing(what: &str, status: StatusCode, body: &Value, error: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["error"], error, "{what}: {body}");
    assert!(body.get("access_token").is_none(), "{what}: {body}");
    assert!(body.get("refresh_token").is_none(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_with_the_browser_refreshes_and_a_replay_revokes_the_family() {
    let e = start("").await;

    // RFC 8414 metadata: what the helper and Codex discover.
    let meta: Value = e
        .http
        .get(format!("{}/.well-known/oauth-authorization-server", e.url))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["issuer"], e.url);
    assert_eq!(
        meta["authorization_endpoint"],
        format!("{}/oauth/authorize", e.url)
    );
    assert_eq!(meta["token_endpoint"], format!("{}/oauth/token", e.url));
    assert_eq!(
        meta["device_authorization_endpoint"],
        format!("{}/oauth/device_authorization", e.url)
    );
    assert_eq!(
        meta["revocation_endpoint"],
        format!("{}/oauth/revoke", e.url)
    );
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(meta["response_types_supported"], json!(["code"]));
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    for g in [
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ] {
        assert!(
            meta["grant_types_supported"]
                .as_array()
                .expect("list")
                .contains(&json!(g)),
            "{g}"
        );
    }

    // Sign in through the real pages: broker → IdP login → IdP consent → broker consent → loopback.
    let v = verifier();
    let q = e.sign_in("codex", "alice", &v).await;
    let (s, tok) = e.redeem("codex", &q["code"], &v).await;
    assert_eq!(s, StatusCode::OK, "{tok}");
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["scope"], "models");
    assert_eq!(tok["expires_in"], 300);
    let at = tok["access_token"].as_str().expect("at").to_string();
    let rt1 = tok["refresh_token"].as_str().expect("rt").to_string();
    let c = claims(&at);
    assert_eq!(c["sub"], "alice@example.com");
    assert_eq!(c["aud"], "tollgate");
    assert_eq!(c["iss"], e.url);
    assert_eq!(c["tollgate"]["team"], "eng");
    assert_eq!(c["tollgate"]["identity"]["kind"], "user");
    assert_eq!(c["tollgate"]["identity"]["rule"], "engineers");
    assert_eq!(c["tollgate"]["identity"]["issuer"], e.idp.issuer);
    assert_eq!(c["tollgate"]["budgets"], json!(["people-daily"]));
    assert_eq!(
        e.call(&at).await,
        StatusCode::OK,
        "the person's token works at the proxy"
    );

    // The code is single-use: a second redemption is refused and revokes the sign-in it started.
    let (s, body) = e.redeem("codex", &q["code"], &v).await;
    issued_nothing("code reuse", s, &body, "invalid_grant");
    let (s, body) = e.refresh("codex", &rt1).await;
    issued_nothing(
        "refresh of a sign-in whose code was replayed",
        s,
        &body,
        "invalid_grant",
    );
    e.state.governance().load_revocations().await.expect("poll");
    assert_eq!(
        e.call(&at).await,
        StatusCode::UNAUTHORIZED,
        "its access token is revoked"
    );

    // A fresh sign-in: refresh rotates on every use.
    let v = verifier();
    let q = e.sign_in("codex", "alice", &v).await;
    let (_, tok) = e.redeem("codex", &q["code"], &v).await;
    let rt1 = tok["refresh_token"].as_str().expect("rt").to_string();
    e.clock.advance(300 + 120); // past the life and the verification leeway
    assert_eq!(
        e.call(tok["access_token"].as_str().expect("at")).await,
        StatusCode::UNAUTHORIZED,
        "expired"
    );
    let (s, tok2) = e.refresh("codex", &rt1).await;
    assert_eq!(s, StatusCode::OK, "{tok2}");
    let rt2 = tok2["refresh_token"].as_str().expect("rt").to_string();
    assert_ne!(rt1, rt2, "rotated");
    let at2 = tok2["access_token"].as_str().expect("at").to_string();
    assert_eq!(e.call(&at2).await, StatusCode::OK);
    // Bound to the client: another client cannot use it (and it stays usable by its own).
    let (s, body) = e.refresh("tollgate-token", &rt2).await;
    issued_nothing("refresh by another client", s, &body, "invalid_grant");
    // Replaying the used one revokes the whole family: the current refresh token and access token too.
    let (s, body) = e.refresh("codex", &rt1).await;
    issued_nothing("refresh replay", s, &body, "invalid_grant");
    let (s, body) = e.refresh("codex", &rt2).await;
    issued_nothing("refresh after a replay", s, &body, "invalid_grant");
    e.state.governance().load_revocations().await.expect("poll");
    assert_eq!(e.call(&at2).await, StatusCode::UNAUTHORIZED);

    // The audit trail has the mints and the revocations.
    e.state.audit().as_ref().expect("audit").flush().await;
    let sessions = e
        .admin_get("/admin/v1/oauth/sessions?who=alice@example.com&all=true")
        .await;
    let list = sessions["sessions"].as_array().expect("list");
    assert_eq!(list.len(), 2, "{sessions}");
    let reasons: Vec<&str> = list
        .iter()
        .map(|f| f["revoked_reason"].as_str().unwrap_or(""))
        .collect();
    assert!(reasons.contains(&"code_replayed"), "{reasons:?}");
    assert!(reasons.contains(&"refresh_replayed"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_requests_that_break_the_rules_issue_nothing() {
    let e = start("").await;
    let good_challenge = challenge(&verifier());
    let base = [
        ("response_type", "code"),
        ("client_id", "codex"),
        ("redirect_uri", REDIRECT),
        ("code_challenge", good_challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "s1"),
    ];
    let with = |changes: &[(&'static str, Option<&'static str>)]| {
        let mut q: Vec<(&str, &str)> = base.to_vec();
        for (k, v) in changes {
            q.retain(|(n, _)| n != k);
            if let Some(v) = v {
                q.push((k, v));
            }
        }
        q
    };
    // (what, changes, where the refusal goes: Some(error) = back to the client, None = a page, no redirect)
    type Changes = Vec<(&'static str, Option<&'static str>)>;
    let cases: Vec<(&str, Changes, Option<&str>)> = vec![
        (
            "no PKCE",
            vec![("code_challenge", None), ("code_challenge_method", None)],
            Some("invalid_request"),
        ),
        (
            "PKCE plain",
            vec![("code_challenge_method", Some("plain"))],
            Some("invalid_request"),
        ),
        (
            "PKCE method missing",
            vec![("code_challenge_method", None)],
            Some("invalid_request"),
        ),
        (
            "short challenge",
            vec![("code_challenge", Some("abc"))],
            Some("invalid_request"),
        ),
        ("no state", vec![("state", None)], Some("invalid_request")),
        (
            "token response type",
            vec![("response_type", Some("token"))],
            Some("unsupported_response_type"),
        ),
        (
            "unknown scope",
            vec![("scope", Some("admin"))],
            Some("invalid_scope"),
        ),
        (
            "foreign resource",
            vec![("resource", Some("https://other.example.com"))],
            Some("invalid_target"),
        ),
        (
            "non-loopback redirect",
            vec![("redirect_uri", Some("http://evil.example.com/callback"))],
            None,
        ),
        (
            "localhost redirect",
            vec![("redirect_uri", Some("http://localhost:18992/callback"))],
            None,
        ),
        (
            "https loopback",
            vec![("redirect_uri", Some("https://127.0.0.1:18992/callback"))],
            None,
        ),
        (
            "loopback look-alike",
            vec![("redirect_uri", Some("http://127.0.0.1.evil.example.com/cb"))],
            None,
        ),
        ("unknown client", vec![("client_id", Some("evil"))], None),
        ("no client", vec![("client_id", None)], None),
    ];
    for (what, changes, expect) in cases {
        let r = e
            .http
            .get(format!(
                "{}/oauth/authorize?{}",
                e.url,
                serde_urlencoded::to_string(with(&changes)).expect("query")
            ))
            .send()
            .await
            .expect("send");
        assert!(
            r.headers().get("set-cookie").is_none(),
            "{what}: no login session may start"
        );
        match expect {
            Some(err) => {
                assert_eq!(r.status(), StatusCode::SEE_OTHER, "{what}");
                let loc = r.headers()["location"].to_str().expect("loc").to_string();
                assert!(loc.starts_with(REDIRECT), "{what}: {loc}");
                let q = query(&loc);
                assert_eq!(
                    q.get("error").map(String::as_str),
                    Some(err),
                    "{what}: {loc}"
                );
                assert!(!q.contains_key("code"), "{what}");
            }
            None => {
                assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
                assert!(
                    r.headers().get("location").is_none(),
                    "{what}: never redirected"
                );
                let csp = r.headers()["content-security-policy"]
                    .to_str()
                    .expect("csp");
                assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            }
        }
    }
    // A good request starts a login session and goes to the IdP with PKCE, state and nonce of its own.
    let r = e
        .http
        .get(format!(
            "{}/oauth/authorize?{}",
            e.url,
            serde_urlencoded::to_string(base).expect("query")
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let loc = r.headers()["location"].to_str().expect("loc").to_string();
    assert!(loc.starts_with(&e.idp.issuer), "{loc}");
    let q = query(&loc);
    assert_eq!(q["client_id"], "tollgate-broker");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_ne!(
        q["code_challenge"], good_challenge,
        "the broker's own PKCE towards the IdP"
    );
    assert_ne!(q["state"], "s1", "the broker's own state towards the IdP");
    assert!(q["nonce"].len() >= 32);
    assert!(
        !loc.contains(IDP_SECRET),
        "no IdP secret towards the browser"
    );
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );

    // The IdP's answer must come back with the state it was sent and to the browser that started it.
    let idp_state = q["state"].clone();
    let session = cookie.split(';').next().expect("pair").to_string();
    for (what, state, with_cookie) in [
        ("wrong state", "forged-state", true),
        ("right state, another browser", idp_state.as_str(), false),
    ] {
        let mut req = e.http.get(format!(
            "{}/oauth/callback?{}",
            e.url,
            serde_urlencoded::to_string([("state", state), ("code", "any-code")]).expect("query")
        ));
        if with_cookie {
            req = req.header("cookie", &session);
        }
        let r = req.send().await.expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        assert!(r.headers().get("location").is_none(), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_bound_to_pkce_client_and_redirect_and_consent_needs_its_csrf_token() {
    let e = start("").await;
    // (what, client, verifier given, redirect_uri) against a fresh code each; the code is burnt after.
    let cases: [(&str, &str, Option<&str>, &str); 4] = [
        (
            "PKCE mismatch",
            "codex",
            Some("wrong-verifier-wrong-verifier-wrong-verifier-0"),
            REDIRECT,
        ),
        ("PKCE missing", "codex", None, REDIRECT),
        (
            "code for another client",
            "tollgate-token",
            Some(""),
            REDIRECT,
        ),
        (
            "another redirect_uri",
            "codex",
            Some(""),
            "http://127.0.0.1:18993/callback",
        ),
    ];
    for (what, client, given, redirect) in cases {
        let v = verifier();
        let q = e.sign_in("codex", "alice", &v).await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", client),
            ("code", q["code"].as_str()),
            ("redirect_uri", redirect),
        ];
        match given {
            Some("") => form.push(("code_verifier", v.as_str())),
            Some(g) => form.push(("code_verifier", g)),
            None => {}
        }
        let (s, body) = e.token(&form).await;
        let expected = if given.is_none() {
            "invalid_request"
        } else {
            "invalid_grant"
        };
        issued_nothing(what, s, &body, expected);
        if given.is_some() {
            // Burnt: not even the rightful client with the right verifier gets anything now.
            let (s, body) = e.redeem("codex", &q["code"], &v).await;
            issued_nothing(
                &format!("{what}, then the right request"),
                s,
                &body,
                "invalid_grant",
            );
        }
    }
    assert!(
        e.admin_get("/admin/v1/oauth/sessions?who=alice@example.com&all=true")
            .await["sessions"]
            .as_array()
            .expect("list")
            .is_empty(),
        "no sign-in was created"
    );

    // CSRF on the consent page: a form post without the page's token is refused, nothing reaches the client.
    let out = e
        .browser(json!({
            "start": e.authorize_url("codex", &challenge(&verifier()), "s-csrf"),
            "user": "alice",
            "consent": "approve",
            "stop_prefix": "http://127.0.0.1:18992/",
            "forge": "forged-token",
        }))
        .await;
    assert!(
        !out["final_url"]
            .as_str()
            .expect("url")
            .starts_with(REDIRECT),
        "{out}"
    );
    assert_eq!(out["status"], 403, "{out}");
    assert!(
        out["text"]
            .as_str()
            .expect("text")
            .contains("not sent from the sign-in page"),
        "{out}"
    );
    // A person the policy does not grant: the IdP signs them in, the broker issues nothing.
    let out = e
        .browser(json!({
            "start": e.authorize_url("codex", &challenge(&verifier()), "s-bob"),
            "user": "bob",
            "stop_prefix": "http://127.0.0.1:18992/",
        }))
        .await;
    assert_eq!(out["status"], 403, "{out}");
    assert!(
        out["text"].as_str().expect("text").contains("no access"),
        "{out}"
    );
    // The consent page itself: strict headers, no script, who and what is granted.
    let out = e
        .browser(json!({
            "start": e.authorize_url("codex", &challenge(&verifier()), "s-page"),
            "user": "alice",
            "consent": "stop",
            "stop_prefix": "http://127.0.0.1:18992/",
        }))
        .await;
    assert_eq!(out["status"], 200, "{out}");
    let text = out["text"].as_str().expect("text");
    for shown in [
        "Codex",
        "alice@example.com",
        "gpt-5*",
        "demo",
        "$5.00 daily",
        "people-daily",
    ] {
        assert!(text.contains(shown), "consent page shows {shown}: {text}");
    }
    let h = &out["headers"];
    let csp = h["content-security-policy"].as_str().expect("csp");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:18992"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"), "{csp}");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_signs_in_with_a_user_code_and_polling_rules_hold() {
    let e = start("").await;
    let start_device = || async {
        let (s, d) = e
            .form(
                "/oauth/device_authorization",
                &[("client_id", "tollgate-token"), ("scope", "models")],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{d}");
        d
    };
    let d = start_device().await;
    assert_eq!(d["verification_uri"], format!("{}/oauth/device", e.url));
    let user_code = d["user_code"].as_str().expect("user code").to_string();
    assert_eq!(
        d["verification_uri_complete"],
        format!("{}/oauth/device?user_code={user_code}", e.url)
    );
    assert_eq!(d["interval"], 5);
    assert_eq!(d["expires_in"], 600);
    let device_code = d["device_code"].as_str().expect("dc").to_string();
    let poll = |dc: String| {
        let e = &e;
        async move {
            e.token(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", "tollgate-token"),
                ("device_code", dc.as_str()),
            ])
            .await
        }
    };
    let (s, body) = poll(device_code.clone()).await;
    issued_nothing("pending", s, &body, "authorization_pending");
    // Polling faster than the interval: slow_down, and the interval grows by 5 s.
    let (s, body) = poll(device_code.clone()).await;
    issued_nothing("too fast", s, &body, "slow_down");
    e.clock.advance(5);
    let (s, body) = poll(device_code.clone()).await;
    issued_nothing(
        "still too fast for the grown interval",
        s,
        &body,
        "slow_down",
    );

    // CSRF on the device page: a post without the page's cookie and token is refused.
    for (what, cookie, token) in [
        ("no cookie", None, "t"),
        ("cookie and token differ", Some("tollgate_csrf=a"), "b"),
    ] {
        let mut req = e
            .http
            .post(format!("{}/oauth/device", e.url))
            .form(&[("csrf", token), ("user_code", user_code.as_str())]);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let r = req.send().await.expect("send");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
        assert!(r.headers().get("location").is_none(), "{what}");
    }

    // The person opens the verification URI on another device, signs in, sees the code, approves.
    let out = e
        .browser(json!({
            "start": d["verification_uri_complete"],
            "user": "alice",
            "consent": "approve",
        }))
        .await;
    assert!(
        out["steps"]
            .as_array()
            .expect("steps")
            .contains(&json!("broker-device")),
        "{out}"
    );
    assert!(
        out["text"].as_str().expect("text").contains("is signed in"),
        "{out}"
    );
    // Two slow_downs grew the interval to 15 s, and the last poll (5 s in) counted: wait it out.
    e.clock.advance(15);
    let (s, tok) = poll(device_code.clone()).await;
    assert_eq!(s, StatusCode::OK, "{tok}");
    let at = tok["access_token"].as_str().expect("at");
    assert_eq!(claims(at)["sub"], "alice@example.com");
    assert_eq!(e.call(at).await, StatusCode::OK);
    // Consumed: polling again gets nothing.
    e.clock.advance(30);
    let (s, body) = poll(device_code).await;
    issued_nothing("device code reuse", s, &body, "invalid_grant");

    // Declined on the consent page: access_denied.
    let d = start_device().await;
    e.browser(json!({"start": d["verification_uri_complete"], "user": "alice", "consent": "deny"}))
        .await;
    let (s, body) = poll(d["device_code"].as_str().expect("dc").to_string()).await;
    issued_nothing("declined", s, &body, "access_denied");

    // Expired: nobody signed in before the code ran out.
    let d = start_device().await;
    e.clock.advance(601);
    let (s, body) = poll(d["device_code"].as_str().expect("dc").to_string()).await;
    issued_nothing("expired device code", s, &body, "expired_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_and_revoke_a_persons_sign_ins_and_clients_sign_out() {
    let e = start("").await;
    let mut signed_in = Vec::new();
    for client in ["codex", "tollgate-token"] {
        let v = verifier();
        let q = e.sign_in(client, "alice", &v).await;
        let (s, tok) = e.redeem(client, &q["code"], &v).await;
        assert_eq!(s, StatusCode::OK, "{tok}");
        signed_in.push((client, tok));
    }
    let list = e
        .admin_get("/admin/v1/oauth/sessions?who=alice@example.com")
        .await;
    let families = list["sessions"].as_array().expect("list").clone();
    assert_eq!(families.len(), 2, "{list}");
    assert!(
        families
            .iter()
            .all(|f| f["idp"] == "corp" && f["revoked_at"].is_null())
    );

    // Revoke one (the Codex sign-in): its refresh stops, its access token is refused; the other lives.
    let codex_family = families
        .iter()
        .find(|f| f["client_id"] == "codex")
        .expect("codex")["family_id"]
        .clone();
    let (s, r) = e
        .admin_post("/admin/v1/oauth/revoke", json!({"family_id": codex_family}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["revoked"], json!([codex_family]));
    e.state.governance().load_revocations().await.expect("poll");
    let (codex_tok, helper_tok) = (&signed_in[0].1, &signed_in[1].1);
    assert_eq!(
        e.call(codex_tok["access_token"].as_str().expect("at"))
            .await,
        StatusCode::UNAUTHORIZED
    );
    let (s, body) = e
        .refresh("codex", codex_tok["refresh_token"].as_str().expect("rt"))
        .await;
    issued_nothing("refresh of a revoked sign-in", s, &body, "invalid_grant");
    let (s, helper2) = e
        .refresh(
            "tollgate-token",
            helper_tok["refresh_token"].as_str().expect("rt"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{helper2}");

    // The client signs out (RFC 7009): 200, and the sign-in is over.
    let (s, _) = e
        .form(
            "/oauth/revoke",
            &[
                ("client_id", "tollgate-token"),
                ("token", helper2["refresh_token"].as_str().expect("rt")),
                ("token_type_hint", "refresh_token"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = e
        .refresh(
            "tollgate-token",
            helper2["refresh_token"].as_str().expect("rt"),
        )
        .await;
    issued_nothing("refresh after sign-out", s, &body, "invalid_grant");
    e.state.governance().load_revocations().await.expect("poll");
    assert_eq!(
        e.call(helper2["access_token"].as_str().expect("at")).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        e.admin_get("/admin/v1/oauth/sessions?who=alice@example.com")
            .await["sessions"]
            .as_array()
            .expect("list")
            .is_empty()
    );
    // Revoke-all answers with nothing left to revoke; everything was audited.
    let (s, r) = e
        .admin_post(
            "/admin/v1/oauth/revoke",
            json!({"who": "alice@example.com"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["revoked"], json!([]));
    let audit = e.state.audit().as_ref().expect("audit");
    audit.flush().await;
    let mut buf = Vec::new();
    tollgate_broker::audit::export(audit.sink().as_ref(), &mut buf)
        .await
        .expect("export");
    let text = String::from_utf8(buf).expect("utf-8");
    assert!(text.contains("oauth_revoke"), "admin action audited");
    assert!(text.contains("client_revoked"), "sign-out audited");
    assert!(text.contains("oauth_consent"), "consent audited");
    assert!(
        !text.contains(IDP_SECRET),
        "no IdP secret in the audit trail"
    );
}
