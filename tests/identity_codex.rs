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
