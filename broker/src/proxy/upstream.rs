//! A configured upstream provider and one attempt on it. What differs per provider kind is its
//! [`ProviderAdapter`] ([`super::providers`]); the attempt itself is the same for every kind: build the
//! request through the adapter, send it, classify a failure, wrap the answer (translated back if the
//! request was translated), all before the target's first-byte deadline.

use super::client::{Answer, UpstreamClient};
use super::providers::{AnswerTranslation, Outgoing, ProviderAdapter};
pub use super::providers::{Endpoint, UpstreamError, UpstreamResponse};
use crate::config::{ProviderConfig, ProviderKind, VaultKeyRef};
use crate::translate::StreamTranslator;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;
use secrecy::SecretString;
use serde_json::Value;
use std::sync::{Arc, RwLock};
use std::time::Duration;

type Body = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A provider's upstream key, replaceable at run time (Vault refresh). `None` until loaded.
pub type KeyCell = Arc<RwLock<Option<SecretString>>>;

/// A configured provider.
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub enabled: bool,
    pub(crate) key: KeyCell,
    pub(crate) vault_key: Option<VaultKeyRef>,
    adapter: Box<dyn ProviderAdapter>,
    /// The URLs of the endpoints, parsed once, when they do not depend on the model (all but Azure
    /// deployment paths): parsing a URL per request showed in the profile.
    urls: [Option<Uri>; 4],
    /// The outbound proxy settings send this provider's requests through a proxy
    /// ([`UpstreamClient::proxied`]).
    proxied: bool,
}

/// What one attempt on a target may use: the target's HTTP client and its time limits.
pub struct Attempt<'a> {
    pub client: &'a UpstreamClient,
    /// Until the first byte of a streamed answer.
    pub first_byte_timeout: Duration,
    /// The whole exchange.
    pub total_timeout: Duration,
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
    // The `anthropic` adapter sends its own (the one version there is); no other provider reads it.
    "anthropic-version",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
];

/// Response headers relayed to the client.
pub fn relay_response_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == "content-type"
        || n == "x-request-id"
        || n == "request-id"
        || n.starts_with("anthropic-ratelimit-")
        || n.starts_with("openai-")
        || n.starts_with("x-ratelimit-")
        || n == "retry-after"
}

impl Provider {
    /// `proxies`: the outbound proxy settings ([`crate::config::proxy::ProxyEnv`]).
    pub fn new(cfg: &ProviderConfig, proxies: &Matcher) -> Self {
        let adapter = super::providers::adapter(cfg);
        let urls = Endpoint::ALL.map(|e| {
            (!adapter.url_depends_on_model())
                .then(|| adapter.url(e, "").parse::<Uri>().ok())
                .flatten()
        });
        let proxied = UpstreamClient::proxied(proxies, &adapter.url(Endpoint::Responses, ""));
        Provider {
            proxied,
            name: cfg.name.clone(),
            kind: cfg.kind,
            enabled: cfg.enabled,
            key: Arc::new(RwLock::new(cfg.api_key.clone())),
            vault_key: cfg.api_key_vault.clone(),
            adapter,
            urls,
        }
    }

    /// The kind's name as written in the config (`openai-chat`): metric labels, spans, logs.
    pub fn kind_name(&self) -> &'static str {
        self.adapter.name()
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

    /// Send one attempt: until the first byte of the (possibly translated) answer, within the target's
    /// time-to-first-byte; the whole exchange within its total timeout.
    /// `model` is the model named in `body` (the proxy has read it already).
    pub async fn send(
        &self,
        endpoint: Endpoint,
        headers: &HeaderMap,
        body: Bytes,
        model: &str,
        attempt: &Attempt<'_>,
        stream: bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        if let Some(answer) = self.adapter.answer_locally(endpoint, &body) {
            return Ok(answer);
        }
        // A non-streamed answer's first byte comes when the whole answer is ready: only the total applies.
        let first_byte = if stream {
            attempt.first_byte_timeout
        } else {
            attempt.total_timeout
        };
        let deadline = tokio::time::Instant::now() + first_byte;
        let first = tokio::time::timeout_at(deadline, async {
            let mut up = self
                .send_http(endpoint, headers, body, model, attempt)
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
        attempt: &Attempt<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (body, answer) = match self.adapter.outgoing(endpoint, body, model)? {
            Outgoing::Native(body) => (body, None),
            Outgoing::Translated { body, answer } => (body, Some(answer)),
        };
        let uri = match &self.urls[endpoint as usize] {
            Some(uri) => uri.clone(),
            None => self
                .adapter
                .url(endpoint, model)
                .parse::<Uri>()
                .map_err(|e| UpstreamError::Transport(format!("upstream url: {e}")))?,
        };
        let out = self.headers(headers, answer.is_some())?;
        let Answer {
            status,
            mut headers,
            body: raw,
        } = attempt
            .client
            .post(uri, out, body, self.proxied, attempt.total_timeout)
            .await?;
        if !status.is_success() {
            let retry_after_secs = headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| retry_after(s, unix_now()));
            let body = self.adapter.error_body(read_capped(raw, 64 * 1024).await);
            return Err(UpstreamError::Status {
                status,
                retry_after_secs,
                body,
            });
        }
        let body = match answer {
            None => raw,
            Some(answer) => translate_answer(raw, &mut headers, answer).await?,
        };
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }

    /// The upstream request's headers: the client's (or a translation's), the kind's own, the key.
    fn headers(&self, headers: &HeaderMap, translated: bool) -> Result<HeaderMap, UpstreamError> {
        let mut out = HeaderMap::with_capacity(headers.len() + 4);
        if translated {
            out.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            out.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json, text/event-stream"),
            );
        } else {
            for (name, value) in headers {
                if !DROP_REQUEST_HEADERS.contains(&name.as_str())
                    && !name.as_str().starts_with("x-tollgate-")
                {
                    out.append(name.clone(), value.clone());
                }
            }
        }
        for (name, value) in self.adapter.extra_headers() {
            out.append(name.clone(), HeaderValue::from_static(value));
        }
        match self.current_key() {
            Some(key) => {
                let (name, value) = self.adapter.key_header(&key);
                let mut v = HeaderValue::try_from(value).map_err(|_| {
                    UpstreamError::Transport("api key is not a valid header value".into())
                })?;
                v.set_sensitive(true);
                out.append(name, v);
            }
            None if self.vault_key.is_some() => return Err(UpstreamError::KeyUnavailable),
            None => {}
        }
        // What reqwest sent when the client named no type it accepts.
        if !out.contains_key(http::header::ACCEPT) {
            out.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        Ok(out)
    }
}

/// A translated request's answer, back in the client's protocol: a stream through its translator, a
/// whole answer (read bounded) translated once.
async fn translate_answer(
    raw: Body,
    headers: &mut HeaderMap,
    answer: Box<dyn AnswerTranslation>,
) -> Result<Body, UpstreamError> {
    let is_sse = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let created_at = unix_now();
    if is_sse {
        return Ok(Translated::boxed(raw, answer.stream(created_at)));
    }
    let buf = collect_capped(raw, 64 * 1024 * 1024).await?;
    let v: Value = serde_json::from_slice(&buf)
        .map_err(|_| UpstreamError::Transport("upstream answer is not JSON".into()))?;
    let out = answer.response(&v, created_at);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let bytes = Bytes::from(out.to_string());
    Ok(futures::stream::once(async move { Ok(bytes) }).boxed())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn collect_capped(mut s: Body, cap: usize) -> Result<Vec<u8>, UpstreamError> {
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
    inner: Body,
    tr: Box<dyn StreamTranslator>,
    ended: bool,
}

impl Translated {
    fn boxed(inner: Body, tr: Box<dyn StreamTranslator>) -> Body {
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

async fn read_capped(mut s: Body, cap: usize) -> Bytes {
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = s.next().await {
        out.extend_from_slice(&chunk);
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
    Bytes::from(out)
}

/// A `Retry-After` value in seconds from `now` (unix seconds): delta-seconds, or an HTTP-date (RFC 9110
/// §10.2.3: IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`; a date in the past is 0).
pub fn retry_after(value: &str, now: u64) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, &fmt).ok()?.assume_utc();
    let at = u64::try_from(at.unix_timestamp()).unwrap_or(0);
    Some(at.saturating_sub(now))
}

#[cfg(test)]
mod retry_after_tests {
    use super::retry_after;

    #[test]
    fn seconds_and_http_dates() {
        // 1994-11-06T08:49:37Z = 784111777.
        let now = 784_111_777;
        assert_eq!(retry_after("120", now), Some(120));
        assert_eq!(retry_after(" 7 ", now), Some(7));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(0));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(30));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(0),
            "in the past"
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
