//! Upstream providers: where a routed request goes.

use crate::config::{ProviderConfig, ProviderKind};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use secrecy::{ExposeSecret, SecretString};
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
}

impl UpstreamError {
    /// Connect errors, timeouts, 429 and 5xx move to the next target; other 4xx do not.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Timeout | UpstreamError::Transport(_) => {
                true
            }
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

/// A configured provider.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub enabled: bool,
    base_url: String,
    api_key: Option<SecretString>,
    client: reqwest::Client,
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

impl Provider {
    pub fn new(cfg: &ProviderConfig, client: reqwest::Client) -> Self {
        Provider {
            name: cfg.name.clone(),
            kind: cfg.kind,
            enabled: cfg.enabled,
            base_url: cfg.base_url.clone(),
            api_key: cfg.api_key.clone(),
            client,
        }
    }

    /// Send one attempt. `body` is forwarded byte for byte.
    pub async fn send(
        &self,
        endpoint: Endpoint,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        match self.kind {
            ProviderKind::Demo => Ok(super::demo::respond(endpoint, &body)),
            ProviderKind::Openai => self.send_http(endpoint, headers, body, timeout).await,
        }
    }

    async fn send_http(
        &self,
        endpoint: Endpoint,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let url = format!("{}{}", self.base_url, endpoint.path());
        let mut req = self.client.post(url).timeout(timeout);
        for (name, value) in headers {
            if !DROP_REQUEST_HEADERS.contains(&name.as_str())
                && !name.as_str().starts_with("x-tollgate-")
            {
                req = req.header(name, value);
            }
        }
        if let Some(key) = &self.api_key {
            let mut v =
                HeaderValue::try_from(format!("Bearer {}", key.expose_secret())).map_err(|_| {
                    UpstreamError::Transport("api key is not a valid header value".into())
                })?;
            v.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, v);
        }
        let resp = req.body(body).send().await.map_err(classify)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after_secs = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse().ok());
            let body = read_capped(resp, 64 * 1024).await;
            return Err(UpstreamError::Status {
                status,
                retry_after_secs,
                body,
            });
        }
        let headers = resp.headers().clone();
        let body = resp
            .bytes_stream()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed();
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
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
