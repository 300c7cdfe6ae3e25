//! The real Claude Code CLI (`claude -p`) against a broker, with a fresh config directory set up by the
//! real `tollgate-token setup --agent claude-code`, offline: no telemetry, no auto-update, loopback only.

use super::{CREDENTIAL, bin, tool, write_private};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tollgate_testkit::procs::ChildGuard;

/// The pinned Claude Code version (`scripts/install-test-tools.sh` installs it).
pub const CLAUDE_CODE_VERSION: &str = "2.1.332";

pub fn claude_bin() -> PathBuf {
    tool(&format!(
        "claude-code/{CLAUDE_CODE_VERSION}/node_modules/.bin/claude"
    ))
}

/// A fresh home for Claude Code and the helper it runs.
pub struct ClaudeEnv {
    pub home: tempfile::TempDir,
    pub cache_dir: PathBuf,
}

pub struct ClaudeRun {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ClaudeRun {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl ClaudeEnv {
    /// Runs `tollgate-token setup --agent claude-code` to write Claude Code's settings for `broker_url`.
    pub fn new(broker_url: &str) -> ClaudeEnv {
        let home = tempfile::tempdir().expect("tempdir");
        let credential_file = home.path().join("credential");
        write_private(&credential_file, &format!("{CREDENTIAL}\n"));
        let env = ClaudeEnv {
            cache_dir: home.path().join("xdg-cache"),
            home,
        };
        std::fs::create_dir_all(env.config_dir()).expect("config dir");
        let out = std::process::Command::new(bin("tollgate-token"))
            .args(["--broker", broker_url, "--credential-file"])
            .arg(&credential_file)
            .args(["setup", "--agent", "claude-code"])
            .env_clear()
            .env("HOME", env.home.path())
            .env("CLAUDE_CONFIG_DIR", env.config_dir())
            .env("XDG_CONFIG_HOME", env.home.path().join("xdg-config"))
            .output()
            .expect("setup");
        assert!(
            out.status.success(),
            "setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join("claude")
    }

    /// The directory `run` starts Claude Code in: a git repository with one file.
    pub fn workdir(&self) -> PathBuf {
        let w = self.home.path().join("repo");
        if !w.exists() {
            std::fs::create_dir_all(&w).expect("workdir");
            std::fs::write(w.join("notes.txt"), "first line\n").expect("notes");
            let git = |args: &[&str]| {
                std::process::Command::new("git")
                    .args(args)
                    .current_dir(&w)
                    .env("GIT_CONFIG_GLOBAL", "/dev/null")
                    .output()
                    .expect("git")
            };
            git(&["init", "-q"]);
            git(&["add", "."]);
            git(&[
                "-c",
                "user.email=t@example.test",
                "-c",
                "user.name=t",
                "commit",
                "-qm",
                "init",
            ]);
        }
        w
    }

    /// `claude -p PROMPT` with `extra` arguments, bounded by `timeout` (the process group is killed on
    /// timeout). The environment is cleared but for what Claude Code needs offline.
    pub async fn run(&self, prompt: &str, extra: &[&str], timeout: Duration) -> ClaudeRun {
        let workdir = self.workdir();
        let mut cmd = tokio::process::Command::new(claude_bin());
        cmd.arg("-p")
            .arg(prompt)
            .args(extra)
            .current_dir(&workdir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("CLAUDE_CONFIG_DIR", self.config_dir())
            .env("XDG_CONFIG_HOME", self.home.path().join("xdg-config"))
            .env("XDG_CACHE_HOME", &self.cache_dir)
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_ERROR_REPORTING", "1")
            .env("DISABLE_BUG_COMMAND", "1")
            .env("CLAUDE_CODE_DISABLE_TERMINAL_TITLE", "1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(cmd).expect("spawn claude");
        let mut out = child.take_stdout().expect("stdout");
        let mut err = child.take_stderr().expect("stderr");
        let o = tokio::spawn(async move {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            s
        });
        let e = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        let status = match child.wait_timeout(timeout).await {
            Ok(Some(s)) => s.code(),
            _ => {
                child.kill_group();
                None
            }
        };
        drop(child);
        let get = |h: tokio::task::JoinHandle<String>| async move {
            tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        };
        ClaudeRun {
            status,
            stdout: get(o).await,
            stderr: get(e).await,
        }
    }

    /// The settings file `setup` wrote.
    pub fn settings(&self) -> serde_json::Value {
        let p: &Path = &self.config_dir().join("settings.json");
        serde_json::from_str(&std::fs::read_to_string(p).expect("settings.json")).expect("json")
    }
}
