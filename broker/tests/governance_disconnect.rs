//! A client that hangs up mid-stream is charged its input estimate plus the output streamed so far
//! (no usage ever arrived), and its reservation is released.

mod governance_support;

use futures::StreamExt;
use governance_support::*;
use std::time::Duration;
use tollgate_testkit::mock::{self, Fault, MockConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_client_disconnect_is_charged_for_what_streamed() {
    let upstream = mock::spawn(MockConfig::default()).await;
    upstream.push_fault(Fault::event_delay_ms(400));
    let dir = tempfile::tempdir().expect("tmp");
    let extra = format!(
        "{}[pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"10\"\noutput = \"50\"\n\
         [[budgets]]\nid = \"p\"\nscope = \"principal\"\namount_usd = \"10\"\nwindow = \"daily\"\n",
        store_toml(None, 30)
    );
    let cfg = write_config(
        dir.path(),
        upstream.base_url().trim_end_matches("/v1"),
        &["alice"],
        &extra,
    );
    let broker = Broker::start(&cfg, "broker").await;
    let c = client();
    let (token, _) = mint(&c, &broker.url, "alice").await;
    let input = "a fairly long prompt ".repeat(30);
    let resp = c
        .post(format!("{}/v1/responses", broker.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "gpt-test", "stream": true, "input": input, "max_output_tokens": 50}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    // Read until some output text has streamed, then hang up.
    while !seen.contains("output_text.delta") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("chunk in time")
            .expect("not ended")
            .expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("response.completed"));
    drop(body);
    let db = Db::sqlite(&dir.path().join("state/governance.db")).await;
    db.wait_spend("alice", 1, Duration::from_secs(10)).await;
    let (spent, reserved) = db.counter("p").await;
    assert_eq!(
        reserved,
        db.pool_held("p").await,
        "the reservation was settled: only the broker's free allotment is reserved"
    );
    let rows = db.spend_rows("alice").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (reported, end, in_tok, out_tok, cost, reserved_amt) = rows[0].clone();
    eprintln!("disconnect charge: {rows:?}");
    assert_eq!(reported, 0, "no usage arrived");
    assert_eq!(end, "truncated");
    let body_len = serde_json::to_vec(&serde_json::json!({"model": "gpt-test", "stream": true, "input": input, "max_output_tokens": 50}))
        .expect("json")
        .len() as i64;
    assert_eq!(in_tok, (body_len + 2) / 3, "input = the estimate");
    assert!(out_tok > 0, "the streamed output is charged");
    assert_eq!(cost, in_tok * 10_000 + out_tok * 50_000);
    assert!(cost <= reserved_amt);
    assert_eq!(spent, cost);
    upstream.shutdown().await;
}
