//! Policy reload under load: exchanges running while the policy is swapped back and forth all succeed
//! (each request keeps the policy it started with), and an invalid file never replaces a valid one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use support::Broker;
use tollgate::exchange::TOKEN_TYPE_STATIC;
use tollgate_broker::identity::static_cred::hash_credential;

fn policy(team: &str) -> String {
    format!(
        "[[rule]]\nname = \"dev\"\nmatch = {{ kind = \"static\", subject = \"dev\" }}\nteam = \"{team}\"\nmodels = [\"*\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_do_not_drop_requests_and_invalid_files_are_rejected() {
    let b = Arc::new(
        Broker::new(
            &format!(
                "[[credentials]]\nsubject = \"dev\"\nsha256 = \"{}\"\n",
                hash_credential("cred")
            ),
            &policy("a"),
        )
        .await,
    );
    let path = b.state.policy_file().to_path_buf();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let mut teams = Vec::new();
            for _ in 0..25 {
                let (status, body) = b.exchange(TOKEN_TYPE_STATIC, "cred").await;
                assert_eq!(status, 200, "{body}");
                let claims = support::decode_claims(body["access_token"].as_str().expect("t"));
                teams.push(
                    claims["tollgate"]["team"]
                        .as_str()
                        .expect("team")
                        .to_string(),
                );
            }
            teams
        }));
    }
    for i in 0..40 {
        std::fs::write(&path, policy(if i % 2 == 0 { "b" } else { "a" })).expect("write");
        b.state.reload_policy().expect("valid policy reloads");
        tokio::task::yield_now().await;
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in tasks {
        seen.extend(t.await.expect("task"));
    }
    assert!(seen.iter().all(|t| t == "a" || t == "b"), "{seen:?}");

    // Invalid: error with file:line:col, old policy stays.
    std::fs::write(&path, policy("c")).expect("write");
    b.state.reload_policy().expect("valid");
    std::fs::write(&path, "[[rule]]\nname = 1\n").expect("write");
    let e = b.state.reload_policy().expect_err("invalid");
    assert!(e.to_string().contains("policy.toml:2:"), "{e}");
    let (_, body) = b.exchange(TOKEN_TYPE_STATIC, "cred").await;
    let claims = support::decode_claims(body["access_token"].as_str().expect("t"));
    assert_eq!(claims["tollgate"]["team"], "c");
}
