//! Anthropic Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`).

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::script::{self, Reply};
use super::session::View;
use super::{Answer, Ctx, Frame, new_id};

pub(crate) fn answer(ctx: &Ctx<'_>, stream: bool) -> Answer {
    let messages = ctx
        .body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let blocks_of = |m: &Value| -> Vec<Value> {
        match m.get("content") {
            Some(Value::Array(b)) => b.clone(),
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            _ => vec![],
        }
    };
    let is_user = |m: &&Value| m.get("role").and_then(Value::as_str) == Some("user");
    let tool_output = messages.last().filter(is_user).and_then(|m| {
        blocks_of(m)
            .iter()
            .rev()
            .find(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .map(|b| script::content_text(b.get("content").unwrap_or(&Value::Null)))
    });
    let user_text = messages.iter().rev().find(is_user).map(|m| {
        blocks_of(m)
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<String>()
    });
    let picked = script::pick_tool(ctx.body.get("tools"), ctx.config, |t| {
        t.get("name").and_then(Value::as_str)
    });
    let tool = picked.and_then(|t| {
        let name = t.get("name").and_then(Value::as_str)?;
        Some((name, script::argument_key(t.get("input_schema"))))
    });
    let declared: Vec<(&str, Option<&Value>)> = ctx
        .body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t.get("name").and_then(Value::as_str)?,
                t.get("input_schema"),
            ))
        })
        .collect();
    // The latest user text, past user turns that carry only tool results.
    let latest_text = messages
        .iter()
        .rev()
        .filter(is_user)
        .map(|m| {
            blocks_of(m)
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<String>()
        })
        .find(|t| !t.is_empty());
    let view = View {
        body: ctx.body,
        user_text: latest_text,
        declares_tools: !declared.is_empty(),
        declared: Some(declared),
    };
    let (reply, input_tokens) = ctx.scripted(&view).unwrap_or_else(|| {
        let reply = Reply::decide(
            tool_output.as_deref(),
            user_text.as_deref(),
            tool,
            u32::MAX,
            ctx.config,
        );
        (reply, None)
    });
    let mut usage = script::usage(ctx.config, ctx.body_bytes, &reply, input_tokens);
    // Anthropic's input_tokens excludes cache reads and writes.
    let uncached = usage.input_tokens - usage.cached_tokens - usage.cache_creation_tokens;
    usage.wire = json!({
        "input_tokens": uncached,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    });
    let id = new_id("msg_");
    let model = ctx
        .body
        .get("model")
        .cloned()
        .unwrap_or(json!("mock-model"));
    let tool_id = new_id("toolu_");
    let (block, stop_reason) = match &reply {
        Reply::Text(text) => (json!({"type": "text", "text": text}), "end_turn"),
        Reply::Tool {
            name, arguments, ..
        } => {
            let input: Value = serde_json::from_str(arguments).unwrap_or(json!({}));
            (
                json!({"type": "tool_use", "id": tool_id, "name": name, "input": input}),
                "tool_use",
            )
        }
    };
    if !stream {
        let value = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage.wire,
        });
        return Answer::Json {
            value,
            usage: Some(usage),
        };
    }

    let mut frames = Vec::new();
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        frames.push(Frame::event(name, &data));
    };
    let mut start_usage = usage.wire.clone();
    start_usage["output_tokens"] = json!(1);
    push(
        "message_start",
        json!({"message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": start_usage,
        }}),
    );
    push("ping", json!({}));
    match &reply {
        Reply::Text(text) => {
            push(
                "content_block_start",
                json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            for d in script::text_deltas(text) {
                push(
                    "content_block_delta",
                    json!({"index": 0, "delta": {"type": "text_delta", "text": d}}),
                );
            }
        }
        Reply::Tool {
            name, arguments, ..
        } => {
            push(
                "content_block_start",
                json!({"index": 0, "content_block": {
                    "type": "tool_use", "id": tool_id, "name": name, "input": {},
                }}),
            );
            for frag in script::json_fragments(arguments) {
                push(
                    "content_block_delta",
                    json!({"index": 0, "delta": {"type": "input_json_delta", "partial_json": frag}}),
                );
            }
        }
    }
    push("content_block_stop", json!({"index": 0}));
    push(
        "message_delta",
        json!({
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": usage.output_tokens},
        }),
    );
    if let Some(last) = frames.pop() {
        frames.push(last.with_usage(usage));
    }
    frames.push(Frame::event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    Answer::Sse(frames)
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": n}`, the count the same body would be billed for
/// as input (the configured count, else a quarter of its bytes, as a Messages answer reports).
pub(crate) fn count_tokens(ctx: &Ctx<'_>) -> Value {
    let input = ctx
        .config
        .input_tokens
        .unwrap_or_else(|| (ctx.body_bytes as u64).div_ceil(4));
    json!({ "input_tokens": input })
}

/// `{"type":"error","error":{"type":…,"message":…}}` as the Messages API sends it.
pub(crate) fn error_body(status: StatusCode, message: Option<String>) -> Value {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let message = message.unwrap_or_else(|| match status.as_u16() {
        401 => "invalid x-api-key".to_owned(),
        code => format!("mock {code}: {kind}"),
    });
    json!({"type": "error", "error": {"type": kind, "message": message}})
}
