//! Upstreams behind the corporate proxy: a provider the system's proxy settings (`HTTP_PROXY`, `NO_PROXY`)
//! send through a proxy is reached through it, one they exclude goes direct, from the same broker.
//!
//! The "proxy" is a mock upstream: an HTTP proxy receives a plain-HTTP request in absolute form
//! (`POST http://host/v1/responses`) and the mock answers it by its path, recording the `Host` it was
//! meant for. The proxied provider's host does not resolve (`.invalid`), so an answer at all proves the
//! request went through the proxy. The environment is the broker's injected one (the config's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod routing_support;

use routing_support::{codex_body, start};
use tollgate_testkit::{MockConfig, spawn};

#[tokio::test]
async fn a_provider_behind_the_proxy_goes_through_it_and_an_excluded_one_goes_direct() {
    let proxy = spawn(MockConfig::default()).await;
    let direct = spawn(MockConfig::default()).await;
    let proxy_addr = proxy.base_url().trim_end_matches("/v1").to_string();
    let broker = start(
        &format!(
            "[providers.corp]\nkind = \"openai\"\nbase_url = \"http://llm.tollgate.invalid/v1\"\napi_key_env = \"CORP_KEY\"\n\
             [providers.local]\nkind = \"openai\"\nbase_url = \"{}\"\n\
             [[routes]]\nmodel = \"gpt-corp\"\ntargets = [{{ provider = \"corp\" }}]\n\
             [[routes]]\nmodel = \"gpt-local\"\ntargets = [{{ provider = \"local\" }}]\n",
            direct.base_url()
        ),
        &[
            ("CORP_KEY", "sk-corp-upstream"),
            ("HTTP_PROXY", proxy_addr.as_str()),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    )
    .await;

    for stream in [false, true] {
        let ans = broker
            .post(
                "/v1/responses",
                codex_body("gpt-corp", "through the proxy", stream),
            )
            .await;
        assert_eq!(ans.status, 200, "stream={stream}: {}", ans.body);
        assert_eq!(ans.header("x-tollgate-provider"), Some("corp"));
        let ans = broker
            .post("/v1/responses", codex_body("gpt-local", "direct", stream))
            .await;
        assert_eq!(ans.status, 200, "stream={stream}: {}", ans.body);
        assert_eq!(ans.header("x-tollgate-provider"), Some("local"));
    }

    let proxied = proxy.requests_to("/v1/responses");
    assert_eq!(proxied.len(), 2, "both corp requests reached the proxy");
    for r in &proxied {
        assert_eq!(r.header("host"), Some("llm.tollgate.invalid"));
        assert_eq!(r.body["model"], "gpt-corp");
        assert_eq!(r.header("authorization"), Some("Bearer sk-corp-upstream"));
    }
    let direct_reqs = direct.requests_to("/v1/responses");
    assert_eq!(direct_reqs.len(), 2, "NO_PROXY hosts are reached directly");
    assert!(direct_reqs.iter().all(|r| r.body["model"] == "gpt-local"));
}
