//! Responses ↔ Chat Completions, for any OpenAI-compatible Chat endpoint (Ollama, vLLM, Groq, OpenRouter …).
//!
//! Request: `instructions` and developer/system messages → `system` messages (adjacent ones merged, since
//! many chat templates accept only one); user/assistant messages → chat messages; `function_call` /
//! `custom_tool_call` items → the assistant's `tool_calls`; `function_call_output` /
//! `custom_tool_call_output` → `tool` messages; `reasoning` items are dropped (a chat endpoint cannot take
//! them back). Response: chat chunks → Responses events (`output_item.added/done`, text and argument
//! deltas, `response.completed` with full usage).

use super::{
    Emitter, IdSource, ResponsesUsage, SseSplitter, StreamError, StreamTranslator, ToolContext,
    TranslateError, content_text, custom_input_from_arguments, custom_tool_description,
    custom_tool_parameters, drop_tool, obj, output_text,
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

    // Tools first: which names are custom matters for the history.
    let mut tools = Vec::new();
    for t in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                let mut f = Map::new();
                f.insert("name".into(), t.get("name").cloned().unwrap_or(json!("")));
                if let Some(d) = t.get("description") {
                    f.insert("description".into(), d.clone());
                }
                f.insert(
                    "parameters".into(),
                    t.get("parameters")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                if t.get("strict") == Some(&Value::Bool(true)) {
                    f.insert("strict".into(), Value::Bool(true));
                }
                tools.push(json!({"type": "function", "function": f}));
            }
            Some("custom") => {
                let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
                ctx.custom_tools.insert(name.to_string());
                tools.push(json!({"type": "function", "function": {
                    "name": name,
                    "description": custom_tool_description(t),
                    "parameters": custom_tool_parameters(),
                }}));
            }
            _ => drop_tool("chat", t),
        }
    }

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
                input_item(&mut messages, item);
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => return Err(TranslateError::BadInput),
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("messages".into(), Value::Array(messages));
    let stream = req.get("stream") == Some(&Value::Bool(true));
    if stream {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(tc) = req.get("tool_choice") {
            let tc = match tc {
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                    json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(json!(""))}})
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

fn input_item(messages: &mut Vec<Value>, item: &Value) {
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
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
            let arguments = if kind == "custom_tool_call" {
                json!({"input": item.get("input").and_then(Value::as_str).unwrap_or_default()})
                    .to_string()
            } else {
                item.get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}")
                    .to_string()
            };
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
    if ctx.custom_tools.contains(name) {
        json!({"type": "custom_tool_call", "id": ids.id("ctc_"), "status": "completed",
            "call_id": call_id, "name": name, "input": custom_input_from_arguments(arguments)})
    } else {
        json!({"type": "function_call", "id": ids.id("fc_"), "status": "completed",
            "call_id": call_id, "name": name, "arguments": arguments})
    }
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

/// Streamed chat chunks → Responses events.
pub struct ChatStream {
    ctx: ToolContext,
    ids: Box<dyn IdSource>,
    sse: SseSplitter,
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

impl ChatStream {
    pub fn new(ctx: ToolContext, mut ids: Box<dyn IdSource>, created_at: u64) -> Self {
        let rid = ids.id("resp_");
        let model = ctx.model.clone();
        ChatStream {
            ctx,
            ids,
            sse: SseSplitter::default(),
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
                let custom = self.ctx.custom_tools.contains(name);
                let item_id = self.ids.id(if custom { "ctc_" } else { "fc_" });
                let item = if custom {
                    json!({"type": "custom_tool_call", "id": item_id, "status": "in_progress",
                        "call_id": call_id, "name": name, "input": ""})
                } else {
                    json!({"type": "function_call", "id": item_id, "status": "in_progress",
                        "call_id": call_id, "name": name, "arguments": ""})
                };
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
            if !self.ctx.custom_tools.contains(&call.name) {
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
            if self.ctx.custom_tools.contains(&c.name) {
                let input = custom_input_from_arguments(&args);
                self.em.item_done(
                    c.output_index,
                    json!({"type": "custom_tool_call", "id": c.item_id,
                    "status": "completed", "call_id": c.call_id, "name": c.name, "input": input}),
                );
            } else {
                self.em.event(
                    "response.function_call_arguments.done",
                    obj(json!({
                    "item_id": c.item_id, "output_index": c.output_index, "arguments": args})),
                );
                self.em.item_done(c.output_index, json!({"type": "function_call", "id": c.item_id,
                    "status": "completed", "call_id": c.call_id, "name": c.name, "arguments": args}));
            }
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

impl StreamTranslator for ChatStream {
    fn feed(&mut self, chunk: &[u8]) -> Result<Vec<u8>, StreamError> {
        for ev in self.sse.push(chunk)? {
            if self.done {
                break;
            }
            self.on_chunk(&ev.data)?;
        }
        Ok(self.em.take())
    }

    fn finish(&mut self) -> Result<Vec<u8>, StreamError> {
        if let Some(ev) = self.sse.finish()
            && !self.done
        {
            self.on_chunk(&ev.data)?;
        }
        if !self.done {
            // Some servers end after the finish_reason (and usage) chunk without `[DONE]`.
            if self.finish_reason.is_some() {
                self.complete();
            } else {
                return Err(StreamError::Truncated);
            }
        }
        Ok(self.em.take())
    }
}
