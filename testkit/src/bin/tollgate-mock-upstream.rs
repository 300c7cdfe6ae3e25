//! `tollgate-mock-upstream`: the mock LLM upstream as a process, for scripts and benchmarks.
//! Prints `listening http://127.0.0.1:PORT` on stdout once bound, then serves until killed.
//! Script it over `/_mock/*` (see `tollgate_testkit::mock`).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tollgate_testkit::mock::{self, MockConfig};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Mock LLM upstream (OpenAI Responses/Chat, Anthropic Messages) on loopback"
)]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Delay before every /v1 answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Require this API key (Bearer, api-key, or x-api-key).
    #[arg(long, env = "TOLLGATE_MOCK_API_KEY")]
    api_key: Option<String>,
    /// Command the scripted USE_TOOL call asks the client to run.
    #[arg(long, default_value = mock::DEFAULT_TOOL_COMMAND)]
    tool_command: String,
    /// Prompt tokens reported as cached.
    #[arg(long, default_value_t = 0)]
    cached_tokens: u64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-mock-upstream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = MockConfig {
        api_key: args.api_key,
        latency_ms: args.latency_ms,
        tool_command: args.tool_command,
        cached_tokens: args.cached_tokens,
        ..MockConfig::default()
    };
    let handle = mock::spawn_on(config, SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening http://{}", handle.addr)?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
