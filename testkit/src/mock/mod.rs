//! A faithful mock LLM upstream with fault injection and recording.
//!
//! Routes (OpenAI and Anthropic wire shapes):
//! - `POST /v1/responses` (OpenAI Responses; SSE when `stream: true`)
//! - `POST /v1/chat/completions` (OpenAI Chat Completions; SSE when `stream: true`)
//! - `POST /v1/messages` (Anthropic Messages; needs `anthropic-version`)
//! - `GET /v1/models` (OpenAI list shape)
//!
//! Answers are scripted by content and deterministic (see [`script`](self)): the last input being
//! a tool result gives `"tool said: <output>"`, user text containing `USE_TOOL` gives a tool call
//! running [`MockConfig::tool_command`] (on Chat and Messages: a call to [`MockConfig::tool_name`] or
//! the first tool the request declares, and text when it declares none), anything else gives `"mock reply to: <text>"`.
//!
//! A [`SessionScript`] (set with [`MockHandle::set_script`], shared by every mock of one session) replaces
//! that script with a long agent session: a sequence of tool calls in each API's shape, sub-agent and
//! compaction requests answered aside (see `session.rs`).
//!
//! Control routes (never authenticated, never recorded, never faulted), for scripting a separate
//! process: `POST /_mock/faults` (one [`Fault`] or an array, appended to the queue),
//! `GET`/`DELETE /_mock/faults`, `GET /_mock/requests`, `POST /_mock/reset` (requests and faults),
//! `GET`/`POST /_mock/config` (a partial [`MockConfig`] JSON merged into the current one).

mod anthropic;
mod chat;
mod conn;
mod responses;
mod script;
mod session;

pub use session::{CallKind, ScriptStep, Scripted, SessionScript};

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use conn::{ConnKill, MockListener};

/// Default command the scripted `USE_TOOL` answer asks the client to run.
pub const DEFAULT_TOOL_COMMAND: &str = "echo tool-ran-ok";

/// Upper bound on a request body the mock accepts (Codex sends ~40 KB; benchmarks may send more).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Pause before aborting a body, so the bytes already produced reach the client first.
const FLUSH_BEFORE_ABORT: Duration = Duration::from_millis(20);

/// How the mock behaves. Changeable at run time via [`MockHandle::update_config`] or
/// `POST /_mock/config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// If set, every `/v1` route requires this key (`Authorization: Bearer`, `api-key`, or
    /// `x-api-key` on `/v1/messages`) and answers 401 in the provider's error shape otherwise.
    /// Default: none (no auth).
    pub api_key: Option<String>,
    /// Delay before answering any `/v1` request, in milliseconds. Default 0.
    pub latency_ms: u64,
    /// The argument of the scripted tool call (`cmd`, or what the tool's schema asks for). Default
    /// [`DEFAULT_TOOL_COMMAND`].
    pub tool_command: String,
    /// On Chat and Messages: the tool the scripted call goes to when the request declares it. Default
    /// `None` = the first declared tool.
    pub tool_name: Option<String>,
    /// Fixed prompt token count; default `None` = `ceil(request body bytes / 4)`.
    pub input_tokens: Option<u64>,
    /// Fixed completion token count; default `None` = whitespace words of the answer + 1.
    pub output_tokens: Option<u64>,
    /// Prompt tokens reported as cache reads (clamped to the prompt). Default 0.
    pub cached_tokens: u64,
    /// Prompt tokens reported as cache writes (Anthropic `cache_creation_input_tokens`). Default 0.
    pub cache_creation_tokens: u64,
    /// Model ids listed by `GET /v1/models`.
    pub models: Vec<String>,
    /// The OpenAI organisation this mock plays (Responses only). When set, a request whose `include` has
    /// `reasoning.encrypted_content` gets a `reasoning` item first in its output, its `encrypted_content`
    /// readable by this organisation only; an input item whose `encrypted_content` another organisation
    /// made is refused as the API does: 400 `invalid_encrypted_content`. Default `None`: no reasoning
    /// items, nothing checked.
    pub organization: Option<String>,
    /// On Responses: how many tool calls a `USE_TOOL` turn makes, one per request, before the text answer.
    /// Default 1.
    pub tool_rounds: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            latency_ms: 0,
            tool_command: DEFAULT_TOOL_COMMAND.to_owned(),
            tool_name: None,
            input_tokens: None,
            output_tokens: None,
            cached_tokens: 0,
            cache_creation_tokens: 0,
            models: vec![
                "gpt-5.5".to_owned(),
                "gpt-4o-mini".to_owned(),
                "claude-sonnet-4-5".to_owned(),
            ],
            organization: None,
            tool_rounds: 1,
        }
    }
}

/// One injected fault, consumed by exactly one inference request (`/v1/responses`,
/// `/v1/chat/completions`, `/v1/messages`), in queue order. Fields combine: e.g.
/// `first_byte_delay_ms` with `drop_after_events`.
///
/// JSON examples: `{"status":500}`, `{"status":429,"retry_after":2}`, `{"close":true}`,
/// `{"first_byte_delay_ms":300}`, `{"drop_after_events":3}`, `{"event_delay_ms":50}`,
/// `{"status":503,"path":"/v1/chat/completions"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Only a request to this exact path consumes the fault (`/v1/models` only if named here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Answer with this status and the provider's error JSON instead of a completion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Retry-After` header in seconds (implies status 429 if `status` is unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// `error.code` (OpenAI) for the error body, e.g. `insufficient_quota`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `error.message` for the error body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Drop the connection without writing any response.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub close: bool,
    /// Sleep this long before sending the response head, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_delay_ms: Option<u64>,
    /// Send this many SSE events, then abort the connection mid-body (no terminating chunk).
    /// On a non-streaming request: send half the JSON, then abort.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_after_events: Option<usize>,
    /// Send this many SSE events, then end the body cleanly (EOF before the final event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eof_after_events: Option<usize>,
    /// Sleep this long between SSE events, in milliseconds (a slow stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_delay_ms: Option<u64>,
}

impl Fault {
    /// An error answer with this status (`{"status":N}`).
    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }

    /// 429 with `Retry-After: secs`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            status: Some(429),
            retry_after: Some(retry_after_secs),
            ..Self::default()
        }
    }

    /// Drop the connection without a response.
    pub fn close() -> Self {
        Self {
            close: true,
            ..Self::default()
        }
    }

    pub fn first_byte_delay_ms(ms: u64) -> Self {
        Self {
            first_byte_delay_ms: Some(ms),
            ..Self::default()
        }
    }

    pub fn drop_after_events(n: usize) -> Self {
        Self {
            drop_after_events: Some(n),
            ..Self::default()
        }
    }

    pub fn eof_after_events(n: usize) -> Self {
        Self {
            eof_after_events: Some(n),
            ..Self::default()
        }
    }

    pub fn event_delay_ms(ms: u64) -> Self {
        Self {
            event_delay_ms: Some(ms),
            ..Self::default()
        }
    }

    /// Restricts the fault to requests on `path` (e.g. `/v1/responses`).
    pub fn on_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    fn error_status(&self) -> Option<u16> {
        self.status.or(self
            .retry_after
            .map(|_| StatusCode::TOO_MANY_REQUESTS.as_u16()))
    }
}

/// Usage the mock reported in an answer, normalised to OpenAI semantics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedUsage {
    /// All prompt tokens, including cache reads and writes.
    pub input_tokens: u64,
    /// Prompt tokens served from cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to cache (Anthropic only; 0 elsewhere).
    pub cache_creation_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// `input_tokens + output_tokens`.
    pub total_tokens: u64,
    /// The usage object exactly as it appeared on the wire (provider field names).
    pub wire: Value,
}

/// One request the mock received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// 0-based arrival order since the last reset.
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lower-case header names; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The JSON body, or `Null` if empty or not JSON.
    pub body: Value,
    pub body_bytes: usize,
    /// Status the mock answered with (0 if the connection was dropped by a `close` fault).
    pub status: u16,
    /// Whether the answer was an SSE stream.
    pub stream: bool,
    /// The fault this request consumed, if any.
    pub fault: Option<Fault>,
    /// The usage the mock put on the wire. `None` until the usage-bearing event or body was
    /// sent, and for errors or streams cut before it.
    pub usage: Option<ReportedUsage>,
    /// SSE events handed to the connection so far.
    pub events_sent: usize,
    /// True once the whole answer (every SSE event, or the whole JSON body) was sent.
    pub completed: bool,
    /// With a [`SessionScript`]: what the answer was (`step N`, `subagent`, `summary`, `final`) and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scripted: Option<Scripted>,
}

impl RecordedRequest {
    /// A header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct Inner {
    config: MockConfig,
    faults: VecDeque<Fault>,
    requests: Vec<RecordedRequest>,
    /// The session this mock plays, if any (shared with the other mocks that serve it).
    script: Option<SessionScript>,
    /// Bumped on reset so in-flight streams do not write into a new recording.
    epoch: u64,
}

/// Shared state of one mock server; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct MockState {
    inner: Arc<Mutex<Inner>>,
}

impl MockState {
    pub fn new(config: MockConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                config,
                ..Inner::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not wedge every other test using this mock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> MockConfig {
        self.lock().config.clone()
    }

    pub fn update_config(&self, f: impl FnOnce(&mut MockConfig)) {
        f(&mut self.lock().config);
    }

    pub fn set_latency_ms(&self, ms: u64) {
        self.update_config(|c| c.latency_ms = ms);
    }

    /// Answer every inference request by `script` (see [`SessionScript`]) from now on.
    pub fn set_script(&self, script: SessionScript) {
        self.lock().script = Some(script);
    }

    fn script(&self) -> Option<SessionScript> {
        self.lock().script.clone()
    }

    pub fn push_fault(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().faults.extend(faults);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Faults not yet consumed.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.lock().faults.iter().cloned().collect()
    }

    /// Everything received since the last reset, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Recorded requests to one path.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Clears recorded requests and queued faults (the config stays).
    pub fn reset(&self) {
        let mut g = self.lock();
        g.requests.clear();
        g.faults.clear();
        g.epoch += 1;
    }

    /// Sum of the usage reported on the wire over all recorded requests.
    pub fn total_reported_usage(&self) -> ReportedUsage {
        let g = self.lock();
        let mut sum = ReportedUsage::default();
        for u in g.requests.iter().filter_map(|r| r.usage.as_ref()) {
            sum.input_tokens += u.input_tokens;
            sum.cached_tokens += u.cached_tokens;
            sum.cache_creation_tokens += u.cache_creation_tokens;
            sum.output_tokens += u.output_tokens;
            sum.reasoning_tokens += u.reasoning_tokens;
            sum.total_tokens += u.total_tokens;
        }
        sum
    }

    fn take_fault(&self, path: &str, inference: bool) -> Option<Fault> {
        let mut g = self.lock();
        let pos = g.faults.iter().position(|f| match &f.path {
            Some(p) => p == path,
            None => inference,
        })?;
        g.faults.remove(pos)
    }

    fn record(&self, rec: RecordedRequest) -> Slot {
        let mut g = self.lock();
        let index = g.requests.len();
        let mut rec = rec;
        rec.seq = index as u64;
        g.requests.push(rec);
        Slot {
            state: self.clone(),
            epoch: g.epoch,
            index,
        }
    }
}

/// Where a request's record lives, so a stream can update it as it progresses.
#[derive(Clone, Debug)]
struct Slot {
    state: MockState,
    epoch: u64,
    index: usize,
}

impl Slot {
    fn update(&self, f: impl FnOnce(&mut RecordedRequest)) {
        let mut g = self.state.lock();
        if g.epoch == self.epoch
            && let Some(r) = g.requests.get_mut(self.index)
        {
            f(r);
        }
    }
}

/// A running mock server. Dropping it stops the server.
#[derive(Debug)]
pub struct MockHandle {
    /// The bound loopback address.
    pub addr: SocketAddr,
    state: MockState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts a mock on `127.0.0.1:0`.
///
/// # Panics
/// If binding a loopback port fails (the test cannot run anyway).
pub async fn spawn(config: MockConfig) -> MockHandle {
    #[allow(clippy::expect_used)]
    spawn_on(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind mock upstream on 127.0.0.1:0")
}

/// Starts a mock on `addr` (the binary's `--port`). Tests should use [`spawn`].
pub async fn spawn_on(config: MockConfig, addr: SocketAddr) -> std::io::Result<MockHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = MockState::new(config);
    let app = app(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(
            MockListener::new(listener),
            app.into_make_service_with_connect_info::<ConnKill>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "mock upstream stopped");
        }
    });
    Ok(MockHandle {
        addr,
        state,
        shutdown: Some(tx),
        task: Some(task),
    })
}

impl MockHandle {
    /// `http://127.0.0.1:PORT/v1`, the base URL clients are configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The shared state, e.g. to move into another task.
    pub fn state(&self) -> MockState {
        self.state.clone()
    }

    pub fn config(&self) -> MockConfig {
        self.state.config()
    }

    pub fn update_config(&self, f: impl FnOnce(&mut MockConfig)) {
        self.state.update_config(f);
    }

    pub fn set_latency_ms(&self, ms: u64) {
        self.state.set_latency_ms(ms);
    }

    /// Answer by `script` from now on; give the same script (a clone) to every mock serving one session.
    pub fn set_script(&self, script: SessionScript) {
        self.state.set_script(script);
    }

    pub fn push_fault(&self, fault: Fault) {
        self.state.push_fault(fault);
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.push_faults(faults);
    }

    pub fn clear_faults(&self) {
        self.state.clear_faults();
    }

    pub fn pending_faults(&self) -> Vec<Fault> {
        self.state.pending_faults()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.state.requests_to(path)
    }

    pub fn reset(&self) {
        self.state.reset();
    }

    pub fn total_reported_usage(&self) -> ReportedUsage {
        self.state.total_reported_usage()
    }

    /// Waits until at least `n` requests were recorded or `timeout` passes; returns them either way.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if reqs.len() >= n || tokio::time::Instant::now() >= deadline {
                return reqs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `pred` holds for the recorded requests or `timeout` passes (then `false`).
    /// Use it to wait for a stream's record to settle, e.g. `|r| r.iter().all(|r| r.completed)`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.requests()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting, lets in-flight answers finish for up to 2 s, then aborts the server.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The mock's router, for in-process tests with `tower::ServiceExt::oneshot`.
/// (`close` faults need a real connection; see [`spawn`].)
pub fn app(state: MockState) -> Router {
    Router::new()
        .route("/v1/responses", post(inference))
        .route("/v1/chat/completions", post(inference))
        .route("/v1/messages", post(inference))
        .route("/v1/models", get(inference))
        .route(
            "/_mock/faults",
            get(faults_list).post(faults_push).delete(faults_clear),
        )
        .route("/_mock/requests", get(requests_list))
        .route("/_mock/reset", post(reset))
        .route("/_mock/config", get(config_get).post(config_patch))
        .fallback(inference)
        .with_state(state)
}

async fn faults_list(State(state): State<MockState>) -> Response {
    axum::Json(state.pending_faults()).into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FaultsBody {
    One(Fault),
    Many(Vec<Fault>),
}

async fn faults_push(State(state): State<MockState>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultsBody>(&body) {
        Ok(FaultsBody::One(f)) => state.push_fault(f),
        Ok(FaultsBody::Many(fs)) => state.push_faults(fs),
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": format!("bad fault JSON: {e}")})),
            )
                .into_response();
        }
    }
    axum::Json(json!({"queued": state.pending_faults().len()})).into_response()
}

async fn faults_clear(State(state): State<MockState>) -> StatusCode {
    state.clear_faults();
    StatusCode::NO_CONTENT
}

async fn requests_list(State(state): State<MockState>) -> Response {
    axum::Json(state.requests()).into_response()
}

async fn reset(State(state): State<MockState>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

async fn config_get(State(state): State<MockState>) -> Response {
    axum::Json(state.config()).into_response()
}

async fn config_patch(State(state): State<MockState>, body: Bytes) -> Response {
    let merged = (|| -> Result<MockConfig, String> {
        let patch: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let Value::Object(patch) = patch else {
            return Err("expected a JSON object".to_owned());
        };
        let mut cur = serde_json::to_value(state.config()).map_err(|e| e.to_string())?;
        if let Value::Object(cur) = &mut cur {
            cur.extend(patch);
        }
        serde_json::from_value(cur).map_err(|e| e.to_string())
    })();
    match merged {
        Ok(cfg) => {
            state.update_config(|c| *c = cfg.clone());
            axum::Json(cfg).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": format!("bad config patch: {e}")})),
        )
            .into_response(),
    }
}

/// Which provider API a route speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Responses,
    Chat,
    Messages,
    /// `POST /v1/messages/count_tokens`: Anthropic's free token count (no usage, not billed).
    CountTokens,
    Models,
    Unknown,
}

impl Api {
    fn of(method: &Method, path: &str) -> Self {
        match (method, path) {
            (&Method::POST, "/v1/responses") => Self::Responses,
            (&Method::POST, "/v1/chat/completions") => Self::Chat,
            (&Method::POST, "/v1/messages") => Self::Messages,
            (&Method::POST, "/v1/messages/count_tokens") => Self::CountTokens,
            (&Method::GET, "/v1/models") => Self::Models,
            _ => Self::Unknown,
        }
    }

    fn is_inference(self) -> bool {
        matches!(self, Self::Responses | Self::Chat | Self::Messages)
    }

    fn anthropic(self) -> bool {
        matches!(self, Self::Messages | Self::CountTokens)
    }
}

/// What a route answered, before delivery shaping by faults.
pub(crate) enum Answer {
    Json {
        value: Value,
        usage: Option<ReportedUsage>,
    },
    Sse(Vec<Frame>),
}

/// One SSE event on the wire.
pub(crate) struct Frame {
    bytes: Bytes,
    /// Set on the event that carries the final usage; recorded once it is sent.
    usage: Option<ReportedUsage>,
}

impl Frame {
    /// `event: NAME` + `data: JSON`.
    pub(crate) fn event(name: &str, data: &Value) -> Self {
        Self {
            bytes: Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
            usage: None,
        }
    }

    /// `data:` only (Chat Completions style).
    pub(crate) fn data(data: &str) -> Self {
        Self {
            bytes: Bytes::from(format!("data: {data}\n\n")),
            usage: None,
        }
    }

    pub(crate) fn with_usage(mut self, usage: ReportedUsage) -> Self {
        self.usage = Some(usage);
        self
    }
}

/// Per-request inputs to the answer builders.
pub(crate) struct Ctx<'a> {
    pub(crate) config: &'a MockConfig,
    pub(crate) body: &'a Value,
    pub(crate) body_bytes: usize,
    pub(crate) script: Option<&'a SessionScript>,
    /// What the script answered, for the record.
    pub(crate) scripted: Mutex<Option<Scripted>>,
}

impl Ctx<'_> {
    /// The scripted answer (and its prompt-token override), or `None` without a script.
    pub(crate) fn scripted(
        &self,
        view: &session::View<'_>,
    ) -> Option<(script::Reply, Option<u64>)> {
        let (reply, what, tokens) = self.script?.answer(view);
        *self.scripted.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
        Some((reply, tokens))
    }
}

async fn inference(State(state): State<MockState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let kill = parts
        .extensions
        .get::<ConnectInfo<ConnKill>>()
        .map(|c| c.0.clone());
    let path = parts.uri.path().to_owned();
    let api = Api::of(&parts.method, &path);
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    let json_body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    let stream = api.is_inference() && json_body.get("stream") == Some(&Value::Bool(true));
    let slot = state.record(RecordedRequest {
        seq: 0,
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: header_map(&parts.headers),
        body: json_body.clone(),
        body_bytes: bytes.len(),
        status: 0,
        stream,
        fault: None,
        usage: None,
        events_sent: 0,
        completed: false,
        scripted: None,
    });

    let config = state.config();
    if config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
    }

    if let Some(key) = &config.api_key
        && !authorized(api, &parts.headers, key)
    {
        return finish_error(&slot, api, 401, None, None, None);
    }
    if api == Api::Unknown {
        return finish_error(&slot, api, 404, None, None, None);
    }
    if api.anthropic() && !parts.headers.contains_key("anthropic-version") {
        let msg = "anthropic-version: header is required".to_owned();
        return finish_error(&slot, api, 400, None, Some(msg), None);
    }
    if (api.is_inference() || api == Api::CountTokens) && !json_body.is_object() {
        let msg = "We could not parse the JSON body of your request.".to_owned();
        return finish_error(&slot, api, 400, None, Some(msg), None);
    }

    let fault = state.take_fault(&path, api.is_inference());
    if let Some(f) = &fault {
        slot.update(|r| r.fault = Some(f.clone()));
        if let Some(ms) = f.first_byte_delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if f.close {
            if let Some(kill) = kill {
                kill.0.store(true, Ordering::SeqCst);
            }
            // Never written: the connection's writes fail from now on.
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        if let Some(status) = f.error_status() {
            return finish_error(
                &slot,
                api,
                status,
                f.code.clone(),
                f.message.clone(),
                f.retry_after,
            );
        }
    }

    if api == Api::Responses
        && let Some(item) = responses::unreadable_encrypted_item(&config, &json_body)
    {
        let msg = format!(
            "The encrypted content for item {item} could not be verified. Reason: Encrypted content organization_id did not match the target organization_id."
        );
        return finish_error(
            &slot,
            api,
            400,
            Some("invalid_encrypted_content".to_owned()),
            Some(msg),
            None,
        );
    }

    let script = state.script();
    let ctx = Ctx {
        config: &config,
        body: &json_body,
        body_bytes: bytes.len(),
        script: script.as_ref(),
        scripted: Mutex::new(None),
    };
    let answer = match api {
        Api::Responses => responses::answer(&ctx, stream),
        Api::Chat => chat::answer(&ctx, stream),
        Api::Messages => anthropic::answer(&ctx, stream),
        Api::CountTokens => Answer::Json {
            value: anthropic::count_tokens(&ctx),
            usage: None,
        },
        Api::Models => Answer::Json {
            value: models_list(&config, parts.uri.query()),
            usage: None,
        },
        Api::Unknown => unreachable_answer(),
    };
    if let Some(what) = ctx.scripted.into_inner().unwrap_or_else(|e| e.into_inner()) {
        slot.update(|r| r.scripted = Some(what));
    }
    deliver(slot, answer, fault.unwrap_or_default())
}

fn unreachable_answer() -> Answer {
    Answer::Json {
        value: Value::Null,
        usage: None,
    }
}

/// OpenAI's list shape. Codex asks with `?client_version=…` and parses `{"models":[…]}`
/// (an empty list is accepted silently), so that key is added for such callers only.
fn models_list(config: &MockConfig, query: Option<&str>) -> Value {
    let data: Vec<Value> = config
        .models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "tollgate-mock"}))
        .collect();
    let mut list = json!({"object": "list", "data": data});
    if query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("client_version="))) {
        list["models"] = json!([]);
    }
    list
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|cur| {
                cur.push_str(", ");
                cur.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

fn authorized(api: Api, headers: &HeaderMap, key: &str) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let alt = if api.anthropic() {
        get("x-api-key")
    } else {
        get("api-key")
    };
    bearer == Some(key) || alt == Some(key)
}

/// Records and builds an error answer in the provider's shape.
fn finish_error(
    slot: &Slot,
    api: Api,
    status: u16,
    code: Option<String>,
    message: Option<String>,
    retry_after: Option<u64>,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if api.anthropic() {
        anthropic::error_body(status, message)
    } else {
        openai_error_body(status, code, message)
    };
    slot.update(|r| {
        r.status = status.as_u16();
        r.stream = false;
        r.completed = true;
    });
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert("x-request-id", request_id());
    if let Some(secs) = retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        h.insert(header::RETRY_AFTER, v);
    }
    resp
}

fn openai_error_body(status: StatusCode, code: Option<String>, message: Option<String>) -> Value {
    let (kind, default_code, default_msg) = match status.as_u16() {
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided.",
        ),
        403 => (
            "invalid_request_error",
            None,
            "You are not allowed to do this.",
        ),
        404 => ("invalid_request_error", None, "Unknown request URL."),
        429 => (
            "requests",
            Some("rate_limit_exceeded"),
            "Rate limit reached for requests. Please try again later.",
        ),
        400..=499 => ("invalid_request_error", None, "Invalid request."),
        _ => (
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
    };
    json!({"error": {
        "message": message.unwrap_or_else(|| format!("mock {}: {default_msg}", status.as_u16())),
        "type": kind,
        "param": null,
        "code": code.or(default_code.map(str::to_owned)),
    }})
}

fn request_id() -> HeaderValue {
    HeaderValue::from_str(&format!("req_{}", uuid::Uuid::new_v4().simple()))
        .unwrap_or(HeaderValue::from_static("req_mock"))
}

/// Sends an answer, shaped by the fault's delivery fields, and keeps the record up to date.
fn deliver(slot: Slot, answer: Answer, fault: Fault) -> Response {
    match answer {
        Answer::Json { value, usage } => {
            let bytes = Bytes::from(value.to_string());
            slot.update(|r| r.status = 200);
            let body = if fault.drop_after_events.is_some() {
                let half = bytes.slice(..bytes.len() / 2);
                let first = futures::stream::iter([Ok(half)]);
                let abort = futures::stream::once(async {
                    // Let hyper flush what was sent before the abort, like a real cut.
                    tokio::time::sleep(FLUSH_BEFORE_ABORT).await;
                    Err(std::io::Error::other("mock: connection dropped mid-body"))
                });
                Body::from_stream(futures::StreamExt::chain(first, abort))
            } else {
                slot.update(|r| {
                    r.usage = usage;
                    r.completed = true;
                });
                Body::from(bytes)
            };
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("x-request-id", request_id());
            resp
        }
        Answer::Sse(frames) => {
            slot.update(|r| r.status = 200);
            let body = Body::from_stream(sse_stream(slot, frames, fault));
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-request-id", request_id());
            resp
        }
    }
}

fn sse_stream(
    slot: Slot,
    frames: Vec<Frame>,
    fault: Fault,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    struct St {
        slot: Slot,
        frames: std::vec::IntoIter<Frame>,
        sent: usize,
        fault: Fault,
        done: bool,
    }
    let st = St {
        slot,
        frames: frames.into_iter(),
        sent: 0,
        fault,
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if Some(st.sent) == st.fault.drop_after_events {
            st.done = true;
            tokio::time::sleep(FLUSH_BEFORE_ABORT).await;
            let err = std::io::Error::other("mock: stream dropped");
            return Some((Err(err), st));
        }
        if Some(st.sent) == st.fault.eof_after_events {
            return None;
        }
        let Some(frame) = st.frames.next() else {
            st.slot.update(|r| r.completed = true);
            return None;
        };
        if st.sent > 0
            && let Some(ms) = st.fault.event_delay_ms
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        st.sent += 1;
        let sent = st.sent;
        let usage = frame.usage;
        st.slot.update(|r| {
            r.events_sent = sent;
            if usage.is_some() {
                r.usage = usage;
            }
        });
        Some((Ok(frame.bytes), st))
    })
}

/// Milliseconds-free unix time in seconds, for `created` fields.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `prefix` + a random hex id, e.g. `resp_3f…`.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}
