//! A person near a limit sees it in the answer: every proxied answer carries the tightest budget, what is
//! left of it and when it resets (`x-tollgate-budget*`), from what this replica knows without a store read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults;

use faults::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_broker::clock::SystemClock;
use tollgate_testkit::mock::{self, MockConfig};

#[tokio::test]
async fn proxied_answers_carry_the_remaining_budget() {
    let m = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[ProviderSpec {
            name: "only",
            base_url: m.base_url(),
            timeout_ms: 5_000,
        }],
    );
    let b = Broker::start(&load_config(&cfg), Arc::new(SystemClock)).await;
    let token = mint(&b.base()).await;
    // The first answer may come before this replica has read the counter (it is read in the background,
    // never on the request path); within a few answers the headers are there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let headers = loop {
        let (status, headers, body) = responses(&b.base(), &token, false).await;
        assert_eq!(status, 200, "{body}");
        if headers.contains_key("x-tollgate-budget-remaining") {
            break headers;
        }
        assert!(Instant::now() < deadline, "no budget headers: {headers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(headers["x-tollgate-budget"], "principal-daily");
    let remaining: f64 = headers["x-tollgate-budget-remaining"]
        .to_str()
        .unwrap()
        .trim_start_matches('$')
        .parse()
        .expect("a USD amount");
    assert!(remaining > 0.0 && remaining <= 1000.0, "{remaining}");
    assert!(
        headers["x-tollgate-budget-resets"]
            .to_str()
            .unwrap()
            .ends_with('Z'),
        "an RFC 3339 UTC time: {headers:?}"
    );
}
