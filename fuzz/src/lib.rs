//! The bodies of the fuzz targets, one public function per target (`fuzz_targets/<name>.rs` only calls it).
//!
//! This file is also compiled into the main workspace's test suite (`broker/tests/fuzz_corpus.rs` includes
//! it with `#[path]`), which replays every committed seed and crash regression through these same functions
//! on the stable toolchain, so CI catches a regression without nightly or libFuzzer. Hence: only
//! dependencies the broker's tests already have, and no `libfuzzer_sys` here.
//!
//! The router targets share one broker app (quickstart-like config, demo provider only, keys in a temp
//! dir) built once per process and driven through its real router with `oneshot`. Every crash found
//! becomes a regression unit test in the crate it concerns, and its input goes to `fuzz/regressions/`.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tollgate::IdentityKind;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::SystemClock;
use tollgate_broker::config::{Config, ConfigError, Source};
use tollgate_broker::identity::VerifiedIdentity;
use tollgate_broker::policy::Policy;
use tollgate_broker::routes::router;
use tower::ServiceExt;

/// The static credential of the harness config.
pub const CREDENTIAL: &str = "fuzz-credential";

struct Harness {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let sha = tollgate_broker::identity::static_cred::hash_credential(CREDENTIAL);
        std::fs::write(
            dir.path().join("policy.toml"),
            "[[rule]]\nname = \"fuzz\"\nmatch = { kind = \"static\", subject = \"dev\" }\nprincipal = \"{subject}\"\nteam = \"fuzz\"\nmodels = [\"*\"]\n",
        )
        .expect("write policy");
        let text = format!(
            "policy_file = \"policy.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n[tokens]\naudience = \"tollgate\"\n\
             [[credentials]]\nsubject = \"dev\"\nsha256 = \"{sha}\"\n[store]\nkind = \"sqlite\"\n[pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"5\", output = \"30\" }}\n[[budgets]]\nid = \"d\"\nscope = \"principal\"\namount_usd = \"1000000\"\nwindow = \"daily\"\n[providers.demo]\nkind = \"demo\"\n[[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"demo\" }}]\n"
        );
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, &text).expect("write config");
        let env: BTreeMap<String, String> = BTreeMap::new();
        let config = Config::from_source(Source { path, text }, &env).expect("harness config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let state: Arc<AppState> = rt
            .block_on(AppState::build(&config, Arc::new(SystemClock)))
            .expect("state");
        let app = router(state);
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={CREDENTIAL}&subject_token_type={}",
            urlencode(tollgate::exchange::TOKEN_TYPE_STATIC)
        );
        let (status, body) = rt.block_on(call(&app, "/oauth/token", "application/x-www-form-urlencoded", None, form.into_bytes()));
        assert_eq!(status, StatusCode::OK, "harness mint: {}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("token json");
        let token = v["access_token"].as_str().expect("access_token").to_string();
        Harness { rt, app, token, _dir: dir }
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn call(
    app: &axum::Router,
    path: &str,
    content_type: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::post(path).header(header::CONTENT_TYPE, content_type);
    if let Some(t) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Body::from(body)).expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    (status, bytes)
}

/// A located config error must point inside the file (line 1..=lines+1, col ≥ 1).
fn assert_located(err: &ConfigError, text: &str) {
    if let ConfigError::Invalid { line, col, .. } = err {
        let lines = text.lines().count().max(1);
        assert!(
            *line >= 1 && *line <= lines + 1,
            "line {line} outside 1..={lines}: {err}"
        );
        assert!(*col >= 1, "column 0: {err}");
    }
}

/// Fuzz body of `config_parse`: arbitrary TOML gives a `Config` or a located error, never a panic.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source {
        path: "/nonexistent-tollgate-fuzz/broker.toml".into(),
        text: text.to_string(),
    };
    let env: BTreeMap<String, String> = BTreeMap::new();
    if let Err(e) = Config::from_source(source, &env) {
        assert_located(&e, text);
    }
}

/// Fuzz body of `policy_parse`: parsing (and, when it parses, deciding for a few identities) never
/// panics; errors are located.
pub fn policy_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source {
        path: "/nonexistent-tollgate-fuzz/policy.toml".into(),
        text: text.to_string(),
    };
    match Policy::from_source(&source) {
        Ok(policy) => decide_some(&policy),
        Err(e) => assert_located(&e, text),
    }
}

/// Fuzz body of `sse_usage`: the side decoder sees upstream bytes verbatim. Whatever arrives, it must not
/// panic, and what it concludes (usage, terminal event, streamed text bytes) must not depend on how the
/// bytes were chunked. First byte: wire; second: chunking seed.
pub fn sse_usage(data: &[u8]) {
    let [sel, split, bytes @ ..] = data else {
        return;
    };
    let wire = if sel & 1 == 0 {
        Wire::Responses
    } else {
        Wire::Chat
    };
    let mut whole = SseUsageDecoder::new(wire);
    whole.feed(bytes);
    let end_whole = whole.finish();

    let mut pieces = SseUsageDecoder::new(wire);
    for p in chunks(bytes, *split) {
        pieces.feed(p);
    }
    let end_pieces = pieces.finish();

    assert_eq!(end_whole, end_pieces);
    assert_eq!(whole.usage, pieces.usage);
    assert_eq!(whole.output_text_bytes, pieces.output_text_bytes);
    assert_eq!(whole.events, pieces.events);
    if let Some(u) = whole.usage {
        // What rate limiting charges; must not overflow on any upstream numbers.
        assert!(u.total() >= u.input_tokens.max(u.output_tokens));
    }
}

/// Fuzz body of `token_exchange`.
pub fn token_exchange(data: &[u8]) {
    let h = harness();
    let (status, body) = h.rt.block_on(call(
        &h.app,
        "/oauth/token",
        "application/x-www-form-urlencoded",
        None,
        data.to_vec(),
    ));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "non-JSON answer {status}: {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    match status {
        StatusCode::OK => assert!(v["access_token"].is_string(), "200 without a token: {v}"),
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE => {
            assert!(
                v["error"].is_string(),
                "error answer without an RFC 6749 code: {v}"
            );
        }
        other => panic!("unexpected status {other}: {v}"),
    }
}

/// Fuzz body of `proxy_request`: the first byte picks the endpoint.
pub fn proxy_request(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let h = harness();
    let path = match sel % 3 {
        0 => "/v1/responses",
        1 => "/v1/chat/completions",
        _ => "/v1/messages",
    };
    let (status, out) = h.rt.block_on(call(
        &h.app,
        path,
        "application/json",
        Some(&h.token),
        body.to_vec(),
    ));
    assert!(
        !status.is_server_error()
            || status == StatusCode::BAD_GATEWAY
            || status == StatusCode::SERVICE_UNAVAILABLE,
        "server error {status} for input: {:?}",
        String::from_utf8_lossy(body)
    );
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|_| {
            panic!(
                "non-JSON error {status}: {:?}",
                String::from_utf8_lossy(&out)
            )
        });
        if path == "/v1/messages" {
            // Claude Code reads Anthropic's error shape on its route.
            assert_eq!(v["type"], "error", "not Anthropic-shaped: {v}");
            assert!(v["error"]["type"].is_string(), "not Anthropic-shaped: {v}");
            assert!(
                v["error"]["message"].is_string(),
                "not Anthropic-shaped: {v}"
            );
        } else {
            assert!(v["error"]["message"].is_string(), "not OpenAI-shaped: {v}");
        }
    }
}

/// Run a parsed policy against a few identities (decide must not panic on any rule set).
pub fn decide_some(policy: &Policy) {
    let mut attrs = BTreeMap::new();
    attrs.insert(
        "groups".to_string(),
        vec!["eng".to_string(), "".to_string()],
    );
    let ids = [
        VerifiedIdentity {
            kind: IdentityKind::Static,
            subject: "dev".into(),
            issuer: None,
            attributes: BTreeMap::new(),
        },
        VerifiedIdentity {
            kind: IdentityKind::Static,
            subject: "arn:aws:iam::123456789012:role/ci-{x}".into(),
            issuer: Some("https://issuer.example".into()),
            attributes: attrs,
        },
    ];
    for id in &ids {
        let _ = policy.decide(id);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Protocol translations (broker/src/translate): pure functions and stream state machines, fuzzed directly.
// ---------------------------------------------------------------------------------------------------------

use serde_json::Value;
use tollgate_broker::translate::{
    SeqIds, StreamError, StreamTranslator, ToolContext, TranslateError, anthropic, chat, messages,
};
use tollgate_broker::usage::{SseUsageDecoder, StreamEnd, Usage, Wire};

/// The upstream model name the request translations are asked for.
const UPSTREAM_MODEL: &str = "upstream-model";

/// A JSON value survives serialisation: what we send upstream or to the client is valid JSON.
fn assert_json_roundtrip(v: &Value) {
    let text = serde_json::to_string(v).expect("a Value always serialises");
    let back: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("translated JSON does not parse back ({e}): {text}"));
    assert_eq!(&back, v, "JSON round trip changed the value");
}

/// The error a request translation must give, judged from the body alone.
fn expected_request_error(body: &Value) -> Option<TranslateError> {
    let Some(o) = body.as_object() else {
        return Some(TranslateError::NotAnObject);
    };
    match o.get("input") {
        None | Some(Value::Null | Value::String(_) | Value::Array(_)) => None,
        Some(_) => Some(TranslateError::BadInput),
    }
}

/// Fuzz body of `translate_request`: one Responses request body through both request translations.
pub fn translate_request(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let expected = expected_request_error(&body);
    let client_model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(UPSTREAM_MODEL);
    let wants_stream = body.get("stream") == Some(&Value::Bool(true));

    match chat::request(&body, UPSTREAM_MODEL) {
        Err(e) => assert_eq!(Some(e), expected, "chat request error"),
        Ok((out, ctx)) => {
            assert_eq!(expected, None, "chat request translated a bad body");
            assert_eq!(ctx.model, client_model);
            check_chat_request(&out, wants_stream);
        }
    }
    match anthropic::request(&body, UPSTREAM_MODEL, anthropic::Options::default()) {
        Err(e) => assert_eq!(Some(e), expected, "anthropic request error"),
        Ok((out, ctx)) => {
            assert_eq!(expected, None, "anthropic request translated a bad body");
            assert_eq!(ctx.model, client_model);
            check_anthropic_request(&out, wants_stream);
        }
    }
    // The same body as a Messages request (the Claude Code ingress) to a Chat provider of either flavour.
    let expected = expected_messages_error(&body);
    for flavor in [
        messages::ChatFlavor::OpenAi,
        messages::ChatFlavor::Compatible,
    ] {
        match messages::request(&body, UPSTREAM_MODEL, flavor) {
            Err(e) => assert_eq!(Some(e), expected, "messages request error"),
            Ok((out, ctx)) => {
                assert_eq!(expected, None, "messages request translated a bad body");
                assert_eq!(ctx.model, client_model);
                check_chat_request(&out, wants_stream);
                // The client's limit, exactly, in the one field this flavour reads.
                let limit = body.get("max_tokens").and_then(Value::as_u64);
                let fields: Vec<&str> =
                    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
                        .into_iter()
                        .filter(|f| out.get(*f).is_some())
                        .collect();
                match limit {
                    Some(l) => {
                        assert_eq!(fields, [flavor.limit_field()], "limit fields: {out}");
                        assert_eq!(out[flavor.limit_field()].as_u64(), Some(l));
                    }
                    None => assert!(fields.is_empty(), "a limit was invented: {out}"),
                }
            }
        }
    }
}

/// The error the Messages translation must give, judged from the body alone.
fn expected_messages_error(body: &Value) -> Option<TranslateError> {
    let Some(o) = body.as_object() else {
        return Some(TranslateError::NotAnObject);
    };
    match o.get("messages") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ms)) => ms
            .iter()
            .any(|m| {
                !matches!(
                    m.get("role").and_then(Value::as_str),
                    Some("user" | "assistant")
                )
            })
            .then_some(TranslateError::BadMessages),
        Some(_) => Some(TranslateError::BadMessages),
    }
}

fn check_chat_request(out: &Value, wants_stream: bool) {
    assert_json_roundtrip(out);
    assert_eq!(out["model"], UPSTREAM_MODEL);
    assert_eq!(out.get("stream") == Some(&Value::Bool(true)), wants_stream);
    let messages = out["messages"].as_array().expect("messages array");
    for m in messages {
        let role = m["role"].as_str().expect("every message has a role");
        assert!(
            matches!(role, "system" | "user" | "assistant" | "tool"),
            "chat role {role}"
        );
        if role == "tool" {
            assert!(
                m["tool_call_id"].is_string(),
                "tool message without id: {m}"
            );
        }
    }
    // Adjacent system messages are merged (many chat templates take only one).
    for w in messages.windows(2) {
        assert!(
            !(w[0]["role"] == "system" && w[1]["role"] == "system"),
            "two adjacent system messages"
        );
    }
    if let Some(tools) = out.get("tools") {
        for t in tools.as_array().expect("tools array") {
            assert_eq!(t["type"], "function");
            assert!(t["function"].is_object());
        }
    }
}

fn check_anthropic_request(out: &Value, wants_stream: bool) {
    assert_json_roundtrip(out);
    assert_eq!(out["model"], UPSTREAM_MODEL);
    assert_eq!(out.get("stream") == Some(&Value::Bool(true)), wants_stream);
    let max_tokens = out["max_tokens"].as_u64().expect("max_tokens is required");
    let messages = out["messages"].as_array().expect("messages array");
    // Messages must start with a user turn and alternate roles.
    if let Some(first) = messages.first() {
        assert_eq!(first["role"], "user", "first message not user");
    }
    for w in messages.windows(2) {
        assert_ne!(w[0]["role"], w[1]["role"], "two adjacent turns of one role");
    }
    let mut breakpoints = 0;
    let mut count_breakpoints = |blocks: &[Value]| {
        for b in blocks {
            if b.get("cache_control").is_some() {
                breakpoints += 1;
            }
            // Anthropic rejects empty text blocks with a 400.
            if b["type"] == "text" {
                assert!(
                    b["text"].as_str().is_some_and(|t| !t.is_empty()),
                    "empty text block: {b}"
                );
            }
        }
    };
    for m in messages {
        let role = m["role"].as_str().expect("role");
        assert!(
            matches!(role, "user" | "assistant"),
            "anthropic role {role}"
        );
        let blocks = m["content"].as_array().expect("content blocks");
        assert!(!blocks.is_empty(), "a turn without content");
        count_breakpoints(blocks);
    }
    if let Some(system) = out.get("system") {
        count_breakpoints(system.as_array().expect("system blocks"));
    }
    if let Some(tools) = out.get("tools") {
        count_breakpoints(tools.as_array().expect("tools"));
    }
    // Anthropic allows at most four cache breakpoints per request.
    assert!(breakpoints <= 4, "{breakpoints} cache breakpoints");
    if let Some(thinking) = out.get("thinking") {
        let budget = thinking["budget_tokens"].as_u64().expect("budget_tokens");
        assert!(
            budget < max_tokens,
            "thinking budget {budget} >= max_tokens {max_tokens}"
        );
        assert!(out.get("temperature").is_none() && out.get("top_p").is_none());
        if let Some(tc) = out.get("tool_choice") {
            assert!(
                tc["type"] == "auto" || tc["type"] == "none",
                "tool_choice {tc} with extended thinking"
            );
        }
    }
}

/// The tool context a response translation is given: the first input byte decides whether
/// `apply_patch` is a custom tool.
fn fuzz_ctx(sel: u8) -> ToolContext {
    let mut ctx = ToolContext {
        model: "client-model".into(),
        ..ToolContext::default()
    };
    if sel & 2 != 0 {
        ctx.custom_tools.insert("apply_patch".into());
    }
    ctx
}

/// Checks common to every translated (non-streamed) Responses object.
fn check_responses_object(r: &Value, ctx: &ToolContext) {
    assert_json_roundtrip(r);
    assert_eq!(r["object"], "response");
    assert_eq!(r["model"], ctx.model.as_str());
    let status = r["status"].as_str().expect("status");
    assert!(
        matches!(status, "completed" | "incomplete"),
        "status {status}"
    );
    assert_eq!(
        status == "incomplete",
        r.get("incomplete_details").is_some()
    );
    let mut ids = std::collections::BTreeSet::new();
    for item in r["output"].as_array().expect("output array") {
        let kind = item["type"].as_str().expect("item type");
        assert!(
            matches!(
                kind,
                "message" | "reasoning" | "function_call" | "custom_tool_call"
            ),
            "item type {kind}"
        );
        let id = item["id"].as_str().expect("item id");
        assert!(ids.insert(id.to_string()), "duplicate item id {id}");
        if kind == "custom_tool_call" {
            assert!(item["input"].is_string());
        }
        if kind == "function_call" {
            assert!(item["arguments"].is_string());
        }
    }
    if let Some(u) = r.get("usage") {
        check_responses_usage(u);
    }
}

fn check_responses_usage(u: &Value) {
    let n = |k: &str| u[k].as_u64().unwrap_or_else(|| panic!("usage.{k}: {u}"));
    assert_eq!(
        n("total_tokens"),
        n("input_tokens").saturating_add(n("output_tokens")),
        "total_tokens: {u}"
    );
    assert!(
        u.pointer("/input_tokens_details/cached_tokens")
            .is_some_and(Value::is_u64)
    );
}

/// Fuzz body of `translate_response`: an upstream (non-streamed) answer through the Chat or the
/// Anthropic response translation (first byte), checked against what metering reads from it.
pub fn translate_response(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let ctx = fuzz_ctx(sel);
    let mut ids = SeqIds::default();
    if sel & 1 == 0 {
        let r = chat::response(&v, &ctx, &mut ids, 7);
        check_responses_object(&r, &ctx);
        // Metering reads the translated body as Responses; it must see the upstream's usage.
        let upstream = v
            .get("usage")
            .filter(|u| u.is_object())
            .and_then(Usage::from_chat);
        let metered = r.get("usage").and_then(Usage::from_responses);
        assert_eq!(
            metered, upstream,
            "metered usage differs from the upstream's"
        );
    } else {
        let r = anthropic::response(&v, &ctx, &mut ids, 7);
        check_responses_object(&r, &ctx);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let metered = r
                .get("usage")
                .and_then(Usage::from_responses)
                .expect("usage");
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            assert_eq!(metered.output_tokens, n("output_tokens"));
            assert_eq!(metered.cached_input_tokens, n("cache_read_input_tokens"));
            assert_eq!(metered.cache_write_tokens, n("cache_creation_input_tokens"));
            assert!(metered.input_tokens >= n("input_tokens"));
        }
        if let Ok(body) = std::str::from_utf8(body) {
            // The error-body translation takes any bytes.
            if let Some(e) = anthropic::error_body(body.as_bytes()) {
                assert!(e["error"]["message"].is_string());
            }
        }
    }
}

/// Chunk boundaries from a seed: a small xorshift, sizes 1..=64 so splits land everywhere, including
/// inside UTF-8 sequences and between `\r` and `\n`.
fn chunks(bytes: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x9e37_7900;
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let step = (state % 64) as usize + 1;
        let j = (i + step).min(bytes.len());
        out.push(&bytes[i..j]);
        i = j;
    }
    out
}

/// Everything a stream translation produced for one chunking.
struct StreamRun {
    out: Vec<u8>,
    result: Result<(), StreamError>,
}

fn run_stream(mut tr: Box<dyn StreamTranslator>, pieces: &[&[u8]]) -> StreamRun {
    let mut out = Vec::new();
    for p in pieces {
        match tr.feed(p) {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => {
                return StreamRun {
                    out,
                    result: Err(e),
                };
            }
        }
    }
    let result = tr.finish().map(|b| out.extend_from_slice(&b));
    StreamRun { out, result }
}

fn new_translator(anthropic: bool, ctx: &ToolContext) -> Box<dyn StreamTranslator> {
    if anthropic {
        Box::new(anthropic::MessagesStream::new(
            ctx.clone(),
            Box::new(SeqIds::default()),
            7,
        ))
    } else {
        Box::new(chat::ChatStream::new(
            ctx.clone(),
            Box::new(SeqIds::default()),
            7,
        ))
    }
}

/// The Responses events a translator wrote must be well-formed SSE: `event:` names matching the JSON
/// `type`, `sequence_number` counting from 0, nothing after a terminal event.
fn check_responses_sse(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).expect("translated stream is UTF-8");
    let mut events = Vec::new();
    let mut terminal = false;
    for (n, block) in text.split_terminator("\n\n").enumerate() {
        let mut lines = block.split('\n');
        let name = lines
            .next()
            .and_then(|l| l.strip_prefix("event: "))
            .unwrap_or_else(|| panic!("event without a name: {block:?}"));
        let data = lines
            .next()
            .and_then(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("event without data: {block:?}"));
        assert!(lines.next().is_none(), "multi-line event: {block:?}");
        let v: Value = serde_json::from_str(data).expect("event data is JSON");
        assert_eq!(v["type"], name);
        assert_eq!(v["sequence_number"], n as u64, "sequence numbers");
        assert!(!terminal, "event {name} after a terminal event");
        terminal = matches!(
            name,
            "response.completed" | "response.incomplete" | "response.failed"
        );
        events.push(v);
    }
    events
}

/// Fuzz body of `translate_stream`: upstream SSE bytes (Chat chunks or Anthropic Messages events, first
/// byte) through the streaming translation, whole and cut at arbitrary points (second byte).
///
/// Properties: the outcome and the bytes do not depend on the chunking; the output is well-formed
/// Responses SSE; a stream that finished cleanly ends in exactly one terminal event, which the broker's
/// own usage decoder (reading the translated bytes as it does in production) recognises.
pub fn translate_stream(data: &[u8]) {
    let [sel, split, bytes @ ..] = data else {
        return;
    };
    let anthropic = sel & 1 != 0;
    let ctx = fuzz_ctx(*sel);

    let whole = run_stream(new_translator(anthropic, &ctx), &[bytes]);
    let cut = run_stream(new_translator(anthropic, &ctx), &chunks(bytes, *split));
    assert_eq!(whole.result, cut.result, "outcome depends on chunking");
    if whole.result.is_ok() {
        assert_eq!(whole.out, cut.out, "translated bytes depend on chunking");
    }
    // One byte at a time too (quadratic in the splitter's rescans, so only for short inputs).
    if bytes.len() <= 1024 {
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        let single = run_stream(new_translator(anthropic, &ctx), &bytewise);
        assert_eq!(whole.result, single.result, "outcome depends on chunking");
        if whole.result.is_ok() {
            assert_eq!(whole.out, single.out, "translated bytes depend on chunking");
        }
    }
    // Chunked runs emit what they have as they go; the whole run returns nothing after an error.
    let events = check_responses_sse(&cut.out);
    if whole.result.is_ok() {
        let last = events.last().expect("a finished stream has events");
        let kind = last["type"].as_str().expect("type");
        assert!(
            matches!(
                kind,
                "response.completed" | "response.incomplete" | "response.failed"
            ),
            "finished without a terminal event (last: {kind})"
        );
        if let Some(u) = last.pointer("/response/usage") {
            check_responses_usage(u);
        }
        // What the proxy's side decoder concludes from the translated bytes.
        let mut dec = SseUsageDecoder::new(Wire::Responses);
        for p in chunks(&whole.out, *split) {
            dec.feed(p);
        }
        let end = dec.finish();
        let want = match kind {
            "response.completed" => StreamEnd::Completed,
            "response.incomplete" => StreamEnd::Incomplete,
            _ => StreamEnd::Failed,
        };
        assert_eq!(end, want, "usage decoder disagrees on how the stream ended");
        if want != StreamEnd::Failed {
            let u = last
                .pointer("/response/usage")
                .and_then(Usage::from_responses);
            assert_eq!(dec.usage, u, "usage decoder disagrees on usage");
        }
    }
    if !anthropic {
        chat_as_messages(bytes, *split);
    }
}

/// Chat chunks translated for the Messages ingress (Claude Code on an OpenAI-family provider): the same
/// outcome and bytes for every chunking, `message_stop` or `error` last when it finishes, and the proxy's
/// Messages usage decoder agreeing with the final `message_delta`.
fn chat_as_messages(bytes: &[u8], split: u8) {
    let new = || -> Box<dyn StreamTranslator> {
        Box::new(messages::ChatToMessagesStream::new(
            messages::MessagesContext::default(),
            Box::new(SeqIds::default()),
        ))
    };
    let whole = run_stream(new(), &[bytes]);
    let cut = run_stream(new(), &chunks(bytes, split));
    assert_eq!(whole.result, cut.result, "outcome depends on chunking");
    if whole.result.is_err() {
        return;
    }
    assert_eq!(whole.out, cut.out, "translated bytes depend on chunking");
    let text = String::from_utf8(whole.out.clone()).expect("UTF-8 out");
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut lines = e.lines();
            let name = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .expect("event line");
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .expect("data line");
            let v: Value = serde_json::from_str(data).expect("event JSON");
            assert_eq!(v["type"], name, "event name and type differ");
            v
        })
        .collect();
    let last = events.last().expect("a finished stream has events");
    let kind = last["type"].as_str().expect("type");
    assert!(
        matches!(kind, "message_stop" | "error"),
        "finished with {kind}"
    );
    let mut dec = SseUsageDecoder::new(Wire::Messages);
    dec.feed(&whole.out);
    let end = dec.finish();
    if kind == "error" {
        assert_eq!(end, StreamEnd::Failed);
        return;
    }
    assert!(
        matches!(end, StreamEnd::Completed | StreamEnd::Incomplete),
        "{end:?}"
    );
    let delta = events
        .iter()
        .rev()
        .find(|e| e["type"] == "message_delta")
        .expect("message_delta before message_stop");
    let u = Usage::from_messages(&delta["usage"]);
    assert_eq!(dec.usage, u, "usage decoder disagrees on usage");
}
