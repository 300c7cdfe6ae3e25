//! Every identity kind end to end across binaries: the real `tollgate-token` helper proves an identity to
//! the real `tollgate-broker`, which verifies it against a real peer (moto for AWS, OpenBao for Vault, the
//! fake IdP for Azure and OIDC), maps it to a grant by policy; the token then completes a proxied request
//! through the demo provider. Plus the helper's chain, cache-hit and single-flight behaviour.

mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use support::peers::{Bao, bao_call, moto, moto_iam_user, moto_with_auth};
use support::{Broker, BrokerSpec, bin};
use tollgate_testkit::idp::{self, IdpConfig, IdpHandle, MintRequest};

const POLICY: &str = r#"
[[rule]]
name = "aws"
match = { kind = "aws", subject = "arn:aws:iam::123456789012:user/*" }
principal = "aws:{attr.user}"
models = ["*"]

[[rule]]
name = "aws-roles"
match = { kind = "aws", subject = "arn:aws:iam::123456789012:role/*" }
principal = "aws-role:{attr.role}/{attr.session}"
models = ["*"]

[[rule]]
name = "vault"
match = { kind = "vault", attributes = { groups = "ml-team" } }
principal = "vault:{attr.entity_name}"
models = ["*"]

[[rule]]
name = "vault-entities"
match = { kind = "vault", subject = "*" }
principal = "vault-entity:{subject}"
models = ["*"]

[[rule]]
name = "azure"
match = { kind = "azure" }
principal = "azure:{subject}"
models = ["*"]

[[rule]]
name = "k8s"
match = { kind = "oidc", attributes = { "kubernetes.io/namespace" = "ci" } }
principal = "k8s:{attr.kubernetes.io/serviceaccount/name}"
models = ["*"]
"#;

/// A broker with the demo provider and the given `[identity]` sections.
async fn broker(identity: &str) -> Broker {
    Broker::start(BrokerSpec {
        extra_config: format!(
            "[providers.demo]\nkind = \"demo\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"demo\" }}]\n\n\
             [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1\", output = \"2\" }}\n\n{identity}"
        ),
        policy: POLICY.into(),
        env: vec![],
    })
    .await
}

struct HelperRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run the helper with exactly `env` (plus HOME, a cache dir and the broker URL).
async fn helper(broker: &str, home: &Path, env: &[(&str, String)]) -> HelperRun {
    let out = tokio::process::Command::new(bin("tollgate-token"))
        .env_clear()
        .env("HOME", home)
        .env("TOLLGATE_BROKER", broker)
        .env("TOLLGATE_CACHE_DIR", home.join("cache"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run helper");
    HelperRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let p = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).expect("jwt"))
        .expect("b64");
    serde_json::from_slice(&p).expect("claims")
}

/// The helper printed a token; a proxied request with it succeeds. Returns the token's claims.
async fn token_works(b: &Broker, run: &HelperRun) -> Value {
    assert_eq!(
        run.code,
        Some(0),
        "helper failed: {}\nbroker log:\n{}",
        run.stderr,
        b.log()
    );
    let token = run.stdout.trim_end_matches('\n');
    assert!(
        !token.contains('\n') && !token.is_empty(),
        "stdout must be one token line: {:?}",
        run.stdout
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", b.url))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-5.5", "input": "hello", "stream": false}))
        .send()
        .await
        .expect("proxy");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], "completed", "{v}");
    claims(token)
}

fn k8s_claims(ns: &str, sa: &str) -> MintRequest {
    MintRequest {
        sub: Some(format!("system:serviceaccount:{ns}:{sa}")),
        claims: json!({"kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa}}})
            .as_object()
            .cloned()
            .expect("obj"),
        ..MintRequest::default()
    }
}

fn oidc_section(idp: &IdpHandle) -> String {
    format!(
        "[[identity.oidc]]\nissuer = \"{}\"\naudiences = [\"tollgate\"]\n\n[[identity.azure]]\nauthority = \"{}\"\ntenants = [\"{}\"]\naudiences = [\"api://tollgate\"]\n",
        idp.base_url(),
        idp.authority(),
        idp.managed_identity().tenant
    )
}

#[tokio::test]
async fn oidc_file_and_azure_managed_identity_through_helper_and_broker() {
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let b = broker(&oidc_section(&idp)).await;
    let home = tempfile::tempdir().expect("tmp");

    // oidc-file: a projected service-account token.
    let jwt_file = home.path().join("sa-token");
    std::fs::write(
        &jwt_file,
        idp.mint(&k8s_claims("ci", "runner")).expect("mint"),
    )
    .expect("write");
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "oidc-file".into()),
            ("TOLLGATE_OIDC_FILE", jwt_file.display().to_string()),
        ],
    )
    .await;
    assert_eq!(token_works(&b, &run).await["sub"], "k8s:runner");
    let proof = std::fs::read_to_string(&jwt_file).expect("read");
    assert!(
        !b.log().contains(proof.trim()),
        "the subject token must never be logged"
    );

    // azure: App Service managed identity (IDENTITY_ENDPOINT + IDENTITY_HEADER).
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "azure".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            ("IDENTITY_ENDPOINT", idp.identity_endpoint()),
            ("IDENTITY_HEADER", idp.identity_header().to_string()),
        ],
    )
    .await;
    let c = token_works(&b, &run).await;
    assert_eq!(c["sub"], format!("azure:{}", idp.managed_identity().oid));
    assert_eq!(idp.mi_tokens(), 1);

    // azure: workload identity through `azure_identity` (a federated token file exchanged at the tenant's
    // token endpoint; a v2 token whose issuer comes from the tenant's discovery document). The crate only
    // accepts an https authority: the fake IdP's TLS listener, trusted through `SSL_CERT_FILE`.
    let federated = home.path().join("azure-federated-token");
    let ca_file = home.path().join("idp-ca.pem");
    std::fs::write(&ca_file, idp.ca_pem()).expect("write CA");
    std::fs::write(
        &federated,
        idp.mint(&MintRequest {
            sub: Some("system:serviceaccount:apps:web".into()),
            aud: Some(json!("api://AzureADTokenExchange")),
            ..MintRequest::default()
        })
        .expect("mint"),
    )
    .expect("write");
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "azure".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                federated.display().to_string(),
            ),
            ("AZURE_TENANT_ID", idp.managed_identity().tenant.clone()),
            (
                "AZURE_CLIENT_ID",
                "cccccccc-0000-0000-0000-000000000003".into(),
            ),
            ("AZURE_AUTHORITY_HOST", idp.https_base_url()),
            ("SSL_CERT_FILE", ca_file.display().to_string()),
        ],
    )
    .await;
    let c = token_works(&b, &run).await;
    assert_eq!(c["sub"], format!("azure:{}", idp.managed_identity().oid));
    assert_eq!(
        c["tollgate"]["identity"]["issuer"],
        idp.tenant_issuer(&idp.managed_identity().tenant)
    );
    assert_eq!(idp.mi_tokens(), 2);

    // The same over plain http, or without the test CA: refused on the helper's side (exit 65), no token
    // asked for.
    let workload = |authority: String, tenant: &str, extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("TOLLGATE_IDENTITY", "azure".to_string()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            ("TOLLGATE_NO_CACHE", "1".into()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                federated.display().to_string(),
            ),
            ("AZURE_TENANT_ID", tenant.to_string()),
            (
                "AZURE_CLIENT_ID",
                "cccccccc-0000-0000-0000-000000000003".into(),
            ),
            ("AZURE_AUTHORITY_HOST", authority),
        ];
        env.extend(extra);
        env
    };
    let tenant = idp.managed_identity().tenant.clone();
    let env = workload(
        idp.authority(),
        &tenant,
        vec![("SSL_CERT_FILE", ca_file.display().to_string())],
    );
    let run = helper(&b.url, home.path(), &env).await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(
        run.stderr.contains("must be an https URL"),
        "{}",
        run.stderr
    );
    let env = workload(idp.https_base_url(), &tenant, vec![]);
    let run = helper(&b.url, home.path(), &env).await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(
        run.stderr.contains("workload identity token endpoint: ")
            && run.stderr.contains("unavailable"),
        "an untrusted certificate is a failure to reach the endpoint: {}",
        run.stderr
    );
    assert_eq!(idp.mi_tokens(), 2);

    // A workload identity in another tenant gets an Entra token, which the broker refuses (exit 66).
    let env = workload(
        idp.https_base_url(),
        "99999999-8888-7777-6666-555555555555",
        vec![("SSL_CERT_FILE", ca_file.display().to_string())],
    );
    let run = helper(&b.url, home.path(), &env).await;
    assert_eq!(run.code, Some(66), "{}", run.stderr);
    assert!(run.stderr.contains("invalid_grant"), "{}", run.stderr);

    // A wrong identity header: the managed-identity endpoint refuses, the helper says so (exit 65).
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "azure".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate-other".into()),
            ("IDENTITY_ENDPOINT", idp.identity_endpoint()),
            ("IDENTITY_HEADER", "wrong".into()),
        ],
    )
    .await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("App Service managed identity endpoint: HTTP 401"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("wrong"),
        "the header value is a secret: {}",
        run.stderr
    );

    // A token the broker refuses (namespace outside the policy): exit 66 with the broker's reason.
    std::fs::write(&jwt_file, idp.mint(&k8s_claims("prod", "x")).expect("mint")).expect("write");
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "oidc-file".into()),
            ("TOLLGATE_OIDC_FILE", jwt_file.display().to_string()),
            ("TOLLGATE_NO_CACHE", "1".into()),
        ],
    )
    .await;
    assert_eq!(run.code, Some(66), "{}", run.stderr);
    assert!(run.stderr.contains("invalid_grant"), "{}", run.stderr);
}

#[tokio::test]
async fn chain_falls_through_stops_on_real_failures_and_lists_attempts() {
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let b = broker(&oidc_section(&idp)).await;
    let home = tempfile::tempdir().expect("tmp");
    let jwt_file = home.path().join("sa-token");
    std::fs::write(
        &jwt_file,
        idp.mint(&k8s_claims("ci", "chained")).expect("mint"),
    )
    .expect("write");

    // aws (no credentials, IMDS disabled) and azure (no managed identity) do not apply: oidc-file does.
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "chain".into()),
            ("TOLLGATE_CHAIN", "aws,azure,oidc-file".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            ("TOLLGATE_OIDC_FILE", jwt_file.display().to_string()),
        ],
    )
    .await;
    assert_eq!(token_works(&b, &run).await["sub"], "k8s:chained");

    // Nothing applies: exit 65, every attempt listed.
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "chain".into()),
            ("TOLLGATE_CHAIN", "aws,azure,vault".into()),
        ],
    )
    .await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    for who in ["aws:", "azure:", "vault:"] {
        assert!(
            run.stderr.contains(who),
            "attempt {who} not listed: {}",
            run.stderr
        );
    }

    // A source that applies but fails stops the chain (no silent fall-through to the next).
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "chain".into()),
            ("TOLLGATE_CHAIN", "azure,oidc-file".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            ("IDENTITY_ENDPOINT", idp.identity_endpoint()),
            ("IDENTITY_HEADER", "wrong".into()),
            ("TOLLGATE_OIDC_FILE", jwt_file.display().to_string()),
            ("TOLLGATE_NO_CACHE", "1".into()),
        ],
    )
    .await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(
        run.stderr.contains("identity chain stopped"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn cache_hit_makes_no_network_call_and_a_cold_cache_mints_once_for_20_runs() {
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let b = broker(&oidc_section(&idp)).await;
    let home = tempfile::tempdir().expect("tmp");
    let jwt_file = home.path().join("sa-token");
    std::fs::write(
        &jwt_file,
        idp.mint(&k8s_claims("ci", "many")).expect("mint"),
    )
    .expect("write");
    let env = [
        ("TOLLGATE_IDENTITY", "azure".to_string()),
        ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".to_string()),
        ("IDENTITY_ENDPOINT", idp.identity_endpoint()),
        ("IDENTITY_HEADER", idp.identity_header().to_string()),
    ];
    let before = b.mints();
    let runs = futures::future::join_all((0..20).map(|_| helper(&b.url, home.path(), &env))).await;
    let first = runs[0].stdout.clone();
    for r in &runs {
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(
            r.stdout, first,
            "every concurrent run prints the same token"
        );
    }
    assert_eq!(
        b.mints() - before,
        1,
        "20 cold runs must mint once:\n{}",
        b.log()
    );
    assert_eq!(idp.mi_tokens(), 1, "and ask the identity endpoint once");

    // Cache hit: the identity endpoint and the broker are unreachable, yet the token is served, silently.
    let env_dead = [
        ("TOLLGATE_IDENTITY", "azure".to_string()),
        ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".to_string()),
        ("IDENTITY_ENDPOINT", idp.identity_endpoint()),
        ("IDENTITY_HEADER", idp.identity_header().to_string()),
    ];
    drop(idp);
    let run = helper(&b.url, home.path(), &env_dead).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, first);
    assert_eq!(
        run.stderr, "",
        "a cache hit touches nothing and says nothing"
    );
    let _ = std::fs::remove_file(&jwt_file);
}

// ------------------------------------------------------------------ AWS (moto) and Vault (OpenBao)

#[tokio::test]
async fn aws_identity_through_helper_and_broker() {
    let moto = moto().await;
    let user = moto_iam_user(&moto.1);
    let keys = json!({"ak": user.access_key_id, "sk": user.secret_access_key});
    let b = broker(&format!(
        "[identity.aws]\nserver_id = \"tollgate-e2e\"\nendpoints = [{{ region = \"us-east-1\", url = \"{}\" }}]\n",
        moto.1
    ))
    .await;
    let home = tempfile::tempdir().expect("tmp");
    let sk = keys["sk"].as_str().expect("sk").to_string();
    let mut env = vec![
        ("TOLLGATE_IDENTITY", "aws".to_string()),
        ("TOLLGATE_AWS_STS_URL", format!("{}/", moto.1)),
        ("TOLLGATE_AWS_SERVER_ID", "tollgate-e2e".into()),
        ("AWS_ACCESS_KEY_ID", keys["ak"].as_str().expect("ak").into()),
        ("AWS_SECRET_ACCESS_KEY", sk.clone()),
    ];
    let run = helper(&b.url, home.path(), &env).await;
    let c = token_works(&b, &run).await;
    assert_eq!(c["sub"], "aws:builder");
    assert_eq!(
        c["tollgate"]["identity"]["subject"],
        "arn:aws:iam::123456789012:user/builder"
    );

    // Signed for another broker: refused (exit 66), and the secret key never shows up.
    env[2].1 = "another-broker".into();
    env.push(("TOLLGATE_NO_CACHE", "1".into()));
    let run = helper(&b.url, home.path(), &env).await;
    assert_eq!(run.code, Some(66), "{}", run.stderr);
    assert!(!run.stderr.contains(&sk) && !b.log().contains(&sk));

    // The same credentials from a shared credentials file (profile), instead of the environment.
    let creds = home.path().join("aws-credentials");
    std::fs::write(
        &creds,
        format!(
            "[ci]\naws_access_key_id = {}\naws_secret_access_key = {sk}\n",
            keys["ak"].as_str().expect("ak")
        ),
    )
    .expect("write");
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "aws".to_string()),
            ("TOLLGATE_AWS_STS_URL", format!("{}/", moto.1)),
            ("TOLLGATE_AWS_SERVER_ID", "tollgate-e2e".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
            ("AWS_PROFILE", "ci".into()),
            ("TOLLGATE_NO_CACHE", "1".into()),
        ],
    )
    .await;
    assert_eq!(token_works(&b, &run).await["sub"], "aws:builder");

    // Optional role assumption first: the proof is signed as the role session.
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "aws".to_string()),
            ("TOLLGATE_AWS_STS_URL", format!("{}/", moto.1)),
            ("TOLLGATE_AWS_SERVER_ID", "tollgate-e2e".into()),
            ("AWS_ACCESS_KEY_ID", keys["ak"].as_str().expect("ak").into()),
            ("AWS_SECRET_ACCESS_KEY", sk.clone()),
            (
                "TOLLGATE_AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/workload".into(),
            ),
            ("TOLLGATE_NO_CACHE", "1".into()),
        ],
    )
    .await;
    let c = token_works(&b, &run).await;
    assert_eq!(c["sub"], "aws-role:workload/tollgate-token");
    assert_eq!(
        c["tollgate"]["identity"]["subject"],
        "arn:aws:iam::123456789012:role/workload"
    );
}

#[tokio::test]
async fn aws_instance_metadata_credentials_through_helper_and_broker() {
    // moto also emulates EC2 instance metadata (IMDSv2); without SigV4 enforcement its STS accepts the
    // metadata's test credentials and answers as `user/moto`.
    let moto = moto_with_auth(None).await;
    let b = broker(&format!(
        "[identity.aws]\nserver_id = \"tollgate-e2e\"\nendpoints = [{{ region = \"us-east-1\", url = \"{}\" }}]\n",
        moto.1
    ))
    .await;
    let home = tempfile::tempdir().expect("tmp");
    let out = tokio::process::Command::new(bin("tollgate-token"))
        .env_clear()
        .env("HOME", home.path())
        .env("TOLLGATE_BROKER", &b.url)
        .env("TOLLGATE_NO_CACHE", "1")
        .env("TOLLGATE_IDENTITY", "aws")
        .env("TOLLGATE_AWS_STS_URL", format!("{}/", moto.1))
        .env("TOLLGATE_AWS_SERVER_ID", "tollgate-e2e")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &moto.1)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("helper");
    let run = HelperRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let c = token_works(&b, &run).await;
    assert_eq!(c["sub"], "aws:moto");
}

#[tokio::test]
async fn vault_identity_token_and_approle_through_helper_and_broker() {
    let bao = Bao::start().await;
    let base = bao.base().to_string();
    let post = |path: &'static str, body: Value| {
        let base = base.clone();
        async move { bao_call(&base, reqwest::Method::POST, path, "root", Some(body)).await }
    };
    post("sys/auth/userpass", json!({"type": "userpass"})).await;
    post("sys/auth/approle", json!({"type": "approle"})).await;
    post(
        "sys/policies/acl/tollgate-id",
        json!({"policy": "path \"identity/oidc/token/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    post(
        "auth/userpass/users/alice",
        json!({"password": "pw", "token_policies": "tollgate-id"}),
    )
    .await;
    post(
        "auth/approle/role/ci",
        json!({"token_policies": "tollgate-id"}),
    )
    .await;
    post("identity/oidc/config", json!({"issuer": base})).await;
    post(
        "identity/oidc/key/tollgate",
        json!({"allowed_client_ids": "*"}),
    )
    .await;
    post(
        "identity/oidc/role/tollgate",
        json!({"key": "tollgate", "ttl": "15m", "client_id": "tollgate",
               "template": r#"{"entity_name": {{identity.entity.name}}, "groups": {{identity.entity.groups.names}}}"#}),
    )
    .await;
    let login = bao_call(
        &base,
        reqwest::Method::POST,
        "auth/userpass/login/alice",
        "",
        Some(json!({"password": "pw"})),
    )
    .await;
    let user_token = login["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_string();
    let entity = login["auth"]["entity_id"]
        .as_str()
        .expect("entity")
        .to_string();
    bao_call(
        &base,
        reqwest::Method::POST,
        &format!("identity/entity/id/{entity}"),
        "root",
        Some(json!({"name": "alice"})),
    )
    .await;
    // The AppRole's entity is created at its first login; put it in the group afterwards via its alias.
    let role_id = bao_call(
        &base,
        reqwest::Method::GET,
        "auth/approle/role/ci/role-id",
        "root",
        None,
    )
    .await["data"]["role_id"]
        .as_str()
        .expect("role_id")
        .to_string();
    let secret_id = bao_call(
        &base,
        reqwest::Method::POST,
        "auth/approle/role/ci/secret-id",
        "root",
        Some(json!({})),
    )
    .await["data"]["secret_id"]
        .as_str()
        .expect("secret_id")
        .to_string();
    let ci_login = bao_call(
        &base,
        reqwest::Method::POST,
        "auth/approle/login",
        "",
        Some(json!({"role_id": role_id, "secret_id": secret_id})),
    )
    .await;
    let ci_entity = ci_login["auth"]["entity_id"]
        .as_str()
        .expect("entity")
        .to_string();
    bao_call(
        &base,
        reqwest::Method::POST,
        &format!("identity/entity/id/{ci_entity}"),
        "root",
        Some(json!({"name": "ci-bot"})),
    )
    .await;
    post(
        "identity/group",
        json!({"name": "ml-team", "member_entity_ids": [entity, ci_entity]}),
    )
    .await;

    let b = broker(&format!(
        "[[identity.oidc]]\nkind = \"vault\"\nissuer = \"{base}/v1/identity/oidc\"\naudiences = [\"tollgate\"]\n"
    ))
    .await;
    let home = tempfile::tempdir().expect("tmp");
    // Token auth (VAULT_TOKEN): the helper reads an identity token; the Vault token stays here.
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "vault".to_string()),
            ("VAULT_ADDR", base.clone()),
            ("VAULT_TOKEN", user_token.clone()),
            ("TOLLGATE_VAULT_ROLE", "tollgate".into()),
        ],
    )
    .await;
    assert_eq!(token_works(&b, &run).await["sub"], "vault:alice");
    let first_token = run.stdout.clone();
    assert!(
        !b.log().contains(&user_token),
        "the Vault token must never reach the broker"
    );

    // AppRole login.
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "vault".to_string()),
            ("VAULT_ADDR", base.clone()),
            ("TOLLGATE_VAULT_AUTH", "approle".into()),
            ("TOLLGATE_VAULT_ROLE_ID", role_id.clone()),
            ("TOLLGATE_VAULT_SECRET_ID", secret_id.clone()),
            ("TOLLGATE_VAULT_ROLE", "tollgate".into()),
        ],
    )
    .await;
    assert_eq!(token_works(&b, &run).await["sub"], "vault:ci-bot");

    // JWT auth: OpenBao verifies a CI/Kubernetes-style JWT (from the fake IdP, via its discovery), the
    // helper then reads the identity token for the resulting entity.
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    post("sys/auth/jwt", json!({"type": "jwt"})).await;
    bao_call(
        &base,
        reqwest::Method::POST,
        "auth/jwt/config",
        "root",
        Some(json!({"oidc_discovery_url": idp.base_url(), "bound_issuer": idp.base_url()})),
    )
    .await;
    post(
        "auth/jwt/role/ci",
        json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
               "bound_claims": {"repo": "acme/app"}, "token_policies": "tollgate-id"}),
    )
    .await;
    let ci_jwt = home.path().join("ci-jwt");
    let mint = |repo: &str| {
        idp.mint(&MintRequest {
            sub: Some("repo:acme/app:ref:main".into()),
            aud: Some(json!("vault")),
            claims: json!({"repo": repo}).as_object().cloned().expect("obj"),
            ..MintRequest::default()
        })
        .expect("mint")
    };
    std::fs::write(&ci_jwt, mint("acme/app")).expect("write");
    let jwt_env = |extra: Option<(&'static str, String)>| {
        let mut v = vec![
            ("TOLLGATE_IDENTITY", "vault".to_string()),
            ("VAULT_ADDR", base.clone()),
            ("TOLLGATE_VAULT_AUTH", "jwt".into()),
            ("TOLLGATE_VAULT_LOGIN_ROLE", "ci".into()),
            ("TOLLGATE_VAULT_JWT_FILE", ci_jwt.display().to_string()),
            ("TOLLGATE_VAULT_ROLE", "tollgate".into()),
        ];
        v.extend(extra);
        v
    };
    let run = helper(&b.url, home.path(), &jwt_env(None)).await;
    let c = token_works(&b, &run).await;
    assert!(
        c["sub"]
            .as_str()
            .is_some_and(|s| s.starts_with("vault-entity:")),
        "{c}"
    );
    // A JWT OpenBao's role does not accept (bound claim): the login fails, exit 65.
    std::fs::write(&ci_jwt, mint("evil/app")).expect("write");
    let run = helper(
        &b.url,
        home.path(),
        &jwt_env(Some(("TOLLGATE_NO_CACHE", "1".into()))),
    )
    .await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(run.stderr.contains("auth/jwt/login"), "{}", run.stderr);

    // A wrong secret_id: Vault refuses the login (exit 65), the secret is not echoed.
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "vault".to_string()),
            ("VAULT_ADDR", base.clone()),
            ("TOLLGATE_VAULT_AUTH", "approle".into()),
            ("TOLLGATE_VAULT_ROLE_ID", role_id),
            ("TOLLGATE_VAULT_SECRET_ID", "00000000-not-the-secret".into()),
            ("TOLLGATE_VAULT_ROLE", "tollgate".into()),
            ("TOLLGATE_NO_CACHE", "1".into()),
        ],
    )
    .await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(run.stderr.contains("auth/approle/login"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("00000000-not-the-secret"),
        "{}",
        run.stderr
    );

    // A cache hit never builds a Vault client: with OpenBao gone, the token-auth run above is served from
    // the cache, silently.
    let first = first_token;
    drop(bao);
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "vault".to_string()),
            ("VAULT_ADDR", base.clone()),
            ("VAULT_TOKEN", user_token.clone()),
            ("TOLLGATE_VAULT_ROLE", "tollgate".into()),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, first);
    assert_eq!(
        run.stderr, "",
        "a cache hit touches nothing and says nothing"
    );
}

// ------------------------------------------------------------------ sources without a cloud: Kubernetes auth
// in Vault, AWS container credentials, Azure VM instance metadata (all served on loopback by the fake IdP)

#[tokio::test]
async fn vault_kubernetes_auth_through_helper_and_broker() {
    // OpenBao's kubernetes auth method calls the TokenReview API at `kubernetes_host`: the fake IdP
    // answers it for the service-account tokens it minted.
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let bao = Bao::start().await;
    bao.enable_identity_tokens().await;
    bao.enable_auth("kubernetes").await;
    // OpenBao wants a cluster CA unless it runs in a pod; the API is plain http on loopback here, so the CA
    // is never used for a handshake, only parsed.
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("key"))
        .expect("ca");
    bao.post(
        "auth/kubernetes/config",
        json!({"kubernetes_host": idp.base_url(), "disable_local_ca_jwt": true,
               "kubernetes_ca_cert": ca.pem()}),
    )
    .await;
    bao.post(
        "auth/kubernetes/role/ci",
        json!({"bound_service_account_names": ["runner"], "bound_service_account_namespaces": ["ci"],
               "token_policies": "tollgate-id"}),
    )
    .await;
    let b = broker(&format!(
        "[[identity.oidc]]\nkind = \"vault\"\nissuer = \"{}\"\naudiences = [\"tollgate\"]\n",
        bao.issuer()
    ))
    .await;
    let home = tempfile::tempdir().expect("tmp");
    let sa_token = home.path().join("sa-token");
    let sa = |ns: &str, name: &str| {
        idp.mint(&MintRequest {
            sub: Some(format!("system:serviceaccount:{ns}:{name}")),
            aud: Some(json!(["https://kubernetes.default.svc"])),
            claims: json!({"kubernetes.io": {"namespace": ns,
                "serviceaccount": {"name": name, "uid": "5a1b2c3d-0000-4000-8000-00000000c1c1"}}})
            .as_object()
            .cloned()
            .expect("obj"),
            ..MintRequest::default()
        })
        .expect("mint")
    };
    std::fs::write(&sa_token, sa("ci", "runner")).expect("write");
    let env = |extra: Option<(&'static str, String)>| {
        let mut v = vec![
            ("TOLLGATE_IDENTITY", "vault".to_string()),
            ("VAULT_ADDR", bao.base().to_string()),
            ("TOLLGATE_VAULT_AUTH", "kubernetes".into()),
            ("TOLLGATE_VAULT_LOGIN_ROLE", "ci".into()),
            ("TOLLGATE_VAULT_JWT_FILE", sa_token.display().to_string()),
            ("TOLLGATE_VAULT_ROLE", "tollgate".into()),
        ];
        v.extend(extra);
        v
    };
    let run = helper(&b.url, home.path(), &env(None)).await;
    let c = token_works(&b, &run).await;
    // The Kubernetes login made an entity (no name given, so the `vault-entities` rule names it by id).
    assert!(
        c["sub"]
            .as_str()
            .is_some_and(|s| s.starts_with("vault-entity:")),
        "{c}"
    );
    assert!(
        idp.token_reviews() >= 1,
        "OpenBao asked the TokenReview API"
    );
    let sa_jwt = std::fs::read_to_string(&sa_token).expect("read");
    assert!(
        !b.log().contains(sa_jwt.trim()),
        "the service-account token never reaches the broker"
    );

    // A service account the Vault role does not bind: the login fails (exit 65), nothing minted.
    let before = b.mints();
    std::fs::write(&sa_token, sa("ci", "intruder")).expect("write");
    let run = helper(
        &b.url,
        home.path(),
        &env(Some(("TOLLGATE_NO_CACHE", "1".into()))),
    )
    .await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(
        run.stderr.contains("auth/kubernetes/login"),
        "{}",
        run.stderr
    );
    assert_eq!(b.mints(), before);

    // A token the TokenReview API does not authenticate (not signed by the cluster's key).
    std::fs::write(
        &sa_token,
        idp.mint(&MintRequest {
            defect: Some("unpublished-key".into()),
            ..k8s_claims("ci", "runner")
        })
        .expect("mint"),
    )
    .expect("write");
    let run = helper(
        &b.url,
        home.path(),
        &env(Some(("TOLLGATE_NO_CACHE", "1".into()))),
    )
    .await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
}

#[tokio::test]
async fn aws_container_credentials_through_helper_and_broker() {
    // ECS task roles and EKS Pod Identity: `AWS_CONTAINER_CREDENTIALS_FULL_URI` (loopback here, served by
    // the fake IdP) hands out keys — real IAM keys moto created, so moto's SigV4 check really runs.
    let moto = moto().await;
    let user = moto_iam_user(&moto.1);
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let auth_token = "container-auth-token-3f9e";
    idp.set_container_credentials(tollgate_testkit::idp::ContainerCredentials {
        access_key_id: user.access_key_id.clone(),
        secret_access_key: user.secret_access_key.clone(),
        session_token: None,
        authorization: auth_token.into(),
    });
    let b = broker(&format!(
        "[identity.aws]\nserver_id = \"tollgate-e2e\"\nendpoints = [{{ region = \"us-east-1\", url = \"{}\" }}]\n",
        moto.1
    ))
    .await;
    let home = tempfile::tempdir().expect("tmp");
    let base = |token: &str| {
        vec![
            ("TOLLGATE_IDENTITY", "aws".to_string()),
            ("TOLLGATE_AWS_STS_URL", format!("{}/", moto.1)),
            ("TOLLGATE_AWS_SERVER_ID", "tollgate-e2e".into()),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                idp.container_credentials_uri(),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", token.to_string()),
            ("TOLLGATE_NO_CACHE", "1".into()),
        ]
    };
    let run = helper(&b.url, home.path(), &base(auth_token)).await;
    let c = token_works(&b, &run).await;
    assert_eq!(c["sub"], "aws:builder");
    assert_eq!(idp.container_fetches(), 1);
    assert!(
        !run.stderr.contains(&user.secret_access_key) && !b.log().contains(&user.secret_access_key)
    );

    // EKS Pod Identity reads the authorization token from a file (it rotates), on every run.
    let token_file = home.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, format!("{auth_token}\n")).expect("write");
    let mut env = base("");
    env.retain(|(k, _)| *k != "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    env.push((
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        token_file.display().to_string(),
    ));
    let run = helper(&b.url, home.path(), &env).await;
    assert_eq!(token_works(&b, &run).await["sub"], "aws:builder");
    assert_eq!(idp.container_fetches(), 2);

    // A wrong authorization token: the endpoint refuses; the helper says so (exit 65) without the token.
    let run = helper(&b.url, home.path(), &base("wrong-token-value")).await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("container credentials endpoint answered 401"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("wrong-token-value"), "{}", run.stderr);

    // Plain http to anything but loopback or the ECS/EKS link-local agents is refused at load, before any
    // connection (the SDKs' rule: credentials must not cross a network in clear text).
    let mut env = base(auth_token);
    env.retain(|(k, _)| *k != "AWS_CONTAINER_CREDENTIALS_FULL_URI");
    env.push((
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://192.0.2.10/creds".into(),
    ));
    let run = helper(&b.url, home.path(), &env).await;
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn azure_vm_instance_metadata_through_helper_and_broker() {
    // The real IMDS address (169.254.169.254) is never called in tests: the helper's documented override
    // `TOLLGATE_AZURE_IMDS_ENDPOINT` points it at the fake IdP, which checks the request shape (the
    // `Metadata: true` header, `api-version`, `resource`) and answers like IMDS.
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let b = broker(&oidc_section(&idp)).await;
    let home = tempfile::tempdir().expect("tmp");
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "azure".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            ("TOLLGATE_AZURE_IMDS", "1".into()),
            ("TOLLGATE_AZURE_IMDS_ENDPOINT", idp.base_url()),
        ],
    )
    .await;
    let c = token_works(&b, &run).await;
    assert_eq!(c["sub"], format!("azure:{}", idp.managed_identity().oid));
    assert_eq!(idp.mi_tokens(), 1);

    // Without the opt-in, a machine with no other Azure identity is "not here" (exit 65), and nothing is
    // asked of any metadata address.
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_IDENTITY", "azure".into()),
            ("TOLLGATE_AZURE_RESOURCE", "api://tollgate".into()),
            ("TOLLGATE_AZURE_IMDS_ENDPOINT", idp.base_url()),
            ("TOLLGATE_NO_CACHE", "1".into()),
        ],
    )
    .await;
    assert_eq!(run.code, Some(65), "{}", run.stderr);
    assert_eq!(idp.mi_tokens(), 1);
}

// ------------------------------------------------------------------ one config variable each

/// `TOLLGATE_CONFIG` exported for the broker used to break every helper run (it parsed the broker's
/// file as its own: exit 64). Now the broker reads `TOLLGATE_BROKER_CONFIG` (the old name still works,
/// with one deprecation line) and the helper reads only `TOLLGATE_TOKEN_CONFIG`.
#[tokio::test]
async fn broker_and_helper_each_read_their_own_config_variable() {
    let b = Broker::start(BrokerSpec {
        extra_config: "[providers.demo]\nkind = \"demo\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{ provider = \"demo\" }]\n\n\
             [pricing]\nunpriced = \"charge\"\nunpriced_price = { input = \"1\", output = \"2\" }\n"
            .into(),
        policy: "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\", subject = \"dev\" }\nmodels = [\"*\"]\n".into(),
        env: vec![],
    })
    .await;
    let cfg = b.dir.path().join("broker.toml");
    let check = |var: Option<&str>| {
        let mut c = std::process::Command::new(bin("tollgate-broker"));
        c.arg("--check-config")
            .env_remove("TOLLGATE_CONFIG")
            .env_remove("TOLLGATE_BROKER_CONFIG")
            .current_dir(b.dir.path())
            .stdin(Stdio::null());
        if let Some(v) = var {
            c.env(v, &cfg);
        }
        let out = c.output().expect("run broker");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = check(Some("TOLLGATE_BROKER_CONFIG"));
    assert_eq!((code, stderr.as_str()), (Some(0), ""), "{stdout}");
    assert!(stdout.contains(": ok ("), "{stdout}");
    let (code, stdout, stderr) = check(Some("TOLLGATE_CONFIG"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
    assert_eq!(
        stderr,
        "tollgate-broker: warning: TOLLGATE_CONFIG is deprecated (the helper no longer reads it): \
         set TOLLGATE_BROKER_CONFIG instead\n"
    );
    let (code, _, stderr) = check(None);
    assert_eq!(code, Some(78), "{stderr}");

    // The helper, in a shell where TOLLGATE_CONFIG is exported for the broker: unaffected.
    let home = tempfile::tempdir().expect("tmp");
    let run = helper(
        &b.url,
        home.path(),
        &[
            ("TOLLGATE_CONFIG", cfg.display().to_string()),
            ("TOLLGATE_CREDENTIAL", support::CREDENTIAL.to_string()),
        ],
    )
    .await;
    assert_eq!(run.stderr, "", "{}", b.log());
    let claims = token_works(&b, &run).await;
    assert_eq!(claims["tollgate"]["principal"], "dev", "{claims}");

    // Its own variable names its own file.
    let helper_cfg = home.path().join("helper.toml");
    std::fs::write(
        &helper_cfg,
        format!("[profiles.work]\nbroker = \"{}\"\nttl_secs = 600\n", b.url),
    )
    .expect("write");
    let out = tokio::process::Command::new(bin("tollgate-token"))
        .env_clear()
        .env("HOME", home.path())
        .env("TOLLGATE_TOKEN_CONFIG", &helper_cfg)
        .env("TOLLGATE_CONFIG", &cfg)
        .env("TOLLGATE_PROFILE", "work")
        .env("TOLLGATE_CREDENTIAL", support::CREDENTIAL)
        .env("TOLLGATE_CACHE_DIR", home.path().join("cache2"))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run helper");
    let run = HelperRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let claims = token_works(&b, &run).await;
    let ttl = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
    // 600 s as the profile asks, not the broker's 3600 s maximum (`iat` is backdated a little for skew).
    assert!(
        (600..=660).contains(&ttl),
        "the profile's ttl_secs was used: {claims}"
    );
}
