//! `tollgate-fake-idp`: the fake identity provider as a process (OIDC issuer, Entra tenant discovery,
//! App Service / IMDS managed-identity endpoints). Prints `listening http://127.0.0.1:PORT` and
//! `listening https://127.0.0.1:TLS_PORT` on stdout once bound (the CA of the TLS listener is written to
//! `--ca-file` when given), then serves until killed. See `tollgate_testkit::idp`.

use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use tollgate_testkit::idp::{self, IdpConfig, ManagedIdentity};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Fake OIDC / Entra / managed-identity provider on loopback"
)]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Value `X-IDENTITY-HEADER` must carry (App Service managed identity).
    #[arg(long, env = "TOLLGATE_FAKE_IDP_IDENTITY_HEADER")]
    identity_header: Option<String>,
    /// Tenant of the managed identity.
    #[arg(long)]
    tenant: Option<String>,
    /// Object ID of the managed identity.
    #[arg(long)]
    oid: Option<String>,
    /// Client (app) ID of the managed identity.
    #[arg(long)]
    appid: Option<String>,
    /// Write the PEM of the CA that signed the TLS listener's certificate here.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tollgate-fake-idp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let d = IdpConfig::default();
    let cfg = IdpConfig {
        identity_header: args.identity_header.unwrap_or(d.identity_header),
        managed_identity: ManagedIdentity {
            tenant: args.tenant.unwrap_or(d.managed_identity.tenant),
            oid: args.oid.unwrap_or(d.managed_identity.oid),
            appid: args.appid.unwrap_or(d.managed_identity.appid),
        },
    };
    let handle = idp::spawn_on(cfg, SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    if let Some(path) = &args.ca_file {
        std::fs::write(path, handle.ca_pem())?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening http://{}", handle.addr)?;
        writeln!(out, "listening {}", handle.https_base_url())?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
