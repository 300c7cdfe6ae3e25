//! OIDC issuers (Kubernetes/CI-style tokens) and Azure managed identity, against the fake IdP on
//! loopback: the real config loader, verifiers, policy and router; a grant, then a proxied request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::Broker;
use tollgate::exchange::TOKEN_TYPE_JWT;
use tollgate_testkit::idp::{self, IdpConfig, IdpHandle, MintRequest};

fn identity_toml(idp: &IdpHandle) -> String {
    format!(
        r#"
[[identity.oidc]]
kind = "oidc"
issuer = "{base}"
audiences = ["tollgate"]
bound_claims = {{ "kubernetes.io/namespace" = ["ci", "build-*"] }}
bound_claims_type = "glob"
leeway_secs = 30

[[identity.azure]]
authority = "{base}"
tenants = ["{tenant}"]
audiences = ["api://tollgate"]
"#,
        base = idp.base_url(),
        tenant = idp.managed_identity().tenant,
    )
}

const POLICY: &str = r#"
[[rule]]
name = "no-admins"
effect = "deny"
match = { kind = "oidc", attributes = { groups = "admins" } }

[[rule]]
name = "ci-runners"
match = { kind = "oidc", subject = "system:serviceaccount:*", attributes = { "kubernetes.io/namespace" = ["ci", "build-*"] } }
principal = "k8s:{attr.kubernetes.io/serviceaccount/name}"
team = "{attr.kubernetes.io/namespace}"
models = ["gpt-5*"]
max_ttl_secs = 900

[[rule]]
name = "azure-apps"
match = { kind = "azure", attributes = { tid = "11111111-2222-3333-4444-555555555555" } }
principal = "azure:{subject}"
team = "{attr.appid}"
models = ["*"]
"#;

fn k8s(ns: &str, sa: &str) -> MintRequest {
    MintRequest {
        sub: Some(format!("system:serviceaccount:{ns}:{sa}")),
        claims: json!({
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u-1"}},
            "groups": ["runners"],
        })
        .as_object()
        .cloned()
        .expect("obj"),
        ..MintRequest::default()
    }
}

async fn setup() -> (IdpHandle, Broker) {
    let idp = idp::spawn(IdpConfig::default()).await.expect("fake idp");
    let broker = Broker::new(&identity_toml(&idp), POLICY).await;
    (idp, broker)
}

#[tokio::test]
async fn kubernetes_style_token_gets_a_grant_and_a_proxied_answer() {
    let (idp, broker) = setup().await;
    let token = idp.mint(&k8s("ci", "runner")).expect("mint");
    let claims = broker.grant_and_proxy(TOKEN_TYPE_JWT, &token).await;
    assert_eq!(claims["sub"], "k8s:runner");
    assert_eq!(claims["tollgate"]["team"], "ci");
    assert_eq!(claims["tollgate"]["identity"]["kind"], "oidc");
    assert_eq!(claims["tollgate"]["identity"]["rule"], "ci-runners");
    assert_eq!(claims["tollgate"]["identity"]["issuer"], idp.base_url());
    // The rule's max_ttl_secs caps the lifetime (nbf is backdated a little for skew).
    let now = broker.clock_now();
    assert_eq!(claims["exp"].as_u64().expect("exp"), now + 900);
    // A glob-bound namespace also passes.
    let token = idp.mint(&k8s("build-7", "b")).expect("mint");
    let claims = broker.grant_and_proxy(TOKEN_TYPE_JWT, &token).await;
    assert_eq!(claims["sub"], "k8s:b");
    // One discovery and one JWKS fetch served both exchanges.
    assert_eq!(idp.discovery_fetches(), 1);
    assert_eq!(idp.jwks_fetches(), 1);
}

#[tokio::test]
async fn bad_oidc_tokens_are_refused_without_detail() {
    let (idp, broker) = setup().await;
    let good = k8s("ci", "runner");
    let with = |f: &dyn Fn(&mut MintRequest)| {
        let mut r = good.clone();
        f(&mut r);
        idp.mint(&r).expect("mint")
    };
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "alg none",
            "malformed_jwt",
            with(&|r| r.defect = Some("none".into())),
        ),
        (
            "HS256 keyed with the RSA public key",
            "alg_not_allowed",
            with(&|r| r.defect = Some("hs256-public-key".into())),
        ),
        (
            "unknown kid (key not in the JWKS)",
            "unknown_kid",
            with(&|r| r.defect = Some("unpublished-key".into())),
        ),
        (
            "tampered payload",
            "bad_signature",
            with(&|r| r.defect = Some("tampered".into())),
        ),
        (
            "wrong aud",
            "wrong_audience",
            with(&|r| r.aud = Some(json!("someone-else"))),
        ),
        (
            "wrong aud list",
            "wrong_audience",
            with(&|r| r.aud = Some(json!(["a", "b"]))),
        ),
        (
            "unknown iss",
            "unknown_issuer",
            with(&|r| r.iss = Some("http://127.0.0.1:1/other-issuer".into())),
        ),
        (
            "expired beyond leeway",
            "expired",
            with(&|r| {
                r.iat_offset_secs = -3600;
                r.ttl_secs = Some(600);
            }),
        ),
        (
            "nbf in the future",
            "not_yet_valid",
            with(&|r| r.nbf_offset_secs = Some(3600)),
        ),
        (
            "iat in the future",
            "issued_in_future",
            with(&|r| r.iat_offset_secs = 3600),
        ),
        (
            "bound claim mismatch",
            "claim_mismatch",
            idp.mint(&k8s("prod", "runner")).expect("mint"),
        ),
        ("not a JWT", "malformed_jwt", "not-a-jwt".to_string()),
    ];
    for (what, reason, token) in &cases {
        broker
            .expect_refused_because(what, reason, TOKEN_TYPE_JWT, token)
            .await;
    }
    // A verified identity an explicit deny rule matches gets no grant.
    let admin = with(&|r| {
        r.claims
            .insert("groups".into(), json!(["runners", "admins"]));
    });
    broker
        .expect_no_grant("explicit deny rule", TOKEN_TYPE_JWT, &admin)
        .await;
    // Within the leeway is still fine (expired 10 s ago, leeway 30 s).
    let token = with(&|r| {
        r.iat_offset_secs = -610;
        r.ttl_secs = Some(600);
    });
    broker.grant_and_proxy(TOKEN_TYPE_JWT, &token).await;
}

#[tokio::test]
async fn unknown_kid_refreshes_the_jwks_at_most_once_per_interval() {
    let (idp, broker) = setup().await;
    let token = idp.mint(&k8s("ci", "runner")).expect("mint");
    broker.grant_and_proxy(TOKEN_TYPE_JWT, &token).await;
    assert_eq!(idp.jwks_fetches(), 1);

    // The issuer rotates; a token with the new kid arrives less than jwks_min_refresh_secs (60 s) after
    // the last fetch: refused, no refetch.
    idp.rotate().expect("rotate");
    let rotated = idp.mint(&k8s("ci", "runner")).expect("mint");
    broker
        .expect_refused(
            "new kid inside the refresh interval",
            TOKEN_TYPE_JWT,
            &rotated,
        )
        .await;
    assert_eq!(idp.jwks_fetches(), 1);

    // After the interval, the unknown kid triggers one refresh and the token is accepted.
    broker.clock.advance(61);
    broker.grant_and_proxy(TOKEN_TYPE_JWT, &rotated).await;
    assert_eq!(idp.jwks_fetches(), 2);

    // Garbage kids cannot hammer the issuer: many unknown-kid tokens, at most one more fetch.
    broker.clock.advance(61);
    let mut bad = k8s("ci", "runner");
    bad.defect = Some("unpublished-key".into());
    for _ in 0..10 {
        let t = idp.mint(&bad).expect("mint");
        broker
            .expect_refused("unpublished kid", TOKEN_TYPE_JWT, &t)
            .await;
    }
    assert_eq!(idp.jwks_fetches(), 3);
}

async fn managed_identity_token(idp: &IdpHandle, resource: &str) -> String {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}?api-version=2019-08-01&resource={}",
            idp.identity_endpoint(),
            resource.replace(':', "%3A").replace('/', "%2F")
        ))
        .header("x-identity-header", idp.identity_header())
        .send()
        .await
        .expect("msi")
        .json()
        .await
        .expect("json");
    v["access_token"].as_str().expect("token").to_string()
}

#[tokio::test]
async fn azure_managed_identity_token_gets_a_grant() {
    let (idp, broker) = setup().await;
    let token = managed_identity_token(&idp, "api://tollgate").await;
    let claims = broker.grant_and_proxy(TOKEN_TYPE_JWT, &token).await;
    let mi = idp.managed_identity();
    assert_eq!(claims["sub"], format!("azure:{}", mi.oid));
    assert_eq!(claims["tollgate"]["team"], mi.appid.as_str());
    assert_eq!(claims["tollgate"]["identity"]["kind"], "azure");
    assert_eq!(claims["tollgate"]["identity"]["subject"], mi.oid.as_str());
    // The per-tenant v2 discovery document was used.
    assert_eq!(idp.discovery_fetches(), 1);
}

#[tokio::test]
async fn azure_tokens_for_another_tenant_or_audience_are_refused() {
    let (idp, broker) = setup().await;
    let mi = idp.managed_identity().clone();
    let azure = |tid: &str, aud: &str, iss: Option<String>| MintRequest {
        iss: Some(iss.unwrap_or_else(|| format!("https://sts.windows.net/{tid}/"))),
        sub: Some(mi.oid.clone()),
        aud: Some(json!(aud)),
        claims: json!({"tid": tid, "oid": mi.oid, "appid": mi.appid})
            .as_object()
            .cloned()
            .expect("obj"),
        ..MintRequest::default()
    };
    let other = "99999999-2222-3333-4444-555555555555";
    let before = idp.discovery_fetches();
    broker
        .expect_refused_because(
            "another tenant",
            "tenant_not_allowed",
            TOKEN_TYPE_JWT,
            &idp.mint(&azure(other, "api://tollgate", None))
                .expect("mint"),
        )
        .await;
    // A tenant not on the allowlist is refused before any fetch.
    assert_eq!(idp.discovery_fetches(), before);
    broker
        .expect_refused_because(
            "another audience",
            "wrong_audience",
            TOKEN_TYPE_JWT,
            &managed_identity_token(&idp, "https://management.azure.com/").await,
        )
        .await;
    broker
        .expect_refused_because(
            "issuer of another tenant, tid of ours",
            "wrong_issuer",
            TOKEN_TYPE_JWT,
            &idp.mint(&azure(
                &mi.tenant,
                "api://tollgate",
                Some(format!("https://sts.windows.net/{other}/")),
            ))
            .expect("mint"),
        )
        .await;
    let mut hs = azure(&mi.tenant, "api://tollgate", None);
    hs.defect = Some("hs256-public-key".into());
    broker
        .expect_refused_because(
            "HS256 confusion",
            "alg_not_allowed",
            TOKEN_TYPE_JWT,
            &idp.mint(&hs).expect("mint"),
        )
        .await;
    // The well-formed one works, so the refusals above are about the defects.
    broker
        .grant_and_proxy(
            TOKEN_TYPE_JWT,
            &idp.mint(&azure(&mi.tenant, "api://tollgate", None))
                .expect("mint"),
        )
        .await;
}
