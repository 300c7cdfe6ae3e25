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
    /// Settled spend and tokens by UTC day × principal, team, org, model, provider, Codex session or
    /// request kind, from the store (the same numbers on every replica).
    Report {
        /// First day, YYYY-MM-DD, inclusive (default: 29 days before --to).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD, inclusive (default: today, UTC).
        #[arg(long)]
        to: Option<String>,
        /// `day`, a dimension (principal, team, org, model, provider, session, request_kind) or both:
        /// `day,team`.
        #[arg(long, default_value = "day")]
        by: String,
        /// table, csv or json.
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
    },
    /// What one Codex session cost: its spend and tokens split by request kind (turn, compaction) and
    /// sub-agent kind.
    Session {
        /// The session id Codex sent (`session-id`).
        session_id: String,
        /// table or json.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Re-read the policy file (a bad file is refused; the old policy stays).
    ReloadPolicy,
    /// Start signing with a new key (old keys keep verifying).
    RotateKeys,
    /// Retire a signing key now: it leaves every JWKS and every token it signed is refused.
    RetireKey {
        /// The key's `kid` (as in /.well-known/jwks.json or a token's header). A kid is base64url and may
        /// start with `-`, so it is taken as a value whatever its first character.
        #[arg(long, allow_hyphen_values = true)]
        kid: String,
        /// Why (kept in the store and the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Verify the audit chain on the running broker.
    VerifyAudit,
    /// Print a single-use login link to the spend dashboard (valid 60 s).
    DashboardLink,
    /// A person's sign-ins (refresh-token families) through the broker's OAuth server.
    SignIns {
        /// The principal (as the policy names it) or the IdP subject.
        who: String,
        /// Include revoked and ended sign-ins.
        #[arg(long)]
        all: bool,
    },
    /// End one sign-in (`--family`) or every live sign-in of a person (`--who`): refresh stops at once,
    /// access tokens are refused at their next request.
    RevokeSignIn {
        #[arg(long, conflicts_with = "who", required_unless_present = "who")]
        family: Option<String>,
        #[arg(long)]
        who: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk the hash chain; exit 0 when intact, 2 at the first broken record or a failed checkpoint.
    ///
    /// The chain alone cannot show that its newest records were deleted; give the signed checkpoints the
    /// broker logged (`--checkpoint`) to prove it still reaches each of them.
    Verify {
        /// Signed checkpoints: a file (log lines as the broker wrote them, an export, one JWS per line;
        /// `-` for stdin) or the checkpoint text itself. Repeatable; every checkpoint found is checked.
        #[arg(long = "checkpoint", value_name = "FILE_OR_JSON")]
        checkpoints: Vec<String>,
        /// Keys to check checkpoint signatures with: a JWKS file (e.g. a saved /.well-known/jwks.json).
        /// Default: every signing key in the store, or `tokens.signing_key_file`.
        #[arg(long, value_name = "FILE")]
        jwks: Option<PathBuf>,
    },
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
    let mut report_format = None;
    let mut session_table = false;
    // `revoke-sign-in --family ID`: the one sign-in the administrator named must have been live.
    let mut family_to_revoke = None;
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
        AdminCommand::Report {
            from,
            to,
            by,
            format,
        } => {
            let wire = if format == "csv" { "csv" } else { "json" };
            let mut q = vec![("by", by), ("format", wire.to_string())];
            q.extend(from.map(|s| ("from", s)));
            q.extend(to.map(|s| ("to", s)));
            report_format = Some(format);
            (
                true,
                format!("/admin/v1/report?{}", serde_urlencoded::to_string(q)?),
                serde_json::Value::Null,
            )
        }
        AdminCommand::Session { session_id, format } => {
            // The broker records only ids of this character set, so any other is no session (and is
            // never put into the URL path).
            if !crate::session::is_valid_id(&session_id) {
                anyhow::bail!(
                    "session id: 1 to {} characters of A-Z a-z 0-9 - _ . :",
                    crate::session::MAX_ID_CHARS
                );
            }
            session_table = format == "table";
            (
                true,
                format!("/admin/v1/sessions/{session_id}"),
                serde_json::Value::Null,
            )
        }
        AdminCommand::ReloadPolicy => (
            false,
            "/admin/v1/policy/reload".into(),
            serde_json::json!({}),
        ),
        AdminCommand::RotateKeys => (false, "/admin/v1/keys/rotate".into(), serde_json::json!({})),
        AdminCommand::RetireKey { kid, reason } => (
            false,
            "/admin/v1/keys/retire".into(),
            serde_json::json!({"kid": kid, "reason": reason}),
        ),
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
        AdminCommand::SignIns { who, all } => (
            true,
            format!(
                "/admin/v1/oauth/sessions?{}",
                serde_urlencoded::to_string([("who", who), ("all", all.to_string())])?
            ),
            serde_json::Value::Null,
        ),
        AdminCommand::RevokeSignIn {
            family,
            who,
            reason,
        } => {
            family_to_revoke.clone_from(&family);
            (
                false,
                "/admin/v1/oauth/revoke".into(),
                serde_json::json!({"family_id": family, "who": who, "reason": reason}),
            )
        }
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
    if status.is_success() && report_format.as_deref() == Some("csv") {
        print!("{}", resp.text().await?);
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let msg = v
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .unwrap_or("no details");
        eprintln!("tollgate-broker admin: {status}: {msg}");
        return Ok(ExitCode::from(1));
    }
    if let Some(f) = &family_to_revoke
        && v["revoked"].as_array().is_some_and(Vec::is_empty)
    {
        eprintln!(
            "tollgate-broker admin: no live sign-in {f}: it was revoked or has ended already, or the id is \
             not one `tollgate-broker admin sign-ins WHO` lists"
        );
        return Ok(ExitCode::from(1));
    }
    if session_table {
        let Ok(report) = serde_json::from_value::<crate::governance::report::SessionReport>(v)
        else {
            anyhow::bail!("the broker's session report is not in the expected shape");
        };
        print!("{}", report.to_table());
    } else if report_format.as_deref() == Some("table") {
        let Some(report) = crate::governance::report::Report::from_json(&v) else {
            anyhow::bail!("the broker's report is not in the expected shape");
        };
        print!("{}", report.to_table());
    } else if let Some(u) = v.get("url").and_then(|u| u.as_str())
        && path.ends_with("dashboard-link")
    {
        println!("{u}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The audit sink a config names: PostgreSQL when the store is, else the SQLite file.
pub async fn open_sink(
    config: &crate::config::Config,
) -> anyhow::Result<std::sync::Arc<dyn crate::audit::AuditSink>> {
    use crate::governance::store::StorePool;
    if config.store.kind == crate::config::StoreKind::Postgres {
        let store = crate::governance::store::open(&config.store).await?;
        return match store.pool() {
            StorePool::Postgres(pool) => Ok(std::sync::Arc::new(
                crate::audit::postgres::PgAudit::new(pool),
            )),
            StorePool::Sqlite(_) => anyhow::bail!("expected a PostgreSQL store"),
        };
    }
    if !config.audit.sqlite_path.exists() {
        anyhow::bail!(
            "no audit database at {}",
            config.audit.sqlite_path.display()
        );
    }
    Ok(std::sync::Arc::new(
        crate::audit::sqlite::SqliteAudit::open(&config.audit.sqlite_path),
    ))
}

/// Keys to check checkpoints with: a JWKS file, the key file, or every key the store holds.
async fn verification_keys(
    config: &crate::config::Config,
    jwks: Option<&std::path::Path>,
) -> anyhow::Result<crate::token::KeyRing> {
    let mut keys = Vec::new();
    if let Some(path) = jwks {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?;
        for k in v["keys"].as_array().into_iter().flatten() {
            keys.push(
                crate::keys::SigningKey::from_jwk(k)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            );
        }
    } else if let Some(path) = &config.tokens.signing_key_file {
        keys.push(crate::keys::load_file(path, 0)?);
    } else {
        let store = crate::governance::store::open(&config.store).await?;
        let mut rows = store.keys_since(i64::MIN).await?;
        rows.extend(store.rotated_keys_since(i64::MIN).await?);
        let kek = config.tokens.key_encryption_key.as_deref();
        for k in rows {
            let der = match crate::keys::open_stored(kek, &k.kid, &k.pkcs8) {
                Ok(crate::keys::Opened::Sealed(der)) => der,
                Ok(crate::keys::Opened::Plain) => k.pkcs8,
                Err(e) => {
                    eprintln!("skipping key {}: {e}", k.kid);
                    continue;
                }
            };
            match crate::keys::SigningKey::from_pkcs8(&der, 0) {
                Ok(sk) => keys.push(sk),
                Err(e) => eprintln!("skipping unusable key {} in the store: {e}", k.kid),
            }
        }
    }
    Ok(crate::token::KeyRing::new(keys))
}

/// Checkpoint JWSs from `--checkpoint` arguments (files, `-`, or literal text).
fn read_checkpoints(args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for a in args {
        let text = if a == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else if std::path::Path::new(a).is_file() {
            std::fs::read_to_string(a).map_err(|e| anyhow::anyhow!("{a}: {e}"))?
        } else {
            a.clone()
        };
        let found = crate::audit::checkpoint::extract(&text);
        if found.is_empty() {
            anyhow::bail!("--checkpoint {a:.60}: no audit checkpoint found in it");
        }
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

#[allow(clippy::print_stdout)]
pub async fn audit(cmd: AuditCommand, config: &crate::config::Config) -> anyhow::Result<ExitCode> {
    let sink = open_sink(config).await?;
    match cmd {
        AuditCommand::Verify { checkpoints, jwks } => {
            let jws = read_checkpoints(&checkpoints)?;
            let (v, checks) = if jws.is_empty() {
                (crate::audit::verify(sink.as_ref()).await?, Vec::new())
            } else {
                let keys = verification_keys(config, jwks.as_deref()).await?;
                crate::audit::checkpoint::verify_checkpoints(sink.as_ref(), &jws, &keys).await?
            };
            let mut failed = false;
            match &v.first_break {
                None => println!(
                    "audit chain intact: {} record(s), head {}",
                    v.records,
                    v.head.as_deref().unwrap_or("(empty)")
                ),
                Some(b) => {
                    failed = true;
                    println!(
                        "audit chain BROKEN at seq {}: {} ({} record(s) verified before it)",
                        b.seq, b.problem, v.records
                    );
                }
            }
            for c in &checks {
                let what = match (c.seq, c.ts, &c.kid) {
                    (Some(seq), Some(ts), Some(kid)) => {
                        format!("checkpoint seq {seq} (signed at {ts} by key {kid})")
                    }
                    _ => "checkpoint".to_string(),
                };
                match &c.problem {
                    None => println!("{what}: ok, the chain reaches it with the attested hash"),
                    Some(p) => {
                        failed = true;
                        println!("{what}: FAILED: {p}");
                    }
                }
            }
            if jws.is_empty() && v.first_break.is_none() {
                println!(
                    "note: a chain alone cannot show that its newest records were deleted; \
                     pass the logged checkpoints with --checkpoint"
                );
            }
            Ok(if failed {
                ExitCode::from(EXIT_TAMPERED)
            } else {
                ExitCode::SUCCESS
            })
        }
        AuditCommand::Export { output } => {
            let n = match output {
                Some(p) => {
                    let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
                    let n = crate::audit::export(sink.as_ref(), &mut f).await?;
                    f.flush()?;
                    n
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    crate::audit::export(sink.as_ref(), &mut out).await?
                }
            };
            eprintln!("exported {n} record(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
