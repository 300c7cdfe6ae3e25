//! The Anthropic Messages ingress (`/v1/messages`, what Claude Code speaks), end to end in process:
//! passed through to `anthropic` providers byte for byte with usage read on the side, translated for the
//! OpenAI family, governed and accounted like the other ingresses, and every error in Anthropic's shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod routing_support;

use routing_support::{Answer, Broker, start};
use serde_json::{Value, json};
use tollgate_testkit::mock::{Fault, MockConfig, spawn};

/// The settled usage of today for this broker's principal (flushed first: read-your-writes).
async fn usage(b: &Broker) -> Value {
    let v: Value = b
        .http
        .get(format!("{}/v1/tollgate/usage", b.url))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["usage"].clone()
}

/// A request as Claude Code sends it: token in `x-api-key` (and the bearer), `anthropic-version`,
/// `anthropic-beta`, `?beta=true`.
async fn claude_post(b: &Broker, path: &str, body: &Value) -> Answer {
    let r = b
        .http
        .post(format!("{}{path}?beta=true", b.url))
        .header("x-api-key", &b.token)
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .json(body)
        .send()
        .await
        .unwrap();
    Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

fn claude_body(model: &str, prompt: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 4096,
        "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        "tools": [{"name": "Bash", "description": "Run a command.",
                   "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}],
        "metadata": {"user_id": "user_x"}
    })
}

fn error_of(a: &Answer) -> (u16, String, String) {
    let v: Value = serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("{}", a.body));
    assert_eq!(v["type"], "error", "{}", a.body);
    (
        a.status,
        v["error"]["type"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
    )
}

/// A fixed upstream that answers every `POST /v1/messages` with the same SSE bytes and records the
/// requests' headers.
async fn fixed_anthropic(
    sse: &'static [u8],
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<axum::http::HeaderMap>>>,
) {
    use axum::routing::post;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/v1/messages",
        post(move |headers: axum::http::HeaderMap| {
            let seen = s2.clone();
            async move {
                seen.lock().unwrap().push(headers);
                ([("content-type", "text/event-stream")], sse)
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.ok() });
    (url, seen)
}

#[tokio::test]
async fn anthropic_pass_through_is_byte_for_byte_with_usage_read_on_the_side() {
    const SSE: &[u8] = include_bytes!("testdata/routing/anthropic_stream_tool.sse");
    let (url, seen) = fixed_anthropic(SSE).await;
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{url}\"\napi_key_env = \"ANTHROPIC_KEY\"\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"claude\" }}]\n"
    );
    let b = start(&cfg, &[("ANTHROPIC_KEY", "sk-ant-upstream")]).await;
    let a = claude_post(
        &b,
        "/v1/messages",
        &claude_body("claude-sonnet-4-5", "hi", true),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body.as_bytes(),
        SSE,
        "the stream reaches Claude Code unchanged"
    );
    assert_eq!(a.header("x-tollgate-provider"), Some("claude"));
    let h = seen.lock().unwrap()[0].clone();
    assert_eq!(h.get("x-api-key").unwrap(), "sk-ant-upstream");
    assert!(
        h.get("authorization").is_none(),
        "the Tollgate token never goes upstream"
    );
    let versions: Vec<_> = h.get_all("anthropic-version").iter().collect();
    assert_eq!(versions, ["2023-06-01"]);
    assert_eq!(
        h.get("anthropic-beta").unwrap(),
        "claude-code-20250219,interleaved-thinking-2025-05-14"
    );
    // message_start: 12 uncached + 2048 written + 8000 read; message_delta: 89 out.
    let u = usage(&b).await;
    assert_eq!(
        (
            u["requests"].as_i64(),
            u["input_tokens"].as_i64(),
            u["cached_input_tokens"].as_i64(),
            u["cache_write_tokens"].as_i64(),
            u["output_tokens"].as_i64()
        ),
        (Some(1), Some(10_060), Some(8000), Some(2048), Some(89)),
        "{u}"
    );
    assert_eq!(u["incomplete_streams"], 0);
}

#[tokio::test]
async fn anthropic_mock_streamed_and_whole_answers_are_accounted_as_reported() {
    let up = spawn(MockConfig {
        cached_tokens: 300,
        cache_creation_tokens: 40,
        input_tokens: Some(1000),
        ..MockConfig::default()
    })
    .await;
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"claude\" }}]\n",
        up.base_url()
    );
    let b = start(&cfg, &[]).await;
    let s = claude_post(
        &b,
        "/v1/messages",
        &claude_body("claude-opus-5-5", "USE_TOOL now", true),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    let evs = s.events();
    assert_eq!(evs.last().unwrap()["type"], "message_stop");
    assert!(
        evs.iter().any(|e| e["content_block"]["type"] == "tool_use"),
        "{}",
        s.body
    );
    let w = claude_post(
        &b,
        "/v1/messages",
        &claude_body("claude-opus-5-5", "hello", false),
    )
    .await;
    assert_eq!(w.status, 200, "{}", w.body);
    let v: Value = serde_json::from_str(&w.body).unwrap();
    assert_eq!(v["type"], "message");
    let rep = up.total_reported_usage();
    let u = usage(&b).await;
    assert_eq!(u["requests"], 2, "{u}");
    assert_eq!(u["input_tokens"].as_u64(), Some(rep.input_tokens), "{u}");
    assert_eq!(
        u["cached_input_tokens"].as_u64(),
        Some(rep.cached_tokens),
        "{u}"
    );
    assert_eq!(
        u["cache_write_tokens"].as_u64(),
        Some(rep.cache_creation_tokens),
        "{u}"
    );
    assert_eq!(u["output_tokens"].as_u64(), Some(rep.output_tokens), "{u}");
    // The limit reserved for is the limit forwarded: max_tokens as Claude Code sent it.
    for r in up.requests_to("/v1/messages") {
        assert_eq!(r.body["max_tokens"], 4096);
        assert_eq!(
            r.query.as_deref(),
            None,
            "`?beta=true` is the client's hint, not forwarded"
        );
    }
}

#[tokio::test]
async fn openai_chat_upstream_serves_a_translated_tool_turn() {
    let up = spawn(MockConfig {
        cached_tokens: 64,
        ..MockConfig::default()
    })
    .await;
    let cfg = format!(
        "[providers.local]\nkind = \"openai-chat\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"local\", model = \"llama3.1\" }}]\n",
        up.base_url()
    );
    let b = start(&cfg, &[]).await;
    let s = claude_post(
        &b,
        "/v1/messages",
        &claude_body("claude-opus-5-5", "USE_TOOL please", true),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.body);
    let evs = s.events();
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"message_start"), "{}", s.body);
    assert_eq!(types.last(), Some(&"message_stop"), "{}", s.body);
    let start_ev = evs
        .iter()
        .find(|e| e["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(start_ev["content_block"]["name"], "Bash");
    // The model that answered, as Anthropic reports it (the route's target).
    assert_eq!(evs[0]["message"]["model"], "llama3.1");
    let tool_id = start_ev["content_block"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let args: String = evs
        .iter()
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    let input: Value = serde_json::from_str(&args).unwrap();
    let delta = evs.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    // The request the Chat server saw: our model, max_tokens, the tool as a function.
    let req = &up.requests_to("/v1/chat/completions")[0];
    assert_eq!(req.body["model"], "llama3.1");
    assert_eq!(req.body["max_tokens"], 4096);
    assert_eq!(req.body["tools"][0]["function"]["name"], "Bash");
    assert_eq!(req.body["messages"][0]["role"], "system");
    assert_eq!(req.body["stream_options"]["include_usage"], true);

    // The tool's result goes back, not streamed this time.
    let mut body = claude_body("claude-opus-5-5", "USE_TOOL please", false);
    let msgs = body["messages"].as_array_mut().unwrap();
    msgs.push(json!({"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "Bash", "input": input}]}));
    msgs.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "tool-ran-ok\n"}]}));
    let w = claude_post(&b, "/v1/messages", &body).await;
    assert_eq!(w.status, 200, "{}", w.body);
    let v: Value = serde_json::from_str(&w.body).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "tool said: tool-ran-ok\n");
    assert_eq!(v["stop_reason"], "end_turn");
    let req = &up.requests_to("/v1/chat/completions")[1];
    assert_eq!(req.body["messages"][3]["role"], "tool");
    assert_eq!(req.body["messages"][3]["tool_call_id"], tool_id.as_str());

    let rep = up.total_reported_usage();
    let u = usage(&b).await;
    assert_eq!(u["requests"], 2, "{u}");
    assert_eq!(u["input_tokens"].as_u64(), Some(rep.input_tokens), "{u}");
    assert_eq!(
        u["cached_input_tokens"].as_u64(),
        Some(rep.cached_tokens),
        "{u}"
    );
    assert_eq!(u["output_tokens"].as_u64(), Some(rep.output_tokens), "{u}");
}

#[tokio::test]
async fn openai_and_azure_get_max_completion_tokens_and_a_failed_target_fails_over() {
    let (a, o) = (
        spawn(MockConfig::default()).await,
        spawn(MockConfig::default()).await,
    );
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\n\
         [providers.oai]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"claude\" }}, {{ provider = \"oai\", model = \"gpt-5.5\" }}]\n",
        a.base_url(),
        o.base_url()
    );
    let b = start(&cfg, &[]).await;
    a.push_fault(Fault::status(529));
    let s = claude_post(
        &b,
        "/v1/messages",
        &claude_body("claude-opus-5-5", "hello", true),
    )
    .await;
    assert_eq!((s.status, s.attempts()), (200, 2), "{}", s.body);
    assert_eq!(s.header("x-tollgate-target"), Some("oai/gpt-5.5"));
    assert_eq!(s.events().last().unwrap()["type"], "message_stop");
    let req = &o.requests_to("/v1/chat/completions")[0];
    assert_eq!(req.body["max_completion_tokens"], 4096);
    assert!(req.body.get("max_tokens").is_none());
    // A stream the upstream breaks after the first byte ends in Anthropic's `error` event.
    a.push_fault(Fault::drop_after_events(3));
    let s = claude_post(
        &b,
        "/v1/messages",
        &claude_body("claude-opus-5-5", "hello there friend", true),
    )
    .await;
    assert_eq!(s.status, 200);
    let last = s.events().last().cloned().unwrap();
    assert_eq!(last["type"], "error", "{}", s.body);
    assert_eq!(last["error"]["type"], "api_error");
}

#[tokio::test]
async fn errors_are_in_anthropics_shape_with_statuses_claude_code_acts_on() {
    let up = spawn(MockConfig::default()).await;
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"claude\" }}]\n\
         [[routes]]\nmodel = \"pricey\"\ntargets = [{{ provider = \"claude\" }}]\n\
         [[budgets]]\nid = \"tiny\"\nscope = \"principal\"\nmatch = \"dev\"\namount_usd = \"0.000001\"\nwindow = \"daily\"\n",
        up.base_url()
    );
    let b = start(&cfg, &[]).await;
    let body = claude_body("claude-opus-5-5", "hi", true);
    // No token: 401 before the body is read; Claude Code re-runs its apiKeyHelper on a 401.
    let r = b
        .http
        .post(format!("{}/v1/messages", b.url))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    let a = Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    };
    let (status, kind, message) = error_of(&a);
    assert_eq!((status, kind.as_str()), (401, "authentication_error"));
    assert!(message.contains("tollgate-token"), "{message}");
    // A wrong x-api-key: the same.
    let r = b
        .http
        .post(format!("{}/v1/messages", b.url))
        .header("x-api-key", "not-a-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    // The budget refuses: a 402, which Claude Code shows at once, in words, and does not retry.
    let a = claude_post(&b, "/v1/messages", &body).await;
    let (status, kind, message) = error_of(&a);
    assert_eq!((status, kind.as_str()), (402, "billing_error"), "{message}");
    assert!(message.contains("budget 'tiny'"), "{message}");
    assert_eq!(a.header("x-should-retry"), Some("false"));
    // A model no route serves, a body that is not JSON.
    let a = claude_post(&b, "/v1/messages", &claude_body("gpt-x", "hi", false)).await;
    assert_eq!(error_of(&a).1, "not_found_error");
    let r = b
        .http
        .post(format!("{}/v1/messages", b.url))
        .header("x-api-key", &b.token)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        up.requests_to("/v1/messages").is_empty(),
        "nothing reached the upstream"
    );
    // The OpenAI ingress keeps OpenAI's shape.
    let a = b
        .post("/v1/responses", json!({"model": "gpt-x", "input": "hi"}))
        .await;
    let v: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn upstream_client_errors_keep_anthropics_type_and_message() {
    let up = spawn(MockConfig::default()).await;
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"claude\" }}]\n",
        up.base_url()
    );
    let b = start(&cfg, &[]).await;
    up.push_fault(Fault {
        status: Some(400),
        message: Some("messages.1: roles must alternate".into()),
        ..Fault::default()
    });
    let a = claude_post(
        &b,
        "/v1/messages",
        &claude_body("claude-opus-5-5", "hi", false),
    )
    .await;
    let (status, kind, message) = error_of(&a);
    assert_eq!(
        (status, kind.as_str(), message.as_str()),
        (
            400,
            "invalid_request_error",
            "messages.1: roles must alternate"
        )
    );
    // Every target overloaded: a 5xx Claude Code retries.
    up.push_fault(Fault::status(529));
    let a = claude_post(
        &b,
        "/v1/messages",
        &claude_body("claude-opus-5-5", "hi", false),
    )
    .await;
    let (status, kind, _) = error_of(&a);
    assert_eq!((status, kind.as_str()), (502, "api_error"));
}

#[tokio::test]
async fn count_tokens_asks_anthropic_or_estimates_and_models_speak_anthropic_when_asked() {
    let (a, c) = (
        spawn(MockConfig {
            input_tokens: Some(777),
            ..MockConfig::default()
        })
        .await,
        spawn(MockConfig::default()).await,
    );
    let cfg = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\n\
         [providers.local]\nkind = \"openai-chat\"\nbase_url = \"{}\"\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"claude\" }}]\n\
         [[routes]]\nmodel = \"llama\"\ntargets = [{{ provider = \"local\" }}]\n",
        a.base_url(),
        c.base_url()
    );
    let b = start(&cfg, &[]).await;
    let body =
        json!({"model": "claude-opus-5-5", "messages": [{"role": "user", "content": "count me"}]});
    let r = claude_post(&b, "/v1/messages/count_tokens", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        json!({"input_tokens": 777})
    );
    assert_eq!(a.requests_to("/v1/messages/count_tokens").len(), 1);
    let body = json!({"model": "llama", "messages": [{"role": "user", "content": "count me"}]});
    let r = claude_post(&b, "/v1/messages/count_tokens", &body).await;
    let n = serde_json::to_vec(&body).unwrap().len().div_ceil(4) as u64;
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        json!({"input_tokens": n})
    );
    assert!(c.requests().is_empty(), "a Chat server has no token count");
    // Nothing was accounted: counting is free.
    assert_eq!(usage(&b).await["requests"], 0);

    let models = |anthropic: bool| {
        let mut r = b
            .http
            .get(format!("{}/v1/models", b.url))
            .header("x-api-key", &b.token);
        if anthropic {
            r = r.header("anthropic-version", "2023-06-01");
        }
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let v = models(true).await;
    assert_eq!(
        v["data"][0],
        json!({"type": "model", "id": "llama", "display_name": "llama", "created_at": "1970-01-01T00:00:00Z"})
    );
    assert_eq!(v["has_more"], false);
    assert_eq!(models(false).await["object"], "list");
}
