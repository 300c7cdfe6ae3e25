//! End-to-end harness: the real broker and helper binaries, the mock upstream, the real Codex CLI.
//!
//! Binaries come from the same target dir as the test (`cargo build --workspace --bins` first; the README's
//! test command does it). Test peers come from `.test-tools/` (`scripts/install-test-tools.sh`): Codex in
//! every pinned version ([`CODEX_VERSIONS`]); `TOLLGATE_CODEX_VERSION` runs another one
//! (`scripts/codex-e2e.sh VERSION`).

#![allow(dead_code)]

pub mod claude;
pub mod peers;
pub mod people;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tollgate_testkit::procs::{ChildGuard, target_bin};

pub const CREDENTIAL: &str = "e2e-static-credential-5f1c";
pub const UPSTREAM_KEY: &str = "sk-upstream-e2e-DO-NOT-LEAK-7d3a";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A pinned test tool, or a panic that says how to install it (the README's test command does).
pub fn tool(rel: &str) -> PathBuf {
    let root = std::env::var_os("TOLLGATE_TEST_TOOLS")
        .map_or_else(|| repo_root().join(".test-tools"), PathBuf::from);
    let p = root.join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-tools.sh (the README's test command does)",
        p.display()
    );
    p
}

/// The Codex CLI versions the end-to-end tests prove: the default pin first, then the previous one.
/// Keep in step with `scripts/install-test-tools.sh` (which installs them) and `docs/codex.md`.
pub const CODEX_VERSIONS: [&str; 2] = ["0.171.0", "0.169.0"];

/// `TOLLGATE_CODEX_VERSION` (set by `scripts/codex-e2e.sh VERSION`), if set.
fn codex_version_override() -> Option<String> {
    let v = std::env::var("TOLLGATE_CODEX_VERSION").ok()?;
    assert!(
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')),
        "TOLLGATE_CODEX_VERSION={v:?} is not a version"
    );
    Some(v)
}

/// The Codex version a single-version test runs: `TOLLGATE_CODEX_VERSION`, else the default pin.
pub fn codex_version() -> String {
    codex_version_override().unwrap_or_else(|| CODEX_VERSIONS[0].to_string())
}

/// The versions the key turns run against, one after the other: every pin, or only
/// `TOLLGATE_CODEX_VERSION` when it is set.
pub fn codex_versions() -> Vec<String> {
    codex_version_override().map_or_else(
        || CODEX_VERSIONS.iter().map(|v| v.to_string()).collect(),
        |v| vec![v],
    )
}

/// The launcher of one installed Codex version (`.test-tools/codex/<version>/`).
pub fn codex_bin_for(version: &str) -> PathBuf {
    tool(&format!("codex/{version}/node_modules/.bin/codex"))
}

pub fn python_bin() -> PathBuf {
    tool("venv/bin/python")
}

pub fn bin(name: &str) -> PathBuf {
    let p = target_bin(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// Hex SHA-256, as the broker config wants for static credentials (`tollgate-broker hash-credential`).
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// What a test broker is configured with.
pub struct BrokerSpec {
    /// Extra TOML appended to the broker config (providers, routes, …).
    pub extra_config: String,
    /// The policy file.
    pub policy: String,
    pub env: Vec<(String, String)>,
}

impl BrokerSpec {
    /// One static identity `dev` allowed `models`, the mock upstream as an `openai` provider for every model.
    pub fn with_mock(upstream_base: &str, models: &[&str]) -> Self {
        let models = models
            .iter()
            .map(|m| format!("{m:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        BrokerSpec {
            extra_config: format!(
                "[providers.mock]\nkind = \"openai\"\nbase_url = \"{upstream_base}\"\napi_key_env = \"E2E_UPSTREAM_KEY\"\n\n\
                 [[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"mock\" }}]\n\n\
                 [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1.25\", output = \"10\" }}\n"
            ),
            policy: format!(
                "[[rule]]\nname = \"dev\"\nmatch = {{ kind = \"static\", subject = \"dev\" }}\nteam = \"e2e\"\nmodels = [{models}]\nmax_ttl_secs = 3600\n"
            ),
            env: vec![("E2E_UPSTREAM_KEY".into(), UPSTREAM_KEY.into())],
        }
    }
}

/// A running broker process with its files in a temp dir.
pub struct Broker {
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Option<ChildGuard>,
    spec_env: Vec<(String, String)>,
}

impl Broker {
    pub async fn start(spec: BrokerSpec) -> Broker {
        Self::start_with_server(spec, "").await
    }

    /// As [`Broker::start`], with `server` (TOML lines) added to the `[server]` table.
    pub async fn start_with_server(spec: BrokerSpec, server: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "policy_file = \"policy.toml\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n{server}\n\
             [tokens]\naudience = \"tollgate\"\nmax_ttl_secs = 3600\n\n[[credentials]]\nsubject = \"dev\"\nsha256 = \"{}\"\n\n{}",
            sha256_hex(CREDENTIAL),
            spec.extra_config
        );
        std::fs::write(dir.path().join("broker.toml"), config).expect("write config");
        std::fs::write(dir.path().join("policy.toml"), spec.policy).expect("write policy");
        let mut b = Broker {
            url: String::new(),
            dir,
            child: None,
            spec_env: spec.env,
        };
        b.spawn("127.0.0.1:0").await;
        b
    }

    async fn spawn(&mut self, listen: &str) {
        let b = tollgate_testkit::procs::BrokerCmd::new(
            bin("tollgate-broker"),
            self.dir.path().join("broker.toml"),
        )
        .listen(listen)
        .log_to(self.log_path())
        .env("RUST_LOG", "info")
        .envs(self.spec_env.iter().cloned())
        .start(Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        self.url = b.url;
        self.child = Some(b.guard);
    }

    /// Stop and start again on the same port; `fresh_keys` wipes the signing keys first, so every token the
    /// old process issued is signed by a key the new one no longer trusts.
    pub async fn restart(&mut self, fresh_keys: bool) {
        if let Some(mut c) = self.child.take() {
            c.kill_group();
            let _ = c.wait_timeout(Duration::from_secs(5)).await;
        }
        if fresh_keys {
            let _ = std::fs::remove_dir_all(self.dir.path().join("state"));
        }
        let addr = self.url.trim_start_matches("http://").to_string();
        // The port was just released; rebinding may need a moment on a busy machine.
        for _ in 0..50 {
            if std::net::TcpListener::bind(&addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.spawn(&addr).await;
    }

    /// Send a signal to the broker process (e.g. SIGHUP to reload the policy).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("broker pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("kill");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many tokens this broker (all its runs) has minted, from its structured log.
    pub fn mints(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("token minted"))
            .count()
    }

    /// Mint a token directly (as the helper would).
    pub async fn token(&self) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}/oauth/token", self.url))
            .form(&[
                ("grant_type", tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE),
                ("subject_token", CREDENTIAL),
                ("subject_token_type", tollgate::exchange::TOKEN_TYPE_STATIC),
            ])
            .send()
            .await
            .expect("token request");
        assert_eq!(
            r.status(),
            200,
            "mint failed: {}",
            r.text().await.unwrap_or_default()
        );
        let v: serde_json::Value = r.json().await.expect("json");
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    pub async fn usage(&self, token: &str) -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/tollgate/usage", self.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("usage");
        assert_eq!(r.status(), 200);
        r.json().await.expect("json")
    }
}

/// A fresh Codex home pointing at a broker through the real helper.
pub struct CodexEnv {
    /// The Codex version `exec` runs (default: [`codex_version`]).
    pub version: String,
    pub home: tempfile::TempDir,
    pub cache_dir: PathBuf,
    pub credential_file: PathBuf,
    /// Variables passed through to Codex (and so to the helper it runs as its auth command, which
    /// inherits Codex's environment unchanged — codex-client.md §4). Everything else is cleared.
    pub env: Vec<(String, String)>,
}

pub struct CodexRun {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CodexRun {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Create a 0600 file, as a credential must be: the helper refuses one that group or others can read.
pub fn write_private(path: &Path, content: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .expect("write a private file");
}

impl CodexEnv {
    /// `extra_provider` is appended to the provider table (e.g. `request_max_retries = 0`). An empty
    /// `model` names none, so Codex picks its default model.
    pub fn new(broker_url: &str, model: &str, extra_provider: &str) -> CodexEnv {
        let home = tempfile::tempdir().expect("tempdir");
        let cache_dir = home.path().join("tollgate-cache");
        let credential_file = home.path().join("credential");
        write_private(&credential_file, &format!("{CREDENTIAL}\n"));
        let codex_home = home.path().join("codex");
        std::fs::create_dir_all(&codex_home).expect("codex home");
        let helper = bin("tollgate-token");
        let model_line = if model.is_empty() {
            String::new()
        } else {
            format!("model = {model:?}\n")
        };
        let config = format!(
            "{model_line}model_provider = \"tollgate\"\n\n[model_providers.tollgate]\nname = \"Tollgate\"\n\
             base_url = \"{broker_url}/v1\"\nwire_api = \"responses\"\n{extra_provider}\n\n\
             [model_providers.tollgate.auth]\ncommand = {helper:?}\nargs = [\"--broker\", {broker_url:?}, \"--credential-file\", {cred:?}, \"--cache-dir\", {cache:?}]\n\
             timeout_ms = 5000\nrefresh_interval_ms = 240000\n",
            helper = helper.display().to_string(),
            cred = credential_file.display().to_string(),
            cache = cache_dir.display().to_string(),
        );
        std::fs::write(codex_home.join("config.toml"), config).expect("codex config");
        CodexEnv {
            version: codex_version(),
            home,
            cache_dir,
            credential_file,
            env: Vec::new(),
        }
    }

    /// Run this Codex version instead of the default one.
    pub fn with_version(mut self, version: &str) -> Self {
        self.version = version.to_string();
        self
    }

    /// The directory `exec` runs Codex in (`-C`): where its tools write files.
    pub fn workdir(&self) -> PathBuf {
        self.home.path().join("work")
    }

    /// Pass `name=value` to Codex, and through it to the helper (e.g. `AWS_ACCESS_KEY_ID`,
    /// `VAULT_ADDR`, `IDENTITY_ENDPOINT`, `TOLLGATE_IDENTITY`). Only the named variables pass.
    pub fn pass_env(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// The access token the helper cached during the turn (there is exactly one cache file).
    pub fn cached_token(&self) -> String {
        let files: Vec<_> = std::fs::read_dir(&self.cache_dir)
            .expect("cache dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        assert_eq!(files.len(), 1, "one cached token expected: {files:?}");
        let v: serde_json::Value = serde_json::from_str(&read(&files[0])).expect("cache file json");
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    pub fn codex_home(&self) -> PathBuf {
        self.home.path().join("codex")
    }

    /// `codex exec` one turn, bounded by `timeout`; the whole process group is killed on timeout.
    pub async fn exec(&self, prompt: &str, timeout: Duration) -> CodexRun {
        let workdir = self.workdir();
        std::fs::create_dir_all(&workdir).expect("workdir");
        let mut cmd = tokio::process::Command::new(codex_bin_for(&self.version));
        cmd.args([
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "--color",
            "never",
            "-C",
        ])
        .arg(&workdir)
        .arg(prompt)
        .current_dir(&workdir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", self.home.path())
        .env("CODEX_HOME", self.codex_home())
        .env("XDG_CONFIG_HOME", self.home.path().join("xdg-config"))
        .env("XDG_CACHE_HOME", self.home.path().join("xdg-cache"))
        .env("RUST_LOG", "error")
        // Never let an AWS credential chain probe the (non-loopback) instance metadata address.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(self.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(cmd).expect("spawn codex");
        let out = child.take_stdout().expect("stdout");
        let err = child.take_stderr().expect("stderr");
        let collect = |r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(r).lines();
                let mut s = String::new();
                while let Ok(Some(l)) = lines.next_line().await {
                    s.push_str(&l);
                    s.push('\n');
                }
                s
            })
        };
        let (o, e) = (collect(Box::new(out)), collect(Box::new(err)));
        let status = match child.wait_timeout(timeout).await {
            Ok(Some(s)) => s.code(),
            _ => {
                child.kill_group();
                None
            }
        };
        drop(child);
        let stdout = tokio::time::timeout(Duration::from_secs(5), o)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stderr = tokio::time::timeout(Duration::from_secs(5), e)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        CodexRun {
            status,
            stdout,
            stderr,
        }
    }
}

pub fn assert_no_secret(haystack: &str, secrets: &[&str], what: &str) {
    for s in secrets {
        assert!(
            !haystack.contains(s),
            "{what} leaked a secret ({}…)",
            &s[..6.min(s.len())]
        );
    }
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
