//! Errors at each boundary of the helper, and the exit code each one maps to.
//!
//! Every variant tells the caller (a human reading Codex's error line, or a script) what to do next.
//! No message ever contains a credential or a token: secrets are held in `SecretString` and the
//! variants below only carry names, paths, URLs and the broker's own error text.

use std::path::PathBuf;
use std::process::ExitCode;

/// The documented exit codes (also in `--help` and `helper/README.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// A token was printed (or the subcommand succeeded).
    Ok = 0,
    /// Bad flags, environment or config file (`EX_USAGE`).
    Usage = 64,
    /// The identity proof could not be produced: no credential, unreadable file… (`EX_DATAERR`).
    IdentityUnavailable = 65,
    /// The broker answered and refused the exchange (`EX_NOINPUT`); its reason is printed.
    BrokerRefused = 66,
    /// A person must sign in (again): no sign-in, or its refresh token expired or was revoked
    /// (`EX_NOUSER`). Run `tollgate-token login`; the token path never opens a browser itself.
    SignInRequired = 67,
    /// The broker could not be reached, timed out, or answered 5xx (`EX_UNAVAILABLE`).
    BrokerUnavailable = 69,
    /// A bug or an unexpected local failure (`EX_SOFTWARE`).
    Internal = 70,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Text for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   token printed on stdout (a cached token is served with a warning when the broker is unreachable);
      also when whoever reads stdout has gone away (a broken pipe)
  64  usage or configuration error (flags, environment, config file, a broker URL ending in /v1,
      a credential file that group or others can access)
  65  identity unavailable (no credential, unreadable credential file)
  66  broker refused the exchange (its `error` and `error_description` are printed), or refused a sign-in
  67  sign-in required: not signed in, or the sign-in expired or was revoked; run `tollgate-token login`
      (the token path renews a sign-in silently and never opens a browser); also when a developer cloud
      sign-in the identity source uses has expired (run the `aws sso login` or `az login` it names)
  69  broker unreachable, timed out, or answered 5xx; such a failure is remembered for
      --failure-memory seconds (default 10) per broker and identity, so reruns fail at once
  70  internal error

stdout carries only the token line (`refresh` prints it only with --print); every message goes to
stderr, prefixed `tollgate-token: `.";

/// Bad flags, environment or configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}, column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "profile `{profile}` is not defined in {path} (add a [profiles.{profile}] table or pick another --profile)"
    )]
    UnknownProfile { profile: String, path: PathBuf },
    #[error("profile `{profile}` was asked for but there is no config file at {path}")]
    NoConfigForProfile { profile: String, path: PathBuf },
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: String,
        value: String,
        reason: String,
    },
    #[error(
        "no broker configured: pass --broker URL, set TOLLGATE_BROKER, or set `broker` in [profiles.{profile}] of {path}{hint}"
    )]
    NoBroker {
        profile: String,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("cannot locate {what}: neither {vars} nor HOME is set")]
    NoHome {
        what: &'static str,
        vars: &'static str,
    },
    #[error(
        "unknown identity `{0}` (expected one of: static, aws, vault, azure, azure-cli, oidc-file, chain, login)"
    )]
    UnknownIdentity(String),
    /// The `auth.args` that Codex's config gives the helper do not parse.
    #[error("[model_providers.{provider}.auth] args in {path}: {message}")]
    CodexArgs {
        provider: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "provider `{provider}` is not in {path} (pass the --provider-id that `setup` wrote, or flags)"
    )]
    NoCodexProvider { provider: String, path: PathBuf },
}

/// The identity proof could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Nothing is configured for this source; a chain tries the next one.
    #[error("{source_name} identity has no credential: {hint}")]
    NotConfigured {
        source_name: &'static str,
        hint: String,
    },
    /// The source is configured but failed; a chain stops here.
    #[error("{source_name} identity: cannot read credential file {path}: {source}")]
    ReadFile {
        source_name: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A secret file that group or others may access: refused, as ssh refuses such a private key.
    #[error(
        "{source_name} identity: credential file {path} is accessible by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` (a credential others can read is refused, as ssh refuses such a key)"
    )]
    Insecure {
        source_name: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{source_name} identity: {reason}")]
    Invalid {
        source_name: &'static str,
        reason: String,
    },
    /// The identity provider (Vault, a metadata endpoint) could not be reached or failed.
    #[error("{source_name} identity: unavailable: {reason}")]
    Unavailable {
        source_name: &'static str,
        reason: String,
    },
    /// A developer cloud sign-in the source relies on (AWS IAM Identity Center, the Azure CLI) is missing
    /// or expired: the person runs `command` (the helper never starts a sign-in on its own).
    #[error("{source_name} identity: {reason}; run `{command}`")]
    SignInNeeded {
        source_name: &'static str,
        reason: String,
        command: String,
    },
    /// A chain where no source applies here.
    #[error("no identity source in the chain applies here: {}", .attempts.join("; "))]
    Chain { attempts: Vec<String> },
    /// A chain stopped at a source that applies but failed.
    #[error("identity chain stopped: {}", .attempts.join("; "))]
    ChainStopped { attempts: Vec<String> },
}

/// The token exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The broker answered 4xx: the request or the identity was refused. Not retried.
    #[error("broker refused the token exchange (HTTP {status}): {error}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// Connection failure, timeout or 5xx: try again later; a valid cached token is still served.
    #[error("broker {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// The broker answered 2xx with something that is not a usable token.
    #[error("broker {url} sent an invalid token response: {reason} (is the broker URL right?)")]
    BadResponse { url: String, reason: String },
}

/// `setup` could not update Codex's config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not valid TOML (line {line}, column {column}): {message}; fix it before running setup"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: `{key}` is not a table; fix it by hand before running setup")]
    Shape { path: PathBuf, key: String },
    #[error(
        "{path} is not valid JSON (line {line}, column {column}): {message}; fix it before running setup"
    )]
    JsonParse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Claude Code's settings: `key` is not what Claude Code expects there (an object, a string).
    #[error(
        "{path}: `{key}` is not what Claude Code expects there; fix it by hand before running setup"
    )]
    JsonShape { path: PathBuf, key: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the path of this executable: {0}")]
    CurrentExe(#[source] std::io::Error),
}

/// A person's sign-in (`login`, `logout`, and the token path of a signed-in person).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// No sign-in for this broker and profile.
    #[error("not signed in to {broker}: run `tollgate-token login{args}`")]
    NotSignedIn { broker: String, args: String },
    /// The broker refused the refresh token (expired, revoked, or its family revoked after a replay).
    #[error(
        "the sign-in to {broker} has expired or was revoked ({error}): run `tollgate-token login{args}`"
    )]
    Expired {
        broker: String,
        error: String,
        args: String,
    },
    /// The sign-in was refused or abandoned at the authorization server.
    #[error("sign-in refused: {error}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Denied {
        error: String,
        description: Option<String>,
    },
    /// The redirect did not carry the `state` (or `iss`) this sign-in sent: not our answer.
    #[error("sign-in aborted: the browser's redirect does not belong to this sign-in ({0})")]
    Mismatch(&'static str),
    /// Nobody finished the sign-in in time.
    #[error("sign-in timed out: {0}")]
    TimedOut(String),
    /// The broker does not speak the protocol the helper needs.
    #[error("{broker} cannot sign people in: {reason}")]
    Unsupported { broker: String, reason: String },
    /// The refresh token could not be kept or read.
    #[error("cannot {what} the refresh token: {reason}")]
    Store { what: &'static str, reason: String },
}

/// Everything `run` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    SignIn(#[from] SignInError),
    /// Writing to stdout failed. A broken pipe is not an error (see [`HelperError::is_broken_pipe`]).
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl HelperError {
    pub fn exit(&self) -> Exit {
        match self {
            HelperError::Config(_) => Exit::Usage,
            HelperError::Identity(IdentityError::Insecure { .. }) => Exit::Usage,
            HelperError::Identity(IdentityError::SignInNeeded { .. }) => Exit::SignInRequired,
            HelperError::Identity(_) => Exit::IdentityUnavailable,
            HelperError::Exchange(ExchangeError::Refused { .. }) => Exit::BrokerRefused,
            HelperError::Exchange(_) => Exit::BrokerUnavailable,
            HelperError::Setup(
                SetupError::Parse { .. }
                | SetupError::Shape { .. }
                | SetupError::JsonParse { .. }
                | SetupError::JsonShape { .. },
            ) => Exit::Usage,
            HelperError::Setup(_) => Exit::Internal,
            HelperError::SignIn(
                SignInError::NotSignedIn { .. }
                | SignInError::Expired { .. }
                | SignInError::TimedOut(_),
            ) => Exit::SignInRequired,
            HelperError::SignIn(
                SignInError::Denied { .. }
                | SignInError::Mismatch(_)
                | SignInError::Unsupported { .. },
            ) => Exit::BrokerRefused,
            HelperError::SignIn(SignInError::Store { .. }) => Exit::Internal,
            HelperError::Stdout(_) | HelperError::Internal(_) => Exit::Internal,
        }
    }

    /// Whoever read our stdout went away. Like ripgrep, that ends the run quietly and successfully:
    /// there is nobody left to tell, and `tollgate-token status | head -1` is not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, HelperError::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Turn a byte offset into a 1-based (line, column) for messages.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[col_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Squash a possibly multi-line message into one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Describe a transport error by its source chain (e.g. "connection refused"), not by its URL.
pub fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut reason = if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = src {
        last = Some(s.to_string());
        src = s.source();
    }
    if let Some(l) = last {
        reason.push_str(": ");
        reason.push_str(&one_line(&l));
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let s = "a = 1\nbc = 2\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 6), (2, 1));
        assert_eq!(line_col(s, 8), (2, 3));
        assert_eq!(line_col(s, 999), (3, 1));
    }

    #[test]
    fn refused_message_carries_reason() {
        let e = ExchangeError::Refused {
            status: 400,
            error: "invalid_grant".into(),
            description: Some("unknown credential".into()),
        };
        assert_eq!(
            e.to_string(),
            "broker refused the token exchange (HTTP 400): invalid_grant: unknown credential"
        );
        assert_eq!(HelperError::from(e).exit(), Exit::BrokerRefused);
    }
}
