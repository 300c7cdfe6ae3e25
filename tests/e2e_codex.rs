//! The walking skeleton, end to end with the real Codex CLI: Codex → tollgate-token (auth command) →
//! broker (token exchange + proxy) → mock upstream speaking the Responses SSE. The plain and the tool turn
//! run on every pinned Codex version (`support::CODEX_VERSIONS`; one with `TOLLGATE_CODEX_VERSION`).

mod support;

use std::time::Duration;
use support::*;
use tollgate_testkit::{MockConfig, spawn};

const TURN: Duration = Duration::from_secs(90);

async fn setup(models: &[&str]) -> (tollgate_testkit::MockHandle, Broker) {
    let mock = spawn(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await;
    let broker = Broker::start(BrokerSpec::with_mock(&mock.base_url(), models)).await;
    (mock, broker)
}

/// One plain turn on `version` (Codex's default model when `model` is empty): completes, reaches the
/// upstream with our key and Codex's body, and the broker records exactly the usage the upstream reported.
/// Returns the upstream requests.
async fn plain_turn(version: &str, model: &str) -> Vec<tollgate_testkit::RecordedRequest> {
    let (mock, broker) = setup(&["*"]).await;
    let codex = CodexEnv::new(&broker.url, model, "").with_version(version);
    let run = codex.exec("say hello to the e2e test", TURN).await;
    assert_eq!(
        run.status,
        Some(0),
        "Codex {version}: codex failed:\n{}\n--- broker log ---\n{}",
        run.all(),
        broker.log()
    );
    assert!(
        run.stdout
            .contains("mock reply to: say hello to the e2e test"),
        "{}",
        run.all()
    );

    // The upstream saw our key, never the Tollgate token; Codex's body went through with its fields.
    let posts = mock.requests_to("/v1/responses");
    assert!(!posts.is_empty());
    for p in &posts {
        assert_eq!(
            p.header("authorization"),
            Some(format!("Bearer {UPSTREAM_KEY}").as_str())
        );
        if !model.is_empty() {
            assert_eq!(p.body["model"], model);
        }
        assert!(
            p.body.get("prompt_cache_key").is_some(),
            "unknown fields must survive the proxy"
        );
        assert!(
            p.body.get("client_metadata").is_some(),
            "unknown fields must survive the proxy"
        );
    }

    // Usage recorded by the broker equals what the upstream reported.
    let reported = mock.total_reported_usage();
    assert!(reported.input_tokens > 0);
    let token = broker.token().await;
    let usage = broker.usage(&token).await;
    assert_eq!(usage["principal"], "dev");
    assert_eq!(
        usage["usage"]["input_tokens"], reported.input_tokens,
        "{usage}"
    );
    assert_eq!(
        usage["usage"]["output_tokens"], reported.output_tokens,
        "{usage}"
    );
    assert_eq!(usage["usage"]["requests"], posts.len() as u64, "{usage}");

    // No secret in the broker's log: the upstream key, the static credential, any issued token.
    assert_no_secret(
        &broker.log(),
        &[UPSTREAM_KEY, CREDENTIAL, &token],
        "broker log",
    );
    posts
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_turn_completes_and_usage_is_recorded() {
    for version in codex_versions() {
        plain_turn(&version, "gpt-5.5").await;
    }
}

/// An `openai` upstream gets a responses-lite request exactly as Codex sent it (Codex's default model):
/// no `tools`, the `additional_tools` item first, and the header that says which shape it is.
#[tokio::test(flavor = "multi_thread")]
async fn responses_lite_turn_passes_through_untouched() {
    for version in codex_versions() {
        let posts = plain_turn(&version, "").await;
        let body = &posts[0].body;
        assert!(body.get("tools").is_none(), "Codex {version}: {body}");
        assert_eq!(
            body["input"][0]["type"], "additional_tools",
            "Codex {version}"
        );
        assert!(
            body["input"][0]["tools"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["type"] == "namespace")),
            "Codex {version}"
        );
        assert_eq!(
            posts[0].header("x-openai-internal-codex-responses-lite"),
            Some("true"),
            "Codex {version}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_call_turn_completes() {
    for version in codex_versions() {
        let (mock, broker) = setup(&["gpt-5*"]).await;
        let codex = CodexEnv::new(&broker.url, "gpt-5.5", "").with_version(&version);
        let run = codex.exec("please USE_TOOL now", TURN).await;
        assert_eq!(
            run.status,
            Some(0),
            "Codex {version}: codex failed:\n{}\n--- broker log ---\n{}",
            run.all(),
            broker.log()
        );
        // The mock asked Codex to run `echo tool-ran-ok`; Codex ran it and sent the output back.
        let posts = mock.requests_to("/v1/responses");
        assert!(
            posts.len() >= 2,
            "Codex {version}: expected the follow-up POST with the tool output, got {}",
            posts.len()
        );
        let last = &posts[posts.len() - 1].body;
        let input = last["input"].as_array().expect("input array");
        let output = input
            .iter()
            .find(|i| i["type"] == "function_call_output")
            .expect("function_call_output item");
        assert!(
            output["output"]
                .as_str()
                .unwrap_or_default()
                .contains("tool-ran-ok"),
            "Codex {version}: {output}"
        );
        assert!(run.stdout.contains("tool said:"), "{}", run.all());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_token_gets_401_then_helper_reruns_and_turn_completes() {
    let (mock, mut broker) = setup(&["gpt-5*"]).await;
    let codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    // First turn fills the helper's disk cache with a token from the current key.
    let run = codex.exec("first turn", TURN).await;
    assert_eq!(run.status, Some(0), "{}", run.all());
    assert_eq!(broker.mints(), 1);

    // The broker comes back with a new signing key: the cached token is now signed by a key it no longer
    // trusts. Codex gets it from the cache, is refused with 401, re-runs the helper, which must mint anew.
    broker.restart(true).await;
    mock.reset();
    let run = codex.exec("second turn after key loss", TURN).await;
    assert_eq!(
        run.status,
        Some(0),
        "codex failed:\n{}\n--- broker log ---\n{}",
        run.all(),
        broker.log()
    );
    assert!(
        run.stdout
            .contains("mock reply to: second turn after key loss"),
        "{}",
        run.all()
    );
    assert_eq!(broker.mints(), 2, "exactly one new mint after the 401");
}

#[tokio::test(flavor = "multi_thread")]
async fn second_codex_process_reuses_the_helper_cache() {
    let (_mock, broker) = setup(&["gpt-5*"]).await;
    let codex = CodexEnv::new(&broker.url, "gpt-5.5", "");
    for i in 0..2 {
        let run = codex.exec(&format!("turn {i}"), TURN).await;
        assert_eq!(run.status, Some(0), "{}", run.all());
    }
    assert_eq!(
        broker.mints(),
        1,
        "the second Codex process must be served from the helper's disk cache"
    );
    let cached: Vec<_> = std::fs::read_dir(&codex.cache_dir)
        .expect("cache dir")
        .flatten()
        .collect();
    assert!(
        cached
            .iter()
            .any(|e| e.path().extension().is_some_and(|x| x == "json"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn model_outside_the_grant_fails_with_a_message_naming_it() {
    let (mock, broker) = setup(&["gpt-5*"]).await;
    // Codex's own retry settings: a 403 was retried five times (~7 s) before Codex showed it; the 400 the
    // broker answers is shown at once.
    let codex = CodexEnv::new(&broker.url, "o3-forbidden", "");
    let started = std::time::Instant::now();
    let run = codex.exec("this must be refused", TURN).await;
    let took = started.elapsed();
    assert_ne!(run.status, Some(0), "{}", run.all());
    assert!(
        run.stderr.contains("o3-forbidden") && run.stderr.contains("not allowed"),
        "{}",
        run.all()
    );
    // Codex prints a 400's body verbatim: the code says what happened.
    assert!(run.stderr.contains("model_not_allowed"), "{}", run.all());
    assert!(
        took < std::time::Duration::from_secs(5),
        "Codex retried the refusal for {took:?}: {}",
        run.all()
    );
    assert!(
        mock.requests_to("/v1/responses").is_empty(),
        "a refused model must never reach the upstream"
    );
}

/// Codex's `model_catalog_url` pointed at the broker's catalog (`GET /v1/codex/models`), with a provider
/// that has no auth command (an `env_key` token, as with `gateway_oauth`: Codex then asks only the catalog
/// URL). Codex asks with its `client_version`, reads the operator's entry (its `base_instructions` become
/// the system prompt the upstream sees, so no "metadata not found" warning), and an entry that needs a newer
/// Codex is not served to it.
#[tokio::test(flavor = "multi_thread")]
async fn model_catalog_url_serves_the_operators_entry_to_codex() {
    const INSTR: &str = "TOLLGATE-CATALOG-BASE-INSTRUCTIONS";
    for version in codex_versions() {
        let mock = spawn(MockConfig {
            api_key: Some(UPSTREAM_KEY.into()),
            ..MockConfig::default()
        })
        .await;
        let mut spec = BrokerSpec::with_mock(&mock.base_url(), &["proxy-model", "future-model"]);
        let entry = |slug: &str, extra: &str| {
            format!(
                "[models.{slug:?}.codex]\ndisplay_name = \"Proxy Model\"\nsupported_reasoning_levels = []\n\
                 shell_type = \"shell_command\"\nvisibility = \"list\"\nsupported_in_api = true\npriority = 1\n\
                 base_instructions = \"{INSTR}\"\nsupport_verbosity = false\n\
                 truncation_policy = {{ mode = \"bytes\", limit = 10000 }}\nexperimental_supported_tools = []\n{extra}\n"
            )
        };
        spec.extra_config.push_str(&entry("proxy-model", ""));
        spec.extra_config.push_str(&entry(
            "future-model",
            "minimal_client_version = \"99.0.0\"",
        ));
        spec.extra_config.push_str(&entry("not-granted", ""));
        let broker = Broker::start(spec).await;
        let token = broker.token().await;

        let mut codex = CodexEnv::new(&broker.url, "proxy-model", "").with_version(&version);
        let config = format!(
            "model = \"proxy-model\"\nmodel_provider = \"tollgate\"\n\n[model_providers.tollgate]\nname = \"Tollgate\"\n\
             base_url = \"{url}/v1\"\nwire_api = \"responses\"\nenv_key = \"TOLLGATE_E2E_TOKEN\"\n\
             model_catalog_url = \"{url}/v1/codex/models\"\n",
            url = broker.url
        );
        std::fs::write(codex.codex_home().join("config.toml"), config).expect("codex config");
        codex.pass_env("TOLLGATE_E2E_TOKEN", token.clone());
        let run = codex.exec("say hello to the catalog", TURN).await;
        assert_eq!(
            run.status,
            Some(0),
            "Codex {version}:\n{}\n--- broker log ---\n{}",
            run.all(),
            broker.log()
        );
        assert!(
            !run.stderr.contains("metadata for `proxy-model` not found"),
            "Codex {version} did not use the catalog entry:\n{}",
            run.all()
        );
        let asked: Vec<String> = broker
            .log()
            .lines()
            .filter(|l| l.contains("model list answered") && l.contains("codex_catalog"))
            .map(str::to_string)
            .collect();
        assert!(
            asked
                .iter()
                .any(|l| l.contains(&format!("client_version=Some(\"{version}\")"))),
            "Codex {version} never asked the catalog with its version: {asked:?}"
        );
        let posts = mock.requests_to("/v1/responses");
        assert!(!posts.is_empty());
        let sent = posts[0].body.to_string();
        assert!(
            sent.contains(INSTR),
            "Codex {version}: the catalog's base_instructions did not reach the upstream"
        );

        // What Codex read: the granted entry only (not the one for a newer Codex, not the ungranted one).
        let r = reqwest::Client::new()
            .get(format!(
                "{}/v1/codex/models?client_version={version}",
                broker.url
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("catalog");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        let slugs: Vec<&str> = v["models"]
            .as_array()
            .expect("models")
            .iter()
            .filter_map(|m| m["slug"].as_str())
            .collect();
        assert_eq!(slugs, vec!["proxy-model"], "Codex {version}: {v}");
        assert!(v.get("data").is_none(), "Codex's shape alone: {v}");
    }
}
