//! Measures what routing and translation add per streamed request (run explicitly; prints medians):
//! `cargo test -p tollgate-broker --release --test routing_overhead -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod routing_support;

use routing_support::{codex_body, start};
use std::time::{Duration, Instant};
use tollgate_testkit::{MockConfig, spawn};

const N: usize = 200;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a check"]
async fn overhead_per_streamed_request() {
    let mock = spawn(MockConfig::default()).await;
    let cfg = format!(
        "[providers.openai]\nkind = \"openai\"\nbase_url = \"{b}\"\n[providers.chat]\nkind = \"openai-chat\"\nbase_url = \"{b}\"\n\
         [providers.ant]\nkind = \"anthropic\"\nbase_url = \"{b}\"\n\
         [[routes]]\nmodel = \"pass\"\ntargets = [{{ provider = \"openai\" }}]\n\
         [[routes]]\nmodel = \"chat\"\ntargets = [{{ provider = \"chat\" }}]\n\
         [[routes]]\nmodel = \"ant\"\ntargets = [{{ provider = \"ant\" }}]\n",
        b = mock.base_url()
    );
    let broker = start(&cfg, &[]).await;
    let http = reqwest::Client::new();
    let direct = |path: &'static str, body: serde_json::Value| {
        let http = http.clone();
        let url = mock.url(path);
        async move {
            let t = Instant::now();
            let r = http
                .post(url)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .unwrap();
            let _ = r.bytes().await.unwrap();
            t.elapsed()
        }
    };
    let chat_body = serde_json::json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hello there"}]});
    let ant_body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 100, "messages": [{"role": "user", "content": "hello there"}]});
    let mut rows = Vec::new();
    for (name, model) in [
        ("responses passthrough", "pass"),
        ("openai-chat translated", "chat"),
        ("anthropic translated", "ant"),
    ] {
        let (mut d, mut b) = (Vec::new(), Vec::new());
        for i in 0..N + 20 {
            let dt = match model {
                "pass" => direct("/v1/responses", codex_body("m", "hello there", true)).await,
                "chat" => direct("/v1/chat/completions", chat_body.clone()).await,
                _ => direct("/v1/messages", ant_body.clone()).await,
            };
            let t = Instant::now();
            let ans = broker.responses(model, "hello there").await;
            let bt = t.elapsed();
            assert_eq!(ans.status, 200);
            if i >= 20 {
                d.push(dt);
                b.push(bt);
            }
        }
        rows.push((name, median(d), median(b)));
    }
    for (name, d, b) in rows {
        println!(
            "{name:>24}: direct median {:>7.2} ms, via broker {:>7.2} ms, added {:>6.2} ms",
            d.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            (b.as_secs_f64() - d.as_secs_f64()) * 1e3
        );
    }
}
