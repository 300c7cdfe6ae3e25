//! Codex's tools, flattened for upstreams that only know plain functions, and the way back.
//!
//! What Codex sends (recorded from Codex 0.169.0 and 0.171.0; fixtures in
//! `broker/tests/testdata/codex-0.171/`):
//! - top-level `tools`: `function`, `custom` (free-form text with a grammar: `apply_patch`, `exec`),
//!   `namespace` (a named group of functions and custom tools: sub-agents `multi_agent_v1`,
//!   `collaboration`, MCP servers), `tool_search` (`execution: "client"`: Codex itself searches its
//!   deferred tools), `web_search` and other tools the provider would host;
//! - for models with `use_responses_lite` (every bundled gpt-5.6/gpt-6 model, and the default model): no
//!   top-level tools at all, but an `additional_tools` input item whose `tools` hold the same shapes
//!   (everything inside namespaces: `functions`, `clock`, `collaboration`);
//! - after a client `tool_search`, a `tool_search_output` input item whose `tools` are now callable.
//!
//! Every callable tool becomes one upstream function with a name the upstream accepts
//! (`[A-Za-z0-9_-]{1,64}`): a namespace's tools are named `<namespace>__<tool>` (or `<namespace><tool>`
//! when the namespace already ends in `_`, as MCP namespaces `mcp__server__` do), tools of the default
//! namespace `functions` keep their bare name. The [`ToolContext`] remembers which upstream name is which
//! Codex tool, so a call comes back as the exact item Codex resolves: a `function_call` or
//! `custom_tool_call` with `name` and `namespace` (Codex answers a flattened name with
//! "unsupported call"), or a `tool_search_call`. Tools the upstream cannot run (`web_search`, hosted
//! tools) are removed, and the model is told so in the system prompt.

use super::{ToolContext, custom_tool_description, custom_tool_parameters};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Codex's default namespace: a call without a namespace resolves to it.
const DEFAULT_NAMESPACE: &str = "functions";
/// Longest function name OpenAI and Anthropic both accept.
const MAX_NAME: usize = 64;

/// What kind of Codex tool an upstream function stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ToolKind {
    /// A JSON-arguments function: calls come back as `function_call`.
    Function,
    /// A free-form tool presented as a function with one string `input`: calls come back as
    /// `custom_tool_call`.
    Custom,
    /// Codex's client-executed `tool_search`: calls come back as `tool_search_call`.
    ToolSearch,
}

/// A Codex tool, as Codex resolves a call to it: by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CodexTool {
    pub kind: ToolKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ToolContext {
    /// The Codex tool an upstream function name stands for. Names this request did not declare are
    /// taken as they are (a custom tool if listed in `custom_tools`, else a function); a bare name that
    /// matches exactly one namespaced tool is that tool (some models drop the namespace prefix).
    pub fn resolve(&self, upstream_name: &str) -> CodexTool {
        if let Some(t) = self.tools.get(upstream_name) {
            return t.clone();
        }
        if !self.custom_tools.contains(upstream_name) {
            let mut bare = self
                .tools
                .values()
                .filter(|t| t.namespace.is_some() && t.name == upstream_name);
            if let (Some(t), None) = (bare.next(), bare.next()) {
                return t.clone();
            }
        }
        CodexTool {
            kind: if self.custom_tools.contains(upstream_name) {
                ToolKind::Custom
            } else {
                ToolKind::Function
            },
            namespace: None,
            name: upstream_name.to_string(),
        }
    }
}

/// The Responses output item for a call the upstream made to `upstream_name`. `arguments` is the raw
/// argument text (JSON for a function); `done` = the finished item, else the in-progress one that
/// `output_item.added` carries (empty arguments).
pub(crate) fn call_item(
    ctx: &ToolContext,
    upstream_name: &str,
    id: &str,
    call_id: &str,
    arguments: &str,
    done: bool,
) -> Value {
    let t = ctx.resolve(upstream_name);
    let status = if done { "completed" } else { "in_progress" };
    let mut item = match t.kind {
        ToolKind::Function => json!({"type": "function_call", "id": id, "status": status,
            "call_id": call_id, "name": t.name,
            "arguments": if done { arguments } else { "" }}),
        ToolKind::Custom => json!({"type": "custom_tool_call", "id": id, "status": status,
            "call_id": call_id, "name": t.name,
            "input": if done { super::custom_input_from_arguments(arguments) } else { String::new() }}),
        ToolKind::ToolSearch => {
            let args = match serde_json::from_str::<Value>(arguments) {
                Ok(v @ Value::Object(_)) if done => v,
                _ => json!({}),
            };
            return json!({"type": "tool_search_call", "id": id, "status": status,
                "call_id": call_id, "execution": "client", "arguments": args});
        }
    };
    if let Some(ns) = t.namespace {
        item["namespace"] = Value::String(ns);
    }
    item
}

/// The id prefix of the output item a call to `upstream_name` becomes.
pub(crate) fn item_id_prefix(ctx: &ToolContext, upstream_name: &str) -> &'static str {
    match ctx.resolve(upstream_name).kind {
        ToolKind::Function => "fc_",
        ToolKind::Custom => "ctc_",
        ToolKind::ToolSearch => "tsc_",
    }
}

/// One tool as the upstream gets it: a function with a JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlatTool {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
    pub strict: bool,
}

/// Every tool of a request, flattened, and what was removed.
#[derive(Debug, Default)]
pub(crate) struct Tools {
    pub flat: Vec<FlatTool>,
    /// Tool types the upstream cannot run (`web_search`, …), removed.
    pub removed: BTreeSet<String>,
    /// (namespace, name) → upstream name, for the history's calls.
    by_codex: BTreeMap<(Option<String>, String), String>,
}

impl Tools {
    /// Collect the tools of a Responses request (`tools`, `additional_tools` and `tool_search_output`
    /// items) and record their upstream names in `ctx`.
    pub(crate) fn collect(req: &Map<String, Value>, ctx: &mut ToolContext, api: &str) -> Tools {
        let mut tools = Tools::default();
        let mut sources: Vec<&Value> = req
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        for item in req
            .get("input")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if matches!(
                item.get("type").and_then(Value::as_str),
                Some("additional_tools" | "tool_search_output")
            ) {
                sources.extend(
                    item.get("tools")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
            }
        }
        for t in sources {
            tools.add(ctx, api, t, None);
        }
        tools
    }

    fn add(&mut self, ctx: &mut ToolContext, api: &str, t: &Value, ns: Option<(&str, &str)>) {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or_default();
        let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "function" | "custom" => {
                let custom = kind == "custom";
                let mut description = if custom {
                    Some(custom_tool_description(t))
                } else {
                    t.get("description")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                if let Some((ns_name, ns_desc)) = ns
                    && ns_name != DEFAULT_NAMESPACE
                    && !ns_desc.is_empty()
                {
                    let d = description.get_or_insert_with(String::new);
                    if !d.is_empty() {
                        d.push_str("\n\n");
                    }
                    d.push_str(&format!("(One of the `{ns_name}` tools: {ns_desc})"));
                }
                let parameters = if custom {
                    custom_tool_parameters()
                } else {
                    t.get("parameters")
                        .filter(|p| p.is_object())
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}}))
                };
                let identity = CodexTool {
                    kind: if custom {
                        ToolKind::Custom
                    } else {
                        ToolKind::Function
                    },
                    namespace: ns.map(|(n, _)| n.to_string()),
                    name: name.to_string(),
                };
                self.push(
                    ctx,
                    identity,
                    FlatTool {
                        name: String::new(),
                        description,
                        parameters,
                        strict: !custom && t.get("strict") == Some(&Value::Bool(true)),
                    },
                );
            }
            "namespace" if ns.is_none() => {
                let desc = t
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // A namespace without a name is no namespace: its tools are top-level tools.
                let inner = (!name.is_empty()).then_some((name, desc));
                for child in t
                    .get("tools")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.add(ctx, api, child, inner);
                }
            }
            "tool_search" if t.get("execution").and_then(Value::as_str) == Some("client") => {
                let identity = CodexTool {
                    kind: ToolKind::ToolSearch,
                    namespace: None,
                    name: "tool_search".into(),
                };
                self.push(
                    ctx,
                    identity,
                    FlatTool {
                        name: String::new(),
                        description: t.get("description").and_then(Value::as_str).map(str::to_string),
                        parameters: t
                            .get("parameters")
                            .filter(|p| p.is_object())
                            .cloned()
                            .unwrap_or_else(|| json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]})),
                        strict: false,
                    },
                );
            }
            _ => {
                super::drop_tool(api, t);
                self.removed.insert(if kind.is_empty() {
                    "unknown".into()
                } else {
                    kind.to_string()
                });
            }
        }
    }

    /// Add (or, for a tool declared again, replace) one tool under a fresh upstream name.
    fn push(&mut self, ctx: &mut ToolContext, identity: CodexTool, mut flat: FlatTool) {
        let key = (identity.namespace.clone(), identity.name.clone());
        if let Some(existing) = self.by_codex.get(&key).cloned() {
            if let Some(slot) = self.flat.iter_mut().find(|f| f.name == existing) {
                flat.name = existing.clone();
                *slot = flat;
            }
            ctx.tools.insert(existing, identity);
            return;
        }
        let name = unique_name(&identity, |n| ctx.tools.contains_key(n));
        if identity.kind == ToolKind::Custom && identity.namespace.is_none() {
            ctx.custom_tools.insert(name.clone());
        }
        flat.name = name.clone();
        self.by_codex.insert(key, name.clone());
        ctx.tools.insert(name, identity);
        self.flat.push(flat);
    }

    /// The upstream name of the tool a history call item names (`name`, optional `namespace`).
    pub(crate) fn upstream_name(&self, namespace: Option<&str>, name: &str) -> String {
        let ns = namespace.filter(|n| !n.is_empty());
        let lookup = |ns: Option<&str>| {
            self.by_codex
                .get(&(ns.map(str::to_string), name.to_string()))
                .cloned()
        };
        lookup(ns)
            .or_else(|| match ns {
                None => lookup(Some(DEFAULT_NAMESPACE)),
                Some(DEFAULT_NAMESPACE) => lookup(None),
                Some(_) => None,
            })
            .unwrap_or_else(|| base_name(ns, name))
    }

    /// The upstream name of Codex's `tool_search`, for `tool_search_call` history items.
    pub(crate) fn tool_search_name(&self) -> String {
        self.upstream_name(None, "tool_search")
    }

    /// The upstream names of the callable tools a `tool_search_output` item brought.
    pub(crate) fn names_in(&self, item: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for t in item
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
            match t.get("type").and_then(Value::as_str) {
                Some("namespace") => {
                    for c in t
                        .get("tools")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(n) = c.get("name").and_then(Value::as_str) {
                            out.push(self.upstream_name(Some(name), n));
                        }
                    }
                }
                Some("function" | "custom") => out.push(self.upstream_name(None, name)),
                _ => {}
            }
        }
        out
    }

    /// The sentence the model reads about tools that were removed, if any.
    pub(crate) fn removal_note(&self) -> Option<String> {
        if self.removed.is_empty() {
            return None;
        }
        let list = self
            .removed
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ");
        Some(format!(
            "Note from the gateway: the tool(s) {list} cannot run on this model's provider and were removed from \
             this request; work without them."
        ))
    }
}

/// The tool-output text for a `tool_search_output` item: which tools are now available.
pub(crate) fn tool_search_output_text(tools: &Tools, item: &Value) -> String {
    let names = tools.names_in(item);
    if names.is_empty() {
        "No matching tools were found.".to_string()
    } else {
        format!(
            "These tools are now available to call: {}.",
            names.join(", ")
        )
    }
}

/// The upstream name for a Codex tool, before making it unique.
fn base_name(namespace: Option<&str>, name: &str) -> String {
    let raw = match namespace {
        None | Some(DEFAULT_NAMESPACE) => name.to_string(),
        Some(ns) if ns.ends_with('_') => format!("{ns}{name}"),
        Some(ns) => format!("{ns}__{name}"),
    };
    sanitize(&raw)
}

/// `[A-Za-z0-9_-]{1,64}`: other characters become `_`; a longer name is cut and given a short hash of
/// the whole, so two long names with one prefix stay apart.
fn sanitize(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push_str("tool");
    }
    if s.len() > MAX_NAME {
        s.truncate(MAX_NAME - 9);
        s.push_str(&format!("_{:08x}", fnv32(raw)));
    }
    s
}

fn fnv32(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn unique_name(t: &CodexTool, taken: impl Fn(&str) -> bool) -> String {
    let base = base_name(t.namespace.as_deref(), &t.name);
    if !taken(&base) {
        return base;
    }
    // A bare name of the default namespace that collides: spell the namespace out first.
    if t.namespace.as_deref() == Some(DEFAULT_NAMESPACE) {
        let joined = sanitize(&format!("{DEFAULT_NAMESPACE}__{}", t.name));
        if !taken(&joined) {
            return joined;
        }
    }
    (2u32..)
        .map(|n| {
            let suffix = format!("_{n}");
            let mut s = base.clone();
            s.truncate(MAX_NAME - suffix.len());
            s + &suffix
        })
        .find(|s| !taken(s))
        .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_for(req: Value) -> (ToolContext, Tools) {
        let mut ctx = ToolContext::default();
        let tools = Tools::collect(req.as_object().expect("object"), &mut ctx, "test");
        (ctx, tools)
    }

    #[test]
    fn names_are_reversible_and_valid() {
        let (ctx, tools) = ctx_for(json!({"tools": [
            {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
            {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
                {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}]},
            {"type": "namespace", "name": "mcp__files__", "tools": [
                {"type": "function", "name": "read.file", "parameters": {"type": "object"}}]},
            {"type": "namespace", "name": "functions", "tools": [
                {"type": "custom", "name": "exec", "description": "JS"},
                {"type": "function", "name": "exec_command"}]},
            {"type": "web_search"},
            {"type": "tool_search", "execution": "client", "parameters": {"type": "object"}}
        ]}));
        let names: Vec<&str> = tools.flat.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "exec_command",
                "multi_agent_v1__spawn_agent",
                "mcp__files__read_file",
                "exec",
                "functions__exec_command",
                "tool_search"
            ]
        );
        for n in &names {
            let t = ctx.resolve(n);
            assert_eq!(tools.upstream_name(t.namespace.as_deref(), &t.name), *n);
        }
        assert_eq!(
            ctx.resolve("multi_agent_v1__spawn_agent"),
            CodexTool {
                kind: ToolKind::Function,
                namespace: Some("multi_agent_v1".into()),
                name: "spawn_agent".into()
            }
        );
        assert_eq!(ctx.resolve("exec").kind, ToolKind::Custom);
        assert_eq!(ctx.resolve("exec").namespace.as_deref(), Some("functions"));
        assert_eq!(ctx.resolve("tool_search").kind, ToolKind::ToolSearch);
        // A model that dropped the namespace prefix still reaches the one tool of that name.
        assert_eq!(
            ctx.resolve("spawn_agent").namespace.as_deref(),
            Some("multi_agent_v1")
        );
        assert_eq!(tools.removed, BTreeSet::from(["web_search".to_string()]));
        assert!(
            tools
                .removal_note()
                .expect("present")
                .contains("`web_search`")
        );
        assert!(
            tools.flat[1]
                .description
                .as_deref()
                .expect("present")
                .contains("Sub-agents.")
        );
    }

    #[test]
    fn long_and_odd_names_stay_within_limits_and_apart() {
        let long = "x".repeat(80);
        let (ctx, tools) = ctx_for(json!({"tools": [
            {"type": "namespace", "name": long, "tools": [
                {"type": "function", "name": "a"}, {"type": "function", "name": "b"}]},
            {"type": "function", "name": "é!"},
            {"type": "function", "name": "é?"}
        ]}));
        let names: BTreeSet<&str> = tools.flat.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), 4);
        for n in &names {
            assert!(n.len() <= MAX_NAME && !n.is_empty(), "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            );
            assert!(ctx.tools.contains_key(*n));
        }
        assert_eq!(ctx.resolve("___2").name, "é?");
    }

    #[test]
    fn a_namespace_without_a_name_holds_top_level_tools() {
        let (ctx, tools) = ctx_for(
            json!({"tools": [{"type": "namespace", "name": "", "tools": [
            {"type": "function", "name": "f"}]}]}),
        );
        assert_eq!(tools.flat[0].name, "f");
        assert_eq!(ctx.resolve("f").namespace, None);
        assert_eq!(tools.upstream_name(Some(""), "f"), "f");
    }

    #[test]
    fn a_tool_declared_again_replaces_the_first() {
        let (ctx, tools) = ctx_for(json!({"tools": [
            {"type": "function", "name": "f", "description": "old"}],
            "input": [{"type": "additional_tools", "tools": [
                {"type": "function", "name": "f", "description": "new"}]}]}));
        assert_eq!(tools.flat.len(), 1);
        assert_eq!(tools.flat[0].description.as_deref(), Some("new"));
        assert_eq!(ctx.tools.len(), 1);
    }

    #[test]
    fn call_items_carry_the_namespace_codex_resolves() {
        let (ctx, _) = ctx_for(json!({"input": [{"type": "additional_tools", "tools": [
            {"type": "namespace", "name": "collaboration", "tools": [
                {"type": "function", "name": "list_agents"}]},
            {"type": "namespace", "name": "functions", "tools": [{"type": "custom", "name": "exec"}]},
            {"type": "tool_search", "execution": "client"}]}]}));
        assert_eq!(
            call_item(&ctx, "collaboration__list_agents", "fc_1", "c1", "{}", true),
            json!({"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "c1",
                "name": "list_agents", "namespace": "collaboration", "arguments": "{}"})
        );
        assert_eq!(
            call_item(&ctx, "exec", "ctc_1", "c2", r#"{"input":"text(1)"}"#, true),
            json!({"type": "custom_tool_call", "id": "ctc_1", "status": "completed", "call_id": "c2",
                "name": "exec", "namespace": "functions", "input": "text(1)"})
        );
        assert_eq!(
            call_item(
                &ctx,
                "tool_search",
                "tsc_1",
                "c3",
                r#"{"query":"agents"}"#,
                true
            ),
            json!({"type": "tool_search_call", "id": "tsc_1", "status": "completed", "call_id": "c3",
                "execution": "client", "arguments": {"query": "agents"}})
        );
        // Undeclared names pass through as plain function calls.
        assert_eq!(
            call_item(&ctx, "other", "fc_2", "c4", "{}", true)["namespace"],
            Value::Null
        );
    }
}
