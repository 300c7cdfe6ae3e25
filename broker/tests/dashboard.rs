//! The spend dashboard, rendered by a real headless Chromium: a single-use login link, a session cookie,
//! then the page's DOM must hold the data and a screenshot must come out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tollgate_broker::audit::{AuditEvent, EventKind};

fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return c.to_string();
        }
    }
    panic!("chromium not found: run scripts/install-test-tools.sh (apt-get install chromium)");
}

async fn run_chromium(profile: &Path, args: &[String]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    // Port 0 may land on a port Chromium blocks as unsafe (ERR_UNSAFE_PORT): allow ours explicitly.
    if let Some(port) = args
        .last()
        .and_then(|u| u.split("://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .and_then(|hostport| hostport.rsplit(':').next())
    {
        cmd.arg(format!("--explicitly-allowed-ports={port}"));
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium timed out")
        .expect("chromium runs")
}

#[tokio::test]
async fn dashboard_renders_spend_in_headless_chromium() {
    let b = common::start("").await;
    let alice = b.mint(common::CREDENTIAL).await;
    assert_eq!(b.responses(&alice, "gpt-5.5", false).await.0, 200);
    b.settled(1).await;
    // A month of history: three teams, four principals, two models, with costs.
    let audit = b.state.audit().as_ref().unwrap();
    let now = i64::try_from(tollgate_broker::clock::Clock::now_secs(&b.clock)).unwrap();
    let people = [
        ("alice", "payments", "gpt-5.5"),
        ("carol", "payments", "claude-sonnet"),
        ("dave", "search", "gpt-5.5"),
        ("erin", "platform", "claude-sonnet"),
    ];
    for day in 0..30i64 {
        for (i, (p, team, model)) in people.iter().enumerate() {
            let i = i as i64;
            audit.record(AuditEvent {
                ts: now - day * 86_400,
                kind: Some(EventKind::Request),
                actor: p.to_string(),
                principal: Some(p.to_string()),
                team: Some(team.to_string()),
                model: Some(model.to_string()),
                provider: Some("mock".into()),
                status: Some(200),
                input_tokens: Some(1000),
                output_tokens: Some(200),
                cost_nanos: Some((i + 1) * 10_000_000 + (day % 7) * 3_000_000),
                detail: serde_json::json!({}),
                ..Default::default()
            });
        }
    }
    audit.flush().await;

    let link = |b: &common::Broker| {
        let http = b.http.clone();
        let url = format!("{}/admin/v1/dashboard-link", b.url);
        async move {
            let v: serde_json::Value = http
                .post(url)
                .bearer_auth(common::ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["url"].as_str().unwrap().to_string()
        }
    };
    let profile = tempfile::tempdir().unwrap();
    let out = run_chromium(profile.path(), &["--dump-dom".into(), link(&b).await]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<h1>Tollgate spend</h1>"),
        "not the dashboard: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in ["team", "principal", "model", "budgets"] {
        assert!(
            dom.contains(&format!("<section id=\"{section}\">")),
            "{section}"
        );
    }
    for key in [
        "payments",
        "search",
        "platform",
        "alice",
        "carol",
        "dave",
        "erin",
        "gpt-5.5",
        "claude-sonnet",
    ] {
        assert!(
            dom.contains(&format!("data-key=\"{key}\"")),
            "series {key} missing"
        );
    }
    assert!(dom.matches("<polyline").count() >= 3 + 4 + 2);
    // Budgets: the team budget, per team that spent, from the governance store.
    assert!(dom.contains("data-budget=\"team-daily\""), "no budget bars");
    assert!(dom.contains("team-daily (team:payments, daily)"), "{dom}");
    // Erin's 30-day spend: 30 × $0.04 + (0+3+6+9+12+15+18 ms-dollars pattern) — computed, not guessed.
    let erin: i64 = (0..30).map(|d| 40_000_000 + (d % 7) * 3_000_000).sum();
    let erin_usd = format!(
        "${}.{:04}",
        erin / 1_000_000_000,
        (erin % 1_000_000_000) / 100_000
    );
    assert!(
        dom.contains(&erin_usd),
        "erin's total {erin_usd} not on the page"
    );

    // The link is single-use: replaying it gets no dashboard.
    let used = link(&b).await;
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(r.get(&used).send().await.unwrap().status(), 303);
    assert_eq!(r.get(&used).send().await.unwrap().status(), 401);

    // A screenshot, kept next to the test binary's target dir for people to look at.
    let shot = option_env!("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("tollgate-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out = run_chromium(
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,1900".into(),
            link(&b).await,
        ],
    )
    .await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "screenshot is suspiciously small: {} bytes",
        png.len()
    );
}
