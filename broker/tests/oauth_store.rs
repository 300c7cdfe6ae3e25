//! The people sign-in's two inner walls, without a browser:
//! - the ID-token check of the OIDC relying party (`oauth::idp`), against ID tokens shaped by the fake IdP
//!   (testkit), the only way to produce the bad ones: another issuer, another audience, another nonce, a
//!   foreign `azp`, expired, unsigned, signed with a key the IdP never published;
//! - the single-use rules of the authorization server's store (codes, refresh tokens, device codes), on
//!   SQLite and on PostgreSQL (each run in its own schema), with the clock passed in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Map, Value, json};
use std::sync::Arc;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::oauth::IdpConfig;
use tollgate_broker::config::{StoreConfig, StoreKind};
use tollgate_broker::governance::store;
use tollgate_broker::identity::config::KeyCacheConfig;
use tollgate_broker::oauth::idp::Idp;
use tollgate_broker::oauth::store::{CodeUse, DevicePoll, Family, OAuthStore, RefreshUse};
use tollgate_testkit::idp::{self as fake, MintRequest};

fn idp_config(issuer: &str) -> IdpConfig {
    IdpConfig {
        name: "corp".into(),
        display_name: "Corp".into(),
        issuer: issuer.into(),
        discovery_url: format!("{issuer}/.well-known/openid-configuration"),
        client_id: "tollgate-broker".into(),
        client_secret: None,
        scopes: vec!["openid".into()],
        algorithms: vec![jsonwebtoken::Algorithm::RS256],
        subject_claim: "sub".into(),
        claims: [("team_groups".to_string(), "groups".to_string())].into(),
        keys: KeyCacheConfig {
            jwks_cache_secs: 600,
            jwks_min_refresh_secs: 0,
            timeout_ms: 5000,
        },
        leeway_secs: 30,
        timeout_ms: 5000,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
}

#[tokio::test]
async fn id_tokens_from_another_issuer_audience_or_nonce_are_refused() {
    let trusted = fake::spawn(Default::default()).await.expect("idp");
    let other = fake::spawn(Default::default()).await.expect("other idp");
    let clock = FakeClock::new(now());
    let idp = Idp::new(idp_config(&trusted.base_url()), Arc::new(clock.clone())).expect("idp");
    let claims = |extra: Value| -> Map<String, Value> {
        let mut m = json!({
            "nonce": "nonce-1",
            "email": "alice@example.com",
            "groups": ["eng", "codex-users"],
            "tid": "tenant-1",
        })
        .as_object()
        .expect("obj")
        .clone();
        for (k, v) in extra.as_object().expect("obj") {
            m.insert(k.clone(), v.clone());
        }
        m
    };
    let good = MintRequest {
        sub: Some("alice".into()),
        aud: Some(json!("tollgate-broker")),
        claims: claims(json!({})),
        ..Default::default()
    };
    let id = idp
        .verify_id_token(&trusted.mint(&good).expect("mint"), "nonce-1")
        .await
        .expect("a good ID token");
    assert_eq!(id.kind, tollgate::IdentityKind::User);
    assert_eq!(id.subject, "alice");
    assert_eq!(id.issuer.as_deref(), Some(trusted.base_url().as_str()));
    assert_eq!(id.attributes["groups"], vec!["eng", "codex-users"]);
    assert_eq!(
        id.attributes["team_groups"],
        vec!["eng", "codex-users"],
        "claim map"
    );
    assert_eq!(id.attributes["email"], vec!["alice@example.com"]);
    assert_eq!(id.attributes["tid"], vec!["tenant-1"]);
    assert_eq!(id.attributes["idp"], vec!["corp"]);
    for token_claim in ["nonce", "aud", "exp", "iat"] {
        assert!(
            !id.attributes.contains_key(token_claim),
            "{token_claim} is not a person's attribute"
        );
    }

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "another (unconfigured) issuer, signed by it",
            other
                .mint(&MintRequest {
                    claims: claims(json!({})),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "our IdP's key, another issuer named",
            trusted
                .mint(&MintRequest {
                    iss: Some("https://evil.example.com".into()),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "wrong audience",
            trusted
                .mint(&MintRequest {
                    aud: Some(json!("another-app")),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "audience list without us",
            trusted
                .mint(&MintRequest {
                    aud: Some(json!(["a", "b"])),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "nonce mismatch",
            trusted.mint(&good).expect("mint"),
            "nonce-2",
        ),
        (
            "no nonce",
            trusted
                .mint(&MintRequest {
                    claims: {
                        let mut c = claims(json!({}));
                        c.remove("nonce");
                        c
                    },
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "authorized party is another client",
            trusted
                .mint(&MintRequest {
                    aud: Some(json!(["tollgate-broker", "other"])),
                    claims: claims(json!({"azp": "other"})),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "expired",
            trusted
                .mint(&MintRequest {
                    iat_offset_secs: -7200,
                    ttl_secs: Some(600),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "alg none",
            trusted
                .mint(&MintRequest {
                    defect: Some("none".into()),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "a key the IdP never published",
            trusted
                .mint(&MintRequest {
                    defect: Some("unpublished-key".into()),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "HS256 keyed with the public key",
            trusted
                .mint(&MintRequest {
                    defect: Some("hs256-public-key".into()),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
        (
            "tampered",
            trusted
                .mint(&MintRequest {
                    defect: Some("tampered".into()),
                    ..good.clone()
                })
                .expect("mint"),
            "nonce-1",
        ),
    ];
    for (what, token, nonce) in cases {
        assert!(
            idp.verify_id_token(&token, nonce).await.is_err(),
            "{what} must be refused"
        );
    }
    // An IdP whose discovery names another issuer is refused before any sign-in.
    let mismatched = Idp::new(
        IdpConfig {
            discovery_url: format!("{}/.well-known/openid-configuration", other.base_url()),
            ..idp_config(&trusted.base_url())
        },
        Arc::new(clock.clone()),
    )
    .expect("idp");
    assert!(
        mismatched
            .verify_id_token(&trusted.mint(&good).expect("mint"), "nonce-1")
            .await
            .is_err()
    );
}

async fn stores() -> Vec<(String, Arc<dyn store::Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = store::open(&StoreConfig {
        kind: StoreKind::Sqlite,
        sqlite_path: dir.path().join("g.db"),
        url: None,
        schema: None,
        fail_open: false,
        reservation_lease_secs: 30,
        poll_interval_ms: 250,
        max_connections: 4,
    })
    .await
    .expect("sqlite");
    let schema = format!("oauth_{}", uuid::Uuid::new_v4().simple());
    let pg = store::open(&StoreConfig {
        kind: StoreKind::Postgres,
        sqlite_path: "unused".into(),
        url: Some("postgres://postgres@127.0.0.1:5432/test".to_string().into()),
        schema: Some(schema.clone()),
        fail_open: false,
        reservation_lease_secs: 30,
        poll_interval_ms: 250,
        max_connections: 4,
    })
    .await
    .expect("postgres");
    let pg_dir = tempfile::tempdir().expect("dir");
    vec![
        ("sqlite".into(), sqlite, dir),
        (format!("postgres {schema}"), pg, pg_dir),
    ]
}

#[tokio::test]
async fn codes_refresh_tokens_and_device_codes_are_single_use_on_both_stores() {
    for (name, st, _dir) in stores().await {
        let s = OAuthStore::new(st.pool());
        let t = 1_800_000_000i64;

        // Codes: once; a second use names the family it started; an expired one is nothing.
        s.put_code("c1", "codex", "{}", t + 60).await.expect("put");
        assert!(
            matches!(s.redeem_code("c1", t).await.expect("r"), CodeUse::Fresh { client_id, .. } if client_id == "codex"),
            "{name}"
        );
        s.set_code_family("c1", "fam-1").await.expect("link");
        assert!(
            matches!(s.redeem_code("c1", t).await.expect("r"), CodeUse::Replayed { family_id: Some(f) } if f == "fam-1"),
            "{name}"
        );
        s.put_code("c2", "codex", "{}", t + 60).await.expect("put");
        assert!(
            matches!(
                s.redeem_code("c2", t + 60).await.expect("r"),
                CodeUse::Invalid
            ),
            "{name}"
        );
        assert!(
            matches!(s.redeem_code("nope", t).await.expect("r"), CodeUse::Invalid),
            "{name}"
        );

        // Refresh tokens: used once, bound to the client, a replay reported, revocation returns live jtis.
        let fam = Family {
            family_id: "fam-1".into(),
            client_id: "codex".into(),
            idp: "corp".into(),
            subject: "sub-alice".into(),
            principal: "alice@example.com".into(),
            identity: "{}".into(),
            scope: "models".into(),
            created_at: t,
            last_used_at: t,
            expires_at: t + 1000,
            revoked_at: None,
            revoked_reason: None,
        };
        s.create_family(&fam, "r1", t + 500).await.expect("family");
        s.add_access("jti-1", "fam-1", t + 300)
            .await
            .expect("access");
        s.add_access("jti-old", "fam-1", t - 1)
            .await
            .expect("access");
        assert!(
            matches!(
                s.use_refresh("r1", "tollgate-token", t).await.expect("u"),
                RefreshUse::OtherClient
            ),
            "{name}"
        );
        assert!(
            matches!(s.use_refresh("r1", "codex", t).await.expect("u"), RefreshUse::Fresh(f) if f.principal == "alice@example.com"),
            "{name}"
        );
        assert!(
            matches!(s.use_refresh("r1", "codex", t).await.expect("u"), RefreshUse::Replayed { family_id } if family_id == "fam-1"),
            "{name}"
        );
        s.rotate("fam-1", "r2", t + 10, t + 510)
            .await
            .expect("rotate");
        assert!(
            matches!(
                s.use_refresh("r2", "codex", t + 511).await.expect("u"),
                RefreshUse::Invalid
            ),
            "{name}: expired"
        );
        assert_eq!(
            s.families("alice@example.com", true, t)
                .await
                .expect("list")
                .len(),
            1,
            "{name}"
        );
        assert_eq!(
            s.families("sub-alice", true, t).await.expect("list").len(),
            1,
            "{name}: by subject"
        );
        let jtis = s
            .revoke_family("fam-1", t + 20, "admin")
            .await
            .expect("revoke");
        assert_eq!(
            jtis,
            Some(vec!["jti-1".to_string()]),
            "{name}: live access tokens only"
        );
        assert_eq!(
            s.revoke_family("fam-1", t + 21, "again")
                .await
                .expect("revoke"),
            None,
            "{name}"
        );
        assert!(
            s.families("alice@example.com", true, t)
                .await
                .expect("list")
                .is_empty(),
            "{name}"
        );
        let all = s
            .families("alice@example.com", false, t)
            .await
            .expect("list");
        assert_eq!(all[0].revoked_reason.as_deref(), Some("admin"), "{name}");

        // Device codes: pending → slow_down when early (interval +5) → approved once → consumed.
        assert!(
            s.put_device("d1", "BCDF-GHJK", "tollgate-token", "{}", 5, t + 600)
                .await
                .expect("put"),
            "{name}"
        );
        assert!(
            !s.put_device("d2", "BCDF-GHJK", "tollgate-token", "{}", 5, t + 600)
                .await
                .expect("put"),
            "{name}: user codes are unique"
        );
        assert!(
            matches!(
                s.poll_device("d1", t).await.expect("p"),
                DevicePoll::Pending
            ),
            "{name}"
        );
        assert!(
            matches!(
                s.poll_device("d1", t + 4).await.expect("p"),
                DevicePoll::SlowDown(10)
            ),
            "{name}"
        );
        assert!(
            s.device_by_user_code("BCDF-GHJK", t)
                .await
                .expect("find")
                .is_some(),
            "{name}"
        );
        assert!(
            s.decide_device("d1", Some("{\"who\":1}"), t + 5)
                .await
                .expect("approve"),
            "{name}"
        );
        assert!(
            !s.decide_device("d1", None, t + 5).await.expect("deny"),
            "{name}: decided once"
        );
        assert!(
            matches!(s.poll_device("d1", t + 14).await.expect("p"), DevicePoll::Approved { identity, .. } if identity == "{\"who\":1}"),
            "{name}"
        );
        assert!(
            matches!(
                s.poll_device("d1", t + 100).await.expect("p"),
                DevicePoll::Unknown
            ),
            "{name}: consumed"
        );
        assert!(
            s.put_device("d3", "MNPQ-RSTV", "tollgate-token", "{}", 5, t + 600)
                .await
                .expect("put"),
            "{name}"
        );
        assert!(
            matches!(
                s.poll_device("d3", t + 600).await.expect("p"),
                DevicePoll::Expired
            ),
            "{name}"
        );

        // Login sessions: read, updated only from the state read, taken once.
        s.put_login("h1", "state-1", "a", t + 60)
            .await
            .expect("login");
        assert_eq!(
            s.login_by_state("state-1", t).await.expect("l"),
            Some(("h1".into(), "a".into())),
            "{name}"
        );
        assert!(
            s.update_login("h1", "a", "b", t).await.expect("u"),
            "{name}"
        );
        assert!(
            !s.update_login("h1", "a", "c", t).await.expect("u"),
            "{name}: stale update refused"
        );
        assert_eq!(
            s.take_login("h1", t).await.expect("take"),
            Some("b".into()),
            "{name}"
        );
        assert_eq!(s.take_login("h1", t).await.expect("take"), None, "{name}");
        s.prune(t + 10_000_000).await.expect("prune");
    }
}
