//! Responses ↔ Chat Completions, for any OpenAI-compatible Chat endpoint (Ollama, vLLM, Groq, OpenRouter …).
//!
//! Request: `instructions` and developer/system messages → `system` messages (adjacent ones merged, since
//! many chat templates accept only one); user/assistant messages → chat messages; `function_call` /
//! `custom_tool_call` items → the assistant's `tool_calls`; `function_call_output` /
//! `custom_tool_call_output` → `tool` messages; `reasoning` items are dropped (a chat endpoint cannot take
//! them back); tools as [`super::tools`] flattens them; `reasoning.effort` → `reasoning_effort`,
//! `text.verbosity` → `verbosity`, `prompt_cache_key` as is. Response: chat chunks → Responses events
//! (`output_item.added/done`, text and argument deltas, `response.completed` with full usage), tool calls
//! as the items Codex resolves (namespace and name).

use super::tools::{self, Tools, item_id_prefix, tool_search_output_text};
use super::{
    Emitter, EventMapper, IdSource, ResponsesUsage, SseTranslator, StreamError, ToolContext,
    ToolKind, TranslateError, content_text, obj, output_text,
};
use serde_json::{Map, Value, json};

/// Translate a Responses request body into a Chat Completions request for `upstream_model`.
pub fn request(body: &Value, upstream_model: &str) -> Result<(Value, ToolContext), TranslateError> {
    let req = body.as_object().ok_or(TranslateError::NotAnObject)?;
    let mut ctx = ToolContext {
        model: req
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(upstream_model)
            .to_string(),
        ..ToolContext::default()
    };

    // Tools first: the history's calls are named as the upstream knows the tools.
    let tools = Tools::collect(req, &mut ctx, "chat");
    let flat: Vec<Value> = tools
        .flat
        .iter()
        .map(|t| {
            let mut f = Map::new();
            f.insert("name".into(), json!(t.name));
            if let Some(d) = &t.description {
                f.insert("description".into(), json!(d));
            }
            f.insert("parameters".into(), t.parameters.clone());
            if t.strict {
                f.insert("strict".into(), Value::Bool(true));
            }
            json!({"type": "function", "function": f})
        })
        .collect();

    let mut messages: Vec<Value> = Vec::new();
    if let Some(instr) = req.get("instructions").and_then(Value::as_str)
        && !instr.is_empty()
    {
        push_system(&mut messages, instr);
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for item in items {
                input_item(&mut messages, item, &tools);
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => return Err(TranslateError::BadInput),
    }
    if let Some(note) = tools.removal_note() {
        system_note(&mut messages, &note);
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("messages".into(), Value::Array(messages));
    let stream = req.get("stream") == Some(&Value::Bool(true));
    if stream {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if !flat.is_empty() {
        out.insert("tools".into(), Value::Array(flat));
        if let Some(tc) = req.get("tool_choice") {
            let tc = match tc {
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                    let name = tools.upstream_name(
                        o.get("namespace").and_then(Value::as_str),
                        o.get("name").and_then(Value::as_str).unwrap_or_default(),
                    );
                    json!({"type": "function", "function": {"name": name}})
                }
                Value::String(_) => tc.clone(),
                _ => json!("auto"),
            };
            out.insert("tool_choice".into(), tc);
        }
        if let Some(p) = req.get("parallel_tool_calls").and_then(Value::as_bool) {
            out.insert("parallel_tool_calls".into(), Value::Bool(p));
        }
    }
    for key in ["temperature", "top_p", "user", "seed"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(m) = req.get("max_output_tokens").filter(|v| v.is_u64()) {
        out.insert("max_tokens".into(), m.clone());
    }
    if let Some(e) = body
        .pointer("/reasoning/effort")
        .and_then(Value::as_str)
        .and_then(reasoning_effort)
    {
        out.insert("reasoning_effort".into(), json!(e));
    }
    if let Some(v) = body
        .pointer("/text/verbosity")
        .and_then(Value::as_str)
        .filter(|v| matches!(*v, "low" | "medium" | "high"))
    {
        out.insert("verbosity".into(), json!(v));
    }
    if let Some(k) = req.get("prompt_cache_key").filter(|k| k.is_string()) {
        out.insert("prompt_cache_key".into(), k.clone());
    }
    if let Some(fmt) = body.pointer("/text/format")
        && fmt.get("type").and_then(Value::as_str) == Some("json_schema")
    {
        let mut js = Map::new();
        for k in ["name", "schema", "strict", "description"] {
            if let Some(v) = fmt.get(k) {
                js.insert(k.into(), v.clone());
            }
        }
        out.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": js}),
        );
    }
    Ok((Value::Object(out), ctx))
}

/// Chat's `reasoning_effort` for a Responses `reasoning.effort`: the values Chat Completions knows pass
/// through, Codex's efforts above `xhigh` (`max`, `ultra`) become `xhigh`, anything else is not sent.
fn reasoning_effort(effort: &str) -> Option<&str> {
    match effort {
        "none" | "minimal" | "low" | "medium" | "high" | "xhigh" => Some(effort),
        "max" | "ultra" => Some("xhigh"),
        _ => None,
    }
}

/// Append a gateway note to the leading system message (made if there is none).
fn system_note(messages: &mut Vec<Value>, note: &str) {
    if let Some(Value::String(prev)) = messages
        .first_mut()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("system"))
        .and_then(|m| m.get_mut("content"))
    {
        prev.push_str("\n\n");
        prev.push_str(note);
        return;
    }
    messages.insert(0, json!({"role": "system", "content": note}));
}

fn push_system(messages: &mut Vec<Value>, text: &str) {
    if let Some(last) = messages.last_mut()
        && last.get("role").and_then(Value::as_str) == Some("system")
        && let Some(Value::String(prev)) = last.get_mut("content")
    {
        prev.push_str("\n\n");
        prev.push_str(text);
        return;
    }
    messages.push(json!({"role": "system", "content": text}));
}

/// The assistant message that tool calls attach to: the last message if it is an assistant message (no tool
/// results after it yet), else a new one.
fn assistant_for_tool_calls(messages: &mut Vec<Value>) -> Option<&mut Map<String, Value>> {
    let reuse = messages
        .last()
        .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
    if !reuse {
        messages.push(json!({"role": "assistant", "content": null}));
    }
    messages.last_mut().and_then(Value::as_object_mut)
}

fn user_content(content: Option<&Value>) -> Value {
    let Some(Value::Array(parts)) = content else {
        return Value::String(content_text(content));
    };
    let has_image = parts
        .iter()
        .any(|p| p.get("type").and_then(Value::as_str) == Some("input_image"));
    if !has_image {
        return Value::String(content_text(content));
    }
    let out: Vec<Value> = parts
        .iter()
        .filter_map(|p| match p.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => {
                Some(json!({"type": "text", "text": p.get("text").cloned().unwrap_or(json!(""))}))
            }
            Some("input_image") => p
                .get("image_url")
                .and_then(Value::as_str)
                .map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
            _ => None,
        })
        .collect();
    Value::Array(out)
}

fn push_tool_call(messages: &mut Vec<Value>, call_id: &str, name: &str, arguments: String) {
    let Some(msg) = assistant_for_tool_calls(messages) else {
        return;
    };
    let calls = msg
        .entry("tool_calls")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(calls) = calls {
        calls.push(json!({"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}));
    }
}

fn input_item(messages: &mut Vec<Value>, item: &Value, tools: &Tools) {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
            match role {
                "developer" | "system" => push_system(messages, &content_text(item.get("content"))),
                "assistant" => {
                    let text = content_text(item.get("content"));
                    messages.push(json!({"role": "assistant", "content": text}));
                }
                _ => messages
                    .push(json!({"role": "user", "content": user_content(item.get("content"))})),
            }
        }
        "function_call" | "custom_tool_call" => {
            let call_id = item
                .get("call_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = tools.upstream_name(
                item.get("namespace").and_then(Value::as_str),
                item.get("name").and_then(Value::as_str).unwrap_or_default(),
            );
            let arguments = if kind == "custom_tool_call" {
                json!({"input": item.get("input").and_then(Value::as_str).unwrap_or_default()})
                    .to_string()
            } else {
                item.get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}")
                    .to_string()
            };
            push_tool_call(messages, call_id, &name, arguments);
        }
        "tool_search_call" => {
            let call_id = item
                .get("call_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let arguments = match item.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(v @ Value::Object(_)) => v.to_string(),
                _ => "{}".to_string(),
            };
            push_tool_call(messages, call_id, &tools.tool_search_name(), arguments);
        }
        "tool_search_output" => {
            let call_id = item
                .get("call_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            messages.push(json!({"role": "tool", "tool_call_id": call_id,
                "content": tool_search_output_text(tools, item)}));
        }
        // Its tools were collected with the request's tools.
        "additional_tools" => {}
        "function_call_output" | "custom_tool_call_output" => {
            let call_id = item
                .get("call_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            messages.push(json!({"role": "tool", "tool_call_id": call_id,
                "content": output_text(item.get("output"))}));
        }
        other => {
            // reasoning (cannot go back to a chat endpoint), hosted-tool calls, references, compaction.
            tracing::debug!(
                item_type = other,
                "dropping an input item a chat endpoint cannot take"
            );
        }
    }
}

fn usage_from_chat(u: &Value) -> ResponsesUsage {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    ResponsesUsage {
        input_tokens: n("/prompt_tokens"),
        cached_tokens: n("/prompt_tokens_details/cached_tokens"),
        cache_write_tokens: 0,
        output_tokens: n("/completion_tokens"),
        reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
    }
}

fn call_item(
    ids: &mut dyn IdSource,
    ctx: &ToolContext,
    call_id: &str,
    name: &str,
    arguments: &str,
) -> Value {
    let id = ids.id(item_id_prefix(ctx, name));
    tools::call_item(ctx, name, &id, call_id, arguments, true)
}

/// Translate a non-streamed chat completion into a Responses object.
pub fn response(chat: &Value, ctx: &ToolContext, ids: &mut dyn IdSource, created_at: u64) -> Value {
    let mut output = Vec::new();
    let choice = chat.pointer("/choices/0");
    let msg = choice.and_then(|c| c.get("message"));
    if let Some(r) = msg
        .and_then(|m| m.get("reasoning_content").or_else(|| m.get("reasoning")))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        output.push(
            json!({"type": "reasoning", "id": ids.id("rs_"), "summary": [],
            "content": [{"type": "reasoning_text", "text": r}]}),
        );
    }
    if let Some(t) = msg
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        output.push(json!({"type": "message", "id": ids.id("msg_"), "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": t, "annotations": []}]}));
    }
    for tc in msg
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let call_id = tc.get("id").and_then(Value::as_str).unwrap_or_default();
        let name = tc
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let args = tc
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        output.push(call_item(ids, ctx, call_id, name, args));
    }
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str);
    let mut r = json!({
        "id": ids.id("resp_"),
        "object": "response",
        "created_at": created_at,
        "status": if finish == Some("length") { "incomplete" } else { "completed" },
        "model": ctx.model,
        "output": output,
    });
    if finish == Some("length") {
        r["incomplete_details"] = json!({"reason": "max_output_tokens"});
    }
    if let Some(u) = chat.get("usage").filter(|u| u.is_object()) {
        r["usage"] = usage_from_chat(u).to_json();
    }
    r
}

/// One open output item of a streamed response.
enum Open {
    Message {
        index: usize,
        id: String,
        text: String,
    },
    Reasoning {
        index: usize,
        id: String,
        text: String,
    },
}

struct OpenCall {
    output_index: usize,
    item_id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// Streamed chat chunks → Responses bytes: the shared SSE driver over [`ChatEvents`].
pub type ChatStream = SseTranslator<ChatEvents>;

impl ChatStream {
    pub fn new(ctx: ToolContext, ids: Box<dyn IdSource>, created_at: u64) -> Self {
        SseTranslator::with_mapper(ChatEvents::new(ctx, ids, created_at))
    }
}

/// Streamed chat chunks → Responses events, one chunk at a time.
pub struct ChatEvents {
    ctx: ToolContext,
    ids: Box<dyn IdSource>,
    em: Emitter,
    started: bool,
    open: Option<Open>,
    /// Tool calls by their chat `index`, in order of appearance.
    calls: Vec<(u64, OpenCall)>,
    next_index: usize,
    finish_reason: Option<String>,
    usage: Option<ResponsesUsage>,
    done: bool,
}

impl ChatEvents {
    fn new(ctx: ToolContext, mut ids: Box<dyn IdSource>, created_at: u64) -> Self {
        let rid = ids.id("resp_");
        let model = ctx.model.clone();
        ChatEvents {
            ctx,
            ids,
            em: Emitter::new(rid, model, created_at),
            started: false,
            open: None,
            calls: Vec::new(),
            next_index: 0,
            finish_reason: None,
            usage: None,
            done: false,
        }
    }

    fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.em.created();
        }
    }

    fn close_open(&mut self) {
        match self.open.take() {
            Some(Open::Message { index, id, text }) => {
                self.em.event(
                    "response.output_text.done",
                    obj(json!({
                    "item_id": id, "output_index": index, "content_index": 0, "text": text})),
                );
                let part = json!({"type": "output_text", "text": text, "annotations": []});
                self.em.event(
                    "response.content_part.done",
                    obj(json!({
                    "item_id": id, "output_index": index, "content_index": 0, "part": part})),
                );
                self.em.item_done(
                    index,
                    json!({"type": "message", "id": id, "status": "completed",
                    "role": "assistant", "content": [part]}),
                );
            }
            Some(Open::Reasoning { index, id, text }) => {
                self.em.event(
                    "response.reasoning_text.done",
                    obj(json!({
                    "item_id": id, "output_index": index, "content_index": 0, "text": text})),
                );
                self.em.item_done(
                    index,
                    json!({"type": "reasoning", "id": id, "summary": [],
                    "content": [{"type": "reasoning_text", "text": text}]}),
                );
            }
            None => {}
        }
    }

    fn text_delta(&mut self, delta: &str) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close_open();
            let index = self.next_index;
            self.next_index += 1;
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
            self.open = Some(Open::Message {
                index,
                id,
                text: String::new(),
            });
        }
        if let Some(Open::Message { index, id, text }) = &mut self.open {
            text.push_str(delta);
            let ev = obj(
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta}),
            );
            self.em.event("response.output_text.delta", ev);
        }
    }

    fn reasoning_delta(&mut self, delta: &str) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close_open();
            let index = self.next_index;
            self.next_index += 1;
            let id = self.ids.id("rs_");
            self.em.item_added(
                index,
                &json!({"type": "reasoning", "id": id, "summary": []}),
            );
            self.open = Some(Open::Reasoning {
                index,
                id,
                text: String::new(),
            });
        }
        if let Some(Open::Reasoning { index, id, text }) = &mut self.open {
            text.push_str(delta);
            let ev = obj(
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta}),
            );
            self.em.event("response.reasoning_text.delta", ev);
        }
    }

    fn tool_delta(&mut self, tc: &Value) {
        let idx = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let pos = self.calls.iter().position(|(i, _)| *i == idx);
        let pos = match pos {
            Some(p) => p,
            None => {
                self.close_open();
                let output_index = self.next_index;
                self.next_index += 1;
                let name = tc
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let call_id = tc
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| self.ids.id("call_"), str::to_string);
                let item_id = self.ids.id(item_id_prefix(&self.ctx, name));
                let item = tools::call_item(&self.ctx, name, &item_id, &call_id, "", false);
                self.em.item_added(output_index, &item);
                self.calls.push((
                    idx,
                    OpenCall {
                        output_index,
                        item_id,
                        call_id,
                        name: name.to_string(),
                        arguments: String::new(),
                    },
                ));
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[pos].1;
        if call.name.is_empty()
            && let Some(n) = tc.pointer("/function/name").and_then(Value::as_str)
        {
            call.name = n.to_string();
        }
        if let Some(frag) = tc.pointer("/function/arguments").and_then(Value::as_str)
            && !frag.is_empty()
        {
            call.arguments.push_str(frag);
            // A custom tool's input is only known once its JSON is complete; function arguments stream.
            if self.ctx.resolve(&call.name).kind == ToolKind::Function {
                let ev = obj(
                    json!({"item_id": call.item_id, "output_index": call.output_index, "delta": frag}),
                );
                self.em.event("response.function_call_arguments.delta", ev);
            }
        }
    }

    fn close_calls(&mut self) {
        for (_, c) in std::mem::take(&mut self.calls) {
            let args = if c.arguments.is_empty() {
                "{}".to_string()
            } else {
                c.arguments
            };
            if self.ctx.resolve(&c.name).kind == ToolKind::Function {
                self.em.event(
                    "response.function_call_arguments.done",
                    obj(json!({
                    "item_id": c.item_id, "output_index": c.output_index, "arguments": args})),
                );
            }
            let item = tools::call_item(&self.ctx, &c.name, &c.item_id, &c.call_id, &args, true);
            self.em.item_done(c.output_index, item);
        }
    }

    fn complete(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.start();
        self.close_open();
        self.close_calls();
        let incomplete = match self.finish_reason.as_deref() {
            Some("length") => Some("max_output_tokens"),
            Some("content_filter") => Some("content_filter"),
            _ => None,
        };
        self.em.finished(self.usage, incomplete);
    }

    fn on_chunk(&mut self, data: &str) -> Result<(), StreamError> {
        if data.trim() == "[DONE]" {
            self.complete();
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|_| StreamError::Protocol("a chat chunk is not JSON"))?;
        if let Some(err) = v.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            tracing::warn!(error = %message, "upstream chat stream error");
            self.start();
            self.em
                .failed("Tollgate: the upstream reported an error mid-stream; please retry.");
            self.done = true;
            return Ok(());
        }
        self.start();
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage_from_chat(u));
        }
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            let delta = choice.get("delta");
            if let Some(r) = delta
                .and_then(|d| d.get("reasoning_content").or_else(|| d.get("reasoning")))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                self.reasoning_delta(r);
            }
            if let Some(t) = delta
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                self.text_delta(t);
            }
            for tc in delta
                .and_then(|d| d.get("tool_calls"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool_delta(tc);
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(f.to_string());
            }
        }
        Ok(())
    }
}

impl EventMapper for ChatEvents {
    fn on_event(&mut self, data: &str) -> Result<(), StreamError> {
        self.on_chunk(data)
    }

    fn done(&self) -> bool {
        self.done
    }

    fn on_eof(&mut self) -> Result<(), StreamError> {
        // Some servers end after the finish_reason (and usage) chunk without `[DONE]`.
        if self.finish_reason.is_none() {
            return Err(StreamError::Truncated);
        }
        self.complete();
        Ok(())
    }

    fn take_output(&mut self) -> Vec<u8> {
        self.em.take()
    }
}
