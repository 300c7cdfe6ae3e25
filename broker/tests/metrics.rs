//! `/metrics` through a real Prometheus text-format parser, after real traffic through the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN_KEY, CREDENTIAL};
use prometheus_parse::{Sample, Scrape, Value};

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => f64::NAN,
    }
}

fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

fn sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    find(scrape, name, labels).iter().map(|s| value(s)).sum()
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// `/metrics` with the admin key, parsed, and its text (for assertion messages).
async fn scrape(b: &common::Broker) -> (Scrape, String) {
    let text = b.metrics_text().await;
    (parse(&text), text)
}

/// Every proxy ingress is counted by route, model and provider: Claude Code's `/v1/messages` too, beside
/// a Responses request (it was missing from `tollgate_requests_total`).
#[tokio::test]
async fn every_proxy_ingress_is_counted_by_model_and_provider() {
    let b = common::start("").await;
    let alice = b.mint(CREDENTIAL).await;
    let r = b
        .http
        .post(format!("{}/v1/messages", b.url))
        .bearer_auth(&alice)
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({
            "model": "gpt-5.5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(b.responses(&alice, "gpt-5.5", false).await.0, 200);
    b.settled(2).await;
    let (scrape, text) = scrape(&b).await;
    for route in ["/v1/messages", "/v1/responses"] {
        assert_eq!(
            sum(
                &scrape,
                "tollgate_requests_total",
                &[
                    ("route", route),
                    ("model", "gpt-5.5"),
                    ("provider", "mock"),
                    ("status", "200"),
                ],
            ),
            1.0,
            "{route}: {text}"
        );
    }
}

#[tokio::test]
async fn metrics_after_traffic_parse_and_add_up() {
    let b = common::start("").await;
    // Not public by default: the admin key is required.
    let r = b
        .http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let alice = b.mint(CREDENTIAL).await;
    let bob = b.mint("bob-credential").await;
    assert_eq!(b.responses(&alice, "gpt-5.5", true).await.0, 200);
    assert_eq!(b.responses(&alice, "gpt-5.5", false).await.0, 200);
    assert_eq!(b.responses(&alice, "claude-opus-x", true).await.0, 200);
    // Refusals: model not in bob's grant, a bad token, a revoked token.
    assert_eq!(b.responses(&bob, "claude-opus-x", false).await.0, 400);
    assert_eq!(b.responses("not-a-token", "gpt-5.5", false).await.0, 401);
    let (s, _) = b
        .admin_post("/admin/v1/revoke", serde_json::json!({"principal": "bob"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(b.responses(&bob, "gpt-5.5", false).await.0, 401);
    b.settled(3).await;

    let (scrape, text) = scrape(&b).await;

    let ok = [
        ("route", "/v1/responses"),
        ("status", "200"),
        ("provider", "mock"),
    ];
    assert_eq!(sum(&scrape, "tollgate_requests_total", &ok), 3.0, "{text}");
    assert_eq!(
        sum(
            &scrape,
            "tollgate_requests_total",
            &[("model", "gpt-5.5"), ("status", "200")]
        ),
        2.0
    );
    // A glob-routed model is labelled by its route pattern, never by the client's string.
    assert_eq!(
        sum(&scrape, "tollgate_requests_total", &[("model", "claude-*")]),
        1.0
    );
    assert!(
        find(
            &scrape,
            "tollgate_requests_total",
            &[("model", "claude-opus-x")]
        )
        .is_empty()
    );
    assert_eq!(
        sum(
            &scrape,
            "tollgate_requests_total",
            &[("provider", "none"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(sum(&scrape, "tollgate_input_tokens_total", &[]), 300.0);
    assert_eq!(
        sum(&scrape, "tollgate_cached_input_tokens_total", &[]),
        120.0
    );
    assert_eq!(sum(&scrape, "tollgate_output_tokens_total", &[]), 60.0);
    // gpt-5.5 at $1.25 / $0.125 cached / $10 per Mtok: 60·1.25 + 40·0.125 + 20·10 = 280 µUSD a request.
    assert_eq!(
        sum(
            &scrape,
            "tollgate_cost_nanodollars_total",
            &[("model", "gpt-5.5")]
        ),
        2.0 * 280_000.0
    );
    assert!(
        sum(
            &scrape,
            "tollgate_cost_nanodollars_total",
            &[("model", "claude-*")]
        ) > 0.0
    );
    assert_eq!(
        sum(&scrape, "tollgate_refusals_total", &[("reason", "model")]),
        1.0
    );
    assert_eq!(
        sum(
            &scrape,
            "tollgate_refusals_total",
            &[("reason", "bad_token")]
        ),
        1.0
    );
    assert_eq!(
        sum(&scrape, "tollgate_refusals_total", &[("reason", "revoked")]),
        1.0
    );
    assert_eq!(
        sum(
            &scrape,
            "tollgate_mints_total",
            &[("identity_kind", "static"), ("outcome", "minted")]
        ),
        2.0
    );
    // Latency histograms exist with buckets and counts for every settled request.
    for h in ["tollgate_upstream_latency_seconds", "tollgate_ttfb_seconds"] {
        let s = find(&scrape, h, &[("provider", "mock")]);
        assert!(!s.is_empty(), "{h} missing");
        assert!(
            matches!(s[0].value, Value::Histogram(_)),
            "{h} is not a histogram"
        );
        let count = sum(&scrape, &format!("{h}_count"), &[]);
        assert_eq!(count, 3.0, "{h}_count");
    }
    assert_eq!(
        sum(
            &scrape,
            "tollgate_added_latency_seconds_count",
            &[("route", "/v1/responses")]
        ),
        3.0,
        "{text}"
    );
    // No principal label unless enabled.
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| s.labels.get("principal").is_none())
    );
    assert!(!text.contains(ADMIN_KEY) && !text.contains(CREDENTIAL));
}

#[tokio::test]
async fn public_metrics_and_per_principal_labels() {
    let b = common::start("[metrics]\npublic = true\nper_principal = true\n").await;
    let alice = b.mint(CREDENTIAL).await;
    assert_eq!(b.responses(&alice, "gpt-5.5", false).await.0, 200);
    b.settled(1).await;
    let text = b
        .http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = parse(&text);
    assert_eq!(
        sum(
            &scrape,
            "tollgate_output_tokens_total",
            &[("principal", "alice")]
        ),
        20.0,
        "{text}"
    );
}
