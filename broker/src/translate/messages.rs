//! Anthropic Messages (the ingress Claude Code speaks) ↔ Chat Completions, for the OpenAI-family
//! providers (`openai`, `azure-openai`, `openai-chat`): all three serve Chat Completions.
//!
//! Request: `system` (a string or text blocks) → one leading `system` message; `user`/`assistant` messages →
//! chat messages: text blocks → text, `image` blocks (base64 or URL) → `image_url` parts, `tool_use` → the
//! assistant's `tool_calls` (input as JSON arguments), `tool_result` → `tool` messages placed right after
//! the calls (their images become a user message after them: a `tool` message carries text only);
//! `thinking`/`redacted_thinking` blocks are dropped (they are Anthropic's signed state; a chat endpoint
//! cannot take them back). Tools with an `input_schema` → function tools; Anthropic's server tools (web
//! search, code execution…) cannot run here: they are removed and the model is told so in the system
//! prompt. `tool_choice` (`auto`, `any`, `tool`, `none`, `disable_parallel_tool_use`) → its Chat
//! equivalent; `stop_sequences` → `stop`; `thinking` (`enabled` with a budget, or `adaptive`) →
//! `reasoning_effort` for OpenAI and Azure (the equivalent they have; Chat-compatible servers get none).
//! `output_config.effort` → `reasoning_effort` too (it wins over a thinking budget; `xhigh`/`max` →
//! `high`), `output_config.format` (structured output) → `response_format` (`json_schema`, not strict);
//! `metadata.user_id` → `user` (hashed when longer than 64). `document` blocks: a PDF → a `file` part for
//! OpenAI and Azure, text sources → text, anything else → a note that it could not be sent.
//! The output limit is the client's `max_tokens`, forwarded exactly in the field the provider reads
//! (`proxy::output_limit`).
//!
//! Response: a chat completion → a Messages `message` (text, `tool_use` blocks, `stop_reason`, usage with
//! cache reads); a chat stream → Messages events (`message_start`, `content_block_*`, `message_delta`
//! carrying the whole usage, `message_stop`).

use super::{EventMapper, IdSource, SseTranslator, StreamError, TranslateError, content_text};
use serde_json::{Map, Value, json};

/// Which output-limit field the Chat provider reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFlavor {
    /// OpenAI and Azure OpenAI: `max_completion_tokens`, and `reasoning_effort` for thinking.
    OpenAi,
    /// Any Chat-compatible server (vLLM, Ollama, …): `max_tokens`, no reasoning parameter.
    Compatible,
}

impl ChatFlavor {
    /// The output-limit field this flavour's provider reads.
    pub fn limit_field(self) -> &'static str {
        match self {
            ChatFlavor::OpenAi => "max_completion_tokens",
            ChatFlavor::Compatible => "max_tokens",
        }
    }
}

/// What the request translation learned that the answer translation needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessagesContext {
    /// The model name to report in the answer: the request's (the route's target model when it names one,
    /// as Anthropic reports the model that answered).
    pub model: String,
}

/// A `reasoning_effort` for an Anthropic thinking configuration.
fn effort(thinking: Option<&Value>) -> Option<&'static str> {
    let t = thinking?;
    match t.get("type").and_then(Value::as_str)? {
        "enabled" => {
            let budget = t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
            Some(if budget < 4_096 {
                "low"
            } else if budget < 16_384 {
                "medium"
            } else {
                "high"
            })
        }
        "adaptive" => Some("medium"),
        _ => None,
    }
}

/// An Anthropic `image` block as a Chat `image_url` part.
fn image_part(block: &Value) -> Option<Value> {
    let src = block.get("source")?;
    let url = match src.get("type").and_then(Value::as_str)? {
        "base64" => format!(
            "data:{};base64,{}",
            src.get("media_type").and_then(Value::as_str)?,
            src.get("data").and_then(Value::as_str)?
        ),
        "url" => src.get("url").and_then(Value::as_str)?.to_string(),
        _ => return None,
    };
    Some(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Blocks of a message's `content` (a string is one text block).
fn blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(b)) => b.clone(),
        _ => Vec::new(),
    }
}

/// Chat content from text and image parts: a plain string when it is text only.
fn chat_content(parts: Vec<Value>) -> Value {
    if parts.iter().all(|p| p.get("type") == Some(&json!("text"))) {
        Value::String(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        )
    } else {
        Value::Array(parts)
    }
}

/// A `document` block as Chat content: a PDF (base64) as a `file` part for OpenAI and Azure (their Chat API
/// reads PDFs); plain text (a `text` source, or `content` blocks) as text; anything else (a PDF by URL, a
/// PDF for a Chat-compatible server) as a note that it could not be sent, so the model does not answer as
/// if it had read it.
fn document_part(b: &Value, flavor: ChatFlavor) -> Value {
    let title = b.get("title").and_then(Value::as_str);
    let src = b.get("source");
    let kind = src.and_then(|s| s.get("type")).and_then(Value::as_str);
    let media = src
        .and_then(|s| s.get("media_type"))
        .and_then(Value::as_str);
    match (kind, media) {
        (Some("text"), _) => {
            if let Some(t) = src.and_then(|s| s.get("data")).and_then(Value::as_str) {
                return json!({"type": "text", "text": t});
            }
        }
        (Some("content"), _) => {
            let inner = blocks(src.and_then(|s| s.get("content")));
            return json!({"type": "text", "text": content_text(Some(&Value::Array(inner)))});
        }
        (Some("base64"), Some("application/pdf")) if flavor == ChatFlavor::OpenAi => {
            if let Some(data) = src.and_then(|s| s.get("data")).and_then(Value::as_str) {
                let name = title.map_or_else(|| "document.pdf".to_string(), |t| format!("{t}.pdf"));
                return json!({"type": "file", "file": {
                    "filename": name,
                    "file_data": format!("data:application/pdf;base64,{data}")}});
            }
        }
        _ => {}
    }
    json!({"type": "text", "text": format!(
        "(a document{} was attached here, but this model cannot read it through this gateway)",
        title.map(|t| format!(" \"{t}\"")).unwrap_or_default()
    )})
}

/// Anthropic's `metadata.user_id` as Chat's `user`: as sent when it is short, else its SHA-256 (hex, 64
/// characters) — opaque and stable, as Anthropic asks the id to be, and within what OpenAI accepts.
fn chat_user(req: &Value) -> Option<String> {
    use sha2::{Digest, Sha256};
    let id = req.pointer("/metadata/user_id").and_then(Value::as_str)?;
    if id.is_empty() {
        return None;
    }
    Some(if id.len() <= 64 {
        id.to_string()
    } else {
        hex::encode(Sha256::digest(id.as_bytes()))
    })
}

/// `output_config.effort` (`low` … `max`) as a `reasoning_effort`: OpenAI's highest is `high`.
fn output_effort(req: &Value) -> Option<&'static str> {
    match req
        .pointer("/output_config/effort")
        .and_then(Value::as_str)?
    {
        "low" => Some("low"),
        "medium" => Some("medium"),
        "high" | "xhigh" | "max" => Some("high"),
        _ => None,
    }
}

/// `output_config.format` (structured output: `{"type": "json_schema", "schema": …}`) as Chat's
/// `response_format`. Not `strict`: OpenAI's strict mode demands every property be required, which an
/// Anthropic schema need not say, and a refused schema would fail the turn.
fn response_format(req: &Value) -> Option<Value> {
    let f = req.pointer("/output_config/format")?;
    if f.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    let schema = f.get("schema")?;
    Some(
        json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": false}}),
    )
}

fn user_message(messages: &mut Vec<Value>, content: &[Value], flavor: ChatFlavor) {
    let mut parts = Vec::new();
    let mut images_after_tools = Vec::new();
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    parts.push(json!({"type": "text", "text": t}));
                }
            }
            Some("image") => parts.extend(image_part(b)),
            Some("tool_result") => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let inner = blocks(b.get("content"));
                let mut text = content_text(Some(&Value::Array(inner.clone())));
                images_after_tools.extend(inner.iter().filter_map(image_part));
                if b.get("is_error") == Some(&Value::Bool(true)) {
                    text = format!("Error: {text}");
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            Some("document") => parts.push(document_part(b, flavor)),
            _ => {}
        }
    }
    // Images a tool returned (Claude Code's screenshots, image reads) follow the tool messages.
    if !images_after_tools.is_empty() {
        let mut p = vec![json!({"type": "text", "text": "(images returned by the tool above)"})];
        p.extend(images_after_tools);
        messages.push(json!({"role": "user", "content": p}));
    }
    if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": chat_content(parts)}));
    }
}

fn assistant_message(messages: &mut Vec<Value>, content: &[Value]) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in content {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default())
            }
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").and_then(Value::as_str).unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": b.get("name").and_then(Value::as_str).unwrap_or_default(),
                    "arguments": b.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
                },
            })),
            // thinking, redacted_thinking: Anthropic's own state, dropped (see the module docs).
            _ => {}
        }
    }
    if text.is_empty() && calls.is_empty() {
        return;
    }
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    m.insert(
        "content".into(),
        if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    messages.push(Value::Object(m));
}

/// Translate a Messages request body into a Chat Completions request for `upstream_model`.
pub fn request(
    body: &Value,
    upstream_model: &str,
    flavor: ChatFlavor,
) -> Result<(Value, MessagesContext), TranslateError> {
    let req = body.as_object().ok_or(TranslateError::NotAnObject)?;
    let ctx = MessagesContext {
        model: req
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(upstream_model)
            .to_string(),
    };
    let mut system = match req.get("system") {
        Some(s @ Value::String(_)) => content_text(Some(s)),
        Some(Value::Array(b)) => b
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n\n"),
        _ => String::new(),
    };

    let mut tools = Vec::new();
    let mut removed = Vec::new();
    for t in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
        match t.get("input_schema") {
            Some(schema) if t.get("type").is_none_or(|k| k == "custom") => {
                let mut f = Map::new();
                f.insert("name".into(), json!(name));
                if let Some(d) = t.get("description") {
                    f.insert("description".into(), d.clone());
                }
                f.insert("parameters".into(), schema.clone());
                tools.push(json!({"type": "function", "function": f}));
            }
            _ => {
                super::drop_tool("chat", t);
                removed.push(format!("`{name}`"));
            }
        }
    }
    if !removed.is_empty() {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(&format!(
            "The tools {} are not available with this model and were removed from this request; work without them.",
            removed.join(", ")
        ));
    }

    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    let msgs = match req.get("messages") {
        Some(Value::Array(m)) => m,
        None | Some(Value::Null) => &Vec::new(),
        Some(_) => return Err(TranslateError::BadMessages),
    };
    for m in msgs {
        let content = blocks(m.get("content"));
        match m.get("role").and_then(Value::as_str) {
            Some("assistant") => assistant_message(&mut messages, &content),
            Some("user") => user_message(&mut messages, &content, flavor),
            _ => return Err(TranslateError::BadMessages),
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.get("max_tokens").and_then(Value::as_u64) {
        out.insert(flavor.limit_field().into(), json!(n));
    }
    if req.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(v) = req.get(from).filter(|v| v.is_number()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(Value::Array(stops)) = req.get("stop_sequences")
        && !stops.is_empty()
    {
        out.insert("stop".into(), Value::Array(stops.clone()));
    }
    // `output_config.effort` says how hard to think more directly than a thinking budget: it wins.
    if flavor == ChatFlavor::OpenAi
        && let Some(e) = output_effort(body).or_else(|| effort(req.get("thinking")))
    {
        out.insert("reasoning_effort".into(), json!(e));
    }
    if let Some(f) = response_format(body) {
        out.insert("response_format".into(), f);
    }
    if let Some(u) = chat_user(body) {
        out.insert("user".into(), json!(u));
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        let tc = req.get("tool_choice");
        let choice = match tc.and_then(|t| t.get("type")).and_then(Value::as_str) {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {
                "name": tc.and_then(|t| t.get("name")).cloned().unwrap_or(Value::Null)}}),
            _ => json!("auto"),
        };
        out.insert("tool_choice".into(), choice);
        if tc.and_then(|t| t.get("disable_parallel_tool_use")) == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    Ok((Value::Object(out), ctx))
}

/// Chat `finish_reason` → Messages `stop_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Chat usage → Messages usage: `input_tokens` excludes cache reads, as Anthropic reports it.
fn usage(u: Option<&Value>) -> Value {
    let n = |p: &str| {
        u.and_then(|u| u.pointer(p))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = n("/prompt_tokens_details/cached_tokens");
    json!({
        "input_tokens": n("/prompt_tokens").saturating_sub(cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": n("/completion_tokens"),
    })
}

/// Tool-call arguments (a JSON string) as a `tool_use` input object; arguments that are not an object
/// are kept under `input` rather than lost.
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        Ok(Value::Null) | Err(_) if arguments.trim().is_empty() => json!({}),
        Ok(v) => json!({ "input": v }),
        Err(_) => json!({ "input": arguments }),
    }
}

/// A whole chat completion → a Messages `message`.
pub fn response(chat: &Value, ctx: &MessagesContext, ids: &mut dyn IdSource) -> Value {
    let choice = chat.pointer("/choices/0");
    let msg = choice.and_then(|c| c.get("message"));
    let mut content = Vec::new();
    if let Some(t) = msg.and_then(|m| m.get("content")).and_then(Value::as_str)
        && !t.is_empty()
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in msg
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = match call.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => ids.id("toolu_"),
        };
        content.push(json!({
            "type": "tool_use",
            "id": id,
            "name": call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default(),
            "input": tool_input(call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or_default()),
        }));
    }
    json!({
        "id": ids.id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage(chat.get("usage")),
    })
}

/// Streamed chat chunks → Messages SSE bytes: the shared SSE driver over [`ChatToMessages`].
pub type ChatToMessagesStream = SseTranslator<ChatToMessages>;

impl ChatToMessagesStream {
    pub fn new(ctx: MessagesContext, ids: Box<dyn IdSource>) -> Self {
        SseTranslator::with_mapper(ChatToMessages {
            ctx,
            ids,
            started: false,
            open: None,
            next_index: 0,
            tools: Vec::new(),
            finish: None,
            usage: None,
            done: false,
            out: Vec::new(),
        })
    }
}

/// The content block being streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Text(usize),
    /// A tool call: its chat `index` and its block index.
    Tool {
        chat: u64,
        block: usize,
    },
}

/// Chat chunks → Messages events, one chunk at a time.
pub struct ChatToMessages {
    ctx: MessagesContext,
    ids: Box<dyn IdSource>,
    started: bool,
    open: Option<Open>,
    next_index: usize,
    /// Chat tool-call indexes already opened (a later fragment for a closed call is dropped).
    tools: Vec<u64>,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
    out: Vec<u8>,
}

impl ChatToMessages {
    fn event(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        self.out
            .extend_from_slice(format!("event: {kind}\ndata: {data}\n\n").as_bytes());
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let id = self.ids.id("msg_");
        let model = self.ctx.model.clone();
        self.event(
            "message_start",
            json!({"message": {"id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}}}),
        );
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            let index = match o {
                Open::Text(i) | Open::Tool { block: i, .. } => i,
            };
            self.event("content_block_stop", json!({ "index": index }));
        }
    }

    fn text(&mut self, t: &str) {
        let index = match self.open {
            Some(Open::Text(i)) => i,
            _ => {
                self.close();
                let i = self.next_index;
                self.next_index += 1;
                self.event(
                    "content_block_start",
                    json!({"index": i, "content_block": {"type": "text", "text": ""}}),
                );
                self.open = Some(Open::Text(i));
                i
            }
        };
        self.event(
            "content_block_delta",
            json!({"index": index, "delta": {"type": "text_delta", "text": t}}),
        );
    }

    fn tool_delta(&mut self, call: &Value) {
        let chat = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let block = match self.open {
            Some(Open::Tool { chat: c, block }) if c == chat => block,
            _ if self.tools.contains(&chat) => return,
            _ => {
                self.close();
                let i = self.next_index;
                self.next_index += 1;
                self.tools.push(chat);
                let id = match call.get("id").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ => self.ids.id("toolu_"),
                };
                let name = call
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                self.event(
                    "content_block_start",
                    json!({"index": i, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                );
                self.open = Some(Open::Tool { chat, block: i });
                i
            }
        };
        if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str)
            && !args.is_empty()
        {
            self.event(
                "content_block_delta",
                json!({"index": block, "delta": {"type": "input_json_delta", "partial_json": args}}),
            );
        }
    }

    fn end(&mut self) {
        self.start();
        self.close();
        let reason = stop_reason(self.finish.as_deref());
        let u = usage(self.usage.as_ref());
        self.event(
            "message_delta",
            json!({"delta": {"stop_reason": reason, "stop_sequence": null}, "usage": u}),
        );
        self.event("message_stop", json!({}));
        self.done = true;
    }
}

impl EventMapper for ChatToMessages {
    fn on_event(&mut self, data: &str) -> Result<(), StreamError> {
        if data.trim() == "[DONE]" {
            if self.finish.is_none() && !self.started {
                return Err(StreamError::Truncated);
            }
            self.end();
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|_| StreamError::Protocol("a chat chunk is not JSON"))?;
        if let Some(e) = v.get("error") {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the upstream reported an error");
            self.event(
                "error",
                json!({"error": {"type": "api_error", "message": message}}),
            );
            self.done = true;
            return Ok(());
        }
        self.start();
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = choice.pointer("/delta/content").and_then(Value::as_str)
                && !t.is_empty()
            {
                self.text(t);
            }
            for call in choice
                .pointer("/delta/tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool_delta(call);
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(f.to_string());
            }
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.done
    }

    /// A server that ends its stream without `[DONE]` after a finish reason has still answered.
    fn on_eof(&mut self) -> Result<(), StreamError> {
        if self.finish.is_some() {
            self.end();
            Ok(())
        } else {
            Err(StreamError::Truncated)
        }
    }

    fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{SeqIds, StreamTranslator};

    fn user_parts(out: &Value) -> Value {
        out["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .rfind(|m| m["role"] == "user")
            .expect("user message")["content"]
            .clone()
    }

    #[test]
    fn documents_by_source_and_flavor() {
        let pdf = json!({"type": "document", "title": "spec",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}});
        let pdf_url =
            json!({"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}});
        let text = json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}});
        let content = json!({"type": "document", "source": {"type": "content",
            "content": [{"type": "text", "text": "block one"}, {"type": "text", "text": " two"}]}});
        let file = json!({"type": "file", "file": {"filename": "spec.pdf",
            "file_data": "data:application/pdf;base64,JVBERi0x"}});
        let cannot = |t: &str| {
            json!({"type": "text",
            "text": format!("(a document{t} was attached here, but this model cannot read it through this gateway)")})
        };
        let cases = [
            (&pdf, ChatFlavor::OpenAi, file.clone()),
            (&pdf, ChatFlavor::Compatible, cannot(" \"spec\"")),
            (&pdf_url, ChatFlavor::OpenAi, cannot("")),
            (&pdf_url, ChatFlavor::Compatible, cannot("")),
            (
                &text,
                ChatFlavor::OpenAi,
                json!({"type": "text", "text": "plain words"}),
            ),
            (
                &text,
                ChatFlavor::Compatible,
                json!({"type": "text", "text": "plain words"}),
            ),
            (
                &content,
                ChatFlavor::OpenAi,
                json!({"type": "text", "text": "block one two"}),
            ),
            (
                &content,
                ChatFlavor::Compatible,
                json!({"type": "text", "text": "block one two"}),
            ),
        ];
        for (doc, flavor, want) in cases {
            let body = json!({"model": "claude-x", "max_tokens": 9, "messages": [{"role": "user",
                "content": [doc.clone(), {"type": "image", "source": {"type": "url", "url": "https://x.test/i.png"}}]}]});
            let (out, _) = request(&body, "gpt-x", flavor).expect("translate");
            let parts = user_parts(&out);
            assert_eq!(parts[0], want, "{doc} {flavor:?}");
            assert_eq!(parts[1]["type"], "image_url", "the other parts stay");
        }
    }

    #[test]
    fn metadata_output_config_and_thinking_combine() {
        let long_id = format!(
            "user_{}_account__session_{}",
            "a".repeat(64),
            "5b0f3c1e-8d2a-4c4e-9f57-0a3d2b1c9e11"
        );
        let hashed = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(long_id.as_bytes()));
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        // (metadata, output_config, thinking, flavor) → (user, reasoning_effort, response_format)
        let cases = [
            (
                json!(null),
                json!(null),
                json!(null),
                ChatFlavor::OpenAi,
                json!(null),
                json!(null),
                json!(null),
            ),
            (
                json!({"user_id": "u-1"}),
                json!(null),
                json!(null),
                ChatFlavor::Compatible,
                json!("u-1"),
                json!(null),
                json!(null),
            ),
            (
                json!({"user_id": long_id}),
                json!(null),
                json!(null),
                ChatFlavor::OpenAi,
                json!(hashed),
                json!(null),
                json!(null),
            ),
            (
                json!({"user_id": ""}),
                json!(null),
                json!(null),
                ChatFlavor::OpenAi,
                json!(null),
                json!(null),
                json!(null),
            ),
            (
                json!(null),
                json!({"effort": "medium"}),
                json!({"type": "adaptive"}),
                ChatFlavor::OpenAi,
                json!(null),
                json!("medium"),
                json!(null),
            ),
            (
                json!(null),
                json!({"effort": "max"}),
                json!(null),
                ChatFlavor::OpenAi,
                json!(null),
                json!("high"),
                json!(null),
            ),
            (
                json!(null),
                json!({"effort": "xhigh"}),
                json!(null),
                ChatFlavor::OpenAi,
                json!(null),
                json!("high"),
                json!(null),
            ),
            (
                json!(null),
                json!({"effort": "low"}),
                json!(null),
                ChatFlavor::Compatible,
                json!(null),
                json!(null),
                json!(null),
            ),
            (
                json!(null),
                json!(null),
                json!({"type": "enabled", "budget_tokens": 1024}),
                ChatFlavor::OpenAi,
                json!(null),
                json!("low"),
                json!(null),
            ),
            (
                json!(null),
                json!({"format": {"type": "json_schema", "schema": schema}}),
                json!(null),
                ChatFlavor::Compatible,
                json!(null),
                json!(null),
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": false}}),
            ),
            (
                json!(null),
                json!({"effort": "high", "format": {"type": "json_schema", "schema": schema}}),
                json!(null),
                ChatFlavor::OpenAi,
                json!(null),
                json!("high"),
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": false}}),
            ),
        ];
        for (metadata, output_config, thinking, flavor, user, effort, format) in cases {
            let mut body = json!({"model": "claude-x", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in [
                ("metadata", &metadata),
                ("output_config", &output_config),
                ("thinking", &thinking),
            ] {
                if !v.is_null() {
                    body[k] = v.clone();
                }
            }
            let (out, _) = request(&body, "gpt-x", flavor).expect("translate");
            let get = |k: &str| out.get(k).cloned().unwrap_or(Value::Null);
            assert_eq!(get("user"), user, "{body}");
            assert_eq!(get("reasoning_effort"), effort, "{body}");
            assert_eq!(get("response_format"), format, "{body}");
            assert!(out.get("metadata").is_none() && out.get("output_config").is_none());
        }
    }

    #[test]
    fn tool_results_follow_the_calls_and_images_survive() {
        let body = json!({"model": "claude-x", "max_tokens": 9, "system": [{"type": "text", "text": "sys"}],
        "messages": [
            {"role": "user", "content": "edit a.txt"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "text", "text": "ok"},
                {"type": "tool_use", "id": "toolu_1", "name": "Edit", "input": {"path": "a.txt"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "done"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
                {"type": "text", "text": "thanks"}]}
        ]});
        let (out, ctx) = request(&body, "gpt-x", ChatFlavor::Compatible).expect("translate");
        assert_eq!(ctx.model, "claude-x");
        assert_eq!(out["max_tokens"], 9);
        assert!(out.get("max_completion_tokens").is_none());
        let m = out["messages"].as_array().expect("messages");
        let roles: Vec<&str> = m.iter().map(|m| m["role"].as_str().unwrap_or("")).collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "tool", "user", "user"]
        );
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            r#"{"path":"a.txt"}"#
        );
        assert_eq!(m[3]["tool_call_id"], "toolu_1");
        assert_eq!(
            m[4]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAA"
        );
        assert_eq!(m[5]["content"], "thanks");
    }

    #[test]
    fn a_stream_without_any_chunk_is_truncated_and_one_with_a_finish_reason_ends() {
        let mut s =
            ChatToMessagesStream::new(MessagesContext::default(), Box::new(SeqIds::default()));
        assert_eq!(s.finish(), Err(StreamError::Truncated));
        let mut s =
            ChatToMessagesStream::new(MessagesContext::default(), Box::new(SeqIds::default()));
        let out = s
            .feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n")
            .expect("feed");
        assert!(!out.is_empty());
        let end = String::from_utf8(s.finish().expect("finish")).expect("utf8");
        assert!(end.contains("message_stop"), "{end}");
    }

    #[test]
    fn tool_arguments_that_are_not_an_object_are_kept() {
        assert_eq!(tool_input(r#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(tool_input(""), json!({}));
        assert_eq!(tool_input("[1]"), json!({"input": [1]}));
        assert_eq!(tool_input("{bad"), json!({"input": "{bad"}));
    }
}
