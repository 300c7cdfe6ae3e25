//! Helpers to run the workspace's real binaries from end-to-end tests.
//!
//! Children run in their own process group and the whole group is killed on drop, so a test that
//! fails or times out leaves nothing behind (e.g. the Codex npm launcher's native child).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// Path of a workspace binary built into the same target dir as the running test.
///
/// A test executable lives at `target/<profile>/deps/<test>-<hash>`; binaries sit in
/// `target/<profile>/`. Integration tests of the crate that owns the binary should prefer
/// `env!("CARGO_BIN_EXE_<name>")`.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A child process in its own process group; the group gets SIGKILL on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    pgid: Option<Pid>,
}

impl ChildGuard {
    /// Spawns `cmd` as the leader of a new process group. Configure stdio on `cmd` first
    /// (e.g. `stdout(Stdio::piped())`, `stdin(Stdio::null())`).
    pub fn spawn(cmd: impl Into<Command>) -> io::Result<Self> {
        let mut cmd: Command = cmd.into();
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd.spawn()?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        Ok(Self { child, pgid })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Takes the child's piped stdout.
    pub fn take_stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Takes the child's piped stderr.
    pub fn take_stderr(&mut self) -> Option<tokio::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Sends `signal` to the whole process group (e.g. SIGTERM for a graceful-shutdown test).
    pub fn signal_group(&self, signal: Signal) -> io::Result<()> {
        match self.pgid {
            Some(pgid) => killpg(pgid, signal).map_err(io::Error::from),
            None => Ok(()),
        }
    }

    /// Waits for the child to exit, up to `timeout`; kills the group if it does not.
    pub async fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> io::Result<Option<std::process::ExitStatus>> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.map(Some),
            Err(_) => {
                self.kill_group();
                Ok(None)
            }
        }
    }

    /// SIGKILL to the whole group; idempotent.
    pub fn kill_group(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (already gone) is fine.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_group();
        // Reap if already dead; otherwise tokio reaps the killed child in the background.
        let _ = self.child.try_wait();
    }
}

/// Reads lines until one starts with `prefix` and returns that line (without the newline).
/// Fails with `TimedOut` after `timeout` and `UnexpectedEof` if the stream ends first; the error
/// message includes the lines skipped, to show what the process printed instead.
pub async fn wait_for_line<R>(reader: &mut R, prefix: &str, timeout: Duration) -> io::Result<String>
where
    R: AsyncBufRead + Unpin,
{
    let mut seen = Vec::new();
    let search = async {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("stream ended before a line starting with {prefix:?}"),
                ));
            }
            let line = line.trim_end_matches(['\n', '\r']).to_owned();
            if line.starts_with(prefix) {
                return Ok(line);
            }
            seen.push(line);
        }
    };
    match tokio::time::timeout(timeout, search).await {
        Ok(r) => r.map_err(|e| io::Error::new(e.kind(), format!("{e}; saw: {seen:?}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no line starting with {prefix:?} within {timeout:?}; saw: {seen:?}"),
        )),
    }
}

/// Keeps reading `reader` in the background so a child never blocks on a full pipe.
pub fn drain_in_background<R>(mut reader: R)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
    });
}

/// Spawns `tollgate-mock-upstream` (found with [`target_bin`]) with `args`, and returns the guard
/// and its base URL (`http://127.0.0.1:PORT/v1`) once it prints `listening …`.
pub async fn spawn_mock_upstream(args: &[&str]) -> io::Result<(ChildGuard, String)> {
    let mut cmd = Command::new(target_bin("tollgate-mock-upstream"));
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut guard = ChildGuard::spawn(cmd)?;
    let stdout = guard
        .take_stdout()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let mut reader = tokio::io::BufReader::new(stdout);
    let line = wait_for_line(&mut reader, "listening ", Duration::from_secs(10)).await?;
    drain_in_background(reader);
    let url = line.trim_start_matches("listening ").trim().to_owned();
    Ok((guard, format!("{url}/v1")))
}

/// How a test starts the `tollgate-broker` binary: `--config FILE --listen ADDR` (port 0 unless told),
/// stdin closed, stderr to a log file (or discarded). One place for what every black-box broker test did
/// by hand: spawn in its own process group, wait for the `listening <url>` line, keep draining stdout.
#[derive(Clone, Debug)]
pub struct BrokerCmd {
    bin: PathBuf,
    config: PathBuf,
    listen: String,
    log: Option<PathBuf>,
    envs: Vec<(String, String)>,
    env_clear: bool,
}

/// A broker started by [`BrokerCmd::start`]: its process group and the URL it announced.
#[derive(Debug)]
pub struct RunningBroker {
    pub guard: ChildGuard,
    pub url: String,
}

impl BrokerCmd {
    /// `bin` is the broker binary (`env!("CARGO_BIN_EXE_tollgate-broker")` in the broker's own tests,
    /// [`target_bin`] elsewhere).
    pub fn new(bin: impl Into<PathBuf>, config: impl Into<PathBuf>) -> Self {
        BrokerCmd {
            bin: bin.into(),
            config: config.into(),
            listen: "127.0.0.1:0".into(),
            log: None,
            envs: Vec::new(),
            env_clear: false,
        }
    }

    /// `--listen` (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// Append stderr (the log) to this file; read it back with [`BrokerCmd::log_text`].
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.envs
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Start from an empty environment (only what [`BrokerCmd::env`] sets).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// What the broker logged so far (empty without [`BrokerCmd::log_to`]).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    fn command(&self, stdout: std::process::Stdio) -> io::Result<Command> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(&self.listen);
        if self.env_clear {
            cmd.env_clear();
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(stdout);
        match &self.log {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                cmd.stderr(f);
            }
            None => {
                cmd.stderr(std::process::Stdio::null());
            }
        }
        Ok(cmd)
    }

    /// Start the broker and wait (up to `timeout`) until it announces `listening <url>`. The error says
    /// what it printed and logged instead.
    pub async fn start(&self, timeout: Duration) -> io::Result<RunningBroker> {
        let mut guard = ChildGuard::spawn(self.command(std::process::Stdio::piped())?)?;
        let stdout = guard
            .take_stdout()
            .ok_or_else(|| io::Error::other("no stdout pipe"))?;
        let mut reader = tokio::io::BufReader::new(stdout);
        let line = wait_for_line(&mut reader, "listening ", timeout)
            .await
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("broker did not start: {e}\n{}", self.log_text()),
                )
            })?;
        drain_in_background(reader);
        Ok(RunningBroker {
            guard,
            url: line.trim_start_matches("listening ").trim().to_string(),
        })
    }

    /// Run the broker to its exit (one that must refuse to start), up to `timeout`: its status and
    /// stderr (stdout is discarded; with [`BrokerCmd::log_to`] stderr goes to the log, not here).
    pub async fn run_to_exit(
        &self,
        timeout: Duration,
    ) -> io::Result<(std::process::ExitStatus, String)> {
        let mut cmd = self.command(std::process::Stdio::null())?;
        if self.log.is_none() {
            cmd.stderr(std::process::Stdio::piped());
        }
        cmd.kill_on_drop(true);
        let child = cmd.spawn()?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the broker did not exit within {timeout:?}"),
                )
            })??;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}
