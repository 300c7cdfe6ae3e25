//! A Codex turn on a workload identity: the real Codex CLI runs the real helper with a Kubernetes-style
//! projected token (`oidc-file`, from the fake IdP), the broker verifies it against the issuer's discovery
//! and JWKS, maps it by policy, and proxies the turn to the mock upstream.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;
use tollgate_testkit::idp::{self, IdpConfig, MintRequest};
use tollgate_testkit::{MockConfig, spawn};

#[tokio::test(flavor = "multi_thread")]
async fn codex_turn_with_an_oidc_identity() {
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let mock = spawn(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await;
    let mut spec = BrokerSpec::with_mock(&mock.base_url(), &["gpt-5*"]);
    spec.extra_config.push_str(&format!(
        "\n[[identity.oidc]]\nissuer = \"{}\"\naudiences = [\"tollgate\"]\nbound_claims = {{ \"kubernetes.io/namespace\" = \"ci\" }}\n",
        idp.base_url()
    ));
    spec.policy = "[[rule]]\nname = \"ci\"\nmatch = { kind = \"oidc\", subject = \"system:serviceaccount:ci:*\" }\n\
                   principal = \"k8s:{attr.kubernetes.io/serviceaccount/name}\"\nteam = \"ci\"\nmodels = [\"gpt-5*\"]\n"
        .into();
    let broker = Broker::start(spec).await;

    let codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    // The helper's profile (Codex passes --broker, --credential-file and --cache-dir; the profile picks the
    // identity source, so the static credential file is ignored).
    let token_file = codex.home.path().join("sa-token");
    let jwt = idp
        .mint(&MintRequest {
            sub: Some("system:serviceaccount:ci:runner".into()),
            claims:
                json!({"kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "runner"}}})
                    .as_object()
                    .cloned()
                    .expect("obj"),
            ..MintRequest::default()
        })
        .expect("mint");
    std::fs::write(&token_file, jwt).expect("write");
    let cfg_dir = codex.home.path().join("xdg-config/tollgate");
    std::fs::create_dir_all(&cfg_dir).expect("dir");
    std::fs::write(
        cfg_dir.join("config.toml"),
        format!(
            "[profiles.default]\nidentity = \"oidc-file\"\noidc_file = {:?}\n",
            token_file.display().to_string()
        ),
    )
    .expect("profile");

    let run = codex
        .exec("say hello from the workload", Duration::from_secs(90))
        .await;
    assert_eq!(
        run.status,
        Some(0),
        "codex failed:\n{}\n--- broker log ---\n{}",
        run.all(),
        broker.log()
    );
    assert!(
        run.stdout
            .contains("mock reply to: say hello from the workload"),
        "{}",
        run.all()
    );
    let log = broker.log();
    assert!(
        log.contains("token minted principal=k8s:runner kind=oidc rule=ci"),
        "{log}"
    );
    assert!(!mock.requests_to("/v1/responses").is_empty());
}

// ------------------------------------------------------------------ aws, vault and azure turns
//
// Codex runs its auth command with its own environment, unchanged (codex-client.md §4), so the identity
// the machine has reaches the helper as environment variables passed to Codex (`CodexEnv::pass_env`;
// the harness clears everything else).

/// A broker fronting the mock upstream, with `identity` appended to its config and `policy` as its policy.
async fn broker_with(mock: &tollgate_testkit::MockHandle, identity: &str, policy: &str) -> Broker {
    let mut spec = BrokerSpec::with_mock(&mock.base_url(), &["gpt-5*"]);
    spec.extra_config.push('\n');
    spec.extra_config.push_str(identity);
    spec.policy = policy.into();
    Broker::start(spec).await
}

async fn mock_upstream() -> tollgate_testkit::MockHandle {
    spawn(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await
}

/// One Codex turn that must have gone through the broker on the grant `rule` gives `principal`: the
/// answer is the mock's, the broker minted for that principal by that rule, proxied the request for it,
/// and the token the helper handed Codex reports that principal with the request counted.
async fn turn_through_broker(
    broker: &Broker,
    codex: &CodexEnv,
    prompt: &str,
    principal: &str,
    kind: &str,
    rule: &str,
) -> CodexRun {
    let run = codex.exec(prompt, Duration::from_secs(90)).await;
    assert_eq!(
        run.status,
        Some(0),
        "codex failed:\n{}\n--- broker log ---\n{}",
        run.all(),
        broker.log()
    );
    assert!(
        run.stdout.contains(&format!("mock reply to: {prompt}")),
        "{}",
        run.all()
    );
    let log = broker.log();
    assert!(
        log.contains(&format!(
            "token minted principal={principal} kind={kind} rule={rule}"
        )),
        "{log}"
    );
    assert!(
        log.lines().any(
            |l| l.contains("request finished") && l.contains(&format!("principal={principal}"))
        ),
        "{log}"
    );
    let usage = broker.usage(&codex.cached_token()).await;
    assert_eq!(usage["principal"], principal, "{usage}");
    assert!(
        usage["usage"]["requests"].as_u64().unwrap_or(0) >= 1,
        "{usage}"
    );
    run
}

const AWS_POLICY: &str = "[[rule]]\nname = \"aws-users\"\nmatch = { kind = \"aws\", subject = \"arn:aws:iam::123456789012:user/*\" }\n\
    principal = \"aws:{attr.user}\"\nteam = \"builders\"\nmodels = [\"gpt-5*\"]\n\n\
    [[rule]]\nname = \"aws-roles\"\nmatch = { kind = \"aws\", subject = \"arn:aws:iam::123456789012:role/*\" }\n\
    principal = \"aws-role:{attr.role}/{attr.session}\"\nteam = \"workloads\"\nmodels = [\"gpt-5*\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn codex_turns_with_aws_identities_user_keys_and_assumed_role() {
    let moto = support::peers::moto().await;
    let user = support::peers::moto_iam_user(&moto.1);
    let mock = mock_upstream().await;
    let broker = broker_with(
        &mock,
        &format!(
            "[identity.aws]\nserver_id = \"tollgate-e2e\"\nendpoints = [{{ region = \"us-east-1\", url = \"{}\" }}]\n",
            moto.1
        ),
        AWS_POLICY,
    )
    .await;
    let aws_env = |codex: &mut CodexEnv| {
        codex
            .pass_env("TOLLGATE_IDENTITY", "aws")
            .pass_env("TOLLGATE_AWS_STS_URL", format!("{}/", moto.1))
            .pass_env("TOLLGATE_AWS_SERVER_ID", "tollgate-e2e")
            .pass_env("AWS_ACCESS_KEY_ID", user.access_key_id.clone())
            .pass_env("AWS_SECRET_ACCESS_KEY", user.secret_access_key.clone());
    };

    // IAM user keys: the helper signs GetCallerIdentity, the broker replays it to moto.
    let mut codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    aws_env(&mut codex);
    let run = turn_through_broker(
        &broker,
        &codex,
        "hello as an IAM user",
        "aws:builder",
        "aws",
        "aws-users",
    )
    .await;
    assert_no_secret(&run.all(), &[&user.secret_access_key], "codex output");

    // An assumed role: the helper calls sts:AssumeRole first and proves as the role session.
    let mut codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    aws_env(&mut codex);
    codex.pass_env(
        "TOLLGATE_AWS_ROLE_ARN",
        "arn:aws:iam::123456789012:role/workload",
    );
    let run = turn_through_broker(
        &broker,
        &codex,
        "hello as an assumed role",
        "aws-role:workload/tollgate-token",
        "aws",
        "aws-roles",
    )
    .await;
    assert_no_secret(&run.all(), &[&user.secret_access_key], "codex output");
    assert_no_secret(&broker.log(), &[&user.secret_access_key], "broker log");
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_turn_with_a_vault_identity_token_from_approle() {
    let bao = support::peers::Bao::start().await;
    bao.enable_identity_tokens().await;
    let (role_id, secret_id) = bao.approle("ci", "ci-bot").await;
    let mock = mock_upstream().await;
    let broker = broker_with(
        &mock,
        &format!(
            "[[identity.oidc]]\nkind = \"vault\"\nissuer = \"{}\"\naudiences = [\"tollgate\"]\n",
            bao.issuer()
        ),
        "[[rule]]\nname = \"vault\"\nmatch = { kind = \"vault\", subject = \"*\" }\n\
         principal = \"vault:{attr.entity_name}\"\nteam = \"ci\"\nmodels = [\"gpt-5*\"]\n",
    )
    .await;
    let mut codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    codex
        .pass_env("TOLLGATE_IDENTITY", "vault")
        .pass_env("VAULT_ADDR", bao.base())
        .pass_env("TOLLGATE_VAULT_AUTH", "approle")
        .pass_env("TOLLGATE_VAULT_ROLE_ID", role_id)
        .pass_env("TOLLGATE_VAULT_SECRET_ID", secret_id.clone())
        .pass_env("TOLLGATE_VAULT_ROLE", "tollgate");
    let run = turn_through_broker(
        &broker,
        &codex,
        "hello from vault",
        "vault:ci-bot",
        "vault",
        "vault",
    )
    .await;
    assert_no_secret(&run.all(), &[&secret_id], "codex output");
    assert_no_secret(&broker.log(), &[&secret_id], "broker log");
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_turn_with_an_azure_app_service_managed_identity() {
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let mock = mock_upstream().await;
    let mi = idp.managed_identity().clone();
    let broker = broker_with(
        &mock,
        &format!(
            "[[identity.azure]]\nauthority = \"{}\"\ntenants = [\"{}\"]\naudiences = [\"api://tollgate\"]\n",
            idp.authority(),
            mi.tenant
        ),
        &format!(
            "[[rule]]\nname = \"azure-mi\"\nmatch = {{ kind = \"azure\", subject = \"{}\" }}\n\
             principal = \"azure:{{subject}}\"\nteam = \"apps\"\nmodels = [\"gpt-5*\"]\n",
            mi.oid
        ),
    )
    .await;
    let mut codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    codex
        .pass_env("TOLLGATE_IDENTITY", "azure")
        .pass_env("TOLLGATE_AZURE_RESOURCE", "api://tollgate")
        .pass_env("IDENTITY_ENDPOINT", idp.identity_endpoint())
        .pass_env("IDENTITY_HEADER", idp.identity_header());
    let run = turn_through_broker(
        &broker,
        &codex,
        "hello from app service",
        &format!("azure:{}", mi.oid),
        "azure",
        "azure-mi",
    )
    .await;
    assert_eq!(
        idp.mi_tokens(),
        1,
        "one managed-identity token for the turn"
    );
    assert_no_secret(&run.all(), &[idp.identity_header()], "codex output");
    assert_no_secret(&broker.log(), &[idp.identity_header()], "broker log");
}

// ------------------------------------------------------------------ developer cloud sign-ins

/// A developer whose company signs them in to AWS through IAM Identity Center and to Azure through the
/// Azure CLI: Codex's auth command reuses that sign-in (`aws` with an SSO profile; `azure-cli`), no key
/// and no Tollgate sign-in on the laptop. The fakes are those of `tests/identity_developer.rs`.
#[tokio::test(flavor = "multi_thread")]
async fn codex_turns_on_developer_cloud_sign_ins() {
    use std::os::unix::fs::PermissionsExt;
    let moto = support::peers::moto().await;
    let user = support::peers::moto_iam_user(&moto.1);
    let role = support::peers::moto_assume_role(
        &moto.1,
        &user,
        "arn:aws:iam::123456789012:role/AWSReservedSSO_Developer_0123456789abcdef",
        "ada@example.com",
    );
    let portal = tollgate_testkit::sso_portal::spawn().await.expect("portal");
    let access_token = "aoaAAAAAGbsSSOaccesstoken-codex-0001";
    portal.assign(
        access_token,
        "123456789012",
        "Developer",
        tollgate_testkit::sso_portal::RoleCredentials {
            access_key_id: role.access_key_id.clone(),
            secret_access_key: role.secret_access_key.clone(),
            session_token: role.session_token.clone(),
            expiration_ms: 4_102_444_800_000,
        },
    );
    let idp = idp::spawn(IdpConfig::default()).await.expect("idp");
    let tenant = idp.managed_identity().tenant.clone();
    let mock = mock_upstream().await;
    let broker = broker_with(
        &mock,
        &format!(
            "[identity.aws]\nserver_id = \"tollgate-e2e\"\nendpoints = [{{ region = \"us-east-1\", url = \"{}\" }}]\n\n\
             [[identity.azure]]\nauthority = \"{}\"\ntenants = [\"{tenant}\"]\naudiences = [\"api://tollgate\"]\n",
            moto.1,
            idp.authority()
        ),
        "[[rule]]\nname = \"sso-developers\"\nmatch = { kind = \"aws\", subject = \"arn:aws:iam::123456789012:role/AWSReservedSSO_Developer_*\" }\n\
         principal = \"sso:{attr.session}\"\nteam = \"developers\"\nmodels = [\"gpt-5*\"]\n\n\
         [[rule]]\nname = \"azure-cli-people\"\nmatch = { kind = \"azure\", attributes = { appid = \"04b07795-8ddb-461a-bbee-02f9e1bf7b46\" } }\n\
         principal = \"person:{attr.upn}\"\nteam = \"developers\"\nmodels = [\"gpt-5*\"]\n",
    )
    .await;

    // AWS IAM Identity Center: `~/.aws/config` and the token `aws sso login` cached.
    let mut codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    let aws = codex.home.path().join(".aws");
    std::fs::create_dir_all(aws.join("sso/cache")).expect("mkdir");
    std::fs::write(
        aws.join("config"),
        "[profile dev]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Developer\n\n\
         [sso-session corp]\nsso_start_url = https://d-1234567890.awsapps.com/start\nsso_region = us-east-1\n",
    )
    .expect("write");
    std::fs::write(
        aws.join("sso/cache/ee0bfd2552fbd840c02cc48b6e823320543c450f.json"),
        json!({"startUrl": "https://d-1234567890.awsapps.com/start", "region": "us-east-1",
               "accessToken": access_token, "expiresAt": "2099-12-31T00:00:00Z"})
        .to_string(),
    )
    .expect("write");
    codex
        .pass_env("TOLLGATE_IDENTITY", "aws")
        .pass_env("AWS_PROFILE", "dev")
        .pass_env("AWS_ENDPOINT_URL_SSO", portal.url())
        .pass_env("TOLLGATE_AWS_STS_URL", format!("{}/", moto.1))
        .pass_env("TOLLGATE_AWS_SERVER_ID", "tollgate-e2e");
    let run = turn_through_broker(
        &broker,
        &codex,
        "hello from an IAM Identity Center sign-in",
        "sso:ada@example.com",
        "aws",
        "sso-developers",
    )
    .await;
    assert!(portal.calls() >= 1);
    let secrets = [
        access_token,
        role.secret_access_key.as_str(),
        role.session_token.as_str(),
    ];
    assert_no_secret(&run.all(), &secrets, "codex output");
    assert_no_secret(&broker.log(), &secrets, "broker log");

    // The Azure CLI: a stand-in `az` printing a person's Entra token for the broker's app.
    let token = idp
        .mint(&MintRequest {
            iss: Some(format!("https://sts.windows.net/{tenant}/")),
            aud: Some(json!("api://tollgate")),
            ttl_secs: Some(3600),
            claims: json!({"tid": tenant, "oid": "eeeeeeee-0000-0000-0000-00000000ada1",
                           "upn": "ada@contoso.com", "idtyp": "user", "scp": "user_impersonation",
                           "appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46"})
            .as_object()
            .cloned()
            .expect("obj"),
            ..MintRequest::default()
        })
        .expect("mint");
    let mut codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    let az = codex.home.path().join("az");
    std::fs::write(
        &az,
        format!(
            "#!/bin/sh\n[ \"$*\" = 'account get-access-token --output json --scope api://tollgate/.default' ] || exit 2\n\
             printf '%s' '{}'\n",
            json!({"accessToken": token, "expiresOn": "2099-12-31 00:00:00.000000", "expires_on": 4_102_444_800_u64,
                   "tenant": tenant, "tokenType": "Bearer"})
        ),
    )
    .expect("write");
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    codex
        .pass_env("TOLLGATE_IDENTITY", "azure-cli")
        .pass_env("TOLLGATE_AZURE_RESOURCE", "api://tollgate")
        .pass_env("TOLLGATE_AZ", az.display().to_string());
    let run = turn_through_broker(
        &broker,
        &codex,
        "hello from an Azure CLI sign-in",
        "person:ada@contoso.com",
        "azure",
        "azure-cli-people",
    )
    .await;
    assert_no_secret(&run.all(), &[&token], "codex output");
    assert_no_secret(&broker.log(), &[&token], "broker log");
}
