//! No secret of a person's sign-in reaches a log line, an error body, the audit trail or the helper's
//! stderr: the authorization codes (the IdP's to the broker, the broker's to the client), the PKCE
//! verifiers, the device code, refresh and access tokens, the IdP's client secret and its ID tokens.
//!
//! The broker runs in process with every crate's logs captured at trace level; the flows are the real
//! ones (`tests/support/people.rs`): `tollgate-token login` through the browser, the token path and its
//! renewal, a client's browser sign-in and refresh, a replayed refresh token and a reused code (refusals
//! with error bodies), the device flow with a slow poll, the client's sign-out (RFC 7009), the admin CLI's
//! revocation, and a model call with a revoked token. Every secret the flows handled is collected from
//! the wire (the request forms and the token endpoint's answers) and searched for in everything written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Mutex};
use support::people::{ADMIN_KEY, IDP_SECRET, Laptop, Options, PeopleBroker};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every JWT-shaped string (`eyJ….eyJ….…`) in `text`.
fn jwts(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut rest = text;
    while let Some(i) = rest.find("eyJ") {
        let cand: String = rest[i..]
            .chars()
            .take_while(|c| b64(*c) || *c == '.')
            .collect();
        if cand.split('.').count() >= 3
            && cand.split('.').nth(1).is_some_and(|p| p.starts_with("eyJ"))
        {
            out.push(cand.clone());
        }
        rest = &rest[i + 3..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_a_sign_in_reaches_a_log_an_error_body_or_the_audit_trail() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let broker = PeopleBroker::start(Options::default()).await;
    let laptop = Laptop::new(&broker);
    let http = reqwest::Client::new();
    let mut helper_stderr = String::new();
    let mut bodies = Vec::new();

    // The helper: login through the browser, the token path, a renewal.
    let log = laptop.home.path().join("browser.log");
    let browser = tollgate_testkit::people::browser_script(
        laptop.home.path(),
        "alice",
        &broker.ports(),
        &log,
    );
    broker.advance(0);
    for args in [&["login"][..], &[][..], &["refresh", "--print"][..]] {
        let (code, _, err) = laptop.helper(args, Some(&browser)).await;
        assert_eq!(code, 0, "{args:?}: {err}");
        helper_stderr.push_str(&err);
    }

    // A client's browser sign-in, a refresh, then the old refresh token replayed and the code reused.
    let (first, _) = broker.client_signs_in("codex", "alice", None).await;
    let rt1 = first["refresh_token"].as_str().unwrap().to_string();
    let refresh = |rt: String| {
        let http = http.clone();
        let url = broker.url.clone();
        async move {
            let r = http
                .post(format!("{url}/oauth/token"))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", "codex"),
                    ("refresh_token", rt.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, body) = refresh(rt1.clone()).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = refresh(rt1.clone()).await;
    assert_eq!(s, 400, "replay refused: {body}");
    bodies.push(body);
    let code_grant = broker
        .traffic
        .grants("authorization_code")
        .pop()
        .expect("the code grant");
    let r = http
        .post(format!("{}/oauth/token", broker.url))
        .form(&code_grant.form.iter().collect::<Vec<_>>())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    bodies.push(r.text().await.unwrap());

    // The device flow: polls refused (pending, too fast), the code approved on the device page, the tokens.
    let d: Value = http
        .post(format!("{}/oauth/device_authorization", broker.url))
        .form(&[
            ("client_id", "tollgate-token"),
            ("scope", "models offline_access"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_code = d["device_code"].as_str().unwrap().to_string();
    let poll = || {
        http.post(format!("{}/oauth/token", broker.url))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", "tollgate-token"),
                ("device_code", device_code.as_str()),
            ])
            .send()
    };
    // Pending, then polled again at the same instant of the broker's clock: too fast.
    for want in ["authorization_pending", "slow_down"] {
        let r = poll().await.unwrap();
        assert_eq!(r.status(), 400);
        let body = r.text().await.unwrap();
        assert!(body.contains(want), "{body}");
        bodies.push(body);
    }
    broker
        .person_signs_in_with_code(
            d["verification_uri_complete"].as_str().unwrap(),
            "",
            "alice",
        )
        .await;
    broker.advance(30);
    let r = poll().await.unwrap();
    assert_eq!(r.status(), 200);
    let device_tokens: Value = r.json().await.unwrap();
    // That client signs out (RFC 7009).
    let r = http
        .post(format!("{}/oauth/revoke", broker.url))
        .form(&[
            ("client_id", "tollgate-token"),
            ("token", device_tokens["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The administrator's revocation, a call with a revoked token, the helper's renewal refused, and the
    // helper's sign-out (RFC 7009).
    let (code, out, err) = broker
        .admin_cli(
            &["revoke-sign-in", "--who", "alice@example.com"],
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(code, 0, "{err}");
    bodies.push(out);
    broker.reload_revocations().await;
    let revoked_at = broker
        .traffic
        .all()
        .iter()
        .rev()
        .find_map(|s| s.access_token_issued.clone())
        .unwrap();
    let r = http
        .post(format!("{}/v1/responses", broker.url))
        .bearer_auth(&revoked_at)
        .json(&json!({"model": "demo", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    bodies.push(r.text().await.unwrap());
    let (code, _, err) = laptop.helper(&["refresh"], None).await;
    assert_eq!(code, 67, "{err}");
    helper_stderr.push_str(&err);
    let (code, _, err) = laptop.helper(&["logout"], None).await;
    assert_eq!(code, 0, "{err}");
    helper_stderr.push_str(&err);

    // Every secret the flows handled, from the wire.
    let mut secrets: Vec<(String, String)> =
        vec![("the IdP client secret".into(), IDP_SECRET.into())];
    for s in broker.traffic.all() {
        for k in [
            "code",
            "code_verifier",
            "refresh_token",
            "device_code",
            "token",
        ] {
            if let Some(v) = s.form.get(k) {
                secrets.push((format!("{k} sent to {}", s.path), v.clone()));
            }
        }
        if let Some(v) = &s.refresh_token_issued {
            secrets.push(("a refresh token".into(), v.clone()));
        }
        if let Some(v) = &s.access_token_issued {
            secrets.push(("an access token".into(), v.clone()));
        }
        // The IdP's authorization code, on its way back to the broker's callback.
        if s.path == "/oauth/callback"
            && let Some(code) = serde_urlencoded::from_str::<Vec<(String, String)>>(&s.query)
                .unwrap()
                .into_iter()
                .find_map(|(k, v)| (k == "code").then_some(v))
        {
            secrets.push(("the IdP's authorization code".into(), code));
        }
        if !s.error.as_deref().unwrap_or("").is_empty() {
            bodies.push(s.answer.clone());
        }
    }
    let kinds = |what: &str| secrets.iter().filter(|(k, _)| k.contains(what)).count();
    for what in [
        "IdP's authorization code",
        "code sent to /oauth/token",
        "code_verifier",
        "device_code",
        "a refresh token",
        "an access token",
        "token sent to /oauth/revoke",
    ] {
        assert!(kinds(what) > 0, "the flows handled {what}");
    }

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("token minted for a person"),
        "the capture works"
    );
    assert!(logs.contains("sign-in revoked"), "the capture works");
    let audit = broker.audit_text().await;
    let places = [
        ("the broker's logs", logs.as_str()),
        ("the audit trail", audit.as_str()),
        ("the helper's stderr", helper_stderr.as_str()),
        ("an error body", &bodies.join("\n")),
    ];
    for (place, text) in places {
        for (what, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} ({}…) in {place}",
                &secret[..secret.len().min(6)]
            );
        }
        // No JWT at all: not the broker's access tokens, not the IdP's ID tokens.
        assert_eq!(jwts(text), Vec::<String>::new(), "a JWT in {place}");
    }
    assert!(
        !jwts("x eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig y").is_empty(),
        "jwts() finds one"
    );
}
