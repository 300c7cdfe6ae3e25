//! Telling Codex's "that token was refused" re-run apart from an ordinary run.
//!
//! Codex re-runs its auth command right after a 401, but passes nothing that says so (no argument, no
//! environment variable: codex-client.md §3–4). Serving the same cached token again would fail the turn.
//! So we remember which parent process we last handed the cached token to: if the **same** parent (pid
//! and start time, so a recycled pid does not count) asks again within a short window, it is re-running us
//! because the token was refused, and we mint a new one. A normal Codex process asks once at start and then
//! only every `refresh_interval_ms` (setup writes 240 s), well outside the default 120 s window.
//!
//! Claude Code does the same with `apiKeyHelper` after a 401 (and every `CLAUDE_CODE_API_KEY_HELPER_TTL_MS`,
//! which `setup --agent claude-code` sets to 240 s), but runs it through a shell: when our parent is a
//! shell whose own parent is Claude Code, the Claude Code process is the parent that counts (the shell is
//! new each time).
//!
//! The window applies automatically only when the parent is Codex or Claude Code: a shell script that
//! calls the helper in a loop must keep getting the cached token. `--rerun-window` sets it explicitly for
//! any parent.

use sha2::{Digest, Sha256};
use std::path::Path;

/// The default window when the parent is Codex (or Claude Code).
pub const CODEX_WINDOW_SECS: u64 = 120;

/// Shells an agent may run us through (`/proc/<pid>/comm`).
const SHELLS: [&str; 5] = ["sh", "bash", "dash", "zsh", "fish"];

/// The process that ran us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`), to detect pid reuse.
    pub start_ticks: u64,
    /// `/proc/<pid>/comm`.
    pub comm: String,
}

impl Parent {
    /// Read our parent from `/proc` (the agent behind it when it is a shell an agent started). `None`
    /// where `/proc` is unavailable.
    pub fn current() -> Option<Parent> {
        let (parent, ppid) = Self::read(std::os::unix::process::parent_id())?;
        if SHELLS.contains(&parent.comm.as_str())
            && let Some((agent, _)) = Self::read(ppid)
            && agent.is_agent()
        {
            return Some(agent);
        }
        Some(parent)
    }

    /// A process and its parent's pid, from `/proc/<pid>/stat` and `comm`.
    fn read(pid: u32) -> Option<(Parent, u32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may contain spaces: split after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        // After ')', fields start at field 3 (state); ppid is field 4 → index 1, starttime is field 22 →
        // index 19 here.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid = fields.get(1)?.parse().ok()?;
        let start_ticks = fields.get(19)?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        Some((
            Parent {
                pid,
                start_ticks,
                comm,
            },
            ppid,
        ))
    }

    /// Codex or Claude Code (whose native binary is `claude`).
    fn is_agent(&self) -> bool {
        self.comm.starts_with("codex") || self.comm == "claude"
    }

    /// The window that applies to this parent, given the configured one.
    pub fn window(&self, configured: Option<u64>) -> u64 {
        configured.unwrap_or(if self.is_agent() {
            CODEX_WINDOW_SECS
        } else {
            0
        })
    }
}

/// A short, non-secret fingerprint of a token (never the token itself on disk twice).
pub fn token_fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..12])
}

/// Did we hand `token_fp` to this same parent less than `window` seconds ago?
pub fn is_rerun(marker: &Path, parent: &Parent, token_fp: &str, now: u64, window: u64) -> bool {
    if window == 0 {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(marker) else {
        return false;
    };
    let mut f = text.split_whitespace();
    let (Some(pid), Some(start), Some(at), Some(fp)) = (f.next(), f.next(), f.next(), f.next())
    else {
        return false;
    };
    pid == parent.pid.to_string()
        && start == parent.start_ticks.to_string()
        && fp == token_fp
        && at
            .parse::<u64>()
            .is_ok_and(|at| now.saturating_sub(at) < window)
}

/// Remember that we handed `token_fp` to `parent` at `now`. Best effort: a failure only loses the hint.
pub fn record(marker: &Path, parent: &Parent, token_fp: &str, now: u64) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(marker)
    {
        let _ = writeln!(
            f,
            "{} {} {} {}",
            parent.pid, parent.start_ticks, now, token_fp
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(pid: u32, start: u64, comm: &str) -> Parent {
        Parent {
            pid,
            start_ticks: start,
            comm: comm.into(),
        }
    }

    #[test]
    fn same_parent_soon_is_a_rerun_others_are_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = dir.path().join("x.served");
        let p = parent(10, 500, "codex");
        assert!(!is_rerun(&m, &p, "fp", 1000, 120), "no marker yet");
        record(&m, &p, "fp", 1000);
        assert!(is_rerun(&m, &p, "fp", 1050, 120));
        assert!(
            !is_rerun(&m, &p, "fp", 1120, 120),
            "outside the window: a scheduled refresh"
        );
        assert!(
            !is_rerun(&m, &parent(11, 500, "codex"), "fp", 1050, 120),
            "another process"
        );
        assert!(
            !is_rerun(&m, &parent(10, 501, "codex"), "fp", 1050, 120),
            "recycled pid"
        );
        assert!(
            !is_rerun(&m, &p, "other-token", 1050, 120),
            "a different token was minted since"
        );
        assert!(!is_rerun(&m, &p, "fp", 1050, 0), "disabled");
    }

    #[test]
    fn window_defaults_by_parent() {
        assert_eq!(parent(1, 1, "codex").window(None), CODEX_WINDOW_SECS);
        assert_eq!(parent(1, 1, "bash").window(None), 0);
        assert_eq!(parent(1, 1, "bash").window(Some(30)), 30);
        assert_eq!(parent(1, 1, "codex").window(Some(0)), 0);
        assert_eq!(parent(1, 1, "claude").window(None), CODEX_WINDOW_SECS);
        assert_eq!(parent(1, 1, "claude-helper").window(None), 0);
    }

    #[test]
    fn reads_our_own_parent() {
        let p = Parent::current().expect("/proc is available here");
        assert_eq!(p.pid, std::os::unix::process::parent_id());
        assert!(p.start_ticks > 0);
    }
}
