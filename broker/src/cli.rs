//! Command-line interface of `tollgate-broker`.

use crate::app::AppState;
use crate::clock::SystemClock;
use crate::config::{Config, ProcessEnv};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-broker",
    version,
    about = "Identity-bound, short-lived tokens and a governed OpenAI-compatible proxy for coding agents."
)]
pub struct Cli {
    /// Broker config file (TOML). The deprecated TOLLGATE_CONFIG is still read, with a warning.
    #[arg(long, short, env = "TOLLGATE_BROKER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Override `server.listen` (use 127.0.0.1:0 for an ephemeral port; the bound address is printed).
    #[arg(long, global = true)]
    pub listen: Option<std::net::SocketAddr>,
    /// Validate the config and policy, print a summary, and exit.
    #[arg(long)]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker (the default).
    Serve,
    /// Print the SHA-256 to put in `[[credentials]] sha256` for a static credential read from stdin.
    HashCredential,
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The admin API, from the command line (needs the admin key).
    Admin(crate::opscli::AdminArgs),
    /// Offline tools for the audit trail (reads the database named by `--config`).
    Audit {
        #[command(subcommand)]
        command: crate::opscli::AuditCommand,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file.
    Check { file: PathBuf },
    /// Show which rule decides for an identity, and why each earlier rule does not apply. Exits 0 when
    /// the identity gets a grant, 1 when it is denied.
    Explain {
        /// Policy file [default: the `policy_file` of --config].
        #[arg(long)]
        file: Option<PathBuf>,
        /// Identity kind: static, aws, vault, azure, oidc, user (a person signed in through `[oauth]`).
        #[arg(long)]
        kind: String,
        /// The verified subject (canonical ARN, OIDC `sub`, Azure object ID…).
        #[arg(long)]
        subject: String,
        /// The issuer (OIDC `iss`, STS endpoint).
        #[arg(long)]
        issuer: Option<String>,
        /// An attribute, repeatable (`--attr groups=eng --attr groups=ops`).
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attrs: Vec<String>,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn run_ops(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = match &cli.config {
        Some(path) => match Config::load(path, &ProcessEnv) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        },
        None => None,
    };
    match cli.command {
        Some(Command::Admin(args)) => {
            let url = config.as_ref().map(|c| c.server.public_url.clone());
            runtime()?.block_on(crate::opscli::admin(args, url))
        }
        Some(Command::Audit { command }) => {
            let Some(config) = config else {
                eprintln!(
                    "tollgate-broker: audit needs --config FILE (it names the audit database: [audit] sqlite_path, or the PostgreSQL [store])"
                );
                return Ok(ExitCode::from(EXIT_CONFIG));
            };
            runtime()?.block_on(crate::opscli::audit(command, &config))
        }
        _ => Ok(ExitCode::from(EXIT_CONFIG)),
    }
}

/// Exit code for a bad config or usage (sysexits EX_USAGE / EX_CONFIG convention).
pub const EXIT_CONFIG: u8 = 78;

/// The variable the broker and the helper both used to read; exported for the broker, it broke the helper.
const LEGACY_CONFIG_ENV: &str = "TOLLGATE_CONFIG";

/// `--config`, else `TOLLGATE_BROKER_CONFIG` (both in `config` already), else the deprecated
/// `TOLLGATE_CONFIG`, which also yields the one-line warning to print.
fn legacy_config(
    config: Option<PathBuf>,
    legacy: Option<std::ffi::OsString>,
) -> (Option<PathBuf>, Option<String>) {
    match (config, legacy.filter(|v| !v.is_empty())) {
        (Some(c), _) => (Some(c), None),
        (None, Some(v)) => (
            Some(PathBuf::from(v)),
            Some(format!(
                "tollgate-broker: warning: {LEGACY_CONFIG_ENV} is deprecated (the helper no longer reads it): \
                 set TOLLGATE_BROKER_CONFIG instead"
            )),
        ),
        (None, None) => (None, None),
    }
}

pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let (config, warning) = legacy_config(cli.config.take(), std::env::var_os(LEGACY_CONFIG_ENV));
    cli.config = config;
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tollgate-broker: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[allow(clippy::print_stdout)]
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::HashCredential) => {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s)?;
            println!(
                "{}",
                crate::identity::static_cred::hash_credential(s.trim_end_matches(['\n', '\r']))
            );
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Policy {
            command: PolicyCommand::Check { file },
        }) => {
            return Ok(match crate::policy::Policy::load(file) {
                Ok(p) => {
                    println!("{}: ok, {} rule(s)", file.display(), p.rules.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            });
        }
        Some(Command::Policy {
            command:
                PolicyCommand::Explain {
                    file,
                    kind,
                    subject,
                    issuer,
                    attrs,
                },
        }) => {
            let path = match (file, &cli.config) {
                (Some(f), _) => f.clone(),
                (None, Some(c)) => match Config::load(c, &ProcessEnv) {
                    Ok(c) => c.policy_file,
                    Err(e) => {
                        eprintln!("{e}");
                        return Ok(ExitCode::from(EXIT_CONFIG));
                    }
                },
                (None, None) => {
                    eprintln!(
                        "tollgate-broker: policy explain needs --file POLICY or --config FILE"
                    );
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let policy = match crate::policy::Policy::load(&path) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let Some(kind) = tollgate::IdentityKind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
            else {
                eprintln!(
                    "tollgate-broker: unknown --kind {kind:?} (static, aws, vault, azure, oidc, user)"
                );
                return Ok(ExitCode::from(EXIT_CONFIG));
            };
            let mut attributes = std::collections::BTreeMap::<String, Vec<String>>::new();
            for a in attrs {
                let Some((k, v)) = a.split_once('=') else {
                    eprintln!("tollgate-broker: --attr wants NAME=VALUE, got {a:?}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                };
                attributes
                    .entry(k.to_string())
                    .or_default()
                    .push(v.to_string());
            }
            let id = crate::identity::VerifiedIdentity {
                kind,
                subject: subject.clone(),
                issuer: issuer.clone(),
                attributes,
            };
            let text = crate::policy::explain_text(&policy, &path, &id);
            print!("{}", text.text);
            return Ok(if text.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "tollgate-broker",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Admin(_)) | Some(Command::Audit { .. }) => return run_ops(cli),
        Some(Command::Serve) | None => {}
    }
    let Some(path) = cli.config.clone() else {
        eprintln!(
            "tollgate-broker: --config FILE is required (try examples/quickstart/broker.toml)"
        );
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let mut config = match Config::load(&path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if let Some(l) = cli.listen {
        apply_listen_override(&mut config, l);
    }
    if cli.check_config {
        return Ok(match crate::policy::Policy::load(&config.policy_file) {
            Ok(p) => {
                println!(
                    "{}: ok ({} provider(s), {} route(s), {} credential(s); policy {} with {} rule(s))",
                    path.display(),
                    config.providers.len(),
                    config.routes.len(),
                    config.credentials.len(),
                    config.policy_file.display(),
                    p.rules.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        });
    }
    if let Err(e) = crate::telemetry::init(&config.telemetry, config.server.log_format) {
        eprintln!("tollgate-broker: {e}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    for p in config.providers.values().filter(|p| !p.enabled) {
        tracing::warn!(provider = %p.name, "provider disabled: its API key source is not set");
    }
    // Files holding keys or the ledger: private from creation, refused (as ssh does) when others can read them.
    if let Err(e) = config.check_state_files() {
        eprintln!("tollgate-broker: {e}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Bound before the state is built: with port 0 the bound address is what discovery, JWKS and the token
    // issuer advertise. No connection is accepted before `serve_on`, after revocations are loaded.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(config.server.listen))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    advertise_bound(&mut config, listener.local_addr()?);
    let state = match rt.block_on(AppState::build(&config, Arc::new(SystemClock))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate-broker: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    rt.block_on(async { state.spawn_background() });
    if let Some(vault) = &config.vault {
        let keys = state.router().vault_keys();
        if !keys.is_empty() {
            let refresher = match crate::vault::KeyRefresher::new(vault, keys) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("tollgate-broker: {e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let loaded = rt.block_on(refresher.refresh_all());
            tracing::info!(loaded, "upstream keys read from vault");
            rt.spawn(refresher.run());
        }
    }
    let served = rt.block_on(crate::server::serve_on(
        state,
        listener,
        Duration::from_secs(config.server.shutdown_grace_secs),
        config.server.tls.clone(),
        crate::server::shutdown_signal(),
    ));
    drop(rt);
    crate::telemetry::shutdown();
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `--listen` replaces `server.listen`; a `public_url` that was only the default derived from the old address
/// follows it (discovery, JWKS and the token issuer advertise where the broker really listens). A configured
/// `public_url` is kept. With port 0 and several replicas, configure `public_url` (replicas must share it).
fn apply_listen_override(config: &mut crate::config::Config, listen: std::net::SocketAddr) {
    if config.server.public_url == format!("http://{}", config.server.listen) {
        config.server.public_url = format!("http://{listen}");
    }
    config.server.listen = listen;
}

/// With port 0 the configured address is not where the broker listens: a `public_url` that was not
/// configured (derived from the address) becomes the bound address, so discovery, JWKS URLs and the token
/// issuer name where the broker really is. Such a replica's issuer is its own: it takes no part in the
/// store's shared-issuer check (see [`crate::config::ServerConfig::issuer_is_ephemeral`]).
fn advertise_bound(config: &mut crate::config::Config, bound: std::net::SocketAddr) {
    if config.server.issuer_is_ephemeral() {
        config.server.public_url = format!("http://{bound}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_without_public_url_advertises_the_bound_address() {
        let load = |text: &str| {
            crate::config::Config::from_source(
                crate::config::Source {
                    path: "/etc/t/broker.toml".into(),
                    text: text.into(),
                },
                &std::collections::BTreeMap::<String, String>::new(),
            )
            .expect("config")
        };
        let bound: std::net::SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        // (listen in the file, --listen, public_url) → advertised, ephemeral issuer
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a str, bool);
        let cases: [Case; 6] = [
            ("127.0.0.1:0", None, None, "http://127.0.0.1:40123", true),
            (
                "127.0.0.1:8787",
                Some("127.0.0.1:0"),
                None,
                "http://127.0.0.1:40123",
                true,
            ),
            (
                "127.0.0.1:0",
                Some("127.0.0.1:9911"),
                None,
                "http://127.0.0.1:9911",
                false,
            ),
            ("127.0.0.1:8787", None, None, "http://127.0.0.1:8787", false),
            (
                "127.0.0.1:0",
                None,
                Some("https://t.example"),
                "https://t.example",
                false,
            ),
            (
                "127.0.0.1:8787",
                Some("127.0.0.1:0"),
                Some("https://t.example"),
                "https://t.example",
                false,
            ),
        ];
        for (listen, flag, public_url, want, ephemeral) in cases {
            let mut text = format!("policy_file = \"p.toml\"\n[server]\nlisten = \"{listen}\"\n");
            if let Some(u) = public_url {
                text.push_str(&format!("public_url = \"{u}\"\n"));
            }
            let mut c = load(&text);
            if let Some(l) = flag {
                apply_listen_override(&mut c, l.parse().expect("addr"));
            }
            assert_eq!(
                c.server.issuer_is_ephemeral(),
                ephemeral,
                "{listen} {flag:?} {public_url:?}"
            );
            // The broker binds what it was told; with a fixed port that is the bound address.
            let b = if c.server.listen.port() == 0 {
                bound
            } else {
                c.server.listen
            };
            advertise_bound(&mut c, b);
            assert_eq!(
                c.server.public_url, want,
                "{listen} {flag:?} {public_url:?}"
            );
        }
    }

    #[test]
    fn listen_override_moves_a_default_public_url_only() {
        let load = |text: &str| {
            crate::config::Config::from_source(
                crate::config::Source {
                    path: "/etc/t/broker.toml".into(),
                    text: text.into(),
                },
                &std::collections::BTreeMap::<String, String>::new(),
            )
            .expect("config")
        };
        let addr: std::net::SocketAddr = "127.0.0.1:9911".parse().expect("addr");
        let mut c = load("policy_file = \"p.toml\"\n[server]\nlisten = \"127.0.0.1:8787\"\n");
        apply_listen_override(&mut c, addr);
        assert_eq!(c.server.public_url, "http://127.0.0.1:9911");
        let mut c = load(
            "policy_file = \"p.toml\"\n[server]\nlisten = \"127.0.0.1:8787\"\npublic_url = \"https://tollgate.example\"\n",
        );
        apply_listen_override(&mut c, addr);
        assert_eq!(c.server.public_url, "https://tollgate.example");
        assert_eq!(c.server.listen, addr);
    }
    use clap::CommandFactory;

    #[test]
    fn the_old_config_variable_still_works_with_a_warning() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            legacy_config(p("/flag"), Some("/old".into())),
            (p("/flag"), None)
        );
        assert_eq!(legacy_config(p("/new"), None), (p("/new"), None));
        assert_eq!(legacy_config(None, Some("".into())), (None, None));
        assert_eq!(legacy_config(None, None), (None, None));
        let (c, w) = legacy_config(None, Some("/old".into()));
        assert_eq!(c, p("/old"));
        let w = w.expect("warning");
        assert!(w.contains("TOLLGATE_CONFIG is deprecated"), "{w}");
        assert!(w.contains("TOLLGATE_BROKER_CONFIG"), "{w}");
        assert!(!w.contains('\n'), "one line: {w}");
    }

    #[test]
    fn the_config_flag_reads_the_broker_variable() {
        let arg = Cli::command()
            .get_arguments()
            .find(|a| a.get_id() == "config")
            .and_then(|a| a.get_env().map(|e| e.to_os_string()));
        assert_eq!(
            arg.as_deref(),
            Some(std::ffi::OsStr::new("TOLLGATE_BROKER_CONFIG"))
        );
    }
}
