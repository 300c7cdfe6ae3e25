//! Session affinity across two broker replicas sharing Redis (127.0.0.1:6379), with two `openai` upstreams
//! (`east` first in the plan, `west` second) that play OpenAI organisations: each answers a request asking
//! for `reasoning.encrypted_content` with a reasoning item only its organisation can read, and refuses
//! another organisation's items with 400 `invalid_encrypted_content`, as the API does.
//!
//! One session over four turns: east serves it; east fails, failover moves it to west (east's items are
//! stripped, the answer says so); the other replica keeps it on west although its plan puts east first
//! (the affinity is shared) and strips east's items again while keeping west's; a new session on that
//! replica goes to east. With both providers declared one reasoning domain (the same organisation),
//! nothing is stripped.

mod governance_support;

use governance_support::*;
use serde_json::{Value, json};
use tollgate_testkit::mock::{self, Fault, MockConfig, MockHandle};

const MODEL: &str = "gpt-aff";

fn config(
    dir: &std::path::Path,
    east: &str,
    west: &str,
    redis_prefix: &str,
    grouped: bool,
) -> std::path::PathBuf {
    let domains = if grouped {
        "[affinity]\nreasoning_domains = [[\"east\", \"west\"]]\n"
    } else {
        ""
    };
    let toml = format!(
        "policy_file = \"policy.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
         [tokens]\naudience = \"tollgate\"\n\
         [[credentials]]\nsubject = \"alice\"\nsha256 = \"{}\"\n\
         [providers.east]\nkind = \"openai\"\nbase_url = \"{east}\"\n\
         [providers.west]\nkind = \"openai\"\nbase_url = \"{west}\"\n\
         [[routes]]\nmodel = \"{MODEL}\"\ntargets = [{{ provider = \"east\", weight = 1 }}, {{ provider = \"west\", weight = 0 }}]\n\
         [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1\", output = \"1\" }}\n\
         [limits]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{redis_prefix}\"\n{domains}",
        sha_hex(&credential("alice"))
    );
    std::fs::write(dir.join("broker.toml"), toml).expect("config");
    std::fs::write(
        dir.join("policy.toml"),
        "[[rule]]\nname = \"all\"\nmatch = { kind = \"static\", subject = \"*\" }\nprincipal = \"{subject}\"\nmodels = [\"*\"]\n",
    )
    .expect("policy");
    dir.join("broker.toml")
}

struct Turn {
    status: u16,
    target: String,
    stripped: Option<String>,
    body: Value,
}

/// One Codex-like turn: the session's headers, the whole history as input, encrypted reasoning asked for.
async fn turn(broker: &str, token: &str, session: &str, input: &[Value]) -> Turn {
    let r = client()
        .post(format!("{broker}/v1/responses"))
        .bearer_auth(token)
        .header("session-id", session)
        .header("originator", "codex_exec")
        .json(&json!({"model": MODEL, "input": input, "store": false,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": session}))
        .send()
        .await
        .expect("send");
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (target, stripped) = (
        header("x-tollgate-target").unwrap_or_default(),
        header("x-tollgate-reasoning-stripped"),
    );
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    Turn {
        status,
        target,
        stripped,
        body,
    }
}

fn user(text: &str) -> Value {
    json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
}

/// The encrypted blobs of the input the upstream received last.
fn blobs_received(m: &MockHandle) -> Vec<String> {
    let posts = m.requests_to("/v1/responses");
    let last = posts.last().expect("a request");
    last.body["input"]
        .as_array()
        .expect("input")
        .iter()
        .filter_map(|i| i["encrypted_content"].as_str().map(str::to_string))
        .collect()
}

fn blob(item: &Value) -> String {
    item["encrypted_content"]
        .as_str()
        .expect("encrypted")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_on_its_target_across_replicas_and_a_move_strips_what_cannot_be_read() {
    for grouped in [false, true] {
        // Grouped: both upstreams are one organisation (they read each other's items).
        let (east_org, west_org) = if grouped {
            ("org-acme", "org-acme")
        } else {
            ("org-east", "org-west")
        };
        let mock_for = |org: &str| MockConfig {
            organization: Some(org.into()),
            ..MockConfig::default()
        };
        let east = mock::spawn(mock_for(east_org)).await;
        let west = mock::spawn(mock_for(west_org)).await;
        let prefix = format!("tollgate-test:{}:", uuid::Uuid::new_v4().simple());
        let (da, db) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let a = Broker::start(
            &config(
                da.path(),
                &east.base_url(),
                &west.base_url(),
                &prefix,
                grouped,
            ),
            "a",
        )
        .await;
        let b = Broker::start(
            &config(
                db.path(),
                &east.base_url(),
                &west.base_url(),
                &prefix,
                grouped,
            ),
            "b",
        )
        .await;
        let c = client();
        let (ta, _) = mint(&c, &a.url, "alice").await;
        let (tb, _) = mint(&c, &b.url, "alice").await;
        let session = format!("sess-{}", uuid::Uuid::new_v4().simple());
        let case = if grouped { "one domain" } else { "two domains" };

        // Turn 1 on replica a: east (first in the plan) answers with its encrypted reasoning.
        let mut history = vec![user("turn one")];
        let t1 = turn(&a.url, &ta, &session, &history).await;
        assert_eq!(
            (t1.status, t1.target.as_str()),
            (200, "east"),
            "{case}: {}",
            t1.body
        );
        assert_eq!(t1.stripped, None);
        let output = t1.body["output"].as_array().expect("output").clone();
        assert_eq!(output[0]["type"], "reasoning", "{case}: {}", t1.body);
        let e1 = blob(&output[0]);
        history.extend(output);
        history.push(user("turn two"));

        // Turn 2 on replica a: east fails, failover to west.
        east.push_fault(Fault {
            status: Some(500),
            ..Fault::default()
        });
        let t2 = turn(&a.url, &ta, &session, &history).await;
        assert_eq!(
            (t2.status, t2.target.as_str()),
            (200, "west"),
            "{case}: {}",
            t2.body
        );
        if grouped {
            assert_eq!(
                t2.stripped, None,
                "{case}: one organisation reads its own items"
            );
            assert_eq!(blobs_received(&west), vec![e1.clone()]);
        } else {
            assert_eq!(t2.stripped.as_deref(), Some("1"), "{case}");
            assert!(
                blobs_received(&west).is_empty(),
                "{case}: east's item reached west"
            );
            assert!(
                std::fs::read_to_string(da.path().join("a.log"))
                    .expect("log")
                    .contains("those input items stripped"),
                "{case}: the move is in the log"
            );
        }
        let output = t2.body["output"].as_array().expect("output").clone();
        let w1 = blob(&output[0]);
        history.extend(output);
        history.push(user("turn three"));

        // Turn 3 on replica b (east healthy there, first in its plan): the session stays on west.
        let t3 = turn(&b.url, &tb, &session, &history).await;
        assert_eq!(
            (t3.status, t3.target.as_str()),
            (200, "west"),
            "{case}: {}",
            t3.body
        );
        if grouped {
            assert_eq!(t3.stripped, None);
            assert_eq!(blobs_received(&west), vec![e1.clone(), w1.clone()]);
        } else {
            // East's item is still in Codex's history: stripped again; west's own is kept.
            assert_eq!(t3.stripped.as_deref(), Some("1"), "{case}");
            assert_eq!(blobs_received(&west), vec![w1.clone()], "{case}");
        }

        // A new session on replica b goes where its plan says: east.
        let other = format!("sess-{}", uuid::Uuid::new_v4().simple());
        let t4 = turn(&b.url, &tb, &other, &[user("another session")]).await;
        assert_eq!((t4.status, t4.target.as_str()), (200, "east"), "{case}");
        let east_posts = east.requests_to("/v1/responses");
        assert_eq!(
            east_posts.len(),
            3,
            "{case}: turn 1, the failed attempt of turn 2, the new session"
        );
        // Without the broker's stripping the upstream refuses: the mock is faithful.
        let direct = c
            .post(format!("{}/responses", west.base_url()))
            .json(
                &json!({"model": MODEL, "input": [{"type": "reasoning", "id": "rs_x", "summary": [],
                "encrypted_content": e1}]}),
            )
            .send()
            .await
            .expect("direct");
        if grouped {
            assert_eq!(direct.status(), 200);
        } else {
            assert_eq!(direct.status(), 400);
            let v: Value = direct.json().await.expect("json");
            assert_eq!(v["error"]["code"], "invalid_encrypted_content");
        }
    }
}

/// One Claude Code request (Anthropic Messages ingress, translated for the `openai` upstreams): its session is
/// the `X-Claude-Code-Session-Id` header. Returns (status, the target that answered).
async fn claude_turn(broker: &str, token: &str, session: &str) -> (u16, String) {
    let r = client()
        .post(format!("{broker}/v1/messages?beta=true"))
        .header("x-api-key", token)
        .header("anthropic-version", "2023-06-01")
        .header("x-claude-code-session-id", session)
        .json(&json!({"model": MODEL, "max_tokens": 64, "stream": false,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}))
        .send()
        .await
        .expect("send");
    let target = r
        .headers()
        .get("x-tollgate-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert!(status == 200, "{status}: {body}");
    (status, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_code_session_stays_on_its_target_across_replicas() {
    let east = mock::spawn(MockConfig::default()).await;
    let west = mock::spawn(MockConfig::default()).await;
    let prefix = format!("tollgate-test:{}:", uuid::Uuid::new_v4().simple());
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let cfg = |d: &tempfile::TempDir| {
        config(d.path(), &east.base_url(), &west.base_url(), &prefix, false)
    };
    let a = Broker::start(&cfg(&da), "a").await;
    let b = Broker::start(&cfg(&db), "b").await;
    let c = client();
    let (ta, _) = mint(&c, &a.url, "alice").await;
    let (tb, _) = mint(&c, &b.url, "alice").await;
    let session = uuid::Uuid::new_v4().to_string();

    assert_eq!(claude_turn(&a.url, &ta, &session).await.1, "east");
    // East fails once: failover moves the session to west, and it stays there on both replicas although
    // east (first in the plan) is healthy again.
    east.push_fault(Fault {
        status: Some(500),
        ..Fault::default()
    });
    assert_eq!(claude_turn(&a.url, &ta, &session).await.1, "west");
    assert_eq!(claude_turn(&a.url, &ta, &session).await.1, "west");
    assert_eq!(claude_turn(&b.url, &tb, &session).await.1, "west");
    // Another Claude Code session goes where the plan says.
    let other = uuid::Uuid::new_v4().to_string();
    assert_eq!(claude_turn(&b.url, &tb, &other).await.1, "east");
    assert_eq!(
        west.requests_to("/v1/chat/completions").len(),
        3,
        "every later request of the first session, translated for west"
    );
}
