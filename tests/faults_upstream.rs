//! Fault suite, upstream side: 500, 429, connection refused, timeout and a stream cut mid-way. Each
//! test ends with the documented behaviour — fail over before the first byte when another target
//! exists, else an OpenAI-shaped 5xx; a cut stream ends with `response.failed` — and nothing lost: every
//! answer the upstream completed is accounted exactly once, and nothing is charged for failed attempts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults;

use faults::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_broker::clock::SystemClock;
use tollgate_testkit::mock::{self, Fault, MockConfig};

async fn two_target_broker(
    dir: &std::path::Path,
    first: String,
    second: String,
    timeout_ms: u64,
) -> Broker {
    let cfg = write_config(
        dir,
        &[
            ProviderSpec {
                name: "primary",
                base_url: first,
                timeout_ms,
            },
            ProviderSpec {
                name: "secondary",
                base_url: second,
                timeout_ms,
            },
        ],
    );
    Broker::start(&load_config(&cfg), Arc::new(SystemClock)).await
}

async fn one_target_broker(dir: &std::path::Path, base: String, timeout_ms: u64) -> Broker {
    let cfg = write_config(
        dir,
        &[ProviderSpec {
            name: "only",
            base_url: base,
            timeout_ms,
        }],
    );
    Broker::start(&load_config(&cfg), Arc::new(SystemClock)).await
}

/// Usage the broker accounted equals what the mock reported for completed answers.
async fn assert_accounted(
    broker: &Broker,
    token: &str,
    mocks: &[&mock::MockHandle],
    requests: u64,
) {
    let u = usage(&broker.base(), token).await;
    let (mut input, mut output) = (0, 0);
    for m in mocks {
        let r = m.total_reported_usage();
        input += r.input_tokens;
        output += r.output_tokens;
    }
    assert_eq!(u["requests"], requests, "accounted requests: {u}");
    assert_eq!(u["input_tokens"], input, "input tokens: {u}");
    assert_eq!(u["output_tokens"], output, "output tokens: {u}");
}

#[tokio::test]
async fn upstream_500_fails_over_then_502_when_alone() {
    let a = mock::spawn(MockConfig::default()).await;
    let b = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = two_target_broker(dir.path(), a.base_url(), b.base_url(), 5_000).await;
    let token = mint(&broker.base()).await;

    a.push_fault(Fault::status(500));
    let (status, headers, body) = responses(&broker.base(), &token, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-provider"], "secondary");
    assert_eq!(headers["x-tollgate-attempts"], "2");
    assert_eq!(a.requests().len(), 1);
    assert_eq!(b.requests().len(), 1);
    assert_accounted(&broker, &token, &[&a, &b], 1).await;

    // Alone: the 500 becomes an OpenAI-shaped 502 and nothing is charged.
    let dir2 = tempfile::tempdir().unwrap();
    let c = mock::spawn(MockConfig::default()).await;
    let alone = one_target_broker(dir2.path(), c.base_url(), 5_000).await;
    let token2 = mint(&alone.base()).await;
    c.push_fault(Fault::status(500));
    let (status, _, body) = responses(&alone.base(), &token2, false).await;
    assert_eq!(status, 502, "{body}");
    assert_openai_error(&body);
    assert_accounted(&alone, &token2, &[], 0).await;
}

#[tokio::test]
async fn upstream_429_fails_over_and_alone_is_not_charged() {
    let a = mock::spawn(MockConfig::default()).await;
    let b = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = two_target_broker(dir.path(), a.base_url(), b.base_url(), 5_000).await;
    let token = mint(&broker.base()).await;

    a.push_fault(Fault::rate_limited(7));
    let (status, headers, body) = responses(&broker.base(), &token, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-provider"], "secondary");
    assert!(body.contains("response.completed"), "{body}");
    assert_accounted(&broker, &token, &[&a, &b], 1).await;

    // Both rate-limited: an error the client can act on, never a hang, nothing charged.
    a.push_fault(Fault::rate_limited(7));
    b.push_fault(Fault::rate_limited(7));
    let (status, _, body) = responses(&broker.base(), &token, false).await;
    assert!([429, 502, 503].contains(&status), "status {status}: {body}");
    assert_openai_error(&body);
    assert_accounted(&broker, &token, &[&a, &b], 1).await;
}

#[tokio::test]
async fn connection_refused_fails_over_fast() {
    let b = mock::spawn(MockConfig::default()).await;
    let dead = format!("http://{}/v1", refused_addr());
    let dir = tempfile::tempdir().unwrap();
    let broker = two_target_broker(dir.path(), dead.clone(), b.base_url(), 5_000).await;
    let token = mint(&broker.base()).await;

    let t = Instant::now();
    let (status, headers, body) = responses(&broker.base(), &token, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-attempts"], "2");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_accounted(&broker, &token, &[&b], 1).await;

    let dir2 = tempfile::tempdir().unwrap();
    let alone = one_target_broker(dir2.path(), dead, 5_000).await;
    let token2 = mint(&alone.base()).await;
    let (status, _, body) = responses(&alone.base(), &token2, false).await;
    assert_eq!(status, 502, "{body}");
    assert_openai_error(&body);
}

#[tokio::test]
async fn upstream_timeout_fails_over_then_504_when_alone() {
    let a = mock::spawn(MockConfig::default()).await;
    let b = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = two_target_broker(dir.path(), a.base_url(), b.base_url(), 300).await;
    let token = mint(&broker.base()).await;

    a.push_fault(Fault::first_byte_delay_ms(30_000));
    let t = Instant::now();
    let (status, headers, body) = responses(&broker.base(), &token, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tollgate-provider"], "secondary");
    assert!(
        // Far below the 30 s stall: the 300 ms first-byte timeout fired and the secondary answered.
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );

    let dir2 = tempfile::tempdir().unwrap();
    let c = mock::spawn(MockConfig::default()).await;
    let alone = one_target_broker(dir2.path(), c.base_url(), 300).await;
    let token2 = mint(&alone.base()).await;
    c.push_fault(Fault::first_byte_delay_ms(30_000));
    let (status, _, body) = responses(&alone.base(), &token2, false).await;
    assert_eq!(status, 504, "{body}");
    assert_openai_error(&body);
    assert_accounted(&alone, &token2, &[], 0).await;
}

#[tokio::test]
async fn stream_cut_mid_way_ends_with_response_failed_and_is_accounted() {
    let a = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = one_target_broker(dir.path(), a.base_url(), 5_000).await;
    let token = mint(&broker.base()).await;

    a.push_fault(Fault::drop_after_events(4));
    let t = Instant::now();
    let (status, _, body) = responses(&broker.base(), &token, true).await;
    assert_eq!(status, 200, "the first byte was already relayed");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "hung for {:?}",
        t.elapsed()
    );
    // The events that arrived were relayed unchanged, then a clean terminal failure for the client.
    assert!(body.contains("event: response.created"), "{body}");
    assert!(body.trim_end().ends_with('}'), "{body}");
    let last = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .unwrap_or("");
    assert!(
        last.contains("event: response.failed"),
        "last event: {last}"
    );
    assert!(!body.contains("response.completed"));

    // The request is accounted once, as an incomplete stream (no usage reached us).
    // It is charged its input estimate (the store records the tokens it charged).
    let u1 = usage(&broker.base(), &token).await;
    assert_eq!(u1["requests"], 1, "{u1}");
    assert_eq!(u1["incomplete_streams"], 1, "{u1}");
    assert!(u1["input_tokens"].as_u64() > Some(0), "{u1}");

    // The next stream is whole and accounted with the upstream's usage.
    let (status, _, body) = responses(&broker.base(), &token, true).await;
    assert_eq!(status, 200);
    assert!(body.contains("response.completed"));
    let u = usage(&broker.base(), &token).await;
    assert_eq!(u["requests"], 2, "{u}");
    assert_eq!(
        u["input_tokens"].as_u64().unwrap_or(0) - u1["input_tokens"].as_u64().unwrap_or(0),
        a.total_reported_usage().input_tokens,
        "{u}"
    );
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_accounted() {
    let a = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = one_target_broker(dir.path(), a.base_url(), 5_000).await;
    let token = mint(&broker.base()).await;

    a.push_fault(Fault::event_delay_ms(200));
    let resp = client()
        .post(broker.url("/v1/responses"))
        .bearer_auth(&token)
        .json(&responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let first = resp.chunk().await.unwrap();
    assert!(first.is_some());
    drop(resp);
    // Accounting happens when the relay notices the client left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let u = usage(&broker.base(), &token).await;
        if u["requests"] == 1 {
            assert_eq!(u["incomplete_streams"], 1, "{u}");
            break;
        }
        assert!(Instant::now() < deadline, "never accounted: {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_broken_chat_stream_ends_with_an_error_chunk_and_done() {
    let a = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = one_target_broker(dir.path(), a.base_url(), 5_000).await;
    let token = mint(&broker.base()).await;

    a.push_fault(Fault::drop_after_events(2));
    let resp = client()
        .post(broker.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "gpt-5.5", "stream": true,
            "messages": [{"role": "user", "content": "hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the first byte was already relayed");
    let body = resp.text().await.unwrap();
    let events: Vec<&str> = body
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{body}");
    let err = events[events.len() - 2];
    let v: serde_json::Value =
        serde_json::from_str(err.strip_prefix("data: ").unwrap_or(err)).expect("error chunk json");
    assert_eq!(v["error"]["type"], "server_error", "{body}");
    assert!(!body.contains("sk-"), "no upstream secret in the stream");
    // Accounted once, as a stream that did not complete.
    let u = usage(&broker.base(), &token).await;
    assert_eq!(u["requests"], 1, "{u}");
    assert_eq!(u["incomplete_streams"], 1, "{u}");
}

#[tokio::test]
async fn a_non_streamed_answer_cut_mid_body_is_charged_its_whole_estimate() {
    let a = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let broker = one_target_broker(dir.path(), a.base_url(), 5_000).await;
    let token = mint(&broker.base()).await;

    // The mock sends half the JSON body, then drops the connection.
    a.push_fault(Fault::drop_after_events(1));
    let mut body = responses_body(false);
    body["max_output_tokens"] = serde_json::json!(321);
    let resp = client()
        .post(broker.url("/v1/responses"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 502, "{text}");
    assert_openai_error(&text);
    let u = usage(&broker.base(), &token).await;
    assert_eq!(u["requests"], 1, "{u}");
    // The provider generated the answer: charged the input estimate and the whole output reserve (321).
    assert_eq!(u["output_tokens"], 321, "{u}");
}
