//! The real Codex CLI against the broker: a budget refusal reaches the person (Codex prints which budget,
//! what is left and when it resets), and a rate-limit refusal is waited out (Retry-After) and retried.

mod governance_support;

use governance_support::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tollgate_testkit::mock::{self, MockConfig};
use tollgate_testkit::procs::ChildGuard;

fn codex_bin() -> PathBuf {
    // The newest pinned Codex (scripts/install-test-tools.sh installs each under .test-tools/codex/<version>).
    let tools = std::env::var_os("TOLLGATE_TEST_TOOLS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-tools"),
        PathBuf::from,
    );
    let p = tools.join("codex/0.171.0/node_modules/.bin/codex");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-tools.sh (in a worktree: ln -s /work/main/.test-tools .test-tools)",
        p.display()
    );
    p
}

/// One `codex exec` turn against `broker` with `token`; returns (exit success, stdout + stderr, elapsed).
async fn codex(home: &Path, broker: &str, token: &str, prompt: &str) -> (bool, String, Duration) {
    std::fs::create_dir_all(home).expect("home");
    std::fs::write(
        home.join("config.toml"),
        format!(
            "model = \"gpt-test\"\nmodel_provider = \"tollgate\"\n\
             [model_providers.tollgate]\nname = \"Tollgate\"\nbase_url = \"{broker}/v1\"\nwire_api = \"responses\"\n\
             env_key = \"TOLLGATE_TEST_TOKEN\"\nstream_max_retries = 2\nrequest_max_retries = 0\n"
        ),
    )
    .expect("config");
    let mut cmd = tokio::process::Command::new(codex_bin());
    cmd.args(["exec", "--skip-git-repo-check", prompt])
        .current_dir(home)
        .env("CODEX_HOME", home)
        .env("TOLLGATE_TEST_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut guard = ChildGuard::spawn(cmd).expect("spawn codex");
    let mut out = guard.take_stdout().expect("stdout");
    let mut err = guard.take_stderr().expect("stderr");
    let read = async {
        use tokio::io::AsyncReadExt;
        let (mut a, mut b) = (String::new(), String::new());
        let _ = tokio::join!(out.read_to_string(&mut a), err.read_to_string(&mut b));
        (a, b)
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(90), read)
        .await
        .expect("codex timed out");
    let status = guard
        .wait_timeout(Duration::from_secs(10))
        .await
        .expect("wait");
    (
        status.is_some_and(|s| s.success()),
        format!("{a}\n{b}"),
        t0.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_codex_shows_budget_refusal_and_waits_out_rate_limit() {
    let upstream = mock::spawn(MockConfig::default()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let extra = format!(
        "{}[pricing]\ndefaults = false\n[pricing.models.\"gpt-test\"]\ninput = \"1.25\"\noutput = \"10\"\n\
         [[budgets]]\nid = \"alice-daily\"\nscope = \"principal\"\nmatch = \"alice\"\namount_usd = \"0.01\"\nwindow = \"daily\"\n\
         [limits]\nrequests_per_minute = 20\n",
        store_toml(None, 30)
    );
    let cfg = write_config(
        dir.path(),
        upstream.base_url().trim_end_matches("/v1"),
        &["alice", "bob"],
        &extra,
    );
    let broker = Broker::start(&cfg, "broker").await;
    let c = client();

    // Budget: Codex's ~40 KB first request needs more than $0.01 reserved, so the very first POST is refused.
    let (alice, _) = mint(&c, &broker.url, "alice").await;
    let (ok, out, _) = codex(&dir.path().join("home-a"), &broker.url, &alice, "hi").await;
    eprintln!("--- codex (budget) ---\n{out}");
    assert!(!ok, "codex must fail the turn");
    assert!(
        out.contains("budget 'alice-daily' for principal alice cannot cover this request"),
        "{out}"
    );
    assert!(out.contains("$0.01 left of $0.01 ($0.00 spent)"), "{out}");
    assert!(out.contains("It resets at 20"), "{out}");
    assert_eq!(
        upstream.requests_to("/v1/responses").len(),
        0,
        "nothing reached the provider"
    );
    let usage: serde_json::Value = c
        .get(format!("{}/v1/tollgate/usage", broker.url))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    assert_eq!(usage["budgets"][0]["id"], "alice-daily");
    assert_eq!(usage["budgets"][0]["amount_usd"], "$0.01");
    assert!(
        usage["budgets"][0]["resets_at"]
            .as_str()
            .is_some_and(|s| s.ends_with("T00:00:00Z"))
    );

    // Rate limit: bob spends his 20-request burst, so Codex's POST gets 429 + Retry-After (3 s at 20/min);
    // Codex waits exactly that and retries, and the turn succeeds.
    let (bob, _) = mint(&c, &broker.url, "bob").await;
    let mut limited = None;
    for _ in 0..25 {
        let r = c
            .post(format!("{}/v1/responses", broker.url))
            .bearer_auth(&bob)
            .json(&serde_json::json!({"model": "gpt-test", "input": "x"}))
            .send()
            .await
            .expect("send");
        if r.status() == 429 {
            limited = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            break;
        }
    }
    let retry_after: u64 = limited
        .expect("the burst must run out")
        .parse()
        .expect("seconds");
    assert!((1..=3).contains(&retry_after), "retry-after {retry_after}");
    let before = upstream.requests_to("/v1/responses").len();
    let (ok, out, took) = codex(&dir.path().join("home-b"), &broker.url, &bob, "hello there").await;
    eprintln!("--- codex (rate limit), {took:?} ---\n{out}");
    assert!(ok, "codex should succeed after waiting: {out}");
    assert!(out.contains("mock reply to: hello there"), "{out}");
    assert_eq!(upstream.requests_to("/v1/responses").len(), before + 1);
    assert!(
        took >= Duration::from_secs(1),
        "codex waited for Retry-After ({took:?})"
    );
    upstream.shutdown().await;
}
