//! Smoke run of the benchmark tools with tiny counts (the real benchmark is `bench/run.sh`, not CI):
//! the canned upstream answers, the latency probe measures direct and through a real broker, and the
//! open-streams holder opens streams through the broker and reads /proc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::SystemClock;
use tollgate_broker::config::{Config, Source};
use tollgate_broker::routes::router;

const BENCH: &str = env!("CARGO_BIN_EXE_tollgate-bench");

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_upstream() -> (Kill, String) {
    let mut child = Command::new(BENCH)
        .args(["upstream", "--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let url = line
        .trim()
        .strip_prefix("listening ")
        .expect("announce")
        .to_string();
    (Kill(child), url)
}

async fn start_broker(upstream: &str, dir: &std::path::Path) -> (String, String) {
    let sha = tollgate_broker::identity::static_cred::hash_credential("smoke");
    std::fs::write(
        dir.join("policy.toml"),
        "[[rule]]\nname = \"s\"\nmatch = { kind = \"static\", subject = \"s\" }\nprincipal = \"{subject}\"\nmodels = [\"*\"]\n",
    )
    .unwrap();
    let text = format!(
        "policy_file = \"policy.toml\"\n[server]\nstate_dir = \"state\"\n[tokens]\naudience = \"tollgate\"\n\
         [[credentials]]\nsubject = \"s\"\nsha256 = \"{sha}\"\n[store]\nkind = \"sqlite\"\n[pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"5\", output = \"30\" }}\n[[budgets]]\nid = \"d\"\nscope = \"principal\"\namount_usd = \"1000000\"\nwindow = \"daily\"\n[providers.up]\nkind = \"openai\"\nbase_url = \"{upstream}/v1\"\napi_key_env = \"K\"\n\
         [[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"up\" }}]\n"
    );
    let path = dir.join("broker.toml");
    let env: BTreeMap<String, String> = [("K".to_string(), "sk-smoke".to_string())].into();
    let config = Config::from_source(Source { path, text }, &env).expect("config");
    let state = AppState::build(&config, Arc::new(SystemClock))
        .await
        .expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    let minted = state_token(&base).await;
    (base, minted)
}

async fn state_token(base: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", "smoke"),
            (
                "subject_token_type",
                "urn:tollgate:params:token-type:static-credential",
            ),
        ])
        .send()
        .await
        .expect("mint");
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    v["access_token"].as_str().expect("token").to_string()
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BENCH).args(args).output().expect("run bench");
    assert!(
        out.status.success(),
        "tollgate-bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_streams_smoke() {
    let (_up, up) = start_upstream();
    let dir = tempfile::tempdir().unwrap();
    let (broker, token) = start_broker(&up, dir.path()).await;
    let (up2, broker2, tok2) = (up.clone(), broker.clone(), token.clone());
    let samples = dir.path().join("samples.txt");
    let samples2 = samples.to_str().unwrap().to_string();
    let lat = tokio::task::spawn_blocking(move || {
        let t = format!("tollgate={tok2}");
        let d = format!("direct={up2}");
        let b = format!("tollgate={broker2}");
        [false, true].map(|stream| {
            let mut args = vec![
                "latency", "--n", "30", "--warmup", "5", "--runs", "2", "--target", &d, "--target",
                &b, "--bearer", &t,
            ];
            if stream {
                args.push("--stream");
            } else {
                // Every request on the timeline; an extra header for one target (a peer gateway's
                // routing headers in bench/run.sh).
                args.extend([
                    "--samples",
                    &samples2,
                    "--header",
                    "tollgate=x-bench-probe:1",
                ]);
            }
            bench(&args)
        })
    })
    .await
    .unwrap();
    // One line per measured request: run, target, start, total and first-byte nanoseconds.
    let text = std::fs::read_to_string(&samples).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), 2 * 30 * 2, "{text}");
    for r in &rows {
        assert_eq!(r.len(), 5, "{r:?}");
        assert!(r[1] == "direct" || r[1] == "tollgate", "{r:?}");
        let total: u64 = r[3].parse().unwrap();
        let first: u64 = r[4].parse().unwrap();
        assert!(total > 0 && first <= total, "{r:?}");
    }
    for r in &lat {
        let s = r["summary"].as_array().expect("summary");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1]["target"], "tollgate");
        let p50 = s[1]["total"]["p50_us"]["median"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 < 1_000_000.0, "p50 {p50}");
        assert_eq!(r["per_run"].as_array().unwrap().len(), 2);
    }
    assert!(
        lat[1]["summary"][1]["first_byte"]["p50_us"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let pid = std::process::id().to_string();
    let st = tokio::task::spawn_blocking(move || {
        bench(&[
            "streams",
            "--url",
            &broker,
            "--bearer",
            &token,
            "--n",
            "20",
            "--hold-ms",
            "3000",
            "--pid",
            &pid,
            "--settle-secs",
            "0",
        ])
    })
    .await
    .unwrap();
    assert_eq!(st["open_ok"], 20);
    assert!(st["all_open"]["rss_kb"].as_u64().unwrap() > 0);
    assert!(st["all_open"]["fds"].as_u64().unwrap() >= 20);
}
