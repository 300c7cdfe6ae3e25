//! Upstreams behind the corporate proxy: a provider the outbound proxy settings (`HTTP_PROXY`, `NO_PROXY`)
//! send through a proxy is reached through it, one they exclude goes direct, from the same broker — for
//! every provider kind (each has its own path, key header and translation), streamed and not.
//!
//! The "proxy" is a mock upstream: an HTTP proxy receives a plain-HTTP request in absolute form
//! (`POST http://host/v1/responses`) and the mock answers it by its path, recording the `Host` it was
//! meant for. The proxied providers' host does not resolve (`.invalid`), so an answer at all proves the
//! request went through the proxy. The environment is the broker's injected one (the config's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod routing_support;

use routing_support::{codex_body, start};
use tollgate_testkit::{MockConfig, spawn};

/// One provider kind behind the proxy: its model, the path the upstream gets and how it sends the key.
struct Kind {
    kind: &'static str,
    model: &'static str,
    upstream_path: &'static str,
    key_header: &'static str,
    key_value: &'static str,
}

const KINDS: &[Kind] = &[
    Kind {
        kind: "openai",
        model: "gpt-corp",
        upstream_path: "/v1/responses",
        key_header: "authorization",
        key_value: "Bearer sk-corp-upstream",
    },
    Kind {
        kind: "openai-chat",
        model: "chat-corp",
        upstream_path: "/v1/chat/completions",
        key_header: "authorization",
        key_value: "Bearer sk-corp-upstream",
    },
    Kind {
        kind: "anthropic",
        model: "claude-corp",
        upstream_path: "/v1/messages",
        key_header: "x-api-key",
        key_value: "sk-corp-upstream",
    },
];

#[tokio::test]
async fn every_provider_kind_behind_the_proxy_goes_through_it_and_an_excluded_one_goes_direct() {
    let proxy = spawn(MockConfig::default()).await;
    let direct = spawn(MockConfig::default()).await;
    let proxy_addr = proxy.base_url().trim_end_matches("/v1").to_string();
    let mut cfg = String::new();
    for k in KINDS {
        cfg.push_str(&format!(
            "[providers.{kind}]\nkind = \"{kind}\"\nbase_url = \"http://{kind}.tollgate.invalid/v1\"\n\
             api_key_env = \"CORP_KEY\"\n\
             [[routes]]\nmodel = \"{model}\"\ntargets = [{{ provider = \"{kind}\" }}]\n",
            kind = k.kind,
            model = k.model,
        ));
    }
    cfg.push_str(&format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"gpt-local\"\ntargets = [{{ provider = \"local\" }}]\n",
        direct.base_url()
    ));
    let broker = start(
        &cfg,
        &[
            ("CORP_KEY", "sk-corp-upstream"),
            ("HTTP_PROXY", proxy_addr.as_str()),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    )
    .await;

    for k in KINDS {
        for stream in [false, true] {
            let ans = broker
                .post(
                    "/v1/responses",
                    codex_body(k.model, "through the proxy", stream),
                )
                .await;
            assert_eq!(ans.status, 200, "{} stream={stream}: {}", k.kind, ans.body);
            assert_eq!(ans.header("x-tollgate-provider"), Some(k.kind));
        }
        let got = proxy.requests_to(k.upstream_path);
        let got: Vec<_> = got
            .iter()
            .filter(|r| r.header("host") == Some(&format!("{}.tollgate.invalid", k.kind)))
            .collect();
        assert_eq!(got.len(), 2, "{}: both requests reached the proxy", k.kind);
        for r in got {
            assert_eq!(r.header(k.key_header), Some(k.key_value), "{}", k.kind);
        }
    }
    for stream in [false, true] {
        let ans = broker
            .post("/v1/responses", codex_body("gpt-local", "direct", stream))
            .await;
        assert_eq!(ans.status, 200, "stream={stream}: {}", ans.body);
        assert_eq!(ans.header("x-tollgate-provider"), Some("local"));
    }
    let direct_reqs = direct.requests_to("/v1/responses");
    assert_eq!(direct_reqs.len(), 2, "NO_PROXY hosts are reached directly");
    assert!(direct_reqs.iter().all(|r| r.body["model"] == "gpt-local"));
    assert_eq!(
        proxy.requests().len(),
        2 * KINDS.len(),
        "nothing else went through the proxy"
    );
}
