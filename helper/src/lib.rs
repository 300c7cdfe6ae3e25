//! `tollgate-token`: the credential helper Codex runs as `[model_providers.<id>.auth] command`.
//!
//! It proves the machine's identity to a Tollgate broker, exchanges the proof for a short-lived
//! token (RFC 8693), caches the token on disk and prints it. The contract with Codex: stdin is
//! never read, stdout carries exactly one line (the token), everything else goes to stderr, and
//! the exit code says what went wrong (see [`error::Exit`]).
//!
//! Everything that touches the outside world is injected ([`sys::Env`], [`sys::Clock`], the
//! output streams), so [`run_with`] is testable in-process; `main` only wires the real ones.

pub mod cache;
pub mod claude;
pub mod codex;
pub mod config;
pub mod error;
pub mod exchange;
pub mod identity;
pub mod login;
pub mod rerun;
pub mod setup;
pub mod status;
pub mod sys;
pub mod token;

use crate::config::{Flags, Source};
use crate::error::{EXIT_CODES_HELP, Exit, HelperError};
use crate::sys::{Clock, Env};
use clap::{CommandFactory, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-token",
    version,
    about = "Print a short-lived Tollgate token for Codex (or any bearer-token client).",
    long_about = "Print a short-lived Tollgate token for Codex (or any bearer-token client).\n\n\
        Without a subcommand: prove this machine's identity to the broker, exchange it for a token, cache it \
        and print it on stdout as one line. A cached token is reused while it has more than the refresh margin \
        left. Configure with flags, TOLLGATE_* environment variables, or [profiles.<name>] in \
        $XDG_CONFIG_HOME/tollgate/config.toml (TOLLGATE_TOKEN_CONFIG; flags > environment > config file > \
        defaults). `status` and `refresh` also read the flags that Codex's config.toml gives the helper \
        (the auth args `setup` wrote), so they need none.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub flags: Flags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the cached token's subject, grant and expiry (not the token itself unless asked).
    ///
    /// Without flags it reports on the token Codex uses: it reads the helper's arguments from the
    /// provider in Codex's config.toml that runs tollgate-token (flags given here win).
    Status {
        /// Also print the token.
        #[arg(long)]
        show_token: bool,
        /// Ask the broker for the remaining budget (GET /v1/tollgate/usage).
        #[arg(long)]
        remote: bool,
        /// The provider in Codex's config.toml whose auth args to use [default: `model_provider` if it
        /// runs tollgate-token, else `tollgate`, else the only one that does].
        #[arg(long)]
        provider_id: Option<String>,
    },
    /// Mint a new token now and replace the cached one (after a policy change, say).
    ///
    /// Reads Codex's config.toml like `status`. Prints a one-line summary of the new token on stderr,
    /// and the token itself on stdout only with --print. A cached token is not served instead, even if
    /// the broker is unavailable.
    Refresh {
        /// Also print the new token on stdout (one line, as the default command does).
        #[arg(long)]
        print: bool,
        /// As for `status`.
        #[arg(long)]
        provider_id: Option<String>,
    },
    /// Sign in as a person (your company's SSO, through the broker): a browser on this machine, or a
    /// code to confirm on another device.
    ///
    /// Opens a browser (`$BROWSER`, else the desktop's opener) at the broker's sign-in page and takes
    /// the answer on a loopback port (PKCE S256). Without a display (an SSH session, a container) it
    /// uses the device sign-in instead: it prints a link and a code to confirm on any device. The
    /// refresh token goes to the OS credential store (a 0600 file when there is none, which it says);
    /// after that, `tollgate-token` (Codex's auth command) renews silently and never opens a browser.
    Login {
        /// Sign in with a code on another device (RFC 8628), whatever the display.
        #[arg(long, conflicts_with = "no_browser")]
        device: bool,
        /// Sign in with a browser on this machine, but only print the link (do not open it).
        #[arg(long)]
        no_browser: bool,
        /// The OAuth client the helper is at the broker.
        #[arg(long, default_value = login::DEFAULT_CLIENT_ID, value_name = "ID")]
        client_id: String,
        /// Scopes to ask for [default: openid models offline_access, as far as the broker offers them].
        #[arg(long)]
        scope: Option<String>,
        /// As for `status`.
        #[arg(long)]
        provider_id: Option<String>,
    },
    /// Sign out: revoke the refresh token at the broker (RFC 7009) and forget the sign-in here.
    Logout {
        /// As for `status`.
        #[arg(long)]
        provider_id: Option<String>,
    },
    /// Add or update the Tollgate provider in Codex's config.toml ($CODEX_HOME or ~/.codex), or with
    /// `--agent claude-code` point Claude Code at the broker in ~/.claude/settings.json (apiKeyHelper,
    /// ANTHROPIC_BASE_URL, CLAUDE_CODE_API_KEY_HELPER_TTL_MS).
    Setup {
        /// Which agent to set up.
        #[arg(long, value_enum, default_value_t = Agent::Codex)]
        agent: Agent,
        /// With `--agent claude-code`: edit this project's `.claude/settings.json` instead of the user's
        /// (default: the current directory).
        #[arg(long, num_args = 0..=1, default_missing_value = ".", value_name = "DIR")]
        project: Option<std::path::PathBuf>,
        /// Provider id under [model_providers].
        #[arg(long, default_value = "tollgate")]
        provider_id: String,
        /// Also set the top-level `model_provider` to this provider.
        #[arg(long)]
        set_default: bool,
        /// With --set-default: also set the top-level `model`.
        #[arg(long, requires = "set_default")]
        model: Option<String>,
        /// Print the change as a diff and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Let Codex (0.171 and later) sign the person in itself: write `gateway_oauth` (the broker's
        /// authorization server, found through its metadata) instead of the helper as the auth command.
        #[arg(long)]
        oauth: bool,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The coding agent `setup` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Agent {
    Codex,
    ClaudeCode,
}

/// Writes `tollgate-token: …` lines to stderr, scrubbing every secret it has been told about.
pub struct Reporter<'a> {
    err: &'a mut dyn Write,
    secrets: Vec<SecretString>,
}

impl<'a> Reporter<'a> {
    pub fn new(err: &'a mut dyn Write) -> Self {
        Reporter {
            err,
            secrets: Vec::new(),
        }
    }

    pub fn add_secrets(&mut self, secrets: impl IntoIterator<Item = SecretString>) {
        self.secrets
            .extend(secrets.into_iter().filter(|s| s.expose_secret().len() >= 4));
    }

    fn scrub(&self, msg: &str) -> String {
        let mut m = msg.to_owned();
        for s in &self.secrets {
            if m.contains(s.expose_secret()) {
                m = m.replace(s.expose_secret(), "[redacted]");
            }
        }
        m
    }

    pub fn warn(&mut self, msg: &str) {
        let line = format!("tollgate-token: warning: {}\n", self.scrub(msg));
        let _ = self.err.write_all(line.as_bytes());
    }

    pub fn error(&mut self, msg: &str) {
        self.note(msg);
    }

    /// An informational line (`refresh`'s summary).
    pub fn note(&mut self, msg: &str) {
        let line = format!("tollgate-token: {}\n", self.scrub(msg));
        let _ = self.err.write_all(line.as_bytes());
    }
}

/// The real process: environment, clock, stdout, stderr.
pub fn run() -> ExitCode {
    let stdout = io::stdout();
    let stderr = io::stderr();
    let exit = run_with(
        std::env::args_os(),
        &sys::ProcessEnv,
        &sys::SystemClock,
        &mut stdout.lock(),
        &mut stderr.lock(),
    );
    exit.into()
}

/// Parse arguments and run one command.
pub fn run_with(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Env,
    clock: &dyn Clock,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let started = Instant::now();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let text = e.render().to_string();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = out.write_all(text.as_bytes());
                    Exit::Ok
                }
                _ => {
                    let _ = write!(err, "tollgate-token: {text}");
                    Exit::Usage
                }
            };
        }
    };
    let mut report = Reporter::new(err);
    match dispatch(cli, env, clock, out, &mut report, started) {
        Ok(exit) => exit,
        // ripgrep's rule: nobody is left to read what we would say.
        Err(e) if e.is_broken_pipe() => Exit::Ok,
        Err(e) => {
            report.error(&error_line(&e));
            e.exit()
        }
    }
}

/// One line: the error and its sources that add information.
fn error_line(e: &HelperError) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    error::one_line(&msg)
}

fn dispatch(
    cli: Cli,
    env: &dyn Env,
    clock: &dyn Clock,
    out: &mut dyn Write,
    report: &mut Reporter<'_>,
    started: Instant,
) -> Result<Exit, HelperError> {
    match cli.command {
        None => {
            let settings = config::resolve(&cli.flags, env)?;
            let parent = rerun::Parent::current();
            let outcome = token::get_token(
                &settings,
                clock,
                report,
                started,
                parent.as_ref(),
                token::Mode::Cached,
            )?;
            token::emit_token(out, &outcome.token).map_err(HelperError::Stdout)?;
            Ok(Exit::Ok)
        }
        Some(Command::Status {
            show_token,
            remote,
            provider_id,
        }) => {
            let (settings, codex) =
                resolve_with_codex(cli.flags, provider_id.as_deref(), env, report)?;
            status::status(
                &settings,
                codex.as_ref(),
                clock,
                status::StatusOptions { show_token, remote },
                out,
                report,
                started,
            )
        }
        Some(Command::Refresh { print, provider_id }) => {
            let (settings, _) = resolve_with_codex(cli.flags, provider_id.as_deref(), env, report)?;
            let outcome = token::get_token(
                &settings,
                clock,
                report,
                started,
                None,
                token::Mode::Refresh,
            )?;
            report.note(&token::summary(&outcome, clock.now_unix()));
            if print {
                token::emit_token(out, &outcome.token).map_err(HelperError::Stdout)?;
            }
            Ok(Exit::Ok)
        }
        Some(Command::Login {
            device,
            no_browser,
            client_id,
            scope,
            provider_id,
        }) => {
            let (settings, _) = resolve_with_codex(cli.flags, provider_id.as_deref(), env, report)?;
            let opts = login::LoginOptions {
                device,
                no_browser,
                client_id,
                scope,
            };
            login::login(&settings, &opts, env, clock, report)
        }
        Some(Command::Logout { provider_id }) => {
            let (settings, _) = resolve_with_codex(cli.flags, provider_id.as_deref(), env, report)?;
            login::logout(&settings, report)
        }
        Some(Command::Setup {
            agent: Agent::ClaudeCode,
            project,
            dry_run,
            ..
        }) => {
            let settings = config::resolve(&cli.flags, env)?;
            let args = pinned_args(&settings, cli.flags.credential_file.as_deref())?;
            claude::run(&settings, args, env, project.as_deref(), dry_run, out)
        }
        Some(Command::Setup {
            provider_id,
            set_default,
            model,
            dry_run,
            oauth,
            project,
            ..
        }) => {
            if project.is_some() {
                return Err(error::ConfigError::Invalid {
                    what: "--project".into(),
                    value: String::new(),
                    reason:
                        "only with --agent claude-code (Codex has no per-project provider file)"
                            .into(),
                }
                .into());
            }
            let settings = config::resolve(&cli.flags, env)?;
            let oauth = if oauth {
                Some(gateway_oauth(&settings, env, report)?)
            } else {
                None
            };
            run_setup(
                &settings,
                cli.flags.credential_file.as_deref(),
                env,
                SetupChoice {
                    provider_id,
                    set_default,
                    model,
                    dry_run,
                    oauth,
                },
                out,
                report,
            )
        }
        Some(Command::Completions { shell }) => {
            // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tollgate-token", &mut script);
            out.write_all(&script)
                .and_then(|()| out.flush())
                .map_err(HelperError::Stdout)?;
            Ok(Exit::Ok)
        }
    }
}

/// Settings for `status` and `refresh`: the user's flags over the auth args Codex's config gives the
/// helper (see [`codex`]), then the environment, config file and defaults as always.
fn resolve_with_codex(
    flags: config::Flags,
    provider_id: Option<&str>,
    env: &dyn Env,
    report: &mut Reporter<'_>,
) -> Result<(config::Settings, Option<codex::CodexProvider>), HelperError> {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| std::fs::canonicalize(e).ok());
    let mut notes = Vec::new();
    let found = codex::find_provider(env, provider_id, exe.as_deref(), &mut notes)?;
    for n in &notes {
        report.warn(n);
    }
    let flags = match &found {
        Some(p) => flags.over(p.flags.clone()),
        None => flags,
    };
    Ok((config::resolve(&flags, env)?, found))
}

/// What `setup` was asked to do.
struct SetupChoice {
    provider_id: String,
    set_default: bool,
    model: Option<String>,
    dry_run: bool,
    oauth: Option<setup::GatewayOAuth>,
}

/// `setup --oauth`: Codex's `gateway_oauth` from the broker's authorization server metadata.
fn gateway_oauth(
    settings: &config::Settings,
    env: &dyn Env,
    report: &mut Reporter<'_>,
) -> Result<setup::GatewayOAuth, HelperError> {
    // Codex keeps its gateway token in the OS keyring by default; where there is none (no D-Bus session
    // for a Secret Service on Linux, or the person chose files for the helper) its file store must be named.
    let no_keyring = settings.credential_store == login::store::StoreChoice::File
        || (!cfg!(target_os = "macos") && env.var("DBUS_SESSION_BUS_ADDRESS").is_none());
    let credentials_store = no_keyring.then_some("file");
    if no_keyring {
        report.note(
            "no OS keyring session here: Codex is told to keep its sign-in in its own file store \
             (credentials_store = \"file\")",
        );
    }
    let http = exchange::http_client(std::time::Duration::from_millis(
        settings.timeout_ms.max(10_000),
    ))
    .map_err(|e| HelperError::Internal(format!("cannot build the HTTP client: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HelperError::Internal(format!("cannot start the async runtime: {e}")))?;
    let meta = rt.block_on(login::oauth::discover(&http, &settings.broker))?;
    let authorization_url =
        meta.authorization_endpoint
            .clone()
            .ok_or_else(|| error::SignInError::Unsupported {
                broker: settings.broker.clone(),
                reason: "its metadata has no authorization_endpoint".into(),
            })?;
    let scopes = ["models", "offline_access"]
        .into_iter()
        .filter(|s| {
            meta.scopes_supported.is_empty() || meta.scopes_supported.iter().any(|x| x == s)
        })
        .map(str::to_owned)
        .collect();
    Ok(setup::GatewayOAuth {
        authorization_url,
        token_url: meta.token_endpoint,
        device_authorization_url: meta.device_authorization_endpoint,
        client_id: "codex".into(),
        scopes,
        resource: settings.broker.clone(),
        credentials_store,
    })
}

fn run_setup(
    settings: &config::Settings,
    credential_file: Option<&std::path::Path>,
    env: &dyn Env,
    choice: SetupChoice,
    out: &mut dyn Write,
    report: &mut Reporter<'_>,
) -> Result<Exit, HelperError> {
    let SetupChoice {
        provider_id,
        set_default,
        model,
        dry_run,
        oauth,
    } = choice;
    if provider_id.is_empty()
        || !provider_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(error::ConfigError::Invalid {
            what: "--provider-id".into(),
            value: provider_id,
            reason: "use letters, digits, - and _".into(),
        }
        .into());
    }
    let path = setup::codex_config_path(env).ok_or(error::ConfigError::NoHome {
        what: "Codex's config.toml",
        vars: "CODEX_HOME",
    })?;
    let exe = std::env::current_exe().map_err(error::SetupError::CurrentExe)?;
    let args = pinned_args(settings, credential_file)?;
    let via_oauth = oauth.is_some();
    let plan = setup::SetupPlan {
        provider_id,
        broker: settings.broker.clone(),
        command: exe.to_string_lossy().into_owned(),
        args,
        set_default,
        model,
        oauth,
    };
    let old = setup::read_config(&path)?;
    let (new, notes) = setup::apply(&old, &path, &plan)?;
    let io_err = HelperError::Stdout;
    for n in &notes {
        report.warn(n);
    }
    let label = path.display().to_string();
    if dry_run {
        if old == new {
            writeln!(out, "{label} is already up to date; nothing would change").map_err(io_err)?;
        } else {
            out.write_all(setup::diff(&old, &new, &label).as_bytes())
                .map_err(io_err)?;
            writeln!(out, "(dry run: nothing written)").map_err(io_err)?;
        }
        return Ok(Exit::Ok);
    }
    if old == new {
        writeln!(out, "{label} is already up to date").map_err(io_err)?;
        return Ok(Exit::Ok);
    }
    setup::write_config(&path, &new)?;
    if via_oauth {
        writeln!(
            out,
            "updated {label}: provider `{}` -> {}/v1, Codex signs in itself (gateway_oauth, client `codex`)",
            plan.provider_id, plan.broker
        )
        .map_err(io_err)?;
    } else {
        writeln!(
            out,
            "updated {label}: provider `{}` -> {}/v1, auth command {}",
            plan.provider_id, plan.broker, plan.command
        )
        .map_err(io_err)?;
    }
    if !set_default {
        writeln!(
            out,
            "use it with `codex -c model_provider={}` or rerun with --set-default",
            plan.provider_id
        )
        .map_err(io_err)?;
    }
    Ok(Exit::Ok)
}

/// The helper arguments an agent's config must pin (the agent runs the helper without our environment,
/// from any directory): a profile other than the default, a broker not from the config file, a credential
/// file as an absolute path.
fn pinned_args(
    settings: &config::Settings,
    credential_file: Option<&std::path::Path>,
) -> Result<Vec<String>, HelperError> {
    let mut args = Vec::new();
    if settings.profile != config::DEFAULT_PROFILE {
        args.extend(["--profile".to_owned(), settings.profile.clone()]);
    }
    // A broker from the config file is read again at run time; one from a flag or the
    // environment must be pinned, since Codex does not pass our environment reliably.
    if matches!(settings.broker_source, Source::Flag | Source::Env) {
        args.extend(["--broker".to_owned(), settings.broker.clone()]);
    }
    // A credential file given on the setup command line is pinned too, as an absolute path: Codex runs the
    // helper from whatever directory Codex was launched in.
    if let Some(f) = credential_file {
        let abs = std::path::absolute(f)
            .map_err(|e| HelperError::Internal(format!("cannot resolve {}: {e}", f.display())))?;
        // Every run Codex makes would refuse a credential others can read: say so now, not at the first turn.
        if let Err(e @ error::IdentityError::Insecure { .. }) =
            identity::read_private_file("static", &abs)
        {
            return Err(e.into());
        }
        args.extend([
            "--credential-file".to_owned(),
            abs.to_string_lossy().into_owned(),
        ]);
    }
    // Signed in as a person (`login`): pin it, so that after a `logout` the agent's helper says to sign in
    // again instead of looking for a workload credential.
    if matches!(settings.identity, config::IdentityConfig::Login) {
        args.extend(["--identity".to_owned(), "login".to_owned()]);
    }
    Ok(args)
}
