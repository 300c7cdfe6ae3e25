//! The output-limit budget bypass, end to end through a real broker: a client that names a small limit in
//! one field (to get a small reservation) and a large or no limit in another cannot make the provider
//! produce more than it reserved for. Each case is one of the reproduced bypasses (issue: "A client can
//! spend about twice its budget by choosing which output-limit field to send"); the provider's recorded
//! request is checked for exactly the reserved limit, on every provider kind the request can reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults;

use faults::*;
use serde_json::{Value, json};
use std::sync::Arc;
use tollgate_broker::clock::SystemClock;
use tollgate_testkit::mock::{self, MockConfig};

/// One broker, three provider kinds on one mock: `a-*` → anthropic, `c-*` → openai-chat, `o-*` → openai.
async fn broker(dir: &std::path::Path, mock_base: &str) -> Broker {
    let path = write_config(dir, &[]);
    let mut text = std::fs::read_to_string(&path).expect("config");
    text = text.replace("[[routes]]\nmodel = \"*\"\ntargets = []\n", "");
    for (kind, prefix) in [("anthropic", "a"), ("openai-chat", "c"), ("openai", "o")] {
        let name = kind.replace('-', "_");
        text.push_str(&format!(
            "[providers.{name}]\nkind = \"{kind}\"\nbase_url = \"{mock_base}\"\napi_key_env = \"FAULT_UPSTREAM_KEY\"\n\
             [[routes]]\nmodel = \"{prefix}-*\"\ntargets = [{{ provider = \"{name}\" }}]\n"
        ));
    }
    std::fs::write(&path, text).expect("config");
    Broker::start(&load_config(&path), Arc::new(SystemClock)).await
}

async fn post(b: &Broker, token: &str, path: &str, body: Value) -> (u16, String) {
    let r = client()
        .post(b.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("send");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The limit fields of the last request the mock received.
fn upstream_limits(m: &mock::MockHandle) -> Value {
    let r = m.requests().pop().expect("a request reached the mock");
    let b = &r.body;
    json!({
        "max_output_tokens": b["max_output_tokens"],
        "max_completion_tokens": b["max_completion_tokens"],
        "max_tokens": b["max_tokens"],
        "thinking": b["thinking"],
    })
}

#[tokio::test]
async fn every_provider_receives_exactly_the_limit_admission_reserved_for() {
    let m = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), &m.base_url()).await;
    let token = mint(&b.base()).await;
    let input = json!([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]);

    // Anthropic, `max_output_tokens: 1` with high reasoning effort: was forwarded as max_tokens 20480.
    let (s, body) = post(
        &b,
        &token,
        "/v1/responses",
        json!({"model": "a-1", "input": input, "max_output_tokens": 1, "reasoning": {"effort": "high"}}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let got = upstream_limits(&m);
    assert_eq!(got["max_tokens"], 1, "{got}");
    assert_eq!(got["thinking"], Value::Null, "no room for thinking: {got}");

    // Anthropic, `max_tokens: 1` on the Responses ingress: was forwarded as the 32000 default.
    let (s, body) = post(
        &b,
        &token,
        "/v1/responses",
        json!({"model": "a-2", "input": input, "max_tokens": 1}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(upstream_limits(&m)["max_tokens"], 1);

    // A Chat-compatible upstream, `max_tokens: 1` on the Responses ingress: was forwarded with no limit.
    let (s, body) = post(
        &b,
        &token,
        "/v1/responses",
        json!({"model": "c-1", "input": input, "max_tokens": 1}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let got = upstream_limits(&m);
    assert_eq!(got["max_tokens"], 1, "{got}");
    assert_eq!(got["max_completion_tokens"], Value::Null, "{got}");

    // Chat ingress, `max_output_tokens: 1` plus `max_completion_tokens: 100000`: the upstream honoured 100000.
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (model, field) in [("o-1", "max_completion_tokens"), ("c-2", "max_tokens")] {
        let (s, body) = post(
            &b,
            &token,
            "/v1/chat/completions",
            json!({"model": model, "messages": msgs, "max_output_tokens": 1, "max_completion_tokens": 100000}),
        )
        .await;
        assert_eq!(s, 200, "{model}: {body}");
        let got = upstream_limits(&m);
        assert_eq!(got[field], 1, "{model}: {got}");
        let others = ["max_output_tokens", "max_completion_tokens", "max_tokens"]
            .into_iter()
            .filter(|f| *f != field && !got[*f].is_null())
            .count();
        assert_eq!(others, 0, "{model}: one limit field only: {got}");
    }

    // Responses pass-through, two fields: the smaller one, as `max_output_tokens` only.
    let (s, body) = post(
        &b,
        &token,
        "/v1/responses",
        json!({"model": "o-2", "input": input, "max_output_tokens": 5000, "max_tokens": 3}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let got = upstream_limits(&m);
    assert_eq!(got["max_output_tokens"], 3, "{got}");
    assert_eq!(got["max_tokens"], Value::Null, "{got}");
}
