//! Black-box checks of the broker binary's small commands.

use std::io::Write;
use std::process::{Command, Stdio};

fn broker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate-broker"))
}

#[test]
fn hash_credential_matches_the_quickstart_config() {
    let mut child = broker()
        .arg("hash-credential")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"quickstart-dev-credential\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).expect("utf8");
    let quickstart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/quickstart/broker.toml"
    ))
    .expect("quickstart config");
    assert_eq!(hash.trim().len(), 64);
    assert!(
        quickstart.contains(&format!("sha256 = \"{}\"", hash.trim())),
        "the README's trial credential must work against the quickstart config"
    );
}

#[test]
fn check_config_accepts_the_quickstart_and_names_the_line_of_an_error() {
    let ok = broker()
        .args([
            "--config",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/quickstart/broker.toml"
            ),
            "--check-config",
        ])
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("broker.toml");
    std::fs::write(&bad, "policy_file = \"p.toml\"\n[server]\nlistne = \"x\"\n").expect("write");
    let out = broker()
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.toml:3:") && err.contains("listne"),
        "{err}"
    );
}
