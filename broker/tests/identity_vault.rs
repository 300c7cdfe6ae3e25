//! Vault/OpenBao identity tokens against a real OpenBao dev server: a user logs in (userpass), reads
//! `identity/oidc/token/<role>`, and the broker verifies the JWT through OpenBao's discovery and JWKS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::Broker;
use tollgate::exchange::TOKEN_TYPE_JWT;

struct Bao {
    http: reqwest::Client,
    base: String,
}

impl Bao {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .header("x-vault-token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("openbao");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, "root", Some(body))
            .await
    }
}

/// Configure OpenBao: userpass user `alice` in group `ml-team`, identity OIDC key + roles `tollgate`
/// (client_id `tollgate`) and `other` (client_id `other-service`). Returns alice's Vault token.
async fn configure(bao: &Bao) -> String {
    bao.post("sys/auth/userpass", json!({"type": "userpass"}))
        .await;
    bao.post(
        "sys/policies/acl/tollgate-id",
        json!({"policy": "path \"identity/oidc/token/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    bao.post(
        "auth/userpass/users/alice",
        json!({"password": "pw", "token_policies": "tollgate-id"}),
    )
    .await;
    bao.post("identity/oidc/config", json!({"issuer": bao.base}))
        .await;
    bao.post(
        "identity/oidc/key/tollgate",
        json!({"allowed_client_ids": "*", "algorithm": "RS256"}),
    )
    .await;
    let template =
        r#"{"entity_name": {{identity.entity.name}}, "groups": {{identity.entity.groups.names}}}"#;
    for (role, client_id) in [("tollgate", "tollgate"), ("other", "other-service")] {
        bao.post(
            &format!("identity/oidc/role/{role}"),
            json!({"key": "tollgate", "ttl": "15m", "client_id": client_id, "template": template}),
        )
        .await;
    }
    let login = bao
        .call(
            reqwest::Method::POST,
            "auth/userpass/login/alice",
            "",
            Some(json!({"password": "pw"})),
        )
        .await;
    let token = login["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let entity = login["auth"]["entity_id"]
        .as_str()
        .expect("entity")
        .to_string();
    bao.post(
        &format!("identity/entity/id/{entity}"),
        json!({"name": "alice"}),
    )
    .await;
    bao.post(
        "identity/group",
        json!({"name": "ml-team", "member_entity_ids": [entity]}),
    )
    .await;
    token
}

async fn identity_token(bao: &Bao, user_token: &str, role: &str) -> String {
    let v = bao
        .call(
            reqwest::Method::GET,
            &format!("identity/oidc/token/{role}"),
            user_token,
            None,
        )
        .await;
    v["data"]["token"].as_str().expect("token").to_string()
}

const POLICY: &str = r#"
[[rule]]
name = "ml-team"
match = { kind = "vault", attributes = { groups = "ml-team" } }
principal = "vault:{attr.entity_name}"
team = "ml"
models = ["*"]
"#;

#[tokio::test]
async fn vault_identity_token_gets_a_grant_and_bad_ones_are_refused() {
    let peer = support::start_openbao();
    let bao = Bao {
        http: reqwest::Client::new(),
        base: peer.base_url.clone(),
    };
    let user_token = configure(&bao).await;
    let broker = Broker::new(
        &format!(
            "[[identity.oidc]]\nkind = \"vault\"\nissuer = \"{}/v1/identity/oidc\"\naudiences = [\"tollgate\"]\n",
            bao.base
        ),
        POLICY,
    ).await;

    let jwt = identity_token(&bao, &user_token, "tollgate").await;
    let claims = broker.grant_and_proxy(TOKEN_TYPE_JWT, &jwt).await;
    assert_eq!(claims["sub"], "vault:alice");
    assert_eq!(claims["tollgate"]["identity"]["kind"], "vault");
    assert_eq!(
        claims["tollgate"]["identity"]["issuer"],
        format!("{}/v1/identity/oidc", bao.base)
    );
    // The user's Vault token is not what was exchanged.
    assert!(!jwt.contains(&user_token));

    // A Vault identity token minted for another service.
    let other = identity_token(&bao, &user_token, "other").await;
    broker
        .expect_refused_because(
            "audience of another service",
            "wrong_audience",
            TOKEN_TYPE_JWT,
            &other,
        )
        .await;
    // A token whose signature does not verify.
    let mut parts: Vec<&str> = jwt.split('.').collect();
    let sig: String = parts[2]
        .char_indices()
        .map(|(i, c)| {
            if i == 10 {
                if c == 'A' { 'B' } else { 'A' }
            } else {
                c
            }
        })
        .collect();
    parts[2] = &sig;
    broker
        .expect_refused_because(
            "bad signature",
            "bad_signature",
            TOKEN_TYPE_JWT,
            &parts.join("."),
        )
        .await;
    // Past its 15 min lifetime (by the broker's clock, plus the 60 s leeway).
    broker.clock.advance(15 * 60 + 61);
    broker
        .expect_refused_because("expired", "expired", TOKEN_TYPE_JWT, &jwt)
        .await;
}
