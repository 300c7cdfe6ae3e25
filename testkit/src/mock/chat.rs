//! OpenAI Chat Completions (`POST /v1/chat/completions`).

use serde_json::{Value, json};

use super::script::{self, Reply};
use super::session::View;
use super::{Answer, Ctx, Frame, new_id, unix_now};

pub(crate) fn answer(ctx: &Ctx<'_>, stream: bool) -> Answer {
    let messages = ctx
        .body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let last = messages.last();
    let tool_output = last
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .map(|m| script::content_text(m.get("content").unwrap_or(&Value::Null)));
    let user_text = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| script::content_text(m.get("content").unwrap_or(&Value::Null)));
    let picked = script::pick_tool(ctx.body.get("tools"), ctx.config, |t| {
        t.pointer("/function/name").and_then(Value::as_str)
    });
    let tool = picked.and_then(|t| {
        let name = t.pointer("/function/name").and_then(Value::as_str)?;
        Some((
            name,
            script::argument_key(t.pointer("/function/parameters")),
        ))
    });
    let declared: Vec<(&str, Option<&Value>)> = ctx
        .body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let name = t.pointer("/function/name").and_then(Value::as_str)?;
            Some((name, t.pointer("/function/parameters")))
        })
        .collect();
    let view = View {
        body: ctx.body,
        user_text: user_text.clone(),
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
    usage.wire = json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    });
    let id = new_id("chatcmpl-");
    let created = unix_now();
    let model = ctx
        .body
        .get("model")
        .cloned()
        .unwrap_or(json!("mock-model"));
    let call_id = new_id("call_");
    let finish_reason = match reply {
        Reply::Text(_) => "stop",
        Reply::Tool { .. } => "tool_calls",
    };

    if !stream {
        let message = match &reply {
            Reply::Text(text) => json!({
                "role": "assistant", "content": text, "refusal": null, "annotations": [],
            }),
            Reply::Tool {
                name, arguments, ..
            } => json!({
                "role": "assistant", "content": null, "refusal": null, "annotations": [],
                "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }],
            }),
        };
        let value = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason,
            }],
            "usage": usage.wire,
            "service_tier": "default",
            "system_fingerprint": null,
        });
        return Answer::Json {
            value,
            usage: Some(usage),
        };
    }

    let include_usage = ctx.body.pointer("/stream_options/include_usage") == Some(&json!(true));
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": null,
            "choices": choices,
        });
        if include_usage {
            c["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        Frame::data(&c.to_string())
    };
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut frames = Vec::new();
    match &reply {
        Reply::Text(text) => {
            frames.push(chunk(
                choice(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null,
                ),
                None,
            ));
            for d in script::text_deltas(text) {
                frames.push(chunk(choice(json!({"content": d}), Value::Null), None));
            }
        }
        Reply::Tool {
            name, arguments, ..
        } => {
            frames.push(chunk(
                choice(
                    json!({
                        "role": "assistant", "content": null, "refusal": null,
                        "tool_calls": [{
                            "index": 0, "id": call_id, "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }],
                    }),
                    Value::Null,
                ),
                None,
            ));
            for frag in script::json_fragments(arguments) {
                frames.push(chunk(
                    choice(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
                        Value::Null,
                    ),
                    None,
                ));
            }
        }
    }
    frames.push(chunk(choice(json!({}), json!(finish_reason)), None));
    if include_usage {
        let wire = usage.wire.clone();
        frames.push(chunk(json!([]), Some(&wire)).with_usage(usage));
    }
    frames.push(Frame::data("[DONE]"));
    Answer::Sse(frames)
}
