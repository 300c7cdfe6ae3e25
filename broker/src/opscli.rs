//! `tollgate-broker admin …` (a client of the admin API) and `tollgate-broker audit …` (offline tools on
//! the audit database).

use clap::Subcommand;
use secrecy::{ExposeSecret, SecretString};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Broker base URL. Default: `server.public_url` from `--config`.
    #[arg(long, env = "TOLLGATE_ADMIN_URL")]
    pub url: Option<String>,
    /// File holding the admin key. Default: the `TOLLGATE_ADMIN_KEY` environment variable.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle to trust for an HTTPS broker with a private CA.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// List tokens minted and not yet expired.
    Grants,
    /// Revoke one token (by jti) or every current token of a principal.
    Revoke {
        #[arg(
            long,
            conflicts_with = "principal",
            required_unless_present = "principal"
        )]
        jti: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Spend per UTC day, grouped by principal, team, model or provider.
    Spend {
        #[arg(long, default_value = "principal")]
        by: String,
        /// Unix seconds or YYYY-MM-DD (default: 30 days ago).
        #[arg(long)]
        since: Option<String>,
        /// Unix seconds or YYYY-MM-DD, exclusive (default: now).
        #[arg(long)]
        until: Option<String>,
    },
    /// Re-read the policy file (a bad file is refused; the old policy stays).
    ReloadPolicy,
    /// Start signing with a new key (old keys keep verifying).
    RotateKeys,
    /// Verify the audit chain on the running broker.
    VerifyAudit,
    /// Print a single-use login link to the spend dashboard (valid 60 s).
    DashboardLink,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk the hash chain; exit 0 when intact, 2 at the first broken record.
    Verify,
    /// Write every record as JSON Lines.
    Export {
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// Exit code of `audit verify` when the chain is broken.
pub const EXIT_TAMPERED: u8 = 2;

#[allow(clippy::print_stdout)]
pub async fn admin(args: AdminArgs, default_url: Option<String>) -> anyhow::Result<ExitCode> {
    let Some(url) = args.url.or(default_url) else {
        anyhow::bail!("give --url (or --config with server.public_url)");
    };
    let url = url.trim_end_matches('/').to_string();
    let key = match &args.key_file {
        Some(p) => SecretString::from(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => SecretString::from(
            std::env::var("TOLLGATE_ADMIN_KEY")
                .map_err(|_| anyhow::anyhow!("set TOLLGATE_ADMIN_KEY or pass --key-file"))?,
        ),
    };
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
    if let Some(ca) = &args.ca_file {
        let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem)? {
            builder = builder.add_root_certificate(c);
        }
    }
    let http = builder.build()?;
    let (get, path, body): (bool, String, serde_json::Value) = match args.command {
        AdminCommand::Grants => (true, "/admin/v1/grants".into(), serde_json::Value::Null),
        AdminCommand::Revoke {
            jti,
            principal,
            reason,
        } => (
            false,
            "/admin/v1/revoke".into(),
            serde_json::json!({"jti": jti, "principal": principal, "reason": reason}),
        ),
        AdminCommand::Spend { by, since, until } => {
            let mut q = vec![("by", by)];
            q.extend(since.map(|s| ("since", s)));
            q.extend(until.map(|u| ("until", u)));
            let qs = serde_urlencoded::to_string(q)?;
            (
                true,
                format!("/admin/v1/spend?{qs}"),
                serde_json::Value::Null,
            )
        }
        AdminCommand::ReloadPolicy => (
            false,
            "/admin/v1/policy/reload".into(),
            serde_json::json!({}),
        ),
        AdminCommand::RotateKeys => (false, "/admin/v1/keys/rotate".into(), serde_json::json!({})),
        AdminCommand::VerifyAudit => (
            true,
            "/admin/v1/audit/verify".into(),
            serde_json::Value::Null,
        ),
        AdminCommand::DashboardLink => (
            false,
            "/admin/v1/dashboard-link".into(),
            serde_json::json!({}),
        ),
    };
    // Drop nulls so `{"jti": …}` and `{"principal": …}` stay exclusive on the wire.
    let body = match body {
        serde_json::Value::Object(m) => {
            serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        v => v,
    };
    let req = if get {
        http.get(format!("{url}{path}"))
    } else {
        http.post(format!("{url}{path}")).json(&body)
    };
    let resp = req.bearer_auth(key.expose_secret()).send().await?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let msg = v
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .unwrap_or("no details");
        eprintln!("tollgate-broker admin: {status}: {msg}");
        return Ok(ExitCode::from(1));
    }
    if let Some(u) = v.get("url").and_then(|u| u.as_str())
        && path.ends_with("dashboard-link")
    {
        println!("{u}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
pub async fn audit(cmd: AuditCommand, config: &crate::config::Config) -> anyhow::Result<ExitCode> {
    let sink = crate::audit::sqlite::SqliteAudit::open(&config.audit.sqlite_path);
    if !config.audit.sqlite_path.exists() {
        anyhow::bail!(
            "no audit database at {}",
            config.audit.sqlite_path.display()
        );
    }
    match cmd {
        AuditCommand::Verify => {
            let v = crate::audit::verify(&sink).await?;
            match v.first_break {
                None => {
                    println!(
                        "audit chain intact: {} record(s), head {}",
                        v.records,
                        v.head.as_deref().unwrap_or("(empty)")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some(b) => {
                    println!(
                        "audit chain BROKEN at seq {}: {} ({} record(s) verified before it)",
                        b.seq, b.problem, v.records
                    );
                    Ok(ExitCode::from(EXIT_TAMPERED))
                }
            }
        }
        AuditCommand::Export { output } => {
            let n = match output {
                Some(p) => {
                    let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
                    let n = crate::audit::export(&sink, &mut f).await?;
                    f.flush()?;
                    n
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    crate::audit::export(&sink, &mut out).await?
                }
            };
            eprintln!("exported {n} record(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
