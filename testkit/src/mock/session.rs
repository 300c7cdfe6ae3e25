//! A scripted agent session: the model's side of a long Codex session, step by step, shared by every mock
//! that serves the session (two targets of one route, so a failover midway continues the same script).
//!
//! Each request the mock answers (never one it refuses with a fault) is one of:
//! 1. **A sub-agent's request**: its latest user text contains [`SessionScript::subagent_marker`] →
//!    the text [`SessionScript::subagent_reply`] (the sub-agent finishes at once).
//! 2. **A compaction**: the latest user text asks for a summary ([`SessionScript::summary_marker`], the
//!    words of Codex's compaction prompt), or the request declares no tools → the text
//!    [`SessionScript::summary`]. (A translating gateway may still declare the tools an earlier
//!    `tool_search` found, which stay callable on the Responses API even with `tools: []`.)
//! 3. **The session's next step**, while steps remain: its tool call, in the API's own shape. On Responses
//!    the item Codex expects (`function_call` with its `namespace`, `custom_tool_call`, `tool_search_call`);
//!    on Chat and Messages a call to the declared function the step names (`ns__name` for a namespaced
//!    tool, as a gateway flattens it; the bare name otherwise), a free-form tool's input under the one
//!    argument its schema asks for. `{{agent_id}}` in a step's arguments becomes the `agent_id` of the
//!    latest `spawn_agent` output the request carries.
//! 4. **The final answer**: [`SessionScript::final_text`].
//!
//! A step may set the prompt tokens its answer reports ([`ScriptStep::input_tokens`]): a client that
//! compacts above a token limit (Codex's `model_auto_compact_token_limit`) then compacts right after it.
//! What each answered request was is kept in [`RecordedRequest::scripted`](super::RecordedRequest).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::script::{self, Reply};

/// What kind of tool a scripted call goes to (on Responses, which output item it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// `function_call` (with its `namespace`, if any).
    Function,
    /// `custom_tool_call`: a free-form tool such as `apply_patch`; the input is a string.
    Custom,
    /// `tool_search_call` (`execution: "client"`): the client searches its deferred tools.
    ToolSearch,
}

/// One tool call of the script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptStep {
    pub kind: CallKind,
    /// The tool's name as the client declares it (inside its namespace, if any).
    pub name: String,
    /// The namespace the client declares the tool in (`multi_agent_v1`, `mcp__server`, …).
    pub namespace: Option<String>,
    /// A function's (or `tool_search`'s) arguments as a JSON object; a free-form tool's input as a string.
    pub arguments: Value,
    /// The prompt tokens the answer reports instead of the computed count.
    pub input_tokens: Option<u64>,
}

impl ScriptStep {
    /// A call to a function tool (no namespace).
    pub fn function(name: &str, arguments: Value) -> Self {
        Self {
            kind: CallKind::Function,
            name: name.to_owned(),
            namespace: None,
            arguments,
            input_tokens: None,
        }
    }

    /// A call to a function inside a namespace (sub-agent and MCP tools).
    pub fn namespaced(namespace: &str, name: &str, arguments: Value) -> Self {
        Self {
            namespace: Some(namespace.to_owned()),
            ..Self::function(name, arguments)
        }
    }

    /// A call to a free-form (`custom`) tool such as `apply_patch`.
    pub fn custom(name: &str, input: &str) -> Self {
        Self {
            kind: CallKind::Custom,
            arguments: Value::String(input.to_owned()),
            ..Self::function(name, Value::Null)
        }
    }

    /// A client-side `tool_search` for `query`.
    pub fn tool_search(query: &str) -> Self {
        Self {
            kind: CallKind::ToolSearch,
            ..Self::function("tool_search", json!({ "query": query }))
        }
    }

    /// Report `tokens` prompt tokens in this step's answer.
    #[must_use]
    pub fn reporting_input_tokens(mut self, tokens: u64) -> Self {
        self.input_tokens = Some(tokens);
        self
    }
}

/// The script of one session and how far it got; cheap to clone (clones share the progress).
#[derive(Clone, Debug)]
pub struct SessionScript {
    pub steps: Arc<Vec<ScriptStep>>,
    pub subagent_marker: String,
    pub subagent_reply: String,
    pub summary_marker: String,
    pub summary: String,
    pub final_text: String,
    next: Arc<Mutex<usize>>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
}

/// What a scripted answer was, and its place among every answer of the session (across mocks).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scripted {
    /// 0-based, in the order the answers were decided.
    pub order: usize,
    /// `step N`, `subagent`, `summary` or `final`.
    pub what: String,
}

impl SessionScript {
    pub fn new(steps: Vec<ScriptStep>) -> Self {
        Self {
            steps: Arc::new(steps),
            subagent_marker: "SUBAGENT_TASK".to_owned(),
            subagent_reply: "sub-agent done: SUBAGENT_RESULT".to_owned(),
            summary_marker: "CONTEXT CHECKPOINT COMPACTION".to_owned(),
            summary: "SUMMARY of the session so far".to_owned(),
            final_text: "long session complete".to_owned(),
            next: Arc::new(Mutex::new(0)),
            answered: Arc::default(),
        }
    }

    /// How many steps were answered so far.
    pub fn steps_done(&self) -> usize {
        *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to one request, what it was and the prompt tokens to report instead of the computed
    /// count.
    pub(crate) fn answer(&self, req: &View<'_>) -> (Reply, Scripted, Option<u64>) {
        let (reply, what, tokens) = self.decide(req);
        let order = self
            .answered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        (reply, Scripted { order, what }, tokens)
    }

    fn decide(&self, req: &View<'_>) -> (Reply, String, Option<u64>) {
        if req
            .user_text
            .as_deref()
            .is_some_and(|t| t.contains(&self.subagent_marker))
        {
            return (
                Reply::Text(self.subagent_reply.clone()),
                "subagent".into(),
                None,
            );
        }
        let asks_summary = req
            .user_text
            .as_deref()
            .is_some_and(|t| t.contains(&self.summary_marker));
        if asks_summary || !req.declares_tools {
            return (Reply::Text(self.summary.clone()), "summary".into(), None);
        }
        let index = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let i = *next;
            if i < self.steps.len() {
                *next += 1;
            }
            i
        };
        let Some(step) = self.steps.get(index) else {
            return (Reply::Text(self.final_text.clone()), "final".into(), None);
        };
        let what = format!("step {index}");
        let arguments = match &step.arguments {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let arguments = match agent_id(req.body) {
            Some(id) => arguments.replace("{{agent_id}}", &id),
            None => arguments,
        };
        let reply = match &req.declared {
            None => Reply::Tool {
                name: step.name.clone(),
                arguments,
                namespace: step.namespace.clone(),
                kind: step.kind,
            },
            Some(declared) => {
                let flat = match step.namespace.as_deref() {
                    Some(ns) if ns.ends_with('_') => format!("{ns}{}", step.name),
                    Some(ns) => format!("{ns}__{}", step.name),
                    None => step.name.clone(),
                };
                let Some((name, schema)) = declared
                    .iter()
                    .find(|(n, _)| *n == flat)
                    .or_else(|| declared.iter().find(|(n, _)| *n == step.name))
                else {
                    let text = format!("mock: the request declares no tool `{flat}`");
                    return (Reply::Text(text), format!("{what} (undeclared)"), None);
                };
                let arguments = if step.kind == CallKind::Custom {
                    let key = script::argument_key(*schema).unwrap_or_else(|| "input".into());
                    let mut m = serde_json::Map::new();
                    m.insert(key, Value::String(arguments));
                    Value::Object(m).to_string()
                } else {
                    arguments
                };
                Reply::Tool {
                    name: (*name).to_owned(),
                    arguments,
                    namespace: None,
                    kind: CallKind::Function,
                }
            }
        };
        (reply, what, step.input_tokens)
    }
}

/// What the script reads from one request, whatever its API.
pub(crate) struct View<'a> {
    pub(crate) body: &'a Value,
    /// The text of the latest user message that has text.
    pub(crate) user_text: Option<String>,
    pub(crate) declares_tools: bool,
    /// Chat and Messages: the declared functions (name, parameter schema). `None` on Responses.
    pub(crate) declared: Option<Vec<(&'a str, Option<&'a Value>)>>,
}

/// The `agent_id` in the latest `spawn_agent` output the body carries (the output is JSON in a string, so
/// its quotes may be escaped).
fn agent_id(body: &Value) -> Option<String> {
    let text = body.to_string();
    let at = text.rfind("agent_id")? + "agent_id".len();
    let id: String = text[at..]
        .chars()
        .skip_while(|c| !c.is_ascii_hexdigit())
        .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
        .collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        body: &'a Value,
        user: &str,
        declared: Option<Vec<(&'a str, Option<&'a Value>)>>,
    ) -> View<'a> {
        View {
            body,
            user_text: Some(user.to_owned()),
            declares_tools: true,
            declared,
        }
    }

    #[test]
    fn steps_in_order_then_the_final_text_sub_agents_and_summaries_aside() {
        let s = SessionScript::new(vec![
            ScriptStep::function("exec_command", json!({"cmd": "echo 1"})),
            ScriptStep::namespaced(
                "multi_agent_v1",
                "wait_agent",
                json!({"targets": ["{{agent_id}}"]}),
            ),
        ]);
        let body = json!({"input": [{"type": "function_call_output",
            "output": "{\"agent_id\":\"01a2-bc\",\"nickname\":\"Ada\"}"}]});
        let (r, what, _) = s.answer(&view(&body, "go", None));
        assert_eq!((what.order, what.what.as_str()), (0, "step 0"));
        assert!(matches!(r, Reply::Tool { ref name, .. } if name == "exec_command"));
        let (r, what, _) = s.answer(&view(&body, "SUBAGENT_TASK x", None));
        assert_eq!(r, Reply::Text(s.subagent_reply.clone()));
        assert_eq!((what.order, what.what.as_str()), (1, "subagent"));
        let mut no_tools = view(&body, "go", None);
        no_tools.declares_tools = false;
        assert_eq!(s.answer(&no_tools).1.what, "summary");
        let compaction =
            "You are performing a CONTEXT CHECKPOINT COMPACTION. Create a handoff summary";
        assert_eq!(s.answer(&view(&body, compaction, None)).1.what, "summary");
        let (r, _, _) = s.answer(&view(&body, "go", None));
        assert_eq!(
            r,
            Reply::Tool {
                name: "wait_agent".into(),
                arguments: r#"{"targets":["01a2-bc"]}"#.into(),
                namespace: Some("multi_agent_v1".into()),
                kind: CallKind::Function,
            }
        );
        assert_eq!(s.answer(&view(&body, "go", None)).1.what, "final");
        assert_eq!(s.steps_done(), 2);
    }

    #[test]
    fn flattened_names_and_free_form_input_on_chat_and_messages() {
        let schema = json!({"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]});
        let s = SessionScript::new(vec![
            ScriptStep::namespaced("mcp__marker", "record_marker", json!({"text": "m"})),
            ScriptStep::custom("apply_patch", "*** Begin Patch\n*** End Patch"),
            ScriptStep::function("missing", json!({})),
        ]);
        let declared = || {
            Some(vec![
                ("mcp__marker__record_marker", None),
                ("apply_patch", Some(&schema)),
            ])
        };
        let (r, ..) = s.answer(&view(&json!({}), "go", declared()));
        assert!(matches!(r, Reply::Tool { ref name, ref arguments, .. }
            if name == "mcp__marker__record_marker" && arguments == r#"{"text":"m"}"#));
        let (r, ..) = s.answer(&view(&json!({}), "go", declared()));
        assert!(matches!(r, Reply::Tool { ref arguments, .. }
            if arguments == r#"{"input":"*** Begin Patch\n*** End Patch"}"#));
        let (r, what, _) = s.answer(&view(&json!({}), "go", declared()));
        assert_eq!(what.what, "step 2 (undeclared)");
        assert!(matches!(r, Reply::Text(t) if t.contains("`missing`")));
    }
}
