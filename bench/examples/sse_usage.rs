//! The side decoder's cost per streamed event (`usage::SseUsageDecoder`, which reads usage and counts text
//! beside every streamed response the broker relays). Feeds a stream of each wire, in the shapes the
//! providers send (Responses text deltas, Chat Completions chunks with `"usage":null`, Messages
//! `content_block_delta`s), each event in its own chunk, ROUNDS times. Count its instructions with
//! callgrind, once with ROUNDS = 0 (start-up alone) and once with ROUNDS = N; the difference over N × events
//! is the cost per event:
//!
//!     cargo build --release -p tollgate-bench --example sse_usage
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/sse_usage responses 200
//!
//! Arguments: `responses | chat | messages`, ROUNDS (default 100), DELTAS per stream (default 200).

use tollgate_broker::usage::{SseUsageDecoder, Wire};

fn stream(wire: Wire, deltas: usize) -> Vec<String> {
    let words = [
        " the",
        " quick",
        " brown",
        " fox",
        " jumps",
        " over",
        "\\n",
        " \\\"lazy\\\"",
        " dog",
        ".",
    ];
    let mut events = Vec::new();
    match wire {
        Wire::Responses => {
            events.push(r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","model":"gpt-5"}}

"#.to_string());
            for i in 0..deltas {
                events.push(format!(
                    "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"item_id\":\"msg_68af0c1b2c3d\",\"output_index\":0,\"content_index\":0,\"delta\":\"{}\",\"logprobs\":[],\"obfuscation\":\"Xy3kPq\"}}\n\n",
                    i + 4,
                    words[i % words.len()]
                ));
            }
            events.push(r#"event: response.completed
data: {"type":"response.completed","sequence_number":999,"response":{"id":"resp_1","object":"response","status":"completed","model":"gpt-5","usage":{"input_tokens":1200,"input_tokens_details":{"cached_tokens":1024},"output_tokens":210,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":1410}}}

"#.to_string());
        }
        Wire::Chat => {
            for i in 0..deltas {
                events.push(format!(
                    "data: {{\"id\":\"chatcmpl-Bx1\",\"object\":\"chat.completion.chunk\",\"created\":1764979200,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_560af6e559\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n",
                    words[i % words.len()]
                ));
            }
            events.push("data: {\"id\":\"chatcmpl-Bx1\",\"object\":\"chat.completion.chunk\",\"created\":1764979200,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":210,\"total_tokens\":1410,\"prompt_tokens_details\":{\"cached_tokens\":1024}}}\n\ndata: [DONE]\n\n".to_string());
        }
        Wire::Messages => {
            events.push("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":1200,\"cache_read_input_tokens\":1024,\"output_tokens\":1}}}\n\n".to_string());
            for i in 0..deltas {
                events.push(format!(
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
                    words[i % words.len()]
                ));
            }
            events.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":210}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
        }
    }
    events
}

#[allow(clippy::print_stdout)]
fn main() {
    let mut args = std::env::args().skip(1);
    let wire = match args.next().as_deref() {
        Some("chat") => Wire::Chat,
        Some("messages") => Wire::Messages,
        _ => Wire::Responses,
    };
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let deltas: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let events = stream(wire, deltas);
    let mut text = 0;
    let mut output = 0;
    for _ in 0..rounds {
        let mut d = SseUsageDecoder::new(wire);
        for e in &events {
            d.feed(e.as_bytes());
        }
        d.finish();
        text += d.output_text_bytes;
        output += d.usage.map_or(0, |u| u.output_tokens);
    }
    println!(
        "{wire:?}: {rounds} streams of {} events; text bytes {text}, output tokens {output}",
        events.len()
    );
}
