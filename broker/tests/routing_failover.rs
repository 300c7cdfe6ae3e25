//! Failover, Retry-After, circuit breaker and translation through mock upstreams with fault injection,
//! with the attempt headers checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod routing_support;

use routing_support::{closed_port, codex_body, start};
use std::time::{Duration, Instant};
use tollgate_testkit::{Fault, MockConfig, spawn};

fn two_openai(a: &str, b: &str, extra_a: &str) -> String {
    format!(
        "[routing]\nbreaker_failures = 2\nbreaker_cooldown_secs = 30\nretry_after_max_wait_secs = 0\n\
         [providers.a]\nkind = \"openai\"\nbase_url = \"{a}\"\n{extra_a}\n\
         [providers.b]\nkind = \"openai\"\nbase_url = \"{b}\"\n\
         [[routes]]\nmodel = \"gpt-5.5\"\ntargets = [{{ provider = \"a\" }}, {{ provider = \"b\" }}]\n"
    )
}

fn completed(ans: &routing_support::Answer) -> bool {
    ans.event_types().last().map(String::as_str) == Some("response.completed")
}

#[tokio::test]
async fn server_errors_fail_over_to_the_next_target() {
    let (a, b) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let broker = start(&two_openai(&a.base_url(), &b.base_url(), ""), &[]).await;
    a.push_faults([Fault::status(500)]);
    let ans = broker.responses("gpt-5.5", "hello").await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(ans.attempts(), 2);
    assert_eq!(ans.header("x-tollgate-provider"), Some("b"));
    assert_eq!(ans.header("x-tollgate-target"), Some("b"));
    assert!(completed(&ans));
    // The next request goes to `a` again (one failure does not open the breaker).
    let ans = broker.responses("gpt-5.5", "again").await;
    assert_eq!(
        (ans.attempts(), ans.header("x-tollgate-target")),
        (1, Some("a"))
    );
    assert_eq!(a.requests_to("/v1/responses").len(), 2);
}

#[tokio::test]
async fn n_times_500_then_200_on_one_target_chain() {
    let a = spawn(MockConfig::default()).await;
    let cfg = format!(
        "[providers.a]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [providers.a2]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"a\" }}, {{ provider = \"a2\" }}]\n",
        a.base_url(),
        a.base_url()
    );
    let broker = start(&cfg, &[]).await;
    a.push_faults([Fault::status(500), Fault::status(502)]);
    let ans = broker.responses("m", "x").await;
    assert_eq!(ans.status, 502, "both targets failed: {}", ans.body);
    assert_eq!(ans.attempts(), 2);
    assert!(ans.body.contains("upstream_unavailable"), "{}", ans.body);
    let ans = broker.responses("m", "x").await;
    assert_eq!((ans.status, ans.attempts()), (200, 1));
}

#[tokio::test]
async fn connection_refused_fails_over() {
    let b = spawn(MockConfig::default()).await;
    let dead = format!("http://127.0.0.1:{}/v1", closed_port().await);
    let broker = start(&two_openai(&dead, &b.base_url(), ""), &[]).await;
    let ans = broker.responses("gpt-5.5", "hi").await;
    assert_eq!((ans.status, ans.attempts()), (200, 2), "{}", ans.body);
    assert_eq!(ans.header("x-tollgate-target"), Some("b"));
}

/// A target that stalls, against each of its time limits: before the first byte (the first-byte timeout
/// fires, the request fails over: nothing has reached the client) and after it (the total timeout cuts
/// the stream: the client gets `response.failed`, no failover). The stall is a minute; the limits are
/// 300–500 ms.
#[tokio::test]
async fn a_stalled_target_is_cut_by_the_timeout_its_stall_falls_under() {
    struct Case {
        name: &'static str,
        limit: &'static str,
        stall: Fault,
        attempts: u32,
        last_event: &'static str,
        failed_over: bool,
    }
    let cases = [
        Case {
            name: "stall before the first byte",
            limit: "first_byte_timeout_ms = 300",
            stall: Fault::first_byte_delay_ms(60_000),
            attempts: 2,
            last_event: "response.completed",
            failed_over: true,
        },
        Case {
            name: "stall after the first byte",
            limit: "timeout_ms = 500",
            stall: Fault::event_delay_ms(60_000),
            attempts: 1,
            last_event: "response.failed",
            failed_over: false,
        },
    ];
    for c in cases {
        let (a, b) = (
            spawn(MockConfig::default()).await,
            spawn(MockConfig::default()).await,
        );
        let broker = start(&two_openai(&a.base_url(), &b.base_url(), c.limit), &[]).await;
        a.push_fault(c.stall);
        let t = Instant::now();
        let ans = broker.responses("gpt-5.5", "hi").await;
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{}: the limit ended it, not the upstream: {:?}",
            c.name,
            t.elapsed()
        );
        assert_eq!(
            (ans.status, ans.attempts()),
            (200, c.attempts),
            "{}: {}",
            c.name,
            ans.body
        );
        assert_eq!(
            ans.event_types().last().map(String::as_str),
            Some(c.last_event),
            "{}: {}",
            c.name,
            ans.body
        );
        assert_eq!(!b.requests().is_empty(), c.failed_over, "{}", c.name);
    }
}

#[tokio::test]
async fn mid_stream_drop_is_committed_and_ends_with_response_failed() {
    let (a, b) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let broker = start(&two_openai(&a.base_url(), &b.base_url(), ""), &[]).await;
    a.push_fault(Fault::drop_after_events(3));
    let ans = broker.responses("gpt-5.5", "hello there").await;
    assert_eq!((ans.status, ans.attempts()), (200, 1));
    assert_eq!(
        ans.event_types().last().map(String::as_str),
        Some("response.failed"),
        "{}",
        ans.body
    );
    assert!(b.requests().is_empty(), "no failover after the first byte");
    // The break counts against `a`'s breaker (2 failures open it in this config).
    a.push_fault(Fault::drop_after_events(3));
    let _ = broker.responses("gpt-5.5", "again").await;
    let ans = broker.responses("gpt-5.5", "third").await;
    assert_eq!(
        (ans.attempts(), ans.header("x-tollgate-target")),
        (1, Some("b")),
        "a is parked"
    );
}

#[tokio::test]
async fn rate_limit_parks_the_target_and_honours_retry_after() {
    let (a, b) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let broker = start(&two_openai(&a.base_url(), &b.base_url(), ""), &[]).await;
    a.push_fault(Fault::rate_limited(60));
    let ans = broker.responses("gpt-5.5", "1").await;
    assert_eq!(
        (ans.status, ans.attempts(), ans.header("x-tollgate-target")),
        (200, 2, Some("b"))
    );
    // `a` is parked for 60 s: straight to `b`.
    let ans = broker.responses("gpt-5.5", "2").await;
    assert_eq!(
        (ans.attempts(), ans.header("x-tollgate-target")),
        (1, Some("b"))
    );
    assert_eq!(a.requests_to("/v1/responses").len(), 1);
    broker.clock.advance(60);
    let ans = broker.responses("gpt-5.5", "3").await;
    assert_eq!(ans.header("x-tollgate-target"), Some("a"));
}

#[tokio::test]
async fn rate_limit_on_every_target_is_a_429_with_retry_after() {
    let a = spawn(MockConfig::default()).await;
    let cfg = format!(
        "[routing]\nretry_after_max_wait_secs = 0\n[providers.a]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"a\" }}]\n",
        a.base_url()
    );
    let broker = start(&cfg, &[]).await;
    a.push_fault(Fault::rate_limited(42));
    let ans = broker.responses("m", "x").await;
    assert_eq!(ans.status, 429, "{}", ans.body);
    assert_eq!(ans.header("retry-after"), Some("42"));
    assert_eq!(ans.attempts(), 1);
    // While parked, the broker answers itself without calling the upstream.
    let ans = broker.responses("m", "x").await;
    assert_eq!((ans.status, ans.attempts()), (429, 0));
    assert_eq!(a.requests().len(), 1);
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out() {
    let a = spawn(MockConfig::default()).await;
    let cfg = format!(
        "[routing]\nretry_after_max_wait_secs = 1\n[providers.a]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"a\" }}]\n",
        a.base_url()
    );
    let broker = start(&cfg, &[]).await;
    a.push_fault(Fault::rate_limited(1));
    // The park is on the broker's (fake) clock; let it pass while the proxy sleeps its bounded wait.
    let clock = broker.clock.clone();
    let mover = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        clock.advance(1);
    });
    let ans = broker.responses("m", "x").await;
    mover.await.unwrap();
    assert_eq!((ans.status, ans.attempts()), (200, 2), "{}", ans.body);
}

#[tokio::test]
async fn other_client_errors_are_not_retried() {
    let (a, b) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let broker = start(&two_openai(&a.base_url(), &b.base_url(), ""), &[]).await;
    a.push_fault(Fault {
        status: Some(400),
        message: Some("bad tool schema".into()),
        ..Fault::default()
    });
    let ans = broker.responses("gpt-5.5", "x").await;
    assert_eq!((ans.status, ans.attempts()), (400, 1));
    assert!(ans.body.contains("bad tool schema"), "{}", ans.body);
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn breaker_opens_after_repeated_failures_and_probes_after_cooldown() {
    let (a, b) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let broker = start(&two_openai(&a.base_url(), &b.base_url(), ""), &[]).await;
    a.push_faults([Fault::status(503), Fault::status(500)]);
    for _ in 0..2 {
        let ans = broker.responses("gpt-5.5", "x").await;
        assert_eq!(
            (ans.status, ans.attempts(), ans.header("x-tollgate-target")),
            (200, 2, Some("b"))
        );
    }
    // Open: `a` is skipped without a request.
    let ans = broker.responses("gpt-5.5", "x").await;
    assert_eq!(
        (ans.attempts(), ans.header("x-tollgate-target")),
        (1, Some("b"))
    );
    assert_eq!(a.requests().len(), 2);
    let gauge = |open: u8| format!("tollgate_breaker_open{{provider=\"a\",target=\"a\"}} {open}");
    let text = broker.state.metrics().render();
    assert!(
        text.contains(&gauge(1)),
        "breaker gauge shows open:\n{text}"
    );
    assert!(
        text.contains("tollgate_breaker_open{provider=\"b\",target=\"b\"} 0"),
        "{text}"
    );
    broker.clock.advance(29);
    let ans = broker.responses("gpt-5.5", "x").await;
    assert_eq!(ans.header("x-tollgate-target"), Some("b"));
    // Cooldown over: one probe goes to `a`; it succeeds and closes the breaker.
    broker.clock.advance(1);
    let ans = broker.responses("gpt-5.5", "x").await;
    assert_eq!(
        (ans.attempts(), ans.header("x-tollgate-target")),
        (1, Some("a"))
    );
    let ans = broker.responses("gpt-5.5", "x").await;
    assert_eq!(ans.header("x-tollgate-target"), Some("a"));
    assert_eq!(a.requests().len(), 4);
    let text = broker.state.metrics().render();
    assert!(
        text.contains(&gauge(0)),
        "breaker gauge shows closed again:\n{text}"
    );
}

#[tokio::test]
async fn weighted_targets_share_the_load() {
    let (a, b) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let cfg = format!(
        "[providers.a]\nkind = \"openai\"\nbase_url = \"{}\"\n[providers.b]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"a\", priority = 0, weight = 3 }}, {{ provider = \"b\", priority = 0, weight = 1 }}]\n",
        a.base_url(),
        b.base_url()
    );
    let broker = start(&cfg, &[]).await;
    for _ in 0..80 {
        let ans = broker
            .post("/v1/responses", codex_body("m", "x", false))
            .await;
        assert_eq!(ans.status, 200);
    }
    let (na, nb) = (a.requests().len(), b.requests().len());
    assert_eq!(na + nb, 80);
    assert!((45..=75).contains(&na), "a={na} b={nb}");
}

// ------------------------------------------------------------------ translating providers

#[tokio::test]
async fn openai_chat_provider_streams_a_tool_call_codex_can_run() {
    let up = spawn(MockConfig {
        cached_tokens: 7,
        ..MockConfig::default()
    })
    .await;
    let cfg = format!(
        "[providers.local]\nkind = \"openai-chat\"\nbase_url = \"{}\"\napi_key_env = \"LOCAL_KEY\"\n\
         [[routes]]\nmodel = \"local-coder\"\ntargets = [{{ provider = \"local\", model = \"qwen2.5-coder\" }}]\n",
        up.base_url()
    );
    let broker = start(&cfg, &[("LOCAL_KEY", "sk-local-test")]).await;
    let ans = broker.responses("local-coder", "please USE_TOOL now").await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(ans.header("x-tollgate-target"), Some("local/qwen2.5-coder"));
    let evs = ans.events();
    let done = evs.last().unwrap();
    assert_eq!(done["type"], "response.completed", "{}", ans.body);
    let call = done["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .expect("call");
    assert_eq!(call["name"], "exec_command");
    assert_eq!(call["arguments"], "{\"cmd\":\"echo tool-ran-ok\"}");
    assert_eq!(
        done["response"]["usage"]["input_tokens_details"]["cached_tokens"],
        7
    );
    // What the upstream saw: a chat request, Codex's hosted web_search removed (with a note the model sees),
    // apply_patch as a function, and tool_search as a function Codex itself answers.
    let req = &up.requests_to("/v1/chat/completions")[0];
    assert_eq!(req.header("authorization"), Some("Bearer sk-local-test"));
    assert_eq!(req.body["model"], "qwen2.5-coder");
    let tools: Vec<&str> = req.body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["exec_command", "apply_patch", "tool_search"]);
    assert!(req.header("session-id").is_none());
}

#[tokio::test]
async fn anthropic_provider_streams_a_tool_call_with_cache_usage() {
    let up = spawn(MockConfig {
        cached_tokens: 100,
        cache_creation_tokens: 20,
        input_tokens: Some(500),
        ..MockConfig::default()
    })
    .await;
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"ANTHROPIC_KEY\"\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"claude\" }}]\n",
        up.base_url()
    );
    let broker = start(&cfg, &[("ANTHROPIC_KEY", "sk-ant-test")]).await;
    let ans = broker
        .responses("claude-sonnet-4-5", "USE_TOOL please")
        .await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    let evs = ans.events();
    let done = evs.last().unwrap();
    assert_eq!(done["type"], "response.completed", "{}", ans.body);
    let out = done["response"]["output"].as_array().unwrap();
    assert_eq!(out[0]["type"], "function_call");
    assert_eq!(out[0]["arguments"], "{\"cmd\":\"echo tool-ran-ok\"}");
    let u = &done["response"]["usage"];
    assert_eq!(u["input_tokens"], 500);
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 100);
    assert_eq!(u["input_tokens_details"]["cache_write_tokens"], 20);
    let req = &up.requests_to("/v1/messages")[0];
    assert_eq!(req.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert!(req.header("authorization").is_none());
    assert_eq!(req.body["system"][0]["text"], "You are Codex.");
    // The tool result goes back as tool_result and the mock answers from it.
    let call_id = out[0]["call_id"].as_str().unwrap();
    let mut body = codex_body("claude-sonnet-4-5", "USE_TOOL please", false);
    let input = body["input"].as_array_mut().unwrap();
    input.push(out[0].clone());
    input.push(serde_json::json!({"type": "function_call_output", "call_id": call_id, "output": "tool-ran-ok\n"}));
    let ans = broker.post("/v1/responses", body).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    let v: serde_json::Value = serde_json::from_str(&ans.body).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "tool said: tool-ran-ok\n"
    );
}

#[tokio::test]
async fn anthropic_errors_are_relayed_in_openai_shape_and_5xx_fails_over() {
    let (up, backup) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\n\
         [providers.chat]\nkind = \"openai-chat\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"claude\", model = \"claude-sonnet-4-5\" }}, {{ provider = \"chat\", model = \"llama\" }}]\n",
        up.base_url(),
        backup.base_url()
    );
    let broker = start(&cfg, &[]).await;
    up.push_fault(Fault::status(529));
    let ans = broker.responses("m", "hi").await;
    assert_eq!(
        (ans.status, ans.attempts(), ans.header("x-tollgate-target")),
        (200, 2, Some("chat/llama"))
    );
    assert_eq!(
        ans.event_types().last().map(String::as_str),
        Some("response.completed")
    );
    up.push_fault(Fault {
        status: Some(400),
        message: Some("messages: roles must alternate".into()),
        ..Fault::default()
    });
    let ans = broker.responses("m", "hi").await;
    assert_eq!(ans.status, 400);
    let v: serde_json::Value = serde_json::from_str(&ans.body).unwrap();
    assert_eq!(v["error"]["message"], "messages: roles must alternate");
}

#[tokio::test]
async fn translated_mid_stream_drop_becomes_response_failed() {
    let up = spawn(MockConfig::default()).await;
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"claude\" }}]\n",
        up.base_url()
    );
    let broker = start(&cfg, &[]).await;
    up.push_fault(Fault::drop_after_events(4));
    let ans = broker.responses("m", "hello there friend").await;
    assert_eq!(ans.status, 200);
    assert_eq!(
        ans.event_types().last().map(String::as_str),
        Some("response.failed"),
        "{}",
        ans.body
    );
}

#[tokio::test]
async fn chat_completions_on_an_anthropic_only_route_is_a_clear_400() {
    let up = spawn(MockConfig::default()).await;
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"claude\" }}]\n",
        up.base_url()
    );
    let broker = start(&cfg, &[]).await;
    let ans = broker
        .post(
            "/v1/chat/completions",
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(ans.status, 400, "{}", ans.body);
    assert!(ans.body.contains("/v1/responses"), "{}", ans.body);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn translated_providers_fail_over_on_every_fault_kind() {
    // anthropic → openai-chat → openai, each a separate mock so faults are per provider.
    let (ant, chat, oa) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let cfg = format!(
        "[routing]\nbreaker_failures = 100\nretry_after_max_wait_secs = 0\n\
         [providers.ant]\nkind = \"anthropic\"\nbase_url = \"{}\"\nfirst_byte_timeout_ms = 300\n\
         [providers.chat]\nkind = \"openai-chat\"\nbase_url = \"{}\"\nfirst_byte_timeout_ms = 300\n\
         [providers.oa]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"ant\" }}, {{ provider = \"chat\" }}, {{ provider = \"oa\" }}]\n",
        ant.base_url(),
        chat.base_url(),
        oa.base_url()
    );
    let broker = start(&cfg, &[]).await;
    let cases: [(Fault, Fault); 4] = [
        (Fault::status(500), Fault::status(503)),
        (Fault::close(), Fault::close()),
        (
            Fault::first_byte_delay_ms(3_000),
            Fault::first_byte_delay_ms(3_000),
        ),
        (Fault::rate_limited(1), Fault::status(502)),
    ];
    for (i, (fa, fc)) in cases.into_iter().enumerate() {
        ant.push_fault(fa);
        chat.push_fault(fc);
        let ans = broker.responses("m", "hi").await;
        assert_eq!(
            (ans.status, ans.attempts(), ans.header("x-tollgate-target")),
            (200, 3, Some("oa")),
            "case {i}: {}",
            ans.body
        );
        assert!(completed(&ans), "case {i}");
        broker.clock.advance(1);
    }
    // Mid-stream drop on the translated chat stream: committed, ends in response.failed.
    let cfg = format!(
        "[providers.chat]\nkind = \"openai-chat\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"m\"\ntargets = [{{ provider = \"chat\" }}]\n",
        chat.base_url()
    );
    let broker = start(&cfg, &[]).await;
    chat.push_fault(Fault::drop_after_events(3));
    let ans = broker.responses("m", "hello there my friend").await;
    assert_eq!((ans.status, ans.attempts()), (200, 1));
    assert_eq!(
        ans.event_types().last().map(String::as_str),
        Some("response.failed"),
        "{}",
        ans.body
    );
}
