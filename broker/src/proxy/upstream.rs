//! Upstream providers: where a routed request goes.

use crate::config::{AzurePath, ProviderConfig, ProviderKind, VaultKeyRef};
use crate::router::ResolvedTarget;
use crate::translate::{RandomIds, StreamTranslator, ToolContext, anthropic, chat};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Which API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Responses,
    ChatCompletions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Responses => "/responses",
            Endpoint::ChatCompletions => "/chat/completions",
        }
    }

    /// The broker's own route for this API.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::Responses => "/v1/responses",
            Endpoint::ChatCompletions => "/v1/chat/completions",
        }
    }
}

/// Why an attempt failed before any byte reached the client. The message is for logs only: it may name
/// upstream hosts but never keys (reqwest errors carry the URL, and our URLs carry no secrets).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("timeout")]
    Timeout,
    #[error("upstream status {status}")]
    Status {
        status: StatusCode,
        retry_after_secs: Option<u64>,
        body: Bytes,
    },
    #[error("transport: {0}")]
    Transport(String),
    /// This provider cannot serve this endpoint (e.g. Chat Completions on Anthropic): try the next target.
    #[error("endpoint not supported by this provider")]
    Unsupported,
    /// The provider's key is not loaded (yet): try the next target.
    #[error("upstream key unavailable")]
    KeyUnavailable,
    /// The request cannot be translated for this provider.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl UpstreamError {
    /// Whether this failure counts against the target's circuit breaker.
    pub fn is_target_fault(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Timeout | UpstreamError::Transport(_) => {
                true
            }
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// A low-cardinality label for metrics (`tollgate_failovers_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Status { status, .. } if status.as_u16() == 429 => "status_429",
            UpstreamError::Status { .. } => "status_5xx",
            UpstreamError::Transport(_) => "transport",
            UpstreamError::Unsupported => "unsupported",
            UpstreamError::KeyUnavailable => "key_unavailable",
            UpstreamError::BadRequest(_) => "bad_request",
        }
    }

    /// Connect errors, timeouts, 429 and 5xx move to the next target; other 4xx do not.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::Timeout
            | UpstreamError::Transport(_)
            | UpstreamError::Unsupported
            | UpstreamError::KeyUnavailable => true,
            UpstreamError::BadRequest(_) => false,
            UpstreamError::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
        }
    }
}

/// A successful upstream answer, body still streaming.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// A provider's upstream key, replaceable at run time (Vault refresh). `None` until loaded.
pub type KeyCell = Arc<RwLock<Option<SecretString>>>;

/// A configured provider.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub enabled: bool,
    base_url: String,
    pub(crate) key: KeyCell,
    pub(crate) vault_key: Option<VaultKeyRef>,
    api_version: Option<String>,
    azure_path: AzurePath,
    max_tokens: Option<u64>,
    /// The URLs of the two endpoints, parsed once, when they do not depend on the model (all but Azure
    /// deployment paths): parsing a URL per request showed in the profile.
    urls: [Option<reqwest::Url>; 2],
}

/// Request headers never forwarded upstream: hop-by-hop, our credentials, and anything that would
/// confuse the upstream's framing.
const DROP_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "cookie",
    "x-api-key",
    "api-key",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
];

/// Response headers relayed to the client.
pub fn relay_response_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == "content-type"
        || n == "x-request-id"
        || n.starts_with("openai-")
        || n.starts_with("x-ratelimit-")
        || n == "retry-after"
}

/// What a translating provider needs to turn the upstream's answer back into a Responses answer.
enum Translation {
    None,
    Chat(ToolContext),
    Anthropic(ToolContext),
}

impl Provider {
    pub fn new(cfg: &ProviderConfig) -> Self {
        let vault_key = cfg.api_key_vault.clone();
        let mut p = Provider {
            name: cfg.name.clone(),
            kind: cfg.kind,
            enabled: cfg.enabled,
            base_url: cfg.base_url.clone(),
            key: Arc::new(RwLock::new(cfg.api_key.clone())),
            vault_key,
            api_version: cfg.api_version.clone(),
            azure_path: cfg.azure_path,
            max_tokens: cfg.max_tokens,
            urls: [None, None],
        };
        let per_model =
            p.kind == ProviderKind::AzureOpenai && p.azure_path == AzurePath::Deployments;
        if !per_model {
            for (i, e) in [Endpoint::Responses, Endpoint::ChatCompletions]
                .into_iter()
                .enumerate()
            {
                p.urls[i] = reqwest::Url::parse(&p.url(e, "")).ok();
            }
        }
        p
    }

    fn parsed_url(&self, endpoint: Endpoint) -> Option<&reqwest::Url> {
        self.urls[endpoint as usize].as_ref()
    }

    /// Replace the upstream key (Vault refresh).
    pub fn set_key(&self, key: SecretString) {
        *self
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }

    fn current_key(&self) -> Option<SecretString> {
        self.key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The URL of an endpoint on this provider (`model` is the Azure deployment).
    pub fn url(&self, endpoint: Endpoint, model: &str) -> String {
        match (self.kind, endpoint) {
            (ProviderKind::AzureOpenai, _) => {
                let query = self
                    .api_version
                    .as_deref()
                    .map(|v| format!("?api-version={}", urlencode(v)))
                    .unwrap_or_default();
                match self.azure_path {
                    AzurePath::V1 => {
                        format!("{}/openai/v1{}{query}", self.base_url, endpoint.path())
                    }
                    AzurePath::Deployments => format!(
                        "{}/openai/deployments/{}{}{query}",
                        self.base_url,
                        urlencode(model),
                        endpoint.path()
                    ),
                }
            }
            (ProviderKind::OpenaiChat, _) => format!("{}/chat/completions", self.base_url),
            (ProviderKind::Anthropic, _) => format!("{}/messages", self.base_url),
            _ => format!("{}{}", self.base_url, endpoint.path()),
        }
    }

    /// Send one attempt to `target`: until the first byte of the (possibly translated) answer, within the
    /// target's time-to-first-byte; the whole exchange within its total timeout.
    /// `model` is the model named in `body` (the proxy has read it already).
    pub async fn send(
        &self,
        endpoint: Endpoint,
        headers: &HeaderMap,
        body: Bytes,
        model: &str,
        target: &ResolvedTarget,
        stream: bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        if self.kind == ProviderKind::Demo {
            return Ok(super::demo::respond(endpoint, &body));
        }
        // A non-streamed answer's first byte comes when the whole answer is ready: only the total applies.
        let first_byte = if stream {
            target.first_byte_timeout
        } else {
            target.total_timeout
        };
        let deadline = tokio::time::Instant::now() + first_byte;
        let first = tokio::time::timeout_at(deadline, async {
            let mut up = self
                .send_http(endpoint, headers, body, model, target)
                .await?;
            if !stream {
                return Ok(up);
            }
            // Commit only once the first byte is here: a stalled stream still fails over.
            match up.body.next().await {
                Some(Ok(chunk)) => {
                    up.body = futures::stream::once(async move { Ok(chunk) })
                        .chain(up.body)
                        .boxed();
                    Ok(up)
                }
                Some(Err(e)) => Err(UpstreamError::Transport(format!(
                    "before the first byte: {e}"
                ))),
                None => Err(UpstreamError::Transport("empty stream".into())),
            }
        })
        .await;
        first.unwrap_or(Err(UpstreamError::Timeout))
    }

    async fn send_http(
        &self,
        endpoint: Endpoint,
        headers: &HeaderMap,
        body: Bytes,
        model: &str,
        target: &ResolvedTarget,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let translation = match (self.kind, endpoint) {
            (ProviderKind::OpenaiChat, Endpoint::Responses) => {
                Translation::Chat(ToolContext::default())
            }
            (ProviderKind::Anthropic, Endpoint::Responses) => {
                Translation::Anthropic(ToolContext::default())
            }
            (ProviderKind::Anthropic, Endpoint::ChatCompletions) => {
                return Err(UpstreamError::Unsupported);
            }
            _ => Translation::None,
        };
        let (body, translation) = match translation {
            Translation::None => (body, Translation::None),
            t => {
                let v: Value = serde_json::from_slice(&body).map_err(|_| {
                    UpstreamError::BadRequest("request body is not valid JSON".into())
                })?;
                let (out, t) = match t {
                    Translation::Chat(_) => {
                        let (o, c) = chat::request(&v, model)
                            .map_err(|e| UpstreamError::BadRequest(e.to_string()))?;
                        (o, Translation::Chat(c))
                    }
                    _ => {
                        let opts = anthropic::Options {
                            default_max_tokens: self
                                .max_tokens
                                .unwrap_or(anthropic::Options::default().default_max_tokens),
                        };
                        let (o, c) = anthropic::request(&v, model, opts)
                            .map_err(|e| UpstreamError::BadRequest(e.to_string()))?;
                        (o, Translation::Anthropic(c))
                    }
                };
                let bytes = serde_json::to_vec(&out)
                    .map_err(|e| UpstreamError::Transport(format!("serialize: {e}")))?;
                (Bytes::from(bytes), t)
            }
        };
        let mut req = match self.parsed_url(endpoint) {
            Some(url) => target.client.post(url.clone()),
            None => target.client.post(self.url(endpoint, model)),
        }
        .timeout(target.total_timeout);
        if matches!(translation, Translation::None) {
            for (name, value) in headers {
                if !DROP_REQUEST_HEADERS.contains(&name.as_str())
                    && !name.as_str().starts_with("x-tollgate-")
                {
                    req = req.header(name, value);
                }
            }
        } else {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ACCEPT, "application/json, text/event-stream");
        }
        if self.kind == ProviderKind::Anthropic {
            req = req.header("anthropic-version", anthropic::ANTHROPIC_VERSION);
        }
        let needs_key = self.vault_key.is_some();
        match self.current_key() {
            Some(key) => {
                let (name, value) = match self.kind {
                    ProviderKind::AzureOpenai => ("api-key", key.expose_secret().to_string()),
                    ProviderKind::Anthropic => ("x-api-key", key.expose_secret().to_string()),
                    _ => ("authorization", format!("Bearer {}", key.expose_secret())),
                };
                let mut v = HeaderValue::try_from(value).map_err(|_| {
                    UpstreamError::Transport("api key is not a valid header value".into())
                })?;
                v.set_sensitive(true);
                req = req.header(name, v);
            }
            None if needs_key => return Err(UpstreamError::KeyUnavailable),
            None => {}
        }
        let resp = req.body(body).send().await.map_err(classify)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after_secs = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse().ok());
            let mut body = read_capped(resp, 64 * 1024).await;
            if matches!(translation, Translation::Anthropic(_))
                && let Some(v) = anthropic::error_body(&body)
            {
                body = Bytes::from(v.to_string());
            }
            return Err(UpstreamError::Status {
                status,
                retry_after_secs,
                body,
            });
        }
        let mut headers = resp.headers().clone();
        let is_sse = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let raw = resp
            .bytes_stream()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed();
        let created_at = unix_now();
        let body = match translation {
            Translation::None => raw,
            Translation::Chat(ctx) | Translation::Anthropic(ctx) if !is_sse => {
                // Non-streamed: read it all (bounded), translate once.
                let anthropic = self.kind == ProviderKind::Anthropic;
                let buf = collect_capped(raw, 64 * 1024 * 1024).await?;
                let v: Value = serde_json::from_slice(&buf)
                    .map_err(|_| UpstreamError::Transport("upstream answer is not JSON".into()))?;
                let out = if anthropic {
                    anthropic::response(&v, &ctx, &mut RandomIds, created_at)
                } else {
                    chat::response(&v, &ctx, &mut RandomIds, created_at)
                };
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                let bytes = Bytes::from(out.to_string());
                futures::stream::once(async move { Ok(bytes) }).boxed()
            }
            Translation::Chat(ctx) => Translated::boxed(
                raw,
                Box::new(chat::ChatStream::new(ctx, Box::new(RandomIds), created_at)),
            ),
            Translation::Anthropic(ctx) => Translated::boxed(
                raw,
                Box::new(anthropic::MessagesStream::new(
                    ctx,
                    Box::new(RandomIds),
                    created_at,
                )),
            ),
        };
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn collect_capped(
    mut s: BoxStream<'static, Result<Bytes, std::io::Error>>,
    cap: usize,
) -> Result<Vec<u8>, UpstreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| UpstreamError::Transport(e.to_string()))?;
        out.extend_from_slice(&chunk);
        if out.len() > cap {
            return Err(UpstreamError::Transport("upstream answer too large".into()));
        }
    }
    Ok(out)
}

/// An upstream SSE stream run through a [`StreamTranslator`]. A translation error or an unfinished
/// upstream stream becomes a stream error, which the relay turns into a terminal `response.failed`.
struct Translated {
    inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
    tr: Box<dyn StreamTranslator>,
    ended: bool,
}

impl Translated {
    fn boxed(
        inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
        tr: Box<dyn StreamTranslator>,
    ) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
        Translated {
            inner,
            tr,
            ended: false,
        }
        .boxed()
    }
}

impl futures::Stream for Translated {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => match self.tr.feed(&chunk) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Poll::Ready(Some(Ok(Bytes::from(out)))),
                    Err(e) => {
                        self.ended = true;
                        return Poll::Ready(Some(Err(std::io::Error::other(e))));
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    return match self.tr.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Bytes::from(out)))),
                        Err(e) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
                    };
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

async fn read_capped(resp: reqwest::Response, cap: usize) -> Bytes {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(Ok(chunk)) = s.next().await {
        out.extend_from_slice(&chunk);
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
    Bytes::from(out)
}

fn classify(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Connect(e.without_url().to_string())
    } else {
        UpstreamError::Transport(e.without_url().to_string())
    }
}

/// The shared HTTP client for upstreams: rustls, pooled, no redirects (an upstream that redirects is
/// misconfigured, and following redirects with our API key attached would leak it).
pub fn http_client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Source};

    fn provider(toml: &str) -> Provider {
        let cfg = Config::from_source(
            Source {
                path: "/etc/t/broker.toml".into(),
                text: format!("policy_file = \"p.toml\"\n[providers.p]\n{toml}"),
            },
            &std::collections::BTreeMap::<String, String>::new(),
        )
        .expect("config");
        Provider::new(&cfg.providers["p"])
    }

    #[test]
    fn azure_urls() {
        let v1 = provider("kind = \"azure-openai\"\nbase_url = \"https://r.openai.azure.com/\"\n");
        assert_eq!(
            v1.url(Endpoint::Responses, "dep"),
            "https://r.openai.azure.com/openai/v1/responses"
        );
        let dep = provider(
            "kind = \"azure-openai\"\nbase_url = \"https://r.openai.azure.com\"\nazure_path = \"deployments\"\napi_version = \"2024-10-21\"\n",
        );
        assert_eq!(
            dep.url(Endpoint::ChatCompletions, "gpt 4o/x"),
            "https://r.openai.azure.com/openai/deployments/gpt%204o%2Fx/chat/completions?api-version=2024-10-21"
        );
        let chat = provider("kind = \"openai-chat\"\nbase_url = \"http://127.0.0.1:11434/v1\"\n");
        assert_eq!(
            chat.url(Endpoint::Responses, "m"),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
        let ant = provider("kind = \"anthropic\"\nbase_url = \"https://api.anthropic.com/v1\"\n");
        assert_eq!(
            ant.url(Endpoint::Responses, "m"),
            "https://api.anthropic.com/v1/messages"
        );
    }
}
