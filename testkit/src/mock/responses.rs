//! OpenAI Responses API (`POST /v1/responses`).

use serde_json::{Value, json};

use super::script::{self, Reply};
use super::session::{CallKind, View};
use super::{Answer, Ctx, Frame, ReportedUsage, new_id, unix_now};

/// Tool name used for the scripted call: Codex's shell tool.
const TOOL_NAME: &str = "exec_command";

pub(crate) fn answer(ctx: &Ctx<'_>, stream: bool) -> Answer {
    let input = ctx.body.get("input").unwrap_or(&Value::Null);
    let view = View {
        body: ctx.body,
        user_text: latest_user_text(input),
        declares_tools: ctx
            .body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty()),
        declared: None,
    };
    let (reply, input_tokens) = ctx.scripted(&view).unwrap_or_else(|| {
        let reply = Reply::decide(
            last_tool_output(input).as_deref(),
            view.user_text.as_deref(),
            Some((TOOL_NAME, Some("cmd".to_owned()))),
            tool_outputs_since_user(input),
            ctx.config,
        );
        (reply, None)
    });
    let mut usage = script::usage(ctx.config, ctx.body_bytes, &reply, input_tokens);
    usage.wire = json!({
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    });
    let resp_id = new_id("resp_");
    let created_at = unix_now();
    let item = match &reply {
        Reply::Text(text) => json!({
            "type": "message",
            "id": new_id("msg_"),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }),
        Reply::Tool {
            name,
            arguments,
            namespace,
            kind,
        } => call_item(name, arguments, namespace.as_deref(), *kind),
    };
    let reasoning = reasoning_item(ctx.config, ctx.body);
    let output: Vec<Value> = reasoning.iter().cloned().chain([item.clone()]).collect();
    let done = response_object(
        ctx.body,
        &resp_id,
        created_at,
        "completed",
        output,
        usage.wire.clone(),
    );
    if !stream {
        return Answer::Json {
            value: done,
            usage: Some(usage),
        };
    }
    let started = response_object(
        ctx.body,
        &resp_id,
        created_at,
        "in_progress",
        vec![],
        Value::Null,
    );
    Answer::Sse(stream_frames(&reply, reasoning, item, started, done, usage))
}

/// The output item of a tool call: `function_call` (with its `namespace`), `custom_tool_call` (the input a
/// string) or `tool_search_call` (`execution: "client"`, the arguments an object).
fn call_item(name: &str, arguments: &str, namespace: Option<&str>, kind: CallKind) -> Value {
    match kind {
        CallKind::Function => {
            let mut item = json!({
                "type": "function_call",
                "id": new_id("fc_"),
                "call_id": new_id("call_"),
                "name": name,
                "arguments": arguments,
                "status": "completed",
            });
            if let Some(ns) = namespace {
                item["namespace"] = json!(ns);
            }
            item
        }
        CallKind::Custom => json!({
            "type": "custom_tool_call",
            "id": new_id("ctc_"),
            "call_id": new_id("call_"),
            "name": name,
            "input": arguments,
            "status": "completed",
        }),
        CallKind::ToolSearch => json!({
            "type": "tool_search_call",
            "id": new_id("tsc_"),
            "call_id": new_id("call_"),
            "execution": "client",
            "arguments": serde_json::from_str::<Value>(arguments).unwrap_or(json!({})),
            "status": "completed",
        }),
    }
}

/// The prefix of the `encrypted_content` an organisation's mock makes.
fn encrypted_prefix(org: &str) -> String {
    format!("gAAAA-mock-org:{org}:")
}

/// The reasoning item an organisation's mock puts first in its output when asked for encrypted reasoning.
fn reasoning_item(config: &super::MockConfig, body: &Value) -> Option<Value> {
    let org = config.organization.as_deref()?;
    let asked = body
        .get("include")
        .and_then(Value::as_array)
        .is_some_and(|i| i.iter().any(|v| v == "reasoning.encrypted_content"));
    asked.then(|| {
        json!({"type": "reasoning", "id": new_id("rs_"), "summary": [],
            "encrypted_content": format!("{}{}", encrypted_prefix(org), new_id("blob_"))})
    })
}

/// The id (or type) of the first input item whose `encrypted_content` this mock's organisation did not make;
/// `None` when every one is readable or the mock plays no organisation.
pub(crate) fn unreadable_encrypted_item(
    config: &super::MockConfig,
    body: &Value,
) -> Option<String> {
    let prefix = encrypted_prefix(config.organization.as_deref()?);
    body.get("input")?
        .as_array()?
        .iter()
        .find(|it| {
            it.get("encrypted_content")
                .and_then(Value::as_str)
                .is_some_and(|e| !e.starts_with(&prefix))
        })
        .map(|it| {
            it.get("id")
                .or_else(|| it.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        })
}

fn stream_frames(
    reply: &Reply,
    reasoning: Option<Value>,
    item: Value,
    started: Value,
    done: Value,
    usage: ReportedUsage,
) -> Vec<Frame> {
    let mut seq = 0u64;
    let mut frames = Vec::new();
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        frames.push(Frame::event(name, &data));
    };
    push("response.created", json!({"response": started}));
    push("response.in_progress", json!({"response": started}));
    // The reasoning item comes first and whole (no summary text streams).
    let index = u64::from(reasoning.is_some());
    if let Some(r) = reasoning {
        push(
            "response.output_item.added",
            json!({"output_index": 0, "item": r}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": 0, "item": r}),
        );
    }
    let item_id = item["id"].clone();
    match reply {
        Reply::Text(text) => {
            let mut added = item.clone();
            added["status"] = json!("in_progress");
            added["content"] = json!([]);
            push(
                "response.output_item.added",
                json!({"output_index": index, "item": added}),
            );
            let part = |t: &str| json!({"type": "output_text", "text": t, "annotations": []});
            let at = json!({"item_id": item_id, "output_index": index, "content_index": 0});
            let with = |extra: Value| {
                let mut v = at.clone();
                if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
                    v.extend(extra);
                }
                v
            };
            push(
                "response.content_part.added",
                with(json!({"part": part("")})),
            );
            for delta in script::text_deltas(text) {
                push(
                    "response.output_text.delta",
                    with(json!({"delta": delta, "logprobs": []})),
                );
            }
            push(
                "response.output_text.done",
                with(json!({"text": text, "logprobs": []})),
            );
            push(
                "response.content_part.done",
                with(json!({"part": part(text)})),
            );
        }
        Reply::Tool {
            kind: CallKind::ToolSearch,
            ..
        } => {
            push(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
        }
        Reply::Tool {
            kind: CallKind::Custom,
            arguments,
            ..
        } => {
            let mut added = item.clone();
            added["status"] = json!("in_progress");
            added["input"] = json!("");
            push(
                "response.output_item.added",
                json!({"output_index": index, "item": added}),
            );
            for delta in script::json_fragments(arguments) {
                push(
                    "response.custom_tool_call_input.delta",
                    json!({"item_id": item_id, "output_index": index, "delta": delta}),
                );
            }
            push(
                "response.custom_tool_call_input.done",
                json!({"item_id": item_id, "output_index": index, "input": arguments}),
            );
        }
        Reply::Tool { arguments, .. } => {
            let mut added = item.clone();
            added["status"] = json!("in_progress");
            added["arguments"] = json!("");
            push(
                "response.output_item.added",
                json!({"output_index": index, "item": added}),
            );
            for delta in script::json_fragments(arguments) {
                push(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": index, "delta": delta}),
                );
            }
            push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": index, "arguments": arguments}),
            );
        }
    }
    push(
        "response.output_item.done",
        json!({"output_index": index, "item": item}),
    );
    push("response.completed", json!({"response": done}));
    if let Some(last) = frames.pop() {
        frames.push(last.with_usage(usage));
    }
    frames
}

/// The Response object, echoing the request's settings like the real API does.
fn response_object(
    body: &Value,
    id: &str,
    created_at: u64,
    status: &str,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    let echo = |key: &str, default: Value| body.get(key).cloned().unwrap_or(default);
    json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "model": echo("model", json!("mock-model")),
        "output": output,
        "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
        "previous_response_id": echo("previous_response_id", Value::Null),
        "prompt_cache_key": echo("prompt_cache_key", Value::Null),
        "reasoning": {
            "effort": body.pointer("/reasoning/effort").cloned().unwrap_or(Value::Null),
            "summary": body.pointer("/reasoning/summary").cloned().unwrap_or(Value::Null),
        },
        "service_tier": "default",
        "store": echo("store", json!(true)),
        "temperature": echo("temperature", json!(1.0)),
        "text": echo("text", json!({"format": {"type": "text"}})),
        "tool_choice": echo("tool_choice", json!("auto")),
        "tools": echo("tools", json!([])),
        "top_p": echo("top_p", json!(1.0)),
        "truncation": echo("truncation", json!("disabled")),
        "usage": usage,
        "user": echo("user", Value::Null),
        "metadata": echo("metadata", json!({})),
    })
}

/// The output of the last `input` item if it is a `function_call_output`
/// (or `custom_tool_call_output`).
fn last_tool_output(input: &Value) -> Option<String> {
    let last = input.as_array()?.last()?;
    match last.get("type").and_then(Value::as_str) {
        Some("function_call_output" | "custom_tool_call_output") => Some(script::content_text(
            last.get("output").unwrap_or(&Value::Null),
        )),
        _ => None,
    }
}

/// How many tool results follow the latest user message (the tool rounds of this turn so far).
fn tool_outputs_since_user(input: &Value) -> u32 {
    let Some(items) = input.as_array() else {
        return 0;
    };
    let n = items
        .iter()
        .rev()
        .take_while(|it| it.get("role").and_then(Value::as_str) != Some("user"))
        .filter(|it| {
            matches!(
                it.get("type").and_then(Value::as_str),
                Some("function_call_output" | "custom_tool_call_output")
            )
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Text of the latest user message: `input` as a string, or the last `role: "user"` item.
fn latest_user_text(input: &Value) -> Option<String> {
    match input {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|it| {
                it.get("role").and_then(Value::as_str) == Some("user")
                    && matches!(
                        it.get("type").and_then(Value::as_str),
                        None | Some("message")
                    )
            })
            .map(|it| script::content_text(it.get("content").unwrap_or(&Value::Null))),
        _ => None,
    }
}
