//! Policy operations on the real broker binary: reload on SIGHUP and on file change without a restart,
//! an invalid file rejected with its line and column while the old policy stays; `policy explain`.

mod support;

use std::time::{Duration, Instant};
use support::{Broker, BrokerSpec, CREDENTIAL, bin};
use tollgate::exchange::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_STATIC};

fn policy(team: &str) -> String {
    format!(
        "[[rule]]\nname = \"dev\"\nmatch = {{ kind = \"static\", subject = \"dev\" }}\nteam = \"{team}\"\nmodels = [\"*\"]\n"
    )
}

/// The team in a freshly minted token, or the refusal.
async fn team(b: &Broker) -> Result<String, String> {
    let r = reqwest::Client::new()
        .post(format!("{}/oauth/token", b.url))
        .form(&[
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", CREDENTIAL),
            ("subject_token_type", TOKEN_TYPE_STATIC),
        ])
        .send()
        .await
        .expect("exchange");
    let ok = r.status().is_success();
    let v: serde_json::Value = r.json().await.expect("json");
    if !ok {
        return Err(v["error"].as_str().unwrap_or_default().to_string());
    }
    let tok = v["access_token"].as_str().expect("token");
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tok.split('.').nth(1).expect("jwt"))
        .expect("b64");
    let claims: serde_json::Value = serde_json::from_slice(&payload).expect("claims");
    Ok(claims["tollgate"]["team"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

async fn eventually(b: &Broker, want: Result<String, String>, within: Duration) {
    let start = Instant::now();
    loop {
        let got = team(b).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "policy not reloaded in {within:?}: got {got:?}, want {want:?}\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn policy_reloads_on_sighup_and_on_change_and_keeps_the_old_one_when_invalid() {
    let mut spec = BrokerSpec::with_mock("http://127.0.0.1:9/v1", &["*"]);
    spec.policy = policy("one");
    let b = Broker::start(spec).await;
    let path = b.dir.path().join("policy.toml");
    assert_eq!(team(&b).await, Ok("one".into()));

    // SIGHUP: picked up at once.
    std::fs::write(&path, policy("two")).expect("write");
    b.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(&b, Ok("two".into()), Duration::from_secs(5)).await;

    // An invalid file: rejected with line and column, the old policy stays.
    std::fs::write(
        &path,
        "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\" }\nmodels = [\"*\"]\nteam = 3\n",
    )
    .expect("write");
    b.signal(nix::sys::signal::Signal::SIGHUP);
    let start = Instant::now();
    while !b.log().contains("policy reload rejected") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no rejection logged:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = b.log();
    let line = log
        .lines()
        .find(|l| l.contains("policy reload rejected"))
        .expect("line");
    assert!(line.contains("policy.toml:5:"), "no line:col in {line}");
    assert_eq!(team(&b).await, Ok("two".into()), "the old policy must stay");

    // A change on disk, no signal: polled and reloaded.
    std::fs::write(&path, policy("three")).expect("write");
    eventually(&b, Ok("three".into()), Duration::from_secs(10)).await;

    // Deny by default after a reload that drops the rule.
    std::fs::write(&path, "# no rules\n").expect("write");
    b.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(&b, Err("invalid_grant".into()), Duration::from_secs(5)).await;
}

#[test]
fn policy_explain_names_the_deciding_rule_and_why_others_did_not_apply() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("policy.toml");
    std::fs::write(
        &p,
        r#"[[rule]]
name = "no-interns"
effect = "deny"
match = { kind = "oidc", subject = "intern-*" }

[[rule]]
name = "ci"
match = { kind = "oidc", attributes = { "kubernetes.io/namespace" = "ci" } }
principal = "k8s:{subject}"
models = ["gpt-5*"]
max_ttl_secs = 600
"#,
    )
    .expect("write");
    let run = |args: &[&str]| {
        std::process::Command::new(bin("tollgate-broker"))
            .args(["policy", "explain", "--file"])
            .arg(&p)
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&[
        "--kind",
        "oidc",
        "--subject",
        "runner",
        "--attr",
        "kubernetes.io/namespace=ci",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rule \"no-interns\" (line 1, deny): skipped: subject \"runner\" does not match intern-*"), "{text}");
    assert!(
        text.contains("rule \"ci\" (line 6, allow): MATCHES"),
        "{text}"
    );
    assert!(
        text.contains("decision: ALLOW by rule \"ci\": principal \"k8s:runner\""),
        "{text}"
    );

    let out = run(&[
        "--kind",
        "oidc",
        "--subject",
        "runner",
        "--attr",
        "kubernetes.io/namespace=prod",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("attribute kubernetes.io/namespace = [\"prod\"] matches none of"),
        "{text}"
    );
    assert!(text.contains("decision: DENY: no rule matched"), "{text}");

    let out = run(&["--kind", "oidc", "--subject", "intern-7"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("decision: DENY by rule \"no-interns\""),
        "{text}"
    );

    let out = run(&["--kind", "kerberos", "--subject", "x"]);
    assert_eq!(out.status.code(), Some(78));
}
