//! Codex's WebSocket mode (`supports_websockets = true`) through the broker, with the real Codex CLI: a
//! 20-request session (19 tool calls, then the answer) over WebSocket and the same over HTTP, each through
//! a byte-counting relay in front of the broker, so the bytes Codex uploads per request are measured.
//! Both complete, and the broker records exactly the usage the upstream reported (every WebSocket turn is
//! admitted, routed and accounted as a POST is).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_testkit::{MockConfig, spawn};

const SESSION: Duration = Duration::from_secs(240);
const TOOL_ROUNDS: u32 = 19;

/// A TCP relay to `target` that counts the bytes clients send and keeps each connection's first line.
struct Relay {
    url: String,
    uploaded: Arc<AtomicU64>,
    first_lines: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn relay(target: &str) -> Relay {
    let target = target.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let uploaded = Arc::new(AtomicU64::new(0));
    let first_lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (up, lines) = (uploaded.clone(), first_lines.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let (up, lines) = (up.clone(), lines.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let upload = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut first = true;
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if first {
                            first = false;
                            let line = String::from_utf8_lossy(&buf[..n])
                                .lines()
                                .next()
                                .unwrap_or_default()
                                .to_string();
                            lines.lock().expect("lines").push(line);
                        }
                        up.fetch_add(n as u64, Ordering::Relaxed);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let download = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(upload, download);
            });
        }
    });
    Relay {
        url,
        uploaded,
        first_lines,
    }
}

struct Measured {
    requests: usize,
    uploaded: u64,
    first_lines: Vec<String>,
}

async fn session(version: &str, websockets: bool) -> Measured {
    let mock = spawn(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        tool_rounds: TOOL_ROUNDS,
        ..MockConfig::default()
    })
    .await;
    let broker = Broker::start(BrokerSpec::with_mock(&mock.base_url(), &["gpt-5*"])).await;
    let relay = relay(&broker.url).await;
    let extra = format!("supports_websockets = {websockets}\nrequest_max_retries = 0\n");
    let codex = CodexEnv::new(&relay.url, "gpt-5.5", &extra).with_version(version);
    let run = codex.exec("please USE_TOOL now", SESSION).await;
    let mode = if websockets { "websocket" } else { "http" };
    assert_eq!(
        run.status,
        Some(0),
        "Codex {version} over {mode}:\n{}\n--- broker log ---\n{}",
        run.all(),
        broker.log()
    );
    assert!(
        !run.all().contains("Falling back from WebSockets"),
        "Codex {version} fell back to HTTP:\n{}",
        run.all()
    );
    let posts = mock.requests_to("/v1/responses");
    assert_eq!(
        posts.len(),
        TOOL_ROUNDS as usize + 1,
        "Codex {version} over {mode}: one request per tool round and the answer"
    );
    assert!(run.stdout.contains("tool said:"), "{}", run.all());
    // Every request reached the upstream with the whole conversation (the broker resolved
    // previous_response_id over WebSocket): the last one carries every tool output.
    let outputs = posts[posts.len() - 1].body["input"]
        .as_array()
        .expect("input")
        .iter()
        .filter(|i| i["type"] == "function_call_output")
        .count();
    assert_eq!(outputs, TOOL_ROUNDS as usize, "Codex {version} over {mode}");
    // Recorded usage equals what the upstream reported.
    let reported = mock.total_reported_usage();
    let token = broker.token().await;
    let usage = broker.usage(&token).await;
    assert_eq!(
        usage["usage"]["input_tokens"], reported.input_tokens,
        "{usage}"
    );
    assert_eq!(
        usage["usage"]["output_tokens"], reported.output_tokens,
        "{usage}"
    );
    assert_eq!(usage["usage"]["requests"], posts.len() as u64, "{usage}");
    let first_lines = relay.first_lines.lock().expect("lines").clone();
    Measured {
        requests: posts.len(),
        uploaded: relay.uploaded.load(Ordering::Relaxed),
        first_lines,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_session_over_websocket_and_http_with_bytes_uploaded_per_request() {
    let version = codex_version();
    let ws = session(&version, true).await;
    assert!(
        ws.first_lines
            .iter()
            .any(|l| l.starts_with("GET /v1/responses")),
        "no WebSocket upgrade was seen: {:?}",
        ws.first_lines
    );
    let http = session(&version, false).await;
    assert!(
        !http
            .first_lines
            .iter()
            .any(|l| l.starts_with("GET /v1/responses")),
        "{:?}",
        http.first_lines
    );
    let per = |m: &Measured| m.uploaded / m.requests as u64;
    eprintln!(
        "Codex {version}, {} requests: uploaded {} bytes over HTTP ({} per request), {} bytes over WebSocket ({} per request)",
        http.requests,
        http.uploaded,
        per(&http),
        ws.uploaded,
        per(&ws)
    );
    assert!(
        ws.uploaded < http.uploaded,
        "WebSocket mode sends only each turn's new input: {} ≥ {}",
        ws.uploaded,
        http.uploaded
    );
}
