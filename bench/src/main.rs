//! `tollgate-bench`: the benchmark tools behind `bench/run.sh` (see docs/benchmarks.md).
//!
//! - `upstream`: a lean canned LLM upstream on loopback.
//! - `latency`: one kept-alive connection per target, requests interleaved across targets, so every
//!   target sees the same machine noise; repeated runs; per-run p50/p90/p99 of total latency and time
//!   to first body byte; added latency of each target against the first one (the direct upstream).
//! - `streams`: open N streaming requests at once, hold them, report the server's RSS and open fds.

mod client;
mod stats;
mod upstream;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use client::{Base, Conn};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-bench",
    about = "Tollgate benchmark tools (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve canned Responses/Chat answers on 127.0.0.1 (prints `listening http://127.0.0.1:PORT`).
    Upstream {
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Tokio worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Single-connection latency, interleaved across targets; the first target is the baseline.
    Latency {
        /// NAME=URL (base URL without the API path, e.g. http://127.0.0.1:8080). Repeat; first = baseline.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// NAME=TOKEN: bearer token to send to that target.
        #[arg(long = "bearer")]
        bearers: Vec<String>,
        /// NAME=HEADER:VALUE: an extra request header for that target (repeat; e.g. a gateway's routing
        /// headers).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// API path.
        #[arg(long, default_value = "/v1/responses")]
        path: String,
        /// Model name in the request body.
        #[arg(long, default_value = "gpt-bench")]
        model: String,
        /// Ask for a stream.
        #[arg(long)]
        stream: bool,
        /// Pad the request input to about this many bytes (Codex sends ~40 KB with tools and history).
        #[arg(long, default_value_t = 0)]
        pad_bytes: usize,
        /// Measured requests per target per run.
        #[arg(long, default_value_t = 2000)]
        n: usize,
        /// Warm-up requests per target before each run (not measured).
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// Repeated runs (fresh connections each run).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Label written into the JSON result.
        #[arg(long, default_value = "")]
        label: String,
        /// Also write every measured request to this file, one line each: run, target, when it started
        /// (ns since its run started), total ns, first-byte ns — the timeline that shows periodic stalls.
        #[arg(long)]
        samples: Option<std::path::PathBuf>,
    },
    /// Open N streams through URL, hold them, then report RSS and fds of PID.
    Streams {
        #[arg(long)]
        url: String,
        #[arg(long)]
        bearer: Option<String>,
        #[arg(long, default_value = "/v1/responses")]
        path: String,
        #[arg(long, default_value = "gpt-bench")]
        model: String,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Upstream hold per stream (sent as `x-bench-hold-ms`); must outlast the opening.
        #[arg(long, default_value_t = 60_000)]
        hold_ms: u64,
        /// Process to measure.
        #[arg(long)]
        pid: u32,
        /// Sample again after this long with everything still open.
        #[arg(long, default_value_t = 2)]
        settle_secs: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tollgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn kv(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("expected NAME=VALUE, got {s:?}"))?;
    Ok((k.to_string(), v.to_string()))
}

fn request_body(model: &str, stream: bool, pad: usize) -> Vec<u8> {
    let mut input = String::from("Say hello to the benchmark.");
    if pad > input.len() {
        // Realistic-ish filler: words and spaces, as a long conversation history would be.
        let filler = " lorem ipsum dolor sit amet consectetur";
        while input.len() < pad {
            input.push_str(filler);
        }
    }
    serde_json::to_vec(&json!({
        "model": model,
        "instructions": "You are a helpful assistant.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": input}]}],
        "stream": stream,
        "store": false,
    }))
    .unwrap_or_default()
}

fn chat_body(model: &str, stream: bool, pad: usize) -> Vec<u8> {
    let mut text = String::from("Say hello to the benchmark.");
    while text.len() < pad {
        text.push_str(" lorem ipsum dolor sit amet consectetur");
    }
    serde_json::to_vec(&json!({
        "model": model,
        "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}],
        "stream": stream,
    }))
    .unwrap_or_default()
}

#[allow(clippy::print_stdout)]
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Upstream { port, threads } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
                println!("listening http://{}", l.local_addr()?);
                std::io::stdout().flush()?;
                upstream::serve(l).await
            })
        }
        Cmd::Latency {
            targets,
            bearers,
            headers,
            path,
            model,
            stream,
            pad_bytes,
            n,
            warmup,
            runs,
            label,
            samples,
        } => {
            let targets: Vec<(String, Base)> = targets
                .iter()
                .map(|t| {
                    let (k, v) = kv(t)?;
                    Ok((k, Base::parse(&v)?))
                })
                .collect::<anyhow::Result<_>>()?;
            let bearers: Vec<(String, String)> = bearers
                .iter()
                .map(|b| kv(b))
                .collect::<anyhow::Result<_>>()?;
            let body = if path.ends_with("/chat/completions") {
                chat_body(&model, stream, pad_bytes)
            } else {
                request_body(&model, stream, pad_bytes)
            };
            let reqs: Vec<Vec<u8>> = targets
                .iter()
                .map(|(name, base)| {
                    let tok = bearers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str());
                    let extra: Vec<(String, String)> = headers
                        .iter()
                        .filter_map(|h| {
                            let (k, v) = h.split_once('=')?;
                            let (n, val) = v.split_once(':')?;
                            (k == name).then(|| (n.to_string(), val.to_string()))
                        })
                        .collect();
                    client::post_request(base, &path, tok, &extra, &body)
                })
                .collect();
            let mut all_runs = Vec::new();
            let mut timeline = match &samples {
                Some(p) => Some(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("{}", p.display()))?,
                )),
                None => None,
            };
            for r in 0..runs {
                let mut conns: Vec<Conn> = targets
                    .iter()
                    .map(|(_, b)| Conn::connect(b))
                    .collect::<anyhow::Result<_>>()?;
                for _ in 0..warmup {
                    for (i, c) in conns.iter_mut().enumerate() {
                        let t = c.request(&reqs[i])?;
                        if t.status != 200 {
                            bail!("{}: status {} during warm-up", targets[i].0, t.status);
                        }
                    }
                }
                let mut total: Vec<Vec<u64>> = vec![Vec::with_capacity(n); targets.len()];
                let mut first: Vec<Vec<u64>> = vec![Vec::with_capacity(n); targets.len()];
                let started = Instant::now();
                for k in 0..n {
                    // Rotate who goes first so no target always follows the same neighbour.
                    for j in 0..targets.len() {
                        let i = (j + k) % targets.len();
                        let at = started.elapsed().as_nanos();
                        let t = conns[i].request(&reqs[i])?;
                        if let Some(w) = timeline.as_mut() {
                            writeln!(
                                w,
                                "{r} {} {at} {} {}",
                                targets[i].0, t.total_ns, t.first_body_ns
                            )?;
                        }
                        if t.status != 200 {
                            bail!("{}: status {}", targets[i].0, t.status);
                        }
                        total[i].push(t.total_ns);
                        first[i].push(t.first_body_ns);
                    }
                }
                let secs = started.elapsed().as_secs_f64();
                let per: Vec<serde_json::Value> = targets
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| {
                        json!({"target": name, "total": stats::summary(&mut total[i]), "first_byte": stats::summary(&mut first[i])})
                    })
                    .collect();
                eprintln!("run {}/{} done in {:.1}s", r + 1, runs, secs);
                all_runs.push(per);
            }
            if let Some(mut w) = timeline {
                w.flush()?;
            }
            let report = stats::latency_report(&targets, &all_runs, stream);
            let out = json!({
                "label": label, "path": path, "stream": stream, "request_bytes": body.len(),
                "n": n, "warmup": warmup, "runs": runs, "per_run": all_runs, "summary": report,
            });
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Cmd::Streams {
            url,
            bearer,
            path,
            model,
            n,
            hold_ms,
            pid,
            settle_secs,
        } => {
            let base = Base::parse(&url)?;
            let body = if path.ends_with("/chat/completions") {
                chat_body(&model, true, 0)
            } else {
                request_body(&model, true, 0)
            };
            let req = client::post_request(
                &base,
                &path,
                bearer.as_deref(),
                &[("x-bench-hold-ms".into(), hold_ms.to_string())],
                &body,
            );
            let before = stats::proc_sample(pid)?;
            let started = Instant::now();
            // Threads with small stacks: 1,000 blocking readers are cheap and keep this simple.
            let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<u16>>();
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
            let mut handles = Vec::new();
            for _ in 0..n {
                let tx = tx.clone();
                let base = base.clone();
                let req = req.clone();
                let stop = stop_rx.clone();
                handles.push(std::thread::Builder::new().stack_size(128 * 1024).spawn(
                    move || {
                        let r = Conn::connect(&base).and_then(|mut c| {
                            let s = c.open(&req)?;
                            Ok((c, s))
                        });
                        match r {
                            Ok((c, s)) => {
                                let _ = tx.send(Ok(s));
                                // Hold the connection until told to stop.
                                let _ = stop.lock().map(|g| g.recv());
                                drop(c);
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                            }
                        }
                    },
                )?);
            }
            drop(tx);
            let mut ok = 0usize;
            let mut errors = Vec::new();
            for _ in 0..n {
                match rx.recv_timeout(Duration::from_secs(60)) {
                    Ok(Ok(200)) => ok += 1,
                    Ok(Ok(s)) => errors.push(format!("status {s}")),
                    Ok(Err(e)) => errors.push(e.to_string()),
                    Err(_) => {
                        errors.push("timed out waiting for streams to open".into());
                        break;
                    }
                }
            }
            let open_secs = started.elapsed().as_secs_f64();
            let at_open = stats::proc_sample(pid)?;
            std::thread::sleep(Duration::from_secs(settle_secs));
            let settled = stats::proc_sample(pid)?;
            // Release all holders: dropping the sender wakes every recv with an error.
            drop(stop_tx);
            for h in handles {
                let _ = h.join();
            }
            errors.truncate(5);
            println!(
                "{}",
                json!({"n": n, "open_ok": ok, "open_secs": open_secs, "errors": errors,
                       "before": before, "all_open": at_open, "after_settle": settled})
            );
            if ok != n {
                bail!("only {ok} of {n} streams opened");
            }
            Ok(())
        }
    }
}
