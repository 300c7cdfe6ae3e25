//! Upstream keys read from Vault KV v2 on a real OpenBao dev server, refreshed on rotation; the captured
//! logs never contain the keys or the Vault token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod routing_support;

use secrecy::SecretString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_broker::config::VaultConfig;
use tollgate_broker::vault::KeyRefresher;
use tollgate_testkit::procs::ChildGuard;
use tollgate_testkit::{MockConfig, spawn};

const ROOT_TOKEN: &str = "bao-root-token-DO-NOT-LEAK-91c2";
const KEY_1: &str = "sk-ant-vault-key-one-DO-NOT-LEAK";
const KEY_2: &str = "sk-ant-vault-key-two-DO-NOT-LEAK";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn bao_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = std::env::var_os("TOLLGATE_TEST_TOOLS")
        .map_or_else(|| root.join(".test-tools"), PathBuf::from)
        .join("venv/bin/bao");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-tools.sh",
        p.display()
    );
    p
}

/// Loopback ports some process of group `pgid` listens on (OpenBao on port 0 does not print its port).
fn listening_ports(pgid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state ppid pgrp …
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|s| s.parse::<u32>().ok());
        if pgrp != Some(pgid) {
            continue;
        }
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let l = link.to_string_lossy().to_string();
                if let Some(ino) = l.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(ino.to_string());
                }
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]))
                .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
                .flatten()
        })
        .collect()
}

async fn start_bao() -> (ChildGuard, String) {
    let mut cmd = tokio::process::Command::new(bao_bin());
    cmd.args(["server", "-dev", "-dev-listen-address=127.0.0.1:0"])
        .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let guard = ChildGuard::spawn(cmd).expect("spawn bao");
    let pgid = guard.id().expect("pid");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        for port in listening_ports(pgid) {
            let url = format!("http://127.0.0.1:{port}");
            if let Ok(r) = http.get(format!("{url}/v1/sys/health")).send().await
                && r.status() == 200
            {
                return (guard, url);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("OpenBao dev server did not come up");
}

async fn put_key(addr: &str, key: &str) {
    let r = reqwest::Client::new()
        .post(format!("{addr}/v1/secret/data/tollgate/anthropic"))
        .header("X-Vault-Token", ROOT_TOKEN)
        .json(&serde_json::json!({"data": {"api_key": key, "note": "rotated by test"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "kv put: {}", r.status());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_come_from_openbao_kv_and_follow_rotation() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let (_bao, addr) = start_bao().await;
    put_key(&addr, KEY_1).await;
    let mock = spawn(MockConfig {
        api_key: Some(KEY_1.into()),
        ..MockConfig::default()
    })
    .await;
    let cfg = format!(
        "[vault]\naddress = \"{addr}\"\ntoken_env = \"VAULT_TOKEN\"\nrefresh_secs = 3600\n\
         [providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_vault = {{ path = \"tollgate/anthropic\" }}\n\
         [[routes]]\nmodel = \"claude-*\"\ntargets = [{{ provider = \"claude\" }}]\n",
        mock.base_url()
    );
    let broker = routing_support::start(&cfg, &[("VAULT_TOKEN", ROOT_TOKEN)]).await;

    // Before the first read the provider has no key: the request fails cleanly, without calling upstream.
    let ans = broker.responses("claude-sonnet-4-5", "hi").await;
    assert_eq!(ans.status, 502, "{}", ans.body);
    assert!(mock.requests().is_empty());

    let vault = VaultConfig {
        address: addr.clone(),
        token: SecretString::from(ROOT_TOKEN),
        refresh_secs: 3600,
    };
    let refresher = KeyRefresher::new(&vault, broker.state.router().vault_keys()).unwrap();
    assert_eq!(refresher.refresh_all().await, 1);
    let ans = broker.responses("claude-sonnet-4-5", "hi").await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(mock.requests()[0].header("x-api-key"), Some(KEY_1));

    // Rotate in Vault (and at the upstream): the next refresh picks up version 2.
    put_key(&addr, KEY_2).await;
    mock.update_config(|c| c.api_key = Some(KEY_2.into()));
    let ans = broker.responses("claude-sonnet-4-5", "hi").await;
    // The old key is refused upstream: a 502 for the client (a 401 would make Codex re-run its helper).
    assert_eq!(ans.status, 502, "{}", ans.body);
    assert_eq!(refresher.refresh_all().await, 1);
    let ans = broker.responses("claude-sonnet-4-5", "hi").await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(
        mock.requests().last().unwrap().header("x-api-key"),
        Some(KEY_2)
    );

    // A missing field is an error that names the path, not the data.
    let bad = tollgate_broker::config::VaultKeyRef {
        mount: "secret".into(),
        path: "tollgate/anthropic".into(),
        field: "nope".into(),
    };
    let e = refresher.read(&bad).await.expect_err("missing field");
    assert!(
        e.to_string().contains("tollgate/anthropic") && !e.to_string().contains(KEY_2),
        "{e}"
    );

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("upstream key loaded from vault"),
        "the capture works"
    );
    for secret in [ROOT_TOKEN, KEY_1, KEY_2] {
        assert!(
            !logs.contains(secret),
            "a secret ({}…) reached the logs",
            &secret[..8]
        );
        assert!(!ans.body.contains(secret));
    }
}
