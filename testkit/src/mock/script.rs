//! The deterministic script every API follows, and the usage arithmetic.
//!
//! 1. The last input is a tool result → `"tool said: <first 200 chars of its output>"`, unless the latest
//!    user text contains `USE_TOOL` and fewer than [`MockConfig::tool_rounds`] tool results follow it
//!    (Responses only; other APIs count none): then the tool is called again (long sessions).
//! 2. Else the latest user text contains `USE_TOOL` and the request declares a tool → a call to
//!    [`MockConfig::tool_name`] if declared, else to the first tool, with `tool_command` as the argument
//!    its schema asks for ([`argument_key`]: `cmd`, else its one required property, else `input`, else
//!    `cmd` if the schema names no properties, else none).
//! 3. Else → `"mock reply to: <first 80 chars of the latest user text>"` (a model cannot call a tool the
//!    request did not declare, so a request without tools gets text).
//!
//! Usage: prompt = `ceil(body bytes / 4)` (or the configured override), cached = the configured
//! value clamped to the prompt, output = whitespace words of the answer + 1 (or the override).

use serde_json::{Value, json};

use super::session::CallKind;
use super::{MockConfig, ReportedUsage};

/// The trigger word for a tool call.
pub(crate) const TOOL_TRIGGER: &str = "USE_TOOL";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Text(String),
    /// A tool call. `namespace` and `kind` shape the Responses item; Chat and Messages send a function
    /// call to `name` with `arguments` (a JSON object as text; a free-form tool's input on Responses).
    Tool {
        name: String,
        arguments: String,
        namespace: Option<String>,
        kind: CallKind,
    },
}

impl Reply {
    /// Decides the reply from what the API-specific extractor found.
    /// `tool`: the declared tool to call ([`pick_tool`]) and the argument key it takes
    /// ([`argument_key`]).
    pub(crate) fn decide(
        tool_output: Option<&str>,
        user_text: Option<&str>,
        tool: Option<(&str, Option<String>)>,
        rounds_done: u32,
        config: &MockConfig,
    ) -> Self {
        let text = user_text.unwrap_or("");
        if let Some(out) = tool_output
            && !(text.contains(TOOL_TRIGGER) && rounds_done < config.tool_rounds)
        {
            return Self::Text(format!("tool said: {}", prefix_chars(out, 200)));
        }
        if let Some((name, key)) = tool
            && text.contains(TOOL_TRIGGER)
        {
            let mut arguments = serde_json::Map::new();
            if let Some(key) = key {
                arguments.insert(key, json!(config.tool_command));
            }
            return Self::Tool {
                name: name.to_owned(),
                arguments: Value::Object(arguments).to_string(),
                namespace: None,
                kind: CallKind::Function,
            };
        }
        Self::Text(format!("mock reply to: {}", prefix_chars(text, 80)))
    }

    fn words(&self) -> u64 {
        let s = match self {
            Self::Text(t) => t,
            Self::Tool { arguments, .. } => arguments,
        };
        s.split_whitespace().count() as u64
    }
}

/// The declared tool a scripted call goes to: [`MockConfig::tool_name`] when the request declares it,
/// else the first one. `name_of` reads a tool's name in the API's shape.
pub(crate) fn pick_tool<'a>(
    tools: Option<&'a Value>,
    config: &MockConfig,
    name_of: impl Fn(&'a Value) -> Option<&'a str>,
) -> Option<&'a Value> {
    let tools = tools?.as_array()?;
    config
        .tool_name
        .as_deref()
        .and_then(|want| tools.iter().find(|t| name_of(t) == Some(want)))
        .or_else(|| tools.first())
}

/// The argument a scripted call fills from its tool's JSON schema: `cmd` when there is one (Codex's
/// `exec_command`), else the one required property (`input` of a free-form tool such as `apply_patch` or
/// Codex's `exec`, as a gateway presents it; `query` of `tool_search`), else `input` if present, else
/// `cmd` for a schema without properties, else none (`{}`).
pub(crate) fn argument_key(schema: Option<&Value>) -> Option<String> {
    let has = |k: &str| {
        schema
            .and_then(|s| s.get("properties"))
            .and_then(|p| p.get(k))
            .is_some()
    };
    if has("cmd") {
        return Some("cmd".to_owned());
    }
    if let Some([only]) = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        && let Some(k) = only.as_str()
    {
        return Some(k.to_owned());
    }
    if has("input") {
        return Some("input".to_owned());
    }
    // A schema that names no properties takes anything: `cmd`, as before schemas were read.
    let untyped = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .is_none_or(serde_json::Map::is_empty);
    untyped.then(|| "cmd".to_owned())
}

fn prefix_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Token counts for one answer; `wire` is filled by the API module.
pub(crate) fn usage(
    config: &MockConfig,
    body_bytes: usize,
    reply: &Reply,
    input_override: Option<u64>,
) -> ReportedUsage {
    let input = input_override
        .or(config.input_tokens)
        .unwrap_or_else(|| (body_bytes as u64).div_ceil(4));
    let cached = config.cached_tokens.min(input);
    let cache_creation = config.cache_creation_tokens.min(input - cached);
    let output = config.output_tokens.unwrap_or_else(|| reply.words() + 1);
    ReportedUsage {
        input_tokens: input,
        cached_tokens: cached,
        cache_creation_tokens: cache_creation,
        output_tokens: output,
        reasoning_tokens: 0,
        total_tokens: input + output,
        wire: Value::Null,
    }
}

/// Splits text into word-sized deltas (each keeps its trailing whitespace) so that
/// concatenating them gives the text back.
pub(crate) fn text_deltas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if !c.is_whitespace() && in_space {
            out.push(std::mem::take(&mut cur));
            in_space = false;
        }
        if c.is_whitespace() {
            in_space = true;
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits JSON arguments into fragments of at most 8 chars, as providers stream them.
pub(crate) fn json_fragments(args: &str) -> Vec<String> {
    let chars: Vec<char> = args.chars().collect();
    chars.chunks(8).map(|c| c.iter().collect()).collect()
}

/// Concatenated text of a content value: a string, or an array of parts with `text` fields
/// (`input_text`, `output_text`, `text`), or nested `content` (Anthropic `tool_result`).
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text").and_then(Value::as_str) {
                Some(t) => t.to_owned(),
                None => p.get("content").map(content_text).unwrap_or_default(),
            })
            .collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_rejoin_to_the_text() {
        let t = "mock reply to: héllo  wörld\nnext";
        let d = text_deltas(t);
        assert_eq!(d.concat(), t);
        assert_eq!(d.len(), 6);
    }

    #[test]
    fn prefix_is_char_based() {
        assert_eq!(prefix_chars("ééé", 2), "éé");
        assert_eq!(prefix_chars("ab", 80), "ab");
    }

    #[test]
    fn usage_arithmetic() {
        let cfg = MockConfig {
            cached_tokens: 100,
            ..MockConfig::default()
        };
        let u = usage(&cfg, 9, &Reply::Text("a b c".into()), None);
        assert_eq!(
            (
                u.input_tokens,
                u.cached_tokens,
                u.output_tokens,
                u.total_tokens
            ),
            (3, 3, 4, 7)
        );
    }
}
