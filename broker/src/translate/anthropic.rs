//! Responses ↔ Anthropic Messages.
//!
//! Request: `instructions` and developer/system messages → `system`; user/assistant messages → content
//! blocks (consecutive same-role turns merged); `function_call` → `tool_use`, `function_call_output` →
//! `tool_result`; Codex's tools as [`super::tools`] flattens them (`custom` tools such as `apply_patch`
//! → a tool with one string `input`, namespaces → `<namespace>__<tool>`); `reasoning` items we
//! produced from Anthropic thinking (their `encrypted_content` carries the signature) → `thinking` blocks;
//! `reasoning.effort` → extended thinking with a token budget. Prompt caching breakpoints go on the system
//! prompt, the tools and the last turn, since Codex resends a ~40 KB prefix every request.
//!
//! Response: Messages events → Responses events; usage with cache reads and writes mapped to Responses usage:
//! `input_tokens` = input + cache_read + cache_write, `cached_tokens` = cache_read,
//! `cache_write_tokens` = cache_write.

use super::tools::{self, Tools, item_id_prefix, tool_search_output_text};
use super::{
    Emitter, EventMapper, IdSource, ResponsesUsage, SseTranslator, StreamError, ToolContext,
    ToolKind, TranslateError, content_text, obj, output_text,
};
use serde_json::{Map, Value, json};

/// The `anthropic-version` header value sent upstream.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Prefix of `encrypted_content` on reasoning items that carry an Anthropic thinking signature.
const THINKING_PREFIX: &str = "tollgate.anthropic.thinking:";
/// Prefix of `encrypted_content` on reasoning items that carry Anthropic redacted thinking.
const REDACTED_PREFIX: &str = "tollgate.anthropic.redacted:";

/// Provider options for the translation.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `max_tokens` when the request sets no `max_output_tokens` (Messages requires one).
    pub default_max_tokens: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            default_max_tokens: 32_000,
        }
    }
}

/// Thinking budget for a Responses reasoning effort; `None` = no extended thinking.
fn thinking_budget(effort: Option<&str>) -> Option<u64> {
    match effort? {
        "low" => Some(2_048),
        "medium" => Some(8_192),
        "high" => Some(16_384),
        "xhigh" => Some(32_000),
        _ => None,
    }
}

/// The Messages `max_tokens` and thinking budget for a request whose own output limit is `limit`.
///
/// A limit the client set is forwarded exactly — the broker reserved its budget from that number (see
/// `proxy::output_limit`) — and thinking must fit inside it (Anthropic: `1024 ≤ budget_tokens <
/// max_tokens`), so a small limit turns thinking off rather than raising the limit. Without a client limit
/// the provider's default applies, raised to leave room for the thinking budget.
fn output_limits(limit: Option<u64>, budget: Option<u64>, default: u64) -> (u64, Option<u64>) {
    const MIN_THINKING: u64 = 1_024;
    match limit {
        Some(limit) => {
            let limit = limit.max(1);
            // Leave at least a quarter of the limit for the answer itself.
            let room = limit - limit / 4;
            let budget = budget
                .map(|b| b.min(room).min(limit - 1))
                .filter(|b| *b >= MIN_THINKING);
            (limit, budget)
        }
        None => match budget {
            Some(b) => (default.max(b + 4_096), Some(b)),
            None => (default, None),
        },
    }
}

/// Translate a Responses request body into a Messages request for `upstream_model`.
pub fn request(
    body: &Value,
    upstream_model: &str,
    opts: Options,
) -> Result<(Value, ToolContext), TranslateError> {
    let req = body.as_object().ok_or(TranslateError::NotAnObject)?;
    let mut ctx = ToolContext {
        model: req
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(upstream_model)
            .to_string(),
        ..ToolContext::default()
    };

    let tools = Tools::collect(req, &mut ctx, "anthropic");
    let mut flat: Vec<Value> = tools
        .flat
        .iter()
        .map(|t| {
            let mut o = Map::new();
            o.insert("name".into(), json!(t.name));
            if let Some(d) = &t.description {
                o.insert("description".into(), json!(d));
            }
            o.insert("input_schema".into(), t.parameters.clone());
            Value::Object(o)
        })
        .collect();

    let mut system: Vec<String> = Vec::new();
    if let Some(s) = req.get("instructions").and_then(Value::as_str)
        && !s.is_empty()
    {
        system.push(s.to_string());
    }
    let mut messages: Vec<Value> = Vec::new();
    match req.get("input") {
        // Through `content_blocks`, like array content: Anthropic rejects an empty text block with a 400.
        Some(s @ Value::String(_)) => push_blocks(&mut messages, "user", content_blocks(Some(s))),
        Some(Value::Array(items)) => {
            for item in items {
                input_item(&mut messages, &mut system, item, &tools);
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => return Err(TranslateError::BadInput),
    }
    if let Some(note) = tools.removal_note() {
        system.push(note);
    }
    // Messages must start with a user turn.
    if messages
        .first()
        .is_some_and(|m| m.get("role").and_then(Value::as_str) != Some("user"))
    {
        messages.insert(
            0,
            json!({"role": "user", "content": [text_block("(continue)")]}),
        );
    }

    let (max_tokens, budget) = output_limits(
        req.get("max_output_tokens").and_then(Value::as_u64),
        thinking_budget(body.pointer("/reasoning/effort").and_then(Value::as_str)),
        opts.default_max_tokens,
    );

    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        let mut blocks: Vec<Value> = system.iter().map(|s| text_block(s)).collect();
        if let Some(last) = blocks.last_mut() {
            last["cache_control"] = json!({"type": "ephemeral"});
        }
        out.insert("system".into(), Value::Array(blocks));
    }
    // Cache breakpoint on the newest turn, so the whole history is read from cache next time.
    if let Some(last) = messages.last_mut()
        && let Some(Value::Array(blocks)) = last.get_mut("content")
        && let Some(b) = blocks.iter_mut().rev().find(|b| {
            !matches!(
                b.get("type").and_then(Value::as_str),
                Some("thinking" | "redacted_thinking")
            )
        })
    {
        b["cache_control"] = json!({"type": "ephemeral"});
    }
    out.insert("messages".into(), Value::Array(messages));
    if !flat.is_empty() {
        if let Some(last) = flat.last_mut() {
            last["cache_control"] = json!({"type": "ephemeral"});
        }
        out.insert("tools".into(), Value::Array(flat));
        let parallel = req.get("parallel_tool_calls").and_then(Value::as_bool);
        let mut tc = match req.get("tool_choice") {
            Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
            Some(Value::String(s)) if s == "none" => json!({"type": "none"}),
            Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
                let name = tools.upstream_name(
                    o.get("namespace").and_then(Value::as_str),
                    o.get("name").and_then(Value::as_str).unwrap_or_default(),
                );
                json!({"type": "tool", "name": name})
            }
            _ => json!({"type": "auto"}),
        };
        // Extended thinking only allows `auto` and `none`.
        if budget.is_some() && (tc["type"] == "any" || tc["type"] == "tool") {
            tc = json!({"type": "auto"});
        }
        if parallel == Some(false) && tc["type"] != "none" {
            tc["disable_parallel_tool_use"] = Value::Bool(true);
        }
        out.insert("tool_choice".into(), tc);
    }
    if let Some(b) = budget {
        out.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": b}),
        );
    } else {
        // Sampling parameters are not allowed together with extended thinking.
        for key in ["temperature", "top_p"] {
            if let Some(v) = req.get(key).filter(|v| v.is_number()) {
                out.insert(key.into(), v.clone());
            }
        }
    }
    if req.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok((Value::Object(out), ctx))
}

fn text_block(s: &str) -> Value {
    json!({"type": "text", "text": s})
}

/// Append blocks to the conversation, merging into the last message when it has the same role.
fn push_blocks(messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut()
        && last.get("role").and_then(Value::as_str) == Some(role)
        && let Some(Value::Array(existing)) = last.get_mut("content")
    {
        existing.extend(blocks);
        return;
    }
    messages.push(json!({"role": role, "content": blocks}));
}

fn image_block(url: &str) -> Option<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',')?;
        let media_type = meta.strip_suffix(";base64")?;
        return Some(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        );
    }
    Some(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

fn content_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![text_block(s)],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("input_text" | "output_text" | "text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(text_block),
                Some("input_image") => p
                    .get("image_url")
                    .and_then(Value::as_str)
                    .and_then(image_block),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn input_item(messages: &mut Vec<Value>, system: &mut Vec<String>, item: &Value, tools: &Tools) {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => match item.get("role").and_then(Value::as_str).unwrap_or("user") {
            "developer" | "system" => {
                let t = content_text(item.get("content"));
                if !t.is_empty() {
                    system.push(t);
                }
            }
            "assistant" => push_blocks(messages, "assistant", content_blocks(item.get("content"))),
            _ => push_blocks(messages, "user", content_blocks(item.get("content"))),
        },
        "function_call" | "custom_tool_call" => {
            let input = if kind == "custom_tool_call" {
                json!({"input": item.get("input").and_then(Value::as_str).unwrap_or_default()})
            } else {
                let args = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}");
                match serde_json::from_str::<Value>(args) {
                    Ok(v @ Value::Object(_)) => v,
                    // tool_use.input must be an object; keep what the model sent.
                    _ => json!({"arguments": args}),
                }
            };
            let name = tools.upstream_name(
                item.get("namespace").and_then(Value::as_str),
                item.get("name").and_then(Value::as_str).unwrap_or_default(),
            );
            let block = json!({"type": "tool_use",
                "id": item.get("call_id").and_then(Value::as_str).unwrap_or_default(),
                "name": name,
                "input": input});
            push_blocks(messages, "assistant", vec![block]);
        }
        "tool_search_call" => {
            let input = match item.get("arguments") {
                Some(v @ Value::Object(_)) => v.clone(),
                Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"arguments": s}),
                },
                _ => json!({}),
            };
            let block = json!({"type": "tool_use",
                "id": item.get("call_id").and_then(Value::as_str).unwrap_or_default(),
                "name": tools.tool_search_name(),
                "input": input});
            push_blocks(messages, "assistant", vec![block]);
        }
        "tool_search_output" => {
            let block = json!({"type": "tool_result",
                "tool_use_id": item.get("call_id").and_then(Value::as_str).unwrap_or_default(),
                "content": tool_search_output_text(tools, item)});
            push_blocks(messages, "user", vec![block]);
        }
        // Its tools were collected with the request's tools.
        "additional_tools" => {}
        "function_call_output" | "custom_tool_call_output" => {
            let block = json!({"type": "tool_result",
                "tool_use_id": item.get("call_id").and_then(Value::as_str).unwrap_or_default(),
                "content": output_text(item.get("output"))});
            push_blocks(messages, "user", vec![block]);
        }
        "reasoning" => {
            let enc = item
                .get("encrypted_content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Some(sig) = enc.strip_prefix(THINKING_PREFIX) {
                let text = reasoning_text(item);
                push_blocks(
                    messages,
                    "assistant",
                    vec![json!({"type": "thinking", "thinking": text, "signature": sig})],
                );
            } else if let Some(data) = enc.strip_prefix(REDACTED_PREFIX) {
                push_blocks(
                    messages,
                    "assistant",
                    vec![json!({"type": "redacted_thinking", "data": data})],
                );
            } else {
                tracing::debug!("dropping a reasoning item that did not come from Anthropic");
            }
        }
        other => tracing::debug!(
            item_type = other,
            "dropping an input item Anthropic cannot take"
        ),
    }
}

/// The thinking text of a reasoning item we produced: its `summary` texts, joined.
fn reasoning_text(item: &Value) -> String {
    item.get("summary")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("")
}

fn reasoning_item(id: String, thinking: &str, signature: &str) -> Value {
    json!({"type": "reasoning", "id": id,
        "summary": [{"type": "summary_text", "text": thinking}],
        "encrypted_content": format!("{THINKING_PREFIX}{signature}")})
}

fn redacted_item(id: String, data: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [],
        "encrypted_content": format!("{REDACTED_PREFIX}{data}")})
}

/// Anthropic usage → Responses usage.
fn usage(u: &Value) -> ResponsesUsage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (input, read, write) = (
        n("input_tokens"),
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
    );
    ResponsesUsage {
        // Untrusted counts: saturate instead of overflowing.
        input_tokens: input.saturating_add(read).saturating_add(write),
        cached_tokens: read,
        cache_write_tokens: write,
        output_tokens: n("output_tokens"),
        reasoning_tokens: 0,
    }
}

fn incomplete_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    match stop_reason {
        Some("max_tokens") => Some("max_output_tokens"),
        Some("refusal") => Some("content_filter"),
        _ => None,
    }
}

fn tool_item(
    ids: &mut dyn IdSource,
    ctx: &ToolContext,
    call_id: &str,
    name: &str,
    arguments: &str,
) -> Value {
    let id = ids.id(item_id_prefix(ctx, name));
    tools::call_item(ctx, name, &id, call_id, arguments, true)
}

/// Translate a non-streamed Messages response into a Responses object.
pub fn response(msg: &Value, ctx: &ToolContext, ids: &mut dyn IdSource, created_at: u64) -> Value {
    let mut output: Vec<Value> = Vec::new();
    let mut text_item: Option<usize> = None;
    for b in msg
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = b.get("text").and_then(Value::as_str).unwrap_or_default();
                let part = json!({"type": "output_text", "text": t, "annotations": []});
                match text_item {
                    Some(i) => {
                        if let Some(Value::Array(parts)) = output[i].get_mut("content") {
                            parts.push(part);
                        }
                    }
                    None => {
                        text_item = Some(output.len());
                        output.push(
                            json!({"type": "message", "id": ids.id("msg_"), "status": "completed",
                            "role": "assistant", "content": [part]}),
                        );
                    }
                }
            }
            Some("tool_use") => {
                text_item = None;
                let args = b
                    .get("input")
                    .map_or_else(|| "{}".to_string(), Value::to_string);
                output.push(tool_item(
                    ids,
                    ctx,
                    b.get("id").and_then(Value::as_str).unwrap_or_default(),
                    b.get("name").and_then(Value::as_str).unwrap_or_default(),
                    &args,
                ));
            }
            Some("thinking") => {
                text_item = None;
                output.push(reasoning_item(
                    ids.id("rs_"),
                    b.get("thinking")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    b.get("signature")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ));
            }
            Some("redacted_thinking") => {
                text_item = None;
                output.push(redacted_item(
                    ids.id("rs_"),
                    b.get("data").and_then(Value::as_str).unwrap_or_default(),
                ));
            }
            _ => {}
        }
    }
    let incomplete = incomplete_reason(msg.get("stop_reason").and_then(Value::as_str));
    let mut r = json!({
        "id": ids.id("resp_"),
        "object": "response",
        "created_at": created_at,
        "status": if incomplete.is_some() { "incomplete" } else { "completed" },
        "model": ctx.model,
        "output": output,
    });
    if let Some(reason) = incomplete {
        r["incomplete_details"] = json!({"reason": reason});
    }
    if let Some(u) = msg.get("usage").filter(|u| u.is_object()) {
        r["usage"] = usage(u).to_json();
    }
    r
}

/// Translate an Anthropic error body into OpenAI's error shape (same information, no more).
pub fn error_body(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let message = e.get("message").and_then(Value::as_str)?;
    let kind = e
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("invalid_request_error");
    Some(json!({"error": {"message": message, "type": kind, "param": null, "code": null}}))
}

enum Block {
    Text {
        index: usize,
        id: String,
        text: String,
    },
    Tool {
        index: usize,
        id: String,
        call_id: String,
        name: String,
        json: String,
    },
    Thinking {
        index: usize,
        id: String,
        text: String,
        signature: String,
    },
    Redacted {
        index: usize,
        id: String,
        data: String,
    },
}

/// Streamed Messages events → Responses bytes: the shared SSE driver over [`MessagesEvents`].
pub type MessagesStream = SseTranslator<MessagesEvents>;

impl MessagesStream {
    pub fn new(ctx: ToolContext, ids: Box<dyn IdSource>, created_at: u64) -> Self {
        SseTranslator::with_mapper(MessagesEvents::new(ctx, ids, created_at))
    }
}

/// Streamed Messages events → Responses events, one event at a time.
pub struct MessagesEvents {
    ctx: ToolContext,
    ids: Box<dyn IdSource>,
    em: Emitter,
    started: bool,
    /// Open content blocks by their Anthropic index.
    blocks: Vec<(u64, Block)>,
    next_index: usize,
    start_usage: Value,
    output_tokens: Option<u64>,
    stop_reason: Option<String>,
    done: bool,
}

impl MessagesEvents {
    fn new(ctx: ToolContext, mut ids: Box<dyn IdSource>, created_at: u64) -> Self {
        let rid = ids.id("resp_");
        let model = ctx.model.clone();
        MessagesEvents {
            ctx,
            ids,
            em: Emitter::new(rid, model, created_at),
            started: false,
            blocks: Vec::new(),
            next_index: 0,
            start_usage: json!({}),
            output_tokens: None,
            stop_reason: None,
            done: false,
        }
    }

    fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.em.created();
        }
    }

    fn block_start(&mut self, idx: u64, b: &Value) {
        let index = self.next_index;
        let block = match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let id = self.ids.id("msg_");
                self.em.item_added(
                    index,
                    &json!({"type": "message", "id": id, "status": "in_progress",
                    "role": "assistant", "content": []}),
                );
                self.em.event(
                    "response.content_part.added",
                    obj(json!({"item_id": id,
                    "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}})),
                );
                let text = b
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                Block::Text { index, id, text }
            }
            Some("tool_use") => {
                let name = b
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let call_id = b
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let id = self.ids.id(item_id_prefix(&self.ctx, &name));
                let item = tools::call_item(&self.ctx, &name, &id, &call_id, "", false);
                self.em.item_added(index, &item);
                Block::Tool {
                    index,
                    id,
                    call_id,
                    name,
                    json: String::new(),
                }
            }
            Some("thinking") => {
                let id = self.ids.id("rs_");
                self.em.item_added(
                    index,
                    &json!({"type": "reasoning", "id": id, "summary": []}),
                );
                self.em.event("response.reasoning_summary_part.added", obj(json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})));
                Block::Thinking {
                    index,
                    id,
                    text: String::new(),
                    signature: String::new(),
                }
            }
            Some("redacted_thinking") => {
                let id = self.ids.id("rs_");
                self.em.item_added(
                    index,
                    &json!({"type": "reasoning", "id": id, "summary": []}),
                );
                let data = b
                    .get("data")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                Block::Redacted { index, id, data }
            }
            other => {
                tracing::debug!(
                    block_type = other.unwrap_or("?"),
                    "ignoring an Anthropic content block type"
                );
                return;
            }
        };
        self.next_index += 1;
        self.blocks.push((idx, block));
    }

    fn block_delta(&mut self, idx: u64, d: &Value) {
        let Some((_, block)) = self.blocks.iter_mut().find(|(i, _)| *i == idx) else {
            return;
        };
        let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default();
        match (block, d.get("type").and_then(Value::as_str)) {
            (Block::Text { index, id, text }, Some("text_delta")) => {
                text.push_str(s("text"));
                self.em.event(
                    "response.output_text.delta",
                    obj(json!({"item_id": id,
                    "output_index": index, "content_index": 0, "delta": s("text")})),
                );
            }
            (
                Block::Tool {
                    index,
                    id,
                    name,
                    json,
                    ..
                },
                Some("input_json_delta"),
            ) => {
                json.push_str(s("partial_json"));
                if self.ctx.resolve(name).kind == ToolKind::Function
                    && !s("partial_json").is_empty()
                {
                    self.em.event(
                        "response.function_call_arguments.delta",
                        obj(json!({"item_id": id,
                        "output_index": index, "delta": s("partial_json")})),
                    );
                }
            }
            (
                Block::Thinking {
                    index, id, text, ..
                },
                Some("thinking_delta"),
            ) => {
                text.push_str(s("thinking"));
                self.em.event(
                    "response.reasoning_summary_text.delta",
                    obj(json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "delta": s("thinking")})),
                );
            }
            (Block::Thinking { signature, .. }, Some("signature_delta")) => {
                signature.push_str(s("signature"));
            }
            _ => {}
        }
    }

    fn block_stop(&mut self, idx: u64) {
        let Some(pos) = self.blocks.iter().position(|(i, _)| *i == idx) else {
            return;
        };
        let (_, block) = self.blocks.remove(pos);
        self.close_block(block);
    }

    fn close_block(&mut self, block: Block) {
        match block {
            Block::Text { index, id, text } => {
                self.em.event(
                    "response.output_text.done",
                    obj(json!({"item_id": id,
                    "output_index": index, "content_index": 0, "text": text})),
                );
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                self.em.event(
                    "response.content_part.done",
                    obj(json!({"item_id": id,
                    "output_index": index, "content_index": 0, "part": part})),
                );
                self.em.item_done(
                    index,
                    json!({"type": "message", "id": id, "status": "completed",
                    "role": "assistant", "content": [part]}),
                );
            }
            Block::Tool {
                index,
                id,
                call_id,
                name,
                json,
            } => {
                let args = if json.trim().is_empty() {
                    "{}".to_string()
                } else {
                    json
                };
                if self.ctx.resolve(&name).kind == ToolKind::Function {
                    self.em.event(
                        "response.function_call_arguments.done",
                        obj(json!({"item_id": id,
                        "output_index": index, "arguments": args})),
                    );
                }
                let item = tools::call_item(&self.ctx, &name, &id, &call_id, &args, true);
                self.em.item_done(index, item);
            }
            Block::Thinking {
                index,
                id,
                text,
                signature,
            } => {
                self.em.event(
                    "response.reasoning_summary_text.done",
                    obj(json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "text": text})),
                );
                self.em
                    .item_done(index, reasoning_item(id, &text, &signature));
            }
            Block::Redacted { index, id, data } => {
                self.em.item_done(index, redacted_item(id, &data))
            }
        }
    }

    fn complete(&mut self) {
        self.done = true;
        self.start();
        for (_, b) in std::mem::take(&mut self.blocks) {
            self.close_block(b);
        }
        let mut u = self.start_usage.clone();
        if let Some(o) = self.output_tokens {
            u["output_tokens"] = json!(o);
        }
        let usage = usage(&u);
        self.em
            .finished(Some(usage), incomplete_reason(self.stop_reason.as_deref()));
    }

    fn on_event(&mut self, data: &str) -> Result<(), StreamError> {
        let v: Value = serde_json::from_str(data)
            .map_err(|_| StreamError::Protocol("a Messages event is not JSON"))?;
        let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(u) = v.pointer("/message/usage").filter(|u| u.is_object()) {
                    self.start_usage = u.clone();
                }
                self.start();
            }
            Some("content_block_start") => {
                self.start();
                if let Some(b) = v.get("content_block") {
                    self.block_start(idx, b);
                }
            }
            Some("content_block_delta") => {
                if let Some(d) = v.get("delta") {
                    self.block_delta(idx, d);
                }
            }
            Some("content_block_stop") => self.block_stop(idx),
            Some("message_delta") => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(r.to_string());
                }
                if let Some(u) = v.get("usage").and_then(Value::as_object) {
                    // message_delta usage is cumulative; later fields override message_start's.
                    if let Some(o) = u.get("output_tokens").and_then(Value::as_u64) {
                        self.output_tokens = Some(o);
                    }
                    for k in [
                        "input_tokens",
                        "cache_read_input_tokens",
                        "cache_creation_input_tokens",
                    ] {
                        if let Some(n) = u.get(k).filter(|n| n.is_u64()) {
                            self.start_usage[k] = n.clone();
                        }
                    }
                }
            }
            Some("message_stop") => self.complete(),
            Some("error") => {
                let kind = v
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                tracing::warn!(error_type = kind, "upstream Messages stream error");
                self.start();
                self.em
                    .failed("Tollgate: the upstream reported an error mid-stream; please retry.");
                self.done = true;
            }
            _ => {} // ping and future event types
        }
        Ok(())
    }
}

impl EventMapper for MessagesEvents {
    fn on_event(&mut self, data: &str) -> Result<(), StreamError> {
        MessagesEvents::on_event(self, data)
    }

    fn done(&self) -> bool {
        self.done
    }

    fn take_output(&mut self) -> Vec<u8> {
        self.em.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::SeqIds;

    #[test]
    fn huge_cache_counts_saturate_input_tokens() {
        let msg = json!({"content": [], "usage": {"input_tokens": u64::MAX,
            "cache_read_input_tokens": u64::MAX, "cache_creation_input_tokens": 1, "output_tokens": 2}});
        let r = response(&msg, &ToolContext::default(), &mut SeqIds::default(), 0);
        assert_eq!(r["usage"]["input_tokens"], json!(u64::MAX));
        assert_eq!(r["usage"]["total_tokens"], json!(u64::MAX));
    }

    #[test]
    fn empty_string_input_makes_no_empty_text_block() {
        let (out, _) = request(&json!({"input": ""}), "m", Options::default()).expect("translates");
        assert_eq!(out["messages"], json!([]));
        let (out, _) =
            request(&json!({"input": "hi"}), "m", Options::default()).expect("translates");
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}])
        );
    }
}
