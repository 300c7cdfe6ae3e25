//! The admin API end to end: strict auth, revocation, live grants, spend, policy reload, key rotation, and
//! the audit trail those actions leave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN_KEY, CREDENTIAL};
use serde_json::json;

#[tokio::test]
async fn admin_is_off_without_a_key_and_strict_with_one() {
    let off = common::start_opts("", false).await;
    for path in ["/admin/v1/grants", "/admin/dashboard", "/metrics"] {
        let r = off
            .http
            .get(format!("{}{path}", off.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let on = common::start("").await;
    let r = on
        .http
        .get(format!("{}/admin/v1/grants", on.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A user's own access token is not an admin credential.
    let alice = on.mint(CREDENTIAL).await;
    let r = on
        .http
        .get(format!("{}/admin/v1/grants", on.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = on
        .http
        .get(format!("{}/admin/dashboard", on.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn revoke_grants_spend_reload_rotate_and_audit() {
    let b = common::start("").await;
    let alice = b.mint(CREDENTIAL).await;
    let alice2 = b.mint(CREDENTIAL).await;
    let bob = b.mint("bob-credential").await;
    assert_eq!(b.responses(&alice, "gpt-5.5", false).await.0, 200);
    assert_eq!(b.responses(&bob, "gpt-5.5", true).await.0, 200);
    b.settled(2).await;

    // Live grants: three tokens.
    let (s, g) = b.admin_get("/admin/v1/grants").await;
    assert_eq!(s, 200);
    let grants = g["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 3, "{g}");
    let alice_jti = grants
        .iter()
        .find(|x| x["principal"] == "alice")
        .map(|x| x["jti"].as_str().unwrap().to_string())
        .unwrap();

    // Revoke exactly one of alice's tokens by jti.
    let (s, _) = b
        .admin_post("/admin/v1/revoke", json!({"jti": alice_jti}))
        .await;
    assert_eq!(s, 200);
    let (s1, _) = b.responses(&alice, "gpt-5.5", false).await;
    let (s2, _) = b.responses(&alice2, "gpt-5.5", false).await;
    assert_eq!(
        [s1, s2].iter().filter(|s| **s == 401).count(),
        1,
        "exactly one of alice's tokens is revoked"
    );
    let alive = if s1 == 200 {
        alice.clone()
    } else {
        alice2.clone()
    };
    let (s, _) = b
        .admin_post("/admin/v1/revoke", json!({"jti": "a", "principal": "b"}))
        .await;
    assert_eq!(s, 400);

    // Spend by principal, team, model (with the settled cost: 60 plain + 40 cached input, 20 output).
    b.settled(3).await;
    for (by, key) in [
        ("principal", "bob"),
        ("team", "search"),
        ("model", "gpt-5.5"),
    ] {
        let (s, v) = b.admin_get(&format!("/admin/v1/spend?by={by}")).await;
        assert_eq!(s, 200);
        let rows = v["rows"].as_array().unwrap();
        let row = rows
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("{by}: {v}"));
        assert!(row["requests"].as_i64().unwrap() >= 1);
        assert_eq!(row["output_tokens"].as_i64().unwrap() % 20, 0);
        assert_eq!(row["cost_nanos"].as_i64().unwrap() % 280_000, 0, "{row}");
        assert!(row["cost_nanos"].as_i64().unwrap() > 0);
    }
    let (s, _) = b.admin_get("/admin/v1/spend?by=colour").await;
    assert_eq!(s, 400);

    // Policy reload: a broken file is refused with its location and the old policy stays.
    let policy = b.dir.path().join("policy.toml");
    std::fs::write(&policy, "[[rule]]\nname = \"x\"\nbogus = 1\n").unwrap();
    let (s, v) = b.admin_post("/admin/v1/policy/reload", json!({})).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("policy.toml:"),
        "{v}"
    );
    let _ = b.mint("bob-credential").await;
    std::fs::write(
        &policy,
        common::POLICY.replace("name = \"bob\"", "name = \"bob\"\neffect = \"deny\""),
    )
    .unwrap();
    let (s, v) = b.admin_post("/admin/v1/policy/reload", json!({})).await;
    assert_eq!((s, v["rules"].as_u64()), (200, Some(2)), "{v}");
    let r = b
        .http
        .post(format!("{}/oauth/token", b.url))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", "bob-credential"),
            ("subject_token_type", tollgate::exchange::TOKEN_TYPE_STATIC),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "bob is denied after the reload");

    // Forced rotation of store-backed keys: the new key is published at once and signs after the lead.
    let kid_of = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    let jwks_kids = || async {
        let v: serde_json::Value = b
            .http
            .get(format!("{}/.well-known/jwks.json", b.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let before = b.mint(CREDENTIAL).await;
    let old_kid = kid_of(&before);
    let (s, v) = b.admin_post("/admin/v1/keys/rotate", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let new_kid = v["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    assert_eq!(v["previous_kid"], old_kid.as_str());
    let lead = v["publish_lead_secs"].as_u64().unwrap();
    assert!(lead >= 1);
    assert_eq!(
        v["activates_at"].as_i64().unwrap(),
        i64::try_from(tollgate_broker::clock::Clock::now_secs(&b.clock) + lead).unwrap()
    );
    // Published before it signs: in the JWKS now, but tokens are still signed with the old key.
    let kids = jwks_kids().await;
    assert!(
        kids.contains(&new_kid) && kids.contains(&old_kid),
        "{kids:?}"
    );
    assert_eq!(kid_of(&b.mint(CREDENTIAL).await), old_kid);
    b.clock.advance(lead);
    b.state.sync_keys().await.unwrap();
    let after = b.mint(CREDENTIAL).await;
    assert_eq!(kid_of(&after), new_kid, "new tokens carry the new kid");
    // Tokens minted before the rotation still verify; the JWKS lists both keys.
    assert_eq!(b.responses(&before, "gpt-5.5", false).await.0, 200);
    assert_eq!(b.responses(&after, "gpt-5.5", false).await.0, 200);
    assert_eq!(b.responses(&alive, "gpt-5.5", false).await.0, 200);
    let kids = jwks_kids().await;
    assert!(
        kids.contains(&new_kid) && kids.contains(&old_kid),
        "{kids:?}"
    );

    // Everything above is in the audit trail, and the chain verifies.
    let (s, v) = b.admin_get("/admin/v1/audit/verify").await;
    assert_eq!(s, 200);
    assert!(v["first_break"].is_null(), "{v}");
    let sink = b.state.audit().as_ref().unwrap().sink().clone();
    let recs = sink.scan(0, 1000).await.unwrap();
    let kinds: Vec<&str> = recs
        .iter()
        .map(|r| r.event.kind.map_or("", |k| k.as_str()))
        .collect();
    for k in ["mint", "request", "revocation", "admin"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let actions: Vec<String> = recs
        .iter()
        .filter_map(|r| {
            r.event
                .detail
                .get("action")
                .and_then(|a| a.as_str())
                .map(str::to_string)
        })
        .collect();
    assert!(actions.contains(&"policy_reload_failed".to_string()));
    assert!(actions.contains(&"policy_reload".to_string()));
    let rot = recs
        .iter()
        .find(|r| r.event.detail["action"] == "rotate_keys")
        .expect("the rotation is audited");
    assert_eq!(rot.event.actor, "admin");
    assert_eq!(rot.event.detail["detail"]["kid"], new_kid.as_str());
    assert_eq!(rot.event.detail["detail"]["previous_kid"], old_kid.as_str());
    let req = recs
        .iter()
        .find(|r| r.event.kind.map(|k| k.as_str()) == Some("request"))
        .unwrap();
    assert!(
        req.event
            .request_id
            .as_deref()
            .is_some_and(|id| id.len() == 36)
    );
    assert_eq!(req.event.detail["identity"]["kind"], "static");
    assert!(req.event.detail.get("latency_ms").is_some());
    // Prompt bodies and tokens never reach the trail.
    let all = serde_json::to_string(&recs).unwrap();
    assert!(!all.contains("\"hi\"") && !all.contains(&alice) && !all.contains(ADMIN_KEY));
}

/// With `tokens.signing_key_file` the key is the operator's: rotate answers 409 saying what to do, the key
/// keeps signing, and the refusal is audited.
#[tokio::test]
async fn rotate_with_a_key_file_is_refused_with_instructions() {
    let keydir = tempfile::tempdir().unwrap();
    let (key, der) = tollgate_broker::keys::SigningKey::generate(1).unwrap();
    let path = keydir.path().join("signing.pem");
    std::fs::write(&path, tollgate_broker::keys::to_pem(&der)).unwrap();
    // A private key file must be private (the broker refuses one others can read).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let b = common::start(&format!(
        "[tokens]\nsigning_key_file = \"{}\"\n",
        path.display()
    ))
    .await;
    let (s, v) = b.admin_post("/admin/v1/keys/rotate", json!({})).await;
    assert_eq!(s, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("signing_key_file") && msg.contains("restart"),
        "{msg}"
    );
    let t = b.mint(CREDENTIAL).await;
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().kid.unwrap(),
        key.kid
    );
    b.state.audit().as_ref().unwrap().flush().await;
    let recs = b
        .state
        .audit()
        .as_ref()
        .unwrap()
        .sink()
        .scan(0, 100)
        .await
        .unwrap();
    assert!(
        recs.iter()
            .any(|r| r.event.detail["action"] == "rotate_keys_refused")
    );
}
