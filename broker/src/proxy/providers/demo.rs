//! The built-in `demo` provider: well-formed canned answers in the real wire shapes, so the quickstart
//! works offline and with no API key. It reports honest usage (bytes / 4 in, words out).

use super::{Endpoint, ProviderAdapter, UpstreamResponse};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};

pub struct Demo;

impl ProviderAdapter for Demo {
    fn name(&self) -> &'static str {
        "demo"
    }

    /// None: every answer is made here.
    fn url(&self, _endpoint: Endpoint, _model: &str) -> String {
        String::new()
    }

    fn answer_locally(&self, endpoint: Endpoint, body: &[u8]) -> Option<UpstreamResponse> {
        Some(respond(endpoint, body))
    }
}

fn latest_user_text(req: &Value) -> String {
    // Responses: input is a string or a list of items; Chat and Messages: messages.
    if let Some(s) = req.get("input").and_then(Value::as_str) {
        return s.to_string();
    }
    let items = req
        .get("input")
        .or_else(|| req.get("messages"))
        .and_then(Value::as_array);
    for item in items.into_iter().flatten().rev() {
        if item.get("role").and_then(Value::as_str) != Some("user") {
            continue;
        }
        match item.get("content") {
            Some(Value::String(s)) => return s.clone(),
            Some(Value::Array(parts)) => {
                let text: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                if !text.is_empty() {
                    return text.join(" ");
                }
            }
            _ => {}
        }
    }
    String::new()
}

fn answer_for(req: &Value) -> String {
    let prompt = latest_user_text(req);
    let short: String = prompt.chars().take(80).collect();
    format!("Hello from the Tollgate demo provider. You said: {short}")
}

fn sse(events: Vec<(String, Value)>) -> Bytes {
    let mut out = String::new();
    for (name, data) in events {
        out.push_str("event: ");
        out.push_str(&name);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    }
    Bytes::from(out)
}

fn respond(endpoint: Endpoint, body: &[u8]) -> UpstreamResponse {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("demo")
        .to_string();
    let text = answer_for(&req);
    let input_tokens = (body.len() as u64).div_ceil(4);
    let output_tokens = text.split_whitespace().count() as u64;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut headers = HeaderMap::new();
    let (content_type, bytes) = match (endpoint, stream) {
        (Endpoint::Responses, _) => {
            let msg = json!({"type":"message","id":format!("msg_{id}"),"status":"completed","role":"assistant",
                "content":[{"type":"output_text","text":text,"annotations":[]}]});
            let usage = json!({"input_tokens":input_tokens,"input_tokens_details":{"cached_tokens":0},
                "output_tokens":output_tokens,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":input_tokens+output_tokens});
            let response = |status: &str, output: Value, usage: Value| json!({"id":format!("resp_{id}"),"object":"response","created_at":0,"status":status,"model":model,"output":output,"usage":usage});
            if stream {
                let mut ev = vec![
                    (
                        "response.created".to_string(),
                        json!({"type":"response.created","sequence_number":0,"response":response("in_progress", json!([]), Value::Null)}),
                    ),
                    (
                        "response.output_item.added".into(),
                        json!({"type":"response.output_item.added","sequence_number":1,"output_index":0,
                        "item":{"type":"message","id":format!("msg_{id}"),"status":"in_progress","role":"assistant","content":[]}}),
                    ),
                    (
                        "response.content_part.added".into(),
                        json!({"type":"response.content_part.added","sequence_number":2,"item_id":format!("msg_{id}"),
                        "output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}),
                    ),
                ];
                let mut seq = 3;
                for word in text.split_inclusive(' ') {
                    ev.push(("response.output_text.delta".into(), json!({"type":"response.output_text.delta","sequence_number":seq,
                        "item_id":format!("msg_{id}"),"output_index":0,"content_index":0,"delta":word})));
                    seq += 1;
                }
                ev.push(("response.output_text.done".into(), json!({"type":"response.output_text.done","sequence_number":seq,"item_id":format!("msg_{id}"),"output_index":0,"content_index":0,"text":text})));
                ev.push(("response.content_part.done".into(), json!({"type":"response.content_part.done","sequence_number":seq+1,"item_id":format!("msg_{id}"),"output_index":0,"content_index":0,"part":{"type":"output_text","text":text,"annotations":[]}})));
                ev.push(("response.output_item.done".into(), json!({"type":"response.output_item.done","sequence_number":seq+2,"output_index":0,"item":msg})));
                ev.push(("response.completed".into(), json!({"type":"response.completed","sequence_number":seq+3,"response":response("completed", json!([msg]), usage)})));
                ("text/event-stream", sse(ev))
            } else {
                (
                    "application/json",
                    Bytes::from(response("completed", json!([msg]), usage).to_string()),
                )
            }
        }
        (Endpoint::ChatCompletions, true) => {
            let include_usage = req
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let mut out = String::new();
            let chunk = |delta: Value, finish: Value| {
                json!({"id":format!("chatcmpl-{id}"),"object":"chat.completion.chunk","created":0,"model":model,
                    "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
            };
            let mut push = |v: Value| {
                out.push_str("data: ");
                out.push_str(&v.to_string());
                out.push_str("\n\n");
            };
            push(chunk(json!({"role":"assistant","content":""}), Value::Null));
            for word in text.split_inclusive(' ') {
                push(chunk(json!({"content":word}), Value::Null));
            }
            push(chunk(json!({}), json!("stop")));
            if include_usage {
                push(
                    json!({"id":format!("chatcmpl-{id}"),"object":"chat.completion.chunk","created":0,"model":model,"choices":[],
                    "usage":{"prompt_tokens":input_tokens,"completion_tokens":output_tokens,"total_tokens":input_tokens+output_tokens,
                    "prompt_tokens_details":{"cached_tokens":0}}}),
                );
            }
            out.push_str("data: [DONE]\n\n");
            ("text/event-stream", Bytes::from(out))
        }
        (Endpoint::CountTokens, _) => (
            "application/json",
            Bytes::from(json!({"input_tokens": input_tokens}).to_string()),
        ),
        (Endpoint::Messages, false) => {
            let v = json!({"id":format!("msg_{id}"),"type":"message","role":"assistant","model":model,
                "content":[{"type":"text","text":text}],"stop_reason":"end_turn","stop_sequence":null,
                "usage":{"input_tokens":input_tokens,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":output_tokens}});
            ("application/json", Bytes::from(v.to_string()))
        }
        (Endpoint::Messages, true) => {
            let mut ev = vec![
                (
                    "message_start".to_string(),
                    json!({"type":"message_start","message":{"id":format!("msg_{id}"),"type":"message",
                    "role":"assistant","model":model,"content":[],"stop_reason":null,"stop_sequence":null,
                    "usage":{"input_tokens":input_tokens,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}),
                ),
                (
                    "content_block_start".into(),
                    json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                ),
            ];
            for word in text.split_inclusive(' ') {
                ev.push(("content_block_delta".into(), json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":word}})));
            }
            ev.push((
                "content_block_stop".into(),
                json!({"type":"content_block_stop","index":0}),
            ));
            ev.push(("message_delta".into(), json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},
                "usage":{"output_tokens":output_tokens}})));
            ev.push(("message_stop".into(), json!({"type":"message_stop"})));
            ("text/event-stream", sse(ev))
        }
        (Endpoint::ChatCompletions, false) => {
            let v = json!({"id":format!("chatcmpl-{id}"),"object":"chat.completion","created":0,"model":model,
                "choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":input_tokens,"completion_tokens":output_tokens,"total_tokens":input_tokens+output_tokens,
                "prompt_tokens_details":{"cached_tokens":0}}});
            ("application/json", Bytes::from(v.to_string()))
        }
    };
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    UpstreamResponse {
        status: StatusCode::OK,
        headers,
        body: futures::stream::iter([Ok(bytes)]).boxed(),
    }
}
