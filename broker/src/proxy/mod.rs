//! The OpenAI-compatible proxy: authenticate, authorise the model, route with failover, stream back as
//! the upstream sends (never waiting for more than what has already arrived: [`coalesce`]) while a side
//! decoder reads usage, then account.

pub mod affinity;
pub mod catalog;
pub mod client;
pub mod coalesce;
pub mod output_limit;
pub mod providers;
pub mod upstream;
pub mod websocket;

use crate::accounting::{InFlight, Served};
use crate::app::AppState;
use crate::error::ApiError;
use crate::router::{PlanError, ResolvedTarget, TargetHealth};
use crate::usage::{SseUsageDecoder, StreamEnd, Wire};
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tollgate::Claims;
use upstream::{Endpoint, UpstreamError, UpstreamResponse};

/// The layer in front of every bearer route: verify the token, refuse with 401 before anything else runs
/// (the body is not read), and hand the verified claims to the handler as an extension.
pub async fn require_token(
    State(app): State<Arc<AppState>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authenticate(&app, req.headers()) {
        Ok(claims) if app.grant_outdated(&claims) => {
            ApiError::Unauthorized("policy_changed").into_response()
        }
        Ok(claims) => {
            req.extensions_mut().insert(claims);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The presented token: `Authorization: Bearer …`, or else `x-api-key` (how Anthropic's clients send a
/// key; Claude Code with `apiKeyHelper` sends the helper's output in both).
fn presented_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("malformed"))?;
        return match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Ok(t.trim()),
            _ => Err(ApiError::Unauthorized("malformed")),
        };
    }
    let value = headers
        .get("x-api-key")
        .ok_or(ApiError::Unauthorized("missing"))?;
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| ApiError::Unauthorized("malformed"))
}

/// Verify the presented token; verified claims are cached by token hash until they expire.
fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Arc<Claims>, ApiError> {
    let token = presented_token(headers)?;
    if token.is_empty() || token.len() > 16 * 1024 {
        return Err(ApiError::Unauthorized("malformed"));
    }
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let now = app.clock().now_secs();
    let claims = match app.auth_cache().get(&key) {
        Some(c) => c,
        None => {
            let c = Arc::new(
                app.tokens()
                    .verify(token)
                    .map_err(|e| ApiError::Unauthorized(e.reason()))?,
            );
            app.auth_cache().insert(key, c.clone());
            c
        }
    };
    // The cache holds entries for at most its TTL; expiry is re-checked on every hit with our clock.
    if claims.exp <= now.saturating_sub(app.tokens().leeway_secs) {
        app.auth_cache().invalidate(&key);
        return Err(ApiError::Unauthorized("expired"));
    }
    if let Err(e) = app.governance().check_revoked(&claims) {
        return Err(match ApiError::from(e) {
            // A person's token: their sign-in was ended, and the message says what to do.
            ApiError::Unauthorized("revoked")
                if claims.grant.identity.kind == tollgate::IdentityKind::User =>
            {
                ApiError::SignInEnded {
                    token_expires_in_secs: claims.exp.saturating_sub(now),
                }
            }
            other => other,
        });
    }
    Ok(claims)
}

/// The few request fields the proxy needs, read in its one parse of the body; everything else is
/// forwarded untouched.
#[derive(Deserialize)]
struct Probe {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    // Output caps, whichever API's name the request uses (not `flatten`: that would buffer every other
    // field of the body).
    max_output_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_tokens: Option<u64>,
    /// `priority`, `flex`, … (priced where the table has the tier).
    service_tier: Option<String>,
    /// The session key of a client that is not Codex (Codex's `session-id` header wins): affinity.
    prompt_cache_key: Option<String>,
}

/// What the proxy read from a request body.
struct Probed {
    model: String,
    stream: bool,
    limits: output_limit::Limits,
    tier: crate::governance::pricing::ServiceTier,
    prompt_cache_key: Option<String>,
}

fn read_body(app: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(app.max_body_bytes())
        } else {
            ApiError::BadRequest("could not read the request body".into())
        }
    })
}

/// How deeply a request body's JSON may nest (serde_json's own parsing limit: a deeper body could not be
/// read back by the broker, and no API request needs more).
pub const MAX_JSON_DEPTH: usize = 128;

/// Refuse, before any upstream sees it, a body that is not UTF-8 or that nests deeper than
/// [`MAX_JSON_DEPTH`] (the one parse of the body skips fields it does not read without checking either).
fn check_body(body: &[u8]) -> Result<(), ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::BadRequest(
            "request body is not valid UTF-8".into(),
        ));
    }
    // Most of an agent's body is string content (prompts, tool output): skip it with memchr rather than
    // byte by byte, so the check stays cheap on long sessions' large bodies.
    let (mut depth, mut i) = (0usize, 0usize);
    while i < body.len() {
        let b = body[i];
        i += 1;
        match b {
            b'"' => loop {
                let Some(rest) = body.get(i..) else {
                    return Ok(());
                };
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(off) if rest[off] == b'\\' => i += off + 2,
                    Some(off) => {
                        i += off + 1;
                        break;
                    }
                    None => return Ok(()), // an unterminated string: the parse that follows says so
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::BadRequest(format!(
                        "request body nests JSON deeper than {MAX_JSON_DEPTH} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn probe(body: &[u8]) -> Result<Probed, ApiError> {
    check_body(body)?;
    let p: Probe = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(if e.is_data() {
            // Valid JSON, a known field of the wrong type (e.g. a string `max_tokens`).
            format!("invalid request body: {e}")
        } else {
            format!("request body is not valid JSON: {e}")
        })
    })?;
    let model = p
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing required parameter: 'model'".into()))?;
    Ok(Probed {
        model,
        stream: p.stream,
        limits: output_limit::Limits {
            max_output_tokens: p.max_output_tokens,
            max_completion_tokens: p.max_completion_tokens,
            max_tokens: p.max_tokens,
        },
        tier: p
            .service_tier
            .as_deref()
            .map(crate::governance::pricing::ServiceTier::parse)
            .unwrap_or_default(),
        prompt_cache_key: p.prompt_cache_key.filter(|k| k.len() <= 256),
    })
}

pub async fn responses(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Arc<Claims>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    proxy(app, claims, headers, body, Endpoint::Responses).await
}

pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Arc<Claims>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    proxy(app, claims, headers, body, Endpoint::ChatCompletions).await
}

/// `POST /v1/messages`: Anthropic's Messages API (Claude Code). The same path as the other ingresses:
/// admission, routing with failover, relay with usage read on the side; passed through to `anthropic`
/// providers, translated for the OpenAI family. Errors are reshaped into Anthropic's by
/// [`crate::error::anthropic_shape`].
pub async fn messages(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Arc<Claims>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    proxy(app, claims, headers, body, Endpoint::Messages).await
}

/// `POST /v1/messages/count_tokens`: asked of the model's first available `anthropic` target, passed
/// through (Anthropic does not bill it, so it is neither admitted against a budget nor accounted); when no
/// target can count (the OpenAI family has no such call, or every `anthropic` target failed), the broker's
/// own estimate: a quarter of the body's bytes, the same rule admission estimates input with.
pub async fn count_tokens(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Arc<Claims>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&app, body)?;
    let Probed { model, .. } = probe(&body)?;
    if !claims.grant.allows_model(&model) {
        return Err(ApiError::ModelNotAllowed(model));
    }
    if !app.router().serves(&model) {
        return Err(ApiError::ModelNotFound(model));
    }
    let endpoint = Endpoint::CountTokens;
    for target in app.router().plan(&model).unwrap_or_default() {
        let provider = &target.provider;
        if provider.kind != crate::config::ProviderKind::Anthropic
            || !matches!(
                target.health.availability(),
                crate::router::Availability::Closed
            )
        {
            continue;
        }
        let (upstream_body, upstream_model) = match &target.model {
            Some(m) if m != &model => (with_model(&body, m), m.as_str()),
            _ => (body.clone(), model.as_str()),
        };
        match provider
            .send(
                endpoint,
                &headers,
                upstream_body,
                upstream_model,
                &target.attempt(),
                false,
            )
            .await
        {
            Ok(up) => {
                use futures::StreamExt;
                let mut buf = Vec::new();
                let mut s = up.body;
                while let Some(Ok(c)) = s.next().await {
                    buf.extend_from_slice(&c);
                    if buf.len() > 64 * 1024 {
                        break;
                    }
                }
                if serde_json::from_slice::<CountedTokens>(&buf).is_ok() {
                    let mut r = (up.status, Bytes::from(buf)).into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    return Ok(r);
                }
                tracing::warn!(provider = %provider.name, "count_tokens: the upstream answer is not a token count");
            }
            // The client's own error (a bad body): Anthropic's answer is the one to show.
            Err(UpstreamError::Status { status, body, .. })
                if status.is_client_error()
                    && status != StatusCode::TOO_MANY_REQUESTS
                    && status != StatusCode::UNAUTHORIZED
                    && status != StatusCode::FORBIDDEN =>
            {
                return Err(upstream_error(UpstreamError::Status {
                    status,
                    retry_after_secs: None,
                    body,
                }));
            }
            Err(e) => {
                tracing::warn!(provider = %provider.name, error = %e, "count_tokens attempt failed");
            }
        }
    }
    Ok(
        axum::Json(serde_json::json!({"input_tokens": (body.len() as u64).div_ceil(4)}))
            .into_response(),
    )
}

/// The shape of Anthropic's token count (`{"input_tokens": n}`).
#[derive(Deserialize)]
struct CountedTokens {
    #[allow(dead_code)]
    input_tokens: u64,
}

/// Ask an OpenAI-compatible upstream to report usage on a streamed chat completion, so spend is exact.
fn ensure_chat_usage(body: Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    if v.pointer("/stream_options/include_usage")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        return body;
    }
    let Some(obj) = v.as_object_mut() else {
        return body;
    };
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(o) = opts.as_object_mut() {
        o.insert("include_usage".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

fn with_model(body: &Bytes, model: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.clone();
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("model".into(), serde_json::Value::String(model.to_string()));
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .unwrap_or_else(|_| body.clone())
}

async fn proxy(
    app: Arc<AppState>,
    claims: Arc<Claims>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body = read_body(&app, body)?;
    let Probed {
        model,
        stream,
        limits,
        tier,
        prompt_cache_key,
    } = probe(&body)?;
    if !claims.grant.allows_model(&model) {
        return Err(ApiError::ModelNotAllowed(model));
    }
    if !app.router().serves(&model) {
        return Err(ApiError::ModelNotFound(model.clone()));
    }
    let body = if endpoint == Endpoint::ChatCompletions && stream {
        ensure_chat_usage(body)
    } else {
        body
    };
    // The limit reserved for below is the limit every provider receives (see `output_limit`).
    let body = output_limit::normalize(body, endpoint, &limits);
    let max_out = limits.requested();
    app.accounting().check_capacity()?;
    let reservation = app
        .governance()
        .admit_tier(&claims, &model, body.len() as u64, max_out, tier)
        .await?;
    // The tightest budget, as response headers (Codex and people see what is left before it hurts).
    let budget_hint = app.governance().budget_hint(&reservation);
    let mut inflight = app.accounting().start(
        claims.clone(),
        model.clone(),
        endpoint.route(),
        started,
        reservation,
    );
    // Which Codex session this is (validated headers; recorded with the spend, never refused for).
    let session = crate::session::CodexSession::from_headers(&headers);
    let affinity_key = app.affinity().key(
        &claims.grant.principal,
        &model,
        session
            .as_ref()
            .and_then(|s| s.session_id.as_deref())
            .or(prompt_cache_key.as_deref()),
    );
    inflight.set_session(session);
    // Where this session was served before (its encrypted reasoning and prompt cache are there).
    let sticky = match &affinity_key {
        Some(k) => app.affinity().lookup(k).await,
        None => None,
    };

    let mut last_err: Option<UpstreamError> = None;
    let mut attempts = 0u32;
    let mut rate_limited_secs: Option<u64> = None;
    let mut waited = false;
    loop {
        let mut chain = match app.router().plan(&model) {
            Ok(c) => c,
            Err(PlanError::NoRoute) => Vec::new(),
            Err(PlanError::AllUnavailable { retry_after_secs }) => {
                // Everything is parked: wait it out if that is short, else tell the client when to retry.
                if !waited && retry_after_secs <= app.retry_after_max_wait_secs() {
                    waited = true;
                    tokio::time::sleep(Duration::from_secs(retry_after_secs)).await;
                    continue;
                }
                rate_limited_secs = Some(rate_limited_secs.unwrap_or(0).max(retry_after_secs));
                Vec::new()
            }
        };
        affinity::prefer(&mut chain, sticky.as_ref());
        let mut tried_any = false;
        for target in &chain {
            if !target.health.begin_attempt() {
                continue;
            }
            tried_any = true;
            attempts += 1;
            let provider = &target.provider;
            // Encrypted items this target's domain cannot read (the session moved): stripped.
            let readable = affinity::readable(
                &body,
                sticky.as_ref(),
                app.affinity().domain(&provider.name),
            );
            if readable.stripped > 0 {
                tracing::warn!(from = sticky.as_ref().map_or("", |s| s.label.as_str()), to = %target.label, items = readable.stripped,
                    "session on a target that cannot read some of its encrypted reasoning: those input items stripped");
                app.metrics()
                    .reasoning_stripped(&provider.name, readable.stripped as u64);
            }
            let body = &readable.body;
            let (upstream_body, upstream_model) = match &target.model {
                Some(m) if m != &model => (with_model(body, m), m.as_str()),
                _ => (body.clone(), model.as_str()),
            };
            let upstream_body =
                output_limit::for_provider(upstream_body, endpoint, provider.kind, &limits);
            match provider
                .send(
                    endpoint,
                    &headers,
                    upstream_body,
                    upstream_model,
                    &target.attempt(),
                    stream,
                )
                .await
            {
                Ok(up) => {
                    // Health is settled by the relay: success when the answer ends well.
                    let served = Served {
                        provider: provider.name.clone(),
                        provider_kind: provider.kind_name(),
                        status: up.status.as_u16(),
                    };
                    let tags = crate::metrics::ProxyTags {
                        model: model.clone(),
                        provider: provider.name.clone(),
                    };
                    let mut resp = relay(
                        up, inflight, served, tags, attempts, target, endpoint, stream,
                    )
                    .await;
                    if let Some(h) = &budget_hint {
                        h.insert_into(resp.headers_mut());
                    }
                    if readable.stripped > 0 {
                        resp.headers_mut().insert(
                            affinity::STRIPPED_HEADER,
                            HeaderValue::from(readable.stripped),
                        );
                    }
                    if let Some(k) = affinity_key {
                        app.affinity().record(k, target, readable.foreign);
                        app.metrics().affinity(match &sticky {
                            None => "new",
                            Some(s) if s.label == target.label => "kept",
                            Some(_) => "moved",
                        });
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    tracing::warn!(provider = %provider.name, target_label = %target.label, model = %model, attempt = attempts, error = %e, "upstream attempt failed");
                    if e.retryable() {
                        app.metrics().failover(&provider.name, e.label());
                    }
                    match &e {
                        UpstreamError::Status {
                            retry_after_secs: Some(secs),
                            status,
                            ..
                        } if *status == StatusCode::TOO_MANY_REQUESTS
                            || *status == StatusCode::SERVICE_UNAVAILABLE =>
                        {
                            target.health.park(*secs);
                            let secs = (*secs).min(crate::router::MAX_PARK_SECS);
                            rate_limited_secs = Some(rate_limited_secs.unwrap_or(0).max(secs));
                        }
                        _ if e.is_target_fault() => target.health.on_failure(),
                        _ => {}
                    }
                    if !e.retryable() {
                        inflight.release();
                        return Ok(with_attempts(upstream_error(e).into_response(), attempts));
                    }
                    last_err = Some(e);
                }
            }
        }
        // The chain is exhausted. If the only thing in the way is a short Retry-After, wait once and retry.
        if tried_any
            && !waited
            && matches!(app.router().plan(&model),
                Err(PlanError::AllUnavailable { retry_after_secs }) if retry_after_secs <= app.retry_after_max_wait_secs())
        {
            continue;
        }
        break;
    }
    inflight.release();
    let err = match (rate_limited_secs, last_err) {
        (Some(secs), Some(UpstreamError::Status { status, .. }))
            if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE =>
        {
            ApiError::RateLimited {
                message: format!(
                    "the upstream providers for this model are rate limited; retry in {secs} s"
                ),
                retry_after_secs: secs,
            }
        }
        (Some(secs), None) => ApiError::RateLimited {
            message: format!("every upstream provider for this model is parked; retry in {secs} s"),
            retry_after_secs: secs,
        },
        (_, Some(e)) => upstream_error(e),
        (None, None) => ApiError::UpstreamUnavailable("no enabled target".into()),
    };
    Ok(with_attempts(err.into_response(), attempts))
}

// Response header names, made at compile time (a `&str` key is parsed on every insert).
const X_TOLLGATE_ATTEMPTS: HeaderName = HeaderName::from_static("x-tollgate-attempts");
const X_TOLLGATE_PROVIDER: HeaderName = HeaderName::from_static("x-tollgate-provider");
const X_TOLLGATE_TARGET: HeaderName = HeaderName::from_static("x-tollgate-target");

fn with_attempts(mut r: Response, attempts: u32) -> Response {
    r.headers_mut()
        .insert(X_TOLLGATE_ATTEMPTS, HeaderValue::from(attempts));
    r
}

fn upstream_error(e: UpstreamError) -> ApiError {
    match e {
        UpstreamError::Timeout => ApiError::UpstreamTimeout,
        // The upstream refused *our* key: a broker misconfiguration, never the client's token. Relaying a 401
        // would make Codex re-run its credential helper in a loop.
        UpstreamError::Status { status, .. }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
        {
            tracing::error!(%status, "the upstream refused the broker's API key; check the provider's key source");
            ApiError::UpstreamUnavailable(format!("upstream refused our credentials ({status})"))
        }
        UpstreamError::BadRequest(m) => ApiError::BadRequest(m),
        UpstreamError::Status { status, body, .. }
            if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS =>
        {
            // Relay only a well-formed OpenAI error body; anything else could leak upstream internals.
            if serde_json::from_slice::<tollgate::OpenAiError>(&body).is_ok() {
                ApiError::UpstreamClientError { status, body }
            } else {
                ApiError::BadRequest(format!(
                    "the upstream provider refused the request ({status})"
                ))
            }
        }
        UpstreamError::Unsupported => ApiError::BadRequest(
            "this model is not served on this endpoint; use /v1/responses".into(),
        ),
        other => ApiError::UpstreamUnavailable(other.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    up: UpstreamResponse,
    inflight: InFlight,
    served: Served,
    tags: crate::metrics::ProxyTags,
    attempts: u32,
    target: &ResolvedTarget,
    endpoint: Endpoint,
    stream: bool,
) -> Response {
    let provider_header =
        HeaderValue::from_str(&served.provider).unwrap_or(HeaderValue::from_static("unknown"));
    let mut builder = Response::builder().status(up.status).extension(tags);
    if let Some(h) = builder.headers_mut() {
        for (name, value) in &up.headers {
            if upstream::relay_response_header(name) {
                h.insert(name.clone(), value.clone());
            }
        }
        h.insert(X_TOLLGATE_PROVIDER, provider_header);
        h.insert(X_TOLLGATE_ATTEMPTS, HeaderValue::from(attempts));
        if let Ok(v) = HeaderValue::from_str(&target.label) {
            h.insert(X_TOLLGATE_TARGET, v);
        }
        if stream {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
    }
    let wire = match endpoint {
        Endpoint::Responses => Wire::Responses,
        Endpoint::ChatCompletions => Wire::Chat,
        Endpoint::Messages | Endpoint::CountTokens => Wire::Messages,
    };
    if stream {
        let tapped = Tapped {
            inner: up.body,
            decoder: SseUsageDecoder::new(wire),
            pending: Some((inflight, served)),
            wire,
            failed_sent: false,
            health: Some(target.health.clone()),
        };
        return builder
            .body(Body::from_stream(coalesce::Coalesce::new(tapped)))
            .unwrap_or_else(|_| ApiError::Internal("response build".into()).into_response());
    }
    // Non-streaming: buffer (bounded), read usage from the JSON body.
    let mut buf = Vec::new();
    let mut body = up.body;
    let mut broken = false;
    use futures::StreamExt;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => buf.extend_from_slice(&c),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    if broken {
        target.health.on_failure();
    } else {
        target.health.on_success();
    }
    let mut inflight = inflight;
    inflight.mark_first_byte();
    if broken {
        // Charged its whole reservation: the provider bills the answer it generated (see docs/governance.md).
        inflight.finish(served, None, StreamEnd::Cut, 0);
        return ApiError::UpstreamUnavailable("upstream body ended early".into()).into_response();
    }
    let usage = crate::usage::usage_from_body(&buf, wire);
    inflight.finish(served, usage, StreamEnd::Completed, 0);
    builder
        .body(Body::from(buf))
        .unwrap_or_else(|_| ApiError::Internal("response build".into()).into_response())
}

/// The upstream byte stream, forwarded unchanged, with a usage decoder on the side. Accounting happens
/// exactly once: at the end of the stream, on an upstream error, or on drop (client went away).
struct Tapped {
    inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
    decoder: SseUsageDecoder,
    /// The request's accounting, until the stream ends (once).
    pending: Option<(InFlight, Served)>,
    wire: Wire,
    failed_sent: bool,
    /// The serving target: a mid-stream break counts against its circuit breaker.
    health: Option<Arc<TargetHealth>>,
}

impl Tapped {
    fn settle(&mut self) {
        if let Some((inflight, served)) = self.pending.take() {
            let end = self.decoder.finish();
            inflight.finish(
                served,
                self.decoder.usage,
                end,
                self.decoder.output_text_bytes,
            );
        }
    }
}

/// A terminal `response.failed` event for a stream the upstream broke after the first byte: the client
/// sees a clean failure (Codex retries it) instead of a hang.
fn failed_event() -> Bytes {
    let v = serde_json::json!({"type":"response.failed","response":{"id":"resp_tollgate_upstream_failed","status":"failed",
        "error":{"code":"server_error","message":"Tollgate: the upstream stream broke off; please retry."}}});
    Bytes::from(format!("event: response.failed\ndata: {v}\n\n"))
}

/// The end of a Chat Completions stream the upstream broke after the first byte: an error chunk in
/// OpenAI's shape, then `[DONE]`.
fn chat_failed_event() -> Bytes {
    let v = serde_json::json!({"error": {"message": "Tollgate: the upstream stream broke off; please retry.",
        "type": "server_error", "code": "upstream_stream_broken"}});
    Bytes::from(format!("data: {v}\n\ndata: [DONE]\n\n"))
}

/// The end of a Messages stream the upstream broke after the first byte: Anthropic's `error` event (what
/// its API sends when a stream fails, e.g. `overloaded_error`).
fn messages_failed_event() -> Bytes {
    let v = serde_json::json!({"type": "error", "error": {"type": "api_error",
        "message": "Tollgate: the upstream stream broke off; please retry."}});
    Bytes::from(format!("event: error\ndata: {v}\n\n"))
}

impl Stream for Tapped {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed_sent {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some((inflight, _)) = self.pending.as_mut() {
                    inflight.mark_first_byte();
                }
                self.decoder.feed(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream stream broke after the first byte");
                if let Some(h) = self.health.take() {
                    h.on_failure();
                }
                self.settle();
                // End the stream in the client's protocol, so it sees a clean failure, not a hang.
                self.failed_sent = true;
                Poll::Ready(Some(Ok(match self.wire {
                    Wire::Responses => failed_event(),
                    Wire::Chat => chat_failed_event(),
                    Wire::Messages => messages_failed_event(),
                })))
            }
            Poll::Ready(None) => {
                if let Some(h) = self.health.take() {
                    h.on_success();
                }
                self.settle();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        // Client disconnect mid-stream lands here with the record still pending. Not the target's fault: the
        // bytes it sent were fine.
        if let Some(h) = self.health.take() {
            h.on_success();
        }
        self.settle();
    }
}

/// `GET /v1/models`: what this token may use, in OpenAI's list shape, plus Codex's `models` key, which
/// holds only operator-supplied Codex metadata (listing a model there replaces Codex's system prompt);
/// with an `ETag`, and 304 on a matching `If-None-Match` ([`catalog`]). A request that carries
/// `anthropic-version` (Claude Code, Anthropic's SDKs) gets Anthropic's list shape.
pub async fn models(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Arc<Claims>>,
    Query(q): Query<catalog::ModelsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let client = q.client_version()?;
    let granted = catalog::granted(&app, &claims.grant, client);
    if headers.contains_key("anthropic-version") {
        return Ok(axum::Json(anthropic_models(&granted.names)).into_response());
    }
    Ok(catalog::etagged_as(
        "models",
        client,
        &headers,
        &granted.openai_and_codex(),
    ))
}

/// A model list in Anthropic's shape (`GET /v1/models`: `data` of `type: model`, one page).
fn anthropic_models(names: &[String]) -> serde_json::Value {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|n| serde_json::json!({"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}))
        .collect();
    serde_json::json!({
        "data": data,
        "has_more": false,
        "first_id": names.first(),
        "last_id": names.last(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_bearer_or_else_from_x_api_key() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            presented_token(&h),
            Err(ApiError::Unauthorized("missing"))
        ));
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(presented_token(&h).ok(), Some("k1"));
        // Claude Code sends both; the bearer wins (they carry the same helper output).
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b1"));
        assert_eq!(presented_token(&h).ok(), Some("b1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert!(matches!(
            presented_token(&h),
            Err(ApiError::Unauthorized("malformed"))
        ));
    }

    #[test]
    fn anthropic_model_list_shape() {
        let v = anthropic_models(&["claude-a".into(), "claude-b".into()]);
        assert_eq!(v["data"][0]["type"], "model");
        assert_eq!(v["data"][1]["id"], "claude-b");
        assert_eq!(
            (v["first_id"].as_str(), v["last_id"].as_str()),
            (Some("claude-a"), Some("claude-b"))
        );
        assert_eq!(v["has_more"], false);
        assert_eq!(anthropic_models(&[])["first_id"], serde_json::Value::Null);
    }

    fn message(body: &str) -> String {
        match probe(body.as_bytes()) {
            Err(ApiError::BadRequest(m)) => m,
            Err(e) => panic!("expected a bad request, got {e:?}"),
            Ok(_) => panic!("expected a bad request for {body}"),
        }
    }

    #[test]
    fn one_parse_reads_model_stream_and_the_output_cap_of_either_api() {
        let p =
            probe(br#"{"model":"m","stream":true,"input":"x","max_output_tokens":7}"#).expect("ok");
        assert_eq!(
            (p.model.as_str(), p.stream, p.limits.requested()),
            ("m", true, Some(7))
        );
        // Several limit fields: the smallest is the limit (reserved and forwarded).
        let p = probe(br#"{"model":"m","messages":[],"max_completion_tokens":9,"max_tokens":3}"#)
            .expect("ok");
        assert_eq!((p.stream, p.limits.requested()), (false, Some(3)));
        assert_eq!(
            probe(br#"{"model":"m","max_tokens":3}"#)
                .expect("ok")
                .limits
                .requested(),
            Some(3)
        );
        assert_eq!(
            probe(br#"{"model":"m","max_tokens":null}"#)
                .expect("ok")
                .limits
                .requested(),
            None
        );
    }

    #[test]
    fn bodies_that_are_not_utf8_or_nest_too_deep_are_refused() {
        let mut b = br#"{"model":"m","input":"caf"#.to_vec();
        b.extend_from_slice(&[0xff, 0xfe]);
        b.extend_from_slice(br#""}"#);
        match probe(&b) {
            Err(ApiError::BadRequest(m)) => assert_eq!(m, "request body is not valid UTF-8"),
            other => panic!("expected a bad request, got {:?}", other.err()),
        }
        let deep = format!(
            r#"{{"model":"m","input":{}1{}}}"#,
            "[".repeat(MAX_JSON_DEPTH),
            "]".repeat(MAX_JSON_DEPTH)
        );
        assert!(
            message(&deep).contains("deeper than 128"),
            "{}",
            message(&deep)
        );
        // Brackets inside strings (and escaped quotes and backslashes) do not count; a body ending in an
        // escape does not panic.
        for odd in [r#"{"model":"m","input":"\"#, r#"{"a":"\\"}"#, r#"["#] {
            let _ = probe(odd.as_bytes());
        }
        let ok = format!(
            r#"{{"model":"m","input":"{} \" {}"}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(probe(ok.as_bytes()).is_ok());
        let just = format!(
            r#"{{"model":"m","input":{}1{}}}"#,
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        assert!(probe(just.as_bytes()).is_ok());
    }

    proptest::proptest! {
        /// Any bytes (truncated strings, lone escapes, stray brackets): the body check answers, never panics.
        #[test]
        fn the_body_check_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = check_body(&bytes);
        }
    }

    #[test]
    fn a_wrongly_typed_cap_is_an_invalid_body_not_invalid_json() {
        let m = message(r#"{"model":"m","max_tokens":"lots"}"#);
        assert!(m.starts_with("invalid request body: invalid type"), "{m}");
        let m = message(r#"{"model":"m","#);
        assert!(m.starts_with("request body is not valid JSON"), "{m}");
        assert_eq!(
            message(r#"{"stream":true}"#),
            "missing required parameter: 'model'"
        );
    }
}
