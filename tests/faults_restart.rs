//! Fault suite: the broker process killed with `kill -9` under load, then restarted on the same state.
//!
//! Documented behaviour: clients in flight see a transport error (never a hang, never a truncated body
//! passed off as complete); the restarted broker still accepts tokens minted before the crash (its
//! signing keys are on disk) and serves at once.
//!
//! Needs the broker binary (built by a workspace `cargo test`, or `cargo build -p tollgate-broker`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod faults;

use faults::*;
use nix::sys::signal::Signal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tollgate_testkit::mock::{self, MockConfig};
use tollgate_testkit::procs::{BrokerCmd, ChildGuard, target_bin};

async fn spawn_broker(config: &Path) -> (ChildGuard, String) {
    let bin = target_bin("tollgate-broker");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p tollgate-broker` (a workspace `cargo test` builds it)",
        bin.display()
    );
    let b = BrokerCmd::new(bin, config)
        .env_clear()
        .env("FAULT_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("RUST_LOG", "warn")
        .start(Duration::from_secs(20))
        .await
        .expect("broker announces its address");
    (b.guard, b.url)
}

#[derive(Default)]
struct Outcomes {
    complete: AtomicUsize,
    transport_errors: AtomicUsize,
    bad: AtomicUsize,
}

async fn one_request(base: &str, token: &str, stream: bool, o: &Outcomes) {
    let r = client()
        .post(format!("{base}/v1/responses"))
        .bearer_auth(token)
        .json(&responses_body(stream))
        .send()
        .await;
    let resp = match r {
        Ok(r) => r,
        Err(_) => {
            o.transport_errors.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let status = resp.status();
    match resp.text().await {
        Err(_) => {
            o.transport_errors.fetch_add(1, Ordering::SeqCst);
        }
        Ok(body) => {
            let whole = if stream {
                body.contains("event: response.completed")
            } else {
                serde_json::from_str::<serde_json::Value>(&body)
                    .is_ok_and(|v| v["status"] == "completed")
            };
            if status == 200 && whole {
                o.complete.fetch_add(1, Ordering::SeqCst);
            } else {
                // A 200 whose body is cut short must have surfaced as a transport error above.
                eprintln!("bad outcome: {status} {body:.200}");
                o.bad.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test]
async fn kill_9_under_load_then_restart() {
    let up = mock::spawn(MockConfig::default()).await;
    // Slow the upstream a little so requests are in flight when the kill lands.
    up.set_latency_ms(20);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &[ProviderSpec {
            name: "only",
            base_url: up.base_url(),
            timeout_ms: 5_000,
        }],
    );
    let (mut broker, base) = spawn_broker(&cfg).await;
    let token = mint(&base).await;

    let outcomes = Arc::new(Outcomes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (base, token, o, stop) = (base.clone(), token.clone(), outcomes.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                one_request(&base, &token, (w + i).is_multiple_of(2), &o).await;
                i += 1;
            }
        }));
    }
    // Let load build up, then kill -9.
    let t = Instant::now();
    while outcomes.complete.load(Ordering::SeqCst) < 50 && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.signal_group(Signal::SIGKILL).expect("kill -9");
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a client hung after the kill")
            .expect("worker");
    }
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    let complete = outcomes.complete.load(Ordering::SeqCst);
    let errors = outcomes.transport_errors.load(Ordering::SeqCst);
    assert!(complete >= 50, "load never built up: {complete}");
    assert!(errors >= 1, "the kill was not observed by any client");
    assert_eq!(
        outcomes.bad.load(Ordering::SeqCst),
        0,
        "a cut answer looked whole"
    );
    let _ = broker.wait_timeout(Duration::from_secs(5)).await;

    // Restart on the same state: the old token is still good, and minting works.
    let (_broker2, base2) = spawn_broker(&cfg).await;
    // Usage is the store's record: what settled before the kill is in it already.
    let before = usage(&base2, &token).await["requests"]
        .as_i64()
        .expect("requests");
    let t = Instant::now();
    let (status, _, body) = responses(&base2, &token, false).await;
    assert_eq!(status, 200, "token minted before the crash: {body}");
    let (status, _, body) = responses(&base2, &token, true).await;
    assert_eq!(status, 200);
    assert!(body.contains("response.completed"));
    assert!(t.elapsed() < Duration::from_secs(5));
    let fresh = mint(&base2).await;
    let (status, _, _) = responses(&base2, &fresh, false).await;
    assert_eq!(status, 200);
    let u = usage(&base2, &fresh).await;
    assert_eq!(
        u["requests"].as_i64(),
        Some(before + 3),
        "requests after the restart are accounted: {u}"
    );
}
