//! A lean canned LLM upstream for benchmarks: answers `POST /v1/responses` and
//! `POST /v1/chat/completions` (JSON or SSE) with fixed, realistic bodies that carry usage, so the
//! proxy's side decoder and settlement do their real work, while the upstream itself costs a few
//! microseconds per request. The full-fidelity mock (scripted replies, faults, recording) is
//! `tollgate-mock-upstream`; this one exists so a throughput number measures the proxy, not the mock.
//!
//! A request header `x-bench-hold-ms: N` makes a stream send its first events, pause N ms, then
//! finish: that is how the open-streams memory benchmark keeps 1,000 streams open.

use crate::client::find;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSES_JSON: &str = r#"{"id":"resp_bench0000000000000000000000000000","object":"response","created_at":1764000000,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-bench","output":[{"type":"message","id":"msg_bench0000000000000000000000000000","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello from the benchmark upstream. This is a short, fixed answer.","annotations":[],"logprobs":[]}]}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":false,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":42,"input_tokens_details":{"cached_tokens":0},"output_tokens":14,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":56},"user":null,"metadata":{}}"#;

const CHAT_JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764000000,"model":"gpt-bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream. This is a short, fixed answer.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":14,"total_tokens":56,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":null}"#;

const DELTAS: [&str; 6] = [
    "Hello from the ",
    "benchmark upstream. ",
    "This is a ",
    "short, ",
    "fixed ",
    "answer.",
];

fn responses_events() -> Vec<String> {
    let mut ev = Vec::new();
    let mut push = |name: &str, data: String| {
        ev.push(format!("event: {name}\ndata: {data}\n\n"));
    };
    let resp = |status: &str, output: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_bench0000000000000000000000000000","object":"response","created_at":1764000000,"status":"{status}","model":"gpt-bench","output":[{output}],"usage":{usage}}}"#
        )
    };
    push(
        "response.created",
        format!(
            r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
            resp("in_progress", "", "null")
        ),
    );
    push(
        "response.in_progress",
        format!(
            r#"{{"type":"response.in_progress","sequence_number":1,"response":{}}}"#,
            resp("in_progress", "", "null")
        ),
    );
    push("response.output_item.added", r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"type":"message","id":"msg_bench","status":"in_progress","role":"assistant","content":[]}}"#.into());
    push("response.content_part.added", r#"{"type":"response.content_part.added","sequence_number":3,"item_id":"msg_bench","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}"#.into());
    for (i, d) in DELTAS.iter().enumerate() {
        push(
            "response.output_text.delta",
            format!(
                r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"msg_bench","output_index":0,"content_index":0,"delta":"{d}","logprobs":[]}}"#,
                4 + i
            ),
        );
    }
    let text = DELTAS.concat();
    push(
        "response.output_text.done",
        format!(
            r#"{{"type":"response.output_text.done","sequence_number":10,"item_id":"msg_bench","output_index":0,"content_index":0,"text":"{text}","logprobs":[]}}"#
        ),
    );
    let item = format!(
        r#"{{"type":"message","id":"msg_bench","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"{text}","annotations":[]}}]}}"#
    );
    push(
        "response.output_item.done",
        format!(
            r#"{{"type":"response.output_item.done","sequence_number":11,"output_index":0,"item":{item}}}"#
        ),
    );
    push(
        "response.completed",
        format!(
            r#"{{"type":"response.completed","sequence_number":12,"response":{}}}"#,
            resp(
                "completed",
                &item,
                r#"{"input_tokens":42,"input_tokens_details":{"cached_tokens":0},"output_tokens":14,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":56}"#
            )
        ),
    );
    ev
}

fn chat_events() -> Vec<String> {
    let mut ev = Vec::new();
    let chunk = |delta: &str, finish: &str| {
        format!(
            r#"data: {{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764000000,"model":"gpt-bench","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
        ) + "\n\n"
    };
    ev.push(chunk(r#"{"role":"assistant","content":""}"#, "null"));
    for d in DELTAS {
        ev.push(chunk(&format!(r#"{{"content":"{d}"}}"#), "null"));
    }
    ev.push(chunk("{}", "\"stop\""));
    ev.push(r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764000000,"model":"gpt-bench","choices":[],"usage":{"prompt_tokens":42,"completion_tokens":14,"total_tokens":56}}"#.to_string() + "\n\n");
    ev.push("data: [DONE]\n\n".into());
    ev
}

/// Pre-rendered answers.
struct Canned {
    responses_json: Vec<u8>,
    chat_json: Vec<u8>,
    /// (head + first chunk(s), rest + terminator), so a hold can sit between them.
    responses_sse: (Vec<u8>, Vec<u8>),
    chat_sse: (Vec<u8>, Vec<u8>),
}

fn json_answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: req_bench\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn sse_answer(events: &[String]) -> (Vec<u8>, Vec<u8>) {
    let mut first = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nx-request-id: req_bench\r\n\r\n".to_vec();
    let mut rest = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let target = if i < 2 { &mut first } else { &mut rest };
        target.extend_from_slice(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
    }
    rest.extend_from_slice(b"0\r\n\r\n");
    (first, rest)
}

impl Canned {
    fn new() -> Self {
        Canned {
            responses_json: json_answer(RESPONSES_JSON),
            chat_json: json_answer(CHAT_JSON),
            responses_sse: sse_answer(&responses_events()),
            chat_sse: sse_answer(&chat_events()),
        }
    }
}

/// Serve on `listener` forever.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let canned = Arc::new(Canned::new());
    loop {
        let (sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let canned = canned.clone();
        tokio::spawn(async move {
            let _ = conn(sock, canned).await;
        });
    }
}

async fn conn(mut sock: TcpStream, canned: Arc<Canned>) -> anyhow::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        // Read one request: head, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut len = 0usize;
        let mut hold_ms = 0u64;
        for line in head.split("\r\n").skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("x-bench-hold-ms") {
                    hold_ms = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    sock.write_all(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
                    return Ok(());
                }
            }
        }
        while buf.len() < head_end + len {
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let body = &buf[head_end..head_end + len];
        let stream =
            find(body, b"\"stream\":true").is_some() || find(body, b"\"stream\": true").is_some();
        let path = head.split(' ').nth(1).unwrap_or("");
        let chat = path.ends_with("/chat/completions");
        if !chat && !path.ends_with("/responses") {
            let body = r#"{"error":{"message":"not found","type":"invalid_request_error"}}"#;
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await?;
        } else if stream {
            let (first, rest) = if chat {
                &canned.chat_sse
            } else {
                &canned.responses_sse
            };
            if hold_ms > 0 {
                sock.write_all(first).await?;
                tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                sock.write_all(rest).await?;
            } else {
                let mut all = Vec::with_capacity(first.len() + rest.len());
                all.extend_from_slice(first);
                all.extend_from_slice(rest);
                sock.write_all(&all).await?;
            }
        } else if chat {
            sock.write_all(&canned.chat_json).await?;
        } else {
            sock.write_all(&canned.responses_json).await?;
        }
        buf.drain(..head_end + len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_json_is_valid_and_carries_usage() {
        for body in [RESPONSES_JSON, CHAT_JSON] {
            let v: serde_json::Value = serde_json::from_str(body).expect("json");
            assert!(v.get("usage").is_some_and(|u| u.is_object()));
        }
        for e in responses_events().iter().chain(chat_events().iter()) {
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("data line");
            if data != "[DONE]" {
                serde_json::from_str::<serde_json::Value>(data).expect("event json");
            }
        }
    }
}
