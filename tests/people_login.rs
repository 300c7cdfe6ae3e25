//! A person signs in through the broker, end to end on the one people harness (`tests/support/people.rs`,
//! `testkit::people`): the broker in process (an OAuth 2.1 authorization server for people on
//! 127.0.0.1:0), the company IdP behind it (npm `oidc-provider`, `testkit/js/company_idp.mjs`), and a
//! person at headless Chromium (`testkit/js/browser.mjs`) going through the broker's choice of IdP and
//! consent pages and the IdP's own login page.
//!
//! - `tollgate-token login`: the helper opens the browser (`$BROWSER`), the token it prints is the
//!   broker's Tollgate JWT for the person and a model call goes through; renewal rotates the refresh
//!   token; an administrator's revocation makes the token path ask for a new sign-in (exit 67, one line);
//! - the real `tollgate-broker admin sign-ins` / `revoke-sign-in`, black box: output, exit codes, refusals;
//! - two company IdPs: the choice page lists both, and the one the person picks is the one that signs
//!   them in (the token's `identity.issuer`).

mod support;

use serde_json::{Value, json};
use support::people::{ADMIN_KEY, CORP, IdpSpec, Laptop, Options, PeopleBroker};

fn claims(token: &str) -> Value {
    tollgate_token::exchange::jwt_payload(token).expect("a JWT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_through_the_broker_and_the_helper_renews_until_revoked() {
    let broker = PeopleBroker::start(Options::default()).await;
    let laptop = Laptop::new(&broker);
    let b = broker.url.clone();
    let browser_log = laptop.home.path().join("browser.log");
    let browser = tollgate_testkit::people::browser_script(
        laptop.home.path(),
        "alice",
        &broker.ports(),
        &browser_log,
    );
    broker.advance(0);

    let (code, out, err) = laptop.helper(&["login"], Some(&browser)).await;
    let seen = std::fs::read_to_string(&browser_log).unwrap_or_default();
    assert_eq!(code, 0, "{err}\nbrowser: {seen}");
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
    // Through the broker's pages: the authorization request, the IdP's return, the consent.
    for (method, path) in [
        ("GET", "/oauth/authorize"),
        ("GET", "/oauth/callback"),
        ("POST", "/oauth/consent"),
    ] {
        assert_eq!(broker.traffic.count(method, path), 1, "{method} {path}");
    }

    // The token path: the broker's Tollgate JWT for the person, for this broker.
    let (code, token, err) = laptop.helper(&[], None).await;
    assert_eq!((code, err.as_str()), (0, ""), "{token}");
    let c = claims(token.trim_end());
    assert_eq!(c["tollgate"]["principal"], "alice@example.com", "{c}");
    assert_eq!(c["tollgate"]["identity"]["kind"], "user", "{c}");

    // status: the person, and the grant the token carries.
    let (code, out, _) = laptop.helper(&["status"], None).await;
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
    let (code, renewed, err) = laptop.helper(&["refresh", "--print"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_ne!(renewed, token);
    assert!(
        err.starts_with("tollgate-token: minted a new token for "),
        "{err}"
    );
    let refreshes = broker.traffic.grants("refresh_token");
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    assert_ne!(
        refreshes[0].refresh_token_sent, refreshes[0].refresh_token_issued,
        "rotated"
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
    let (code, out, err) = laptop.helper(&["refresh"], None).await;
    assert_eq!((code, out.as_str()), (67, ""), "{err}");
    assert!(
        err.starts_with(&format!(
            "tollgate-token: the sign-in to {b} has expired or was revoked (invalid_grant"
        )) && err.ends_with(&format!("): run `tollgate-token login --broker {b}`\n")),
        "{err}"
    );
}

/// `tollgate-broker admin sign-ins` and `revoke-sign-in`, the real binary against a broker with people
/// signed in: exact output, exit codes, and refusals that say what was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_lists_and_revokes_a_persons_sign_ins() {
    let broker = PeopleBroker::start(Options::default()).await;
    for (client, user) in [
        ("codex", "alice"),
        ("tollgate-token", "alice"),
        ("codex", "carol"),
    ] {
        broker.client_signs_in(client, user, None).await;
    }
    let keys = [
        "client_id",
        "created_at",
        "expires_at",
        "family_id",
        "idp",
        "last_used_at",
        "principal",
        "revoked_at",
        "revoked_reason",
        "scope",
        "subject",
    ];

    // A person's live sign-ins, by principal or by IdP subject: pretty JSON, newest first.
    for who in ["alice@example.com", "alice"] {
        let (code, out, err) = broker.admin_cli(&["sign-ins", who], Some(ADMIN_KEY)).await;
        assert_eq!((code, err.as_str()), (0, ""), "{who}: {out}");
        let v: Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(
            out,
            format!("{}\n", serde_json::to_string_pretty(&v).expect("pretty")),
            "{who}"
        );
        assert_eq!(v["who"], who);
        let sessions = v["sessions"].as_array().expect("sessions");
        assert_eq!(sessions.len(), 2, "{who}: {v}");
        let mut clients = Vec::new();
        for s in sessions {
            let mut k: Vec<&str> = s
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            k.sort_unstable();
            assert_eq!(k, keys, "{s}");
            assert_eq!(
                (&s["idp"], &s["principal"], &s["subject"], &s["scope"]),
                (
                    &json!("corp"),
                    &json!("alice@example.com"),
                    &json!("alice"),
                    &json!("models offline_access")
                ),
                "{s}"
            );
            assert!(
                s["revoked_at"].is_null() && s["revoked_reason"].is_null(),
                "{s}"
            );
            assert!(s["expires_at"].as_i64() > s["created_at"].as_i64(), "{s}");
            clients.push(s["client_id"].as_str().expect("client").to_string());
        }
        clients.sort();
        assert_eq!(clients, ["codex", "tollgate-token"], "{who}");
    }
    let listed = broker
        .admin_cli(&["sign-ins", "alice@example.com"], Some(ADMIN_KEY))
        .await
        .1;
    let listed: Value = serde_json::from_str(&listed).expect("JSON");
    let family_of = |client: &str| {
        listed["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .find(|s| s["client_id"] == client)
            .expect("client")["family_id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let (codex, helper) = (family_of("codex"), family_of("tollgate-token"));

    // One sign-in by its id, with a reason; then it is gone from the live list, kept in `--all`.
    let (code, out, err) = broker
        .admin_cli(
            &[
                "revoke-sign-in",
                "--family",
                &codex,
                "--reason",
                "lost laptop",
            ],
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out,
        format!("{{\n  \"revoked\": [\n    \"{codex}\"\n  ]\n}}\n")
    );
    let live: Value = serde_json::from_str(
        &broker
            .admin_cli(&["sign-ins", "alice@example.com"], Some(ADMIN_KEY))
            .await
            .1,
    )
    .expect("JSON");
    assert_eq!(live["sessions"].as_array().map(Vec::len), Some(1), "{live}");
    assert_eq!(live["sessions"][0]["family_id"], helper.as_str());
    let all: Value = serde_json::from_str(
        &broker
            .admin_cli(&["sign-ins", "alice@example.com", "--all"], Some(ADMIN_KEY))
            .await
            .1,
    )
    .expect("JSON");
    let ended = all["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["family_id"] == codex.as_str())
        .expect("listed with --all")
        .clone();
    assert_eq!(ended["revoked_reason"], "lost laptop", "{ended}");
    assert!(ended["revoked_at"].is_i64(), "{ended}");

    // An id that names no live sign-in (revoked already, or never issued): exit 1, one line.
    for id in [codex.as_str(), "0190f0c0c0c0c0c0c0c0c0c0c0c0c0c0"] {
        let (code, out, err) = broker
            .admin_cli(&["revoke-sign-in", "--family", id], Some(ADMIN_KEY))
            .await;
        assert_eq!((code, out.as_str()), (1, ""), "{id}: {err}");
        assert_eq!(
            err,
            format!(
                "tollgate-broker admin: no live sign-in {id}: it was revoked or has ended already, or the id is \
                 not one `tollgate-broker admin sign-ins WHO` lists\n"
            )
        );
    }

    // Everything of a person: the rest of alice's, none of carol's; again: nothing left, still exit 0.
    let (code, out, err) = broker
        .admin_cli(
            &["revoke-sign-in", "--who", "alice@example.com"],
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("JSON"),
        json!({"revoked": [helper]})
    );
    let (code, out, _) = broker
        .admin_cli(
            &["revoke-sign-in", "--who", "alice@example.com"],
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&out).expect("JSON")),
        (0, json!({"revoked": []}))
    );
    let carol: Value = serde_json::from_str(
        &broker
            .admin_cli(&["sign-ins", "carol@example.com"], Some(ADMIN_KEY))
            .await
            .1,
    )
    .expect("JSON");
    assert_eq!(
        carol["sessions"].as_array().map(Vec::len),
        Some(1),
        "{carol}"
    );

    // Bad input: usage errors from the argument parser (exit 2), refusals from the broker (exit 1).
    type Case = (
        &'static [&'static str],
        Option<&'static str>,
        i32,
        &'static str,
    );
    let cases: &[Case] = &[
        (
            &["revoke-sign-in"],
            Some(ADMIN_KEY),
            2,
            "the following required arguments were not provided",
        ),
        (
            &["revoke-sign-in", "--family", "x", "--who", "y"],
            Some(ADMIN_KEY),
            2,
            "the argument '--family <FAMILY>' cannot be used with '--who <WHO>'",
        ),
        (
            &["sign-ins"],
            Some(ADMIN_KEY),
            2,
            "the following required arguments were not provided",
        ),
        (
            &["sign-ins", ""],
            Some(ADMIN_KEY),
            1,
            "tollgate-broker admin: 400 Bad Request: Tollgate admin: who: a principal or subject\n",
        ),
        (
            &["sign-ins", "alice@example.com"],
            Some("not-the-admin-key"),
            1,
            "tollgate-broker admin: 401 Unauthorized: ",
        ),
        (
            &["sign-ins", "alice@example.com"],
            None,
            1,
            "tollgate-broker: set TOLLGATE_ADMIN_KEY or pass --key-file\n",
        ),
    ];
    for (args, key, want_code, want_err) in cases {
        let (code, out, err) = broker.admin_cli(args, *key).await;
        assert_eq!((code, out.as_str()), (*want_code, ""), "{args:?}: {err}");
        assert!(
            err.contains(want_err) && (*want_code == 2 || err.starts_with(want_err)),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains(ADMIN_KEY),
            "{args:?}: the key is never echoed"
        );
    }

    // Every admin action is in the audit trail.
    let audit = broker.audit_text().await;
    assert!(audit.contains("\"oauth_sessions\""), "listing audited");
    assert!(audit.contains("\"oauth_revoke\""), "revocation audited");
    assert!(audit.contains("lost laptop"), "with its reason");
}

/// Two company IdPs: the broker's choice page lists both; the person's pick is the IdP that signs them in
/// (its issuer in the token, its name in the sign-in), whichever is first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_idps_the_person_picks_one_and_that_one_signs_them_in() {
    let partner = IdpSpec {
        name: "partner",
        display_name: "Partner SSO",
    };
    let broker = PeopleBroker::start(Options {
        idps: vec![CORP, partner],
        ..Options::default()
    })
    .await;
    let issuer_of = |name: &str| {
        broker
            .idps
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| i.issuer.clone())
            .expect("idp")
    };
    assert_ne!(issuer_of("corp"), issuer_of("partner"));
    for pick in ["partner", "corp"] {
        let (answer, seen) = broker.client_signs_in("codex", "alice", Some(pick)).await;
        assert_eq!(
            seen["steps"],
            json!([
                "broker-choose-idp",
                "idps:corp,partner",
                "idp-login",
                "idp-consent",
                "broker-consent"
            ]),
            "{pick}: {seen}"
        );
        let c = claims(answer["access_token"].as_str().expect("at"));
        assert_eq!(
            c["tollgate"]["identity"]["issuer"],
            issuer_of(pick),
            "{pick}: {c}"
        );
        assert_eq!(c["tollgate"]["principal"], "alice@example.com", "{pick}");
    }
    let sessions = broker.sign_ins("alice@example.com", false).await;
    let mut idps: Vec<&str> = sessions
        .iter()
        .map(|s| s["idp"].as_str().expect("idp"))
        .collect();
    idps.sort_unstable();
    assert_eq!(idps, ["corp", "partner"], "{sessions:?}");
}
