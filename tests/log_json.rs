//! The broker's JSON log (`server.log_format = "json"`, as in examples/production), end to end: every line
//! on stderr is one JSON object, the request's line carries its fields, and no secret is in it. The lines
//! are written by `log_fields::JsonLines` (byte for byte the `tracing-subscriber` format, unit-tested
//! there); this holds the binary to it.

mod support;

use std::time::{Duration, Instant};
use support::*;
use tollgate_testkit::{MockConfig, spawn};

#[tokio::test(flavor = "multi_thread")]
async fn every_json_log_line_is_an_object_and_the_request_line_has_its_fields() {
    let mock = spawn(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await;
    let broker = Broker::start_with_server(
        BrokerSpec::with_mock(&mock.base_url(), &["gpt-5*"]),
        "log_format = \"json\"\n",
    )
    .await;
    let token = broker.token().await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", broker.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "gpt-5", "input": "say \"hi\"\n\tplease"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();

    // Settlement (and so its line) follows the answer by a few milliseconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let log = broker.log();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("request finished") && l.contains(&request_id))
        {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no request line for {request_id}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = broker.log();
    for l in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.is_object(), "{l}");
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["target"], "tollgate_broker::accounting", "{line}");
    let ts = v["timestamp"].as_str().expect("timestamp");
    assert!(ts.ends_with('Z') && ts.contains('T'), "{line}");
    let f = &v["fields"];
    assert_eq!(f["message"], "request finished", "{line}");
    assert_eq!(f["request_id"], request_id.as_str(), "{line}");
    assert_eq!(f["principal"], "dev", "{line}");
    assert_eq!(f["model"], "gpt-5", "{line}");
    assert_eq!(f["provider"], "mock", "{line}");
    assert!(f["input_tokens"].as_u64().is_some_and(|n| n > 0), "{line}");
    assert!(f["cost_nanos"].as_i64().is_some_and(|n| n > 0), "{line}");
    assert_eq!(f["usage_reported"], true, "{line}");
    // The mint's line too.
    assert_eq!(broker.mints(), 1, "{log}");
    assert_no_secret(&log, &[UPSTREAM_KEY, &token, CREDENTIAL], "broker log");
}
