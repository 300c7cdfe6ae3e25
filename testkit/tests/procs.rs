//! The binary and the process helpers.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::BufReader;
use tollgate_testkit::procs::{ChildGuard, spawn_mock_upstream, target_bin, wait_for_line};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[test]
fn target_bin_finds_the_workspace_binary() {
    let found = target_bin("tollgate-mock-upstream");
    let cargo = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tollgate-mock-upstream"));
    assert_eq!(found.canonicalize().unwrap(), cargo.canonicalize().unwrap());
}

#[tokio::test]
async fn binary_prints_listening_serves_and_is_scriptable_over_http() {
    let (guard, base) = spawn_mock_upstream(&["--api-key", "k1", "--tool-command", "echo hi"])
        .await
        .unwrap();
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
        "{base}"
    );
    let root = base.trim_end_matches("/v1").to_owned();
    let c = client();
    let r = c.get(format!("{base}/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{root}/_mock/faults"))
        .json(&json!({"status": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = json!({"model": "m", "input": "USE_TOOL"});
    let r = c
        .post(format!("{base}/responses"))
        .bearer_auth("k1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = c
        .post(format!("{base}/responses"))
        .bearer_auth("k1")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["output"][0]["arguments"], r#"{"cmd":"echo hi"}"#);
    let recs: Value = c
        .get(format!("{root}/_mock/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(recs.as_array().unwrap().len(), 3);

    drop(guard);
    let mut refused = false;
    for _ in 0..100 {
        if c.get(format!("{base}/models")).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the mock must be gone once its guard is dropped");
}

fn alive(pid: u32) -> bool {
    // A zombie waiting for its reaper is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn child_guard_kills_the_whole_process_group() {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", "sleep 30 & echo \"grandchild $!\"; wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd).unwrap();
    let mut out = BufReader::new(guard.take_stdout().unwrap());
    let line = wait_for_line(&mut out, "grandchild ", Duration::from_secs(5))
        .await
        .unwrap();
    let pid: u32 = line.trim_start_matches("grandchild ").parse().unwrap();
    assert!(alive(pid));
    drop(guard);
    let mut gone = false;
    for _ in 0..100 {
        if !alive(pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "grandchild {pid} survived the guard");
}

#[tokio::test]
async fn wait_for_line_reports_timeout_and_eof_with_what_it_saw() {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", "echo one; echo two"])
        .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd).unwrap();
    let mut out = BufReader::new(guard.take_stdout().unwrap());
    let err = wait_for_line(&mut out, "listening", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(err.to_string().contains("\"two\""), "{err}");

    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", "echo early; sleep 30"])
        .stdout(Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd).unwrap();
    let mut out = BufReader::new(guard.take_stdout().unwrap());
    let err = wait_for_line(&mut out, "listening", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("early"), "{err}");
    assert!(
        guard
            .wait_timeout(Duration::from_millis(50))
            .await
            .unwrap()
            .is_none()
    );
}
