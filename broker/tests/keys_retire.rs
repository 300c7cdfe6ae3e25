//! "Retire this signing key now" (issue 17): the key leaves the JWKS at once on the replica that took the
//! call and within a key poll on the others, every token it signed is refused (cached verifications
//! included), a key every replica already publishes signs instead, and the action is audited.

mod governance_support;

use governance_support::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_broker::config::{StoreConfig, StoreKind};
use tollgate_broker::governance::keys::{KeyManager, RetireError};
use tollgate_broker::governance::store::{self, Store};
use tollgate_broker::token::KeyRing;

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().expect("jwt");
    let v: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .expect("b64"),
    )
    .expect("json");
    v["kid"].as_str().expect("kid").to_string()
}

async fn jwks_kids(c: &reqwest::Client, broker: &str) -> Vec<String> {
    let v: serde_json::Value = c
        .get(format!("{broker}/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

async fn usage_status(c: &reqwest::Client, broker: &str, token: &str) -> u16 {
    c.get(format!("{broker}/v1/tollgate/usage"))
        .bearer_auth(token)
        .send()
        .await
        .expect("usage")
        .status()
        .as_u16()
}

async fn retire_via_cli(broker: &str, kid: &str) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-broker"))
        .args([
            "admin",
            "--url",
            broker,
            "retire-key",
            "--kid",
            kid,
            "--reason",
            "leaked in a test",
        ])
        .env("TOLLGATE_ADMIN_KEY", ADMIN_KEY)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("cli");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_key_leaves_jwks_and_its_tokens_are_refused_on_both_replicas() {
    let schema = unique_schema("retire");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        dir.path(),
        "http://127.0.0.1:9",
        &["alice", "bob"],
        &store_toml(Some(&schema), 30),
    );
    let a = Broker::start(&cfg, "a").await;
    let b = Broker::start(&cfg, "b").await;
    let c = client();
    let (t, _) = mint(&c, &a.url, "alice").await;
    let kid = kid_of(&t);
    for url in [&a.url, &b.url] {
        assert_eq!(usage_status(&c, url, &t).await, 200, "valid before");
        assert!(jwks_kids(&c, url).await.contains(&kid));
    }

    let (code, stdout, stderr) = retire_via_cli(&b.url, &kid).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("json answer");
    assert_eq!(answer["kid"], kid.as_str());
    assert_eq!(answer["already_retired"], false);
    assert_eq!(answer["was_signing"], true);
    let successor = answer["signing_kid"].as_str().expect("signs").to_string();
    assert_ne!(successor, kid);

    // At once on the replica that took the call.
    assert!(!jwks_kids(&c, &b.url).await.contains(&kid));
    assert_eq!(usage_status(&c, &b.url, &t).await, 401);
    // Within a key poll on the other (its cached verification of `t` must not survive either).
    let t0 = Instant::now();
    while jwks_kids(&c, &a.url).await.contains(&kid) || usage_status(&c, &a.url, &t).await != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "replica A still publishes or accepts the retired key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "retirement seen by the other replica after {:?}",
        t0.elapsed()
    );

    // Both sign with the successor, which both already publish: new tokens work everywhere at once.
    for minter in [&a.url, &b.url] {
        let (fresh, _) = mint(&c, minter, "bob").await;
        assert_eq!(
            kid_of(&fresh),
            successor,
            "the same successor on every replica"
        );
        for url in [&a.url, &b.url] {
            assert_eq!(usage_status(&c, url, &fresh).await, 200);
        }
    }

    // Again: idempotent. Unknown kid: refused, nothing retired.
    let again: serde_json::Value = c
        .post(format!("{}/admin/v1/keys/retire", a.url))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"kid": kid}))
        .send()
        .await
        .expect("retire")
        .json()
        .await
        .expect("json");
    assert_eq!(again["already_retired"], true, "{again}");
    let unknown = c
        .post(format!("{}/admin/v1/keys/retire", a.url))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"kid": "no-such-kid"}))
        .send()
        .await
        .expect("retire");
    assert_eq!(unknown.status(), 422);
    let wrong_key = c
        .post(format!("{}/admin/v1/keys/retire", a.url))
        .bearer_auth("not-the-admin-key")
        .json(&serde_json::json!({"kid": successor}))
        .send()
        .await
        .expect("retire");
    assert_eq!(wrong_key.status(), 401);

    // Audited (the records of both replicas are in the shared chain).
    let _ = c
        .get(format!("{}/admin/v1/audit/verify", a.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await;
    let _ = c
        .get(format!("{}/admin/v1/audit/verify", b.url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await;
    let Db::Pg(pool) = Db::pg(&schema).await else {
        unreachable!()
    };
    let actions: Vec<(String,)> =
        sqlx::query_as("SELECT detail FROM audit_log WHERE kind = 'admin' ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("audit");
    let actions: Vec<serde_json::Value> = actions
        .into_iter()
        .map(|(d,)| serde_json::from_str(&d).expect("detail"))
        .collect();
    let retire = actions
        .iter()
        .find(|d| d["action"] == "retire_key" && d["detail"]["already_retired"] == false)
        .unwrap_or_else(|| panic!("no retire_key record: {actions:?}"));
    assert_eq!(retire["detail"]["kid"], kid.as_str());
    assert_eq!(retire["detail"]["reason"], "leaked in a test");
    assert!(
        actions
            .iter()
            .any(|d| d["action"] == "retire_key_refused" && d["detail"]["why"] == "unknown_kid"),
        "{actions:?}"
    );
    drop((a, b));
    drop_schema(&schema).await;
}

async fn open_sqlite(path: &std::path::Path) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        kind: StoreKind::Sqlite,
        sqlite_path: path.to_path_buf(),
        url: None,
        schema: None,
        fail_open: false,
        reservation_lease_secs: 30,
        poll_interval_ms: 250,
        max_connections: 4,
    })
    .await
    .expect("open")
}

fn kids(r: &KeyRing) -> Vec<String> {
    let mut v: Vec<String> = r.jwks()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect();
    v.sort();
    v
}

/// The rule behind it, on a fake timeline (rotate every 100 s): retiring the signing key hands over to
/// the next generation's key at once on every replica; retiring that one too brings a later generation's
/// key; a retired key that would have signed later is skipped; an unknown kid changes nothing.
#[tokio::test]
async fn retirement_hands_over_to_a_published_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let st = open_sqlite(&dir.path().join("g.db")).await;
    let (a, b) = (KeyManager::new(100, 150), KeyManager::new(100, 150));
    let (ring_a, ring_b) = (KeyRing::default(), KeyRing::default());
    a.sync(st.as_ref(), &ring_a, 1_050).await.expect("sync");
    b.sync(st.as_ref(), &ring_b, 1_050).await.expect("sync");
    let current = ring_a.active_at(1_050).expect("signs").kid.clone();
    let next: String = kids(&ring_a)
        .into_iter()
        .find(|k| *k != current)
        .expect("next generation's key");

    assert!(matches!(
        a.retire(st.as_ref(), &ring_a, "nope", None, 1_060).await,
        Err(RetireError::UnknownKid)
    ));
    let r = a
        .retire(st.as_ref(), &ring_a, &current, Some("test"), 1_060)
        .await
        .expect("retire");
    assert!(r.was_signing && !r.already_retired);
    assert_eq!(r.signing_kid.as_deref(), Some(next.as_str()));
    assert!(!kids(&ring_a).contains(&current));
    b.sync(st.as_ref(), &ring_b, 1_061).await.expect("poll");
    assert_eq!(kids(&ring_a), kids(&ring_b));
    assert_eq!(
        ring_b.active_at(1_061).expect("signs").kid,
        next,
        "same successor"
    );

    // Retire the successor too: a later generation's key is made and takes over.
    let r = a
        .retire(st.as_ref(), &ring_a, &next, None, 1_070)
        .await
        .expect("retire next");
    let third = r.signing_kid.expect("a key signs");
    assert!(third != current && third != next);
    b.sync(st.as_ref(), &ring_b, 1_071).await.expect("poll");
    assert_eq!(ring_b.active_at(1_071).expect("signs").kid, third);
    // Past the boundaries the rule keeps skipping retired keys.
    for now in [1_150, 1_250] {
        a.sync(st.as_ref(), &ring_a, now).await.expect("sync");
        let k = ring_a.active_at(now).expect("signs").kid.clone();
        assert!(k != current && k != next, "a retired key signs at {now}");
    }
}
