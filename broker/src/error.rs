//! The one place errors become HTTP responses: OpenAI-shaped on proxy routes, Anthropic-shaped for
//! clients of the Messages API ([`anthropic_shape`]), RFC 6749-shaped on the token route. Internal detail
//! stays in the logs; the body says only what the caller can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tollgate::{OAuthError, OAuthErrorCode, OpenAiError};

/// A proxy-route error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed, expired, revoked or foreign bearer token. 401 makes Codex re-run the helper.
    #[error("unauthorized ({0})")]
    Unauthorized(&'static str),
    /// A person's token whose sign-in was ended (an administrator's revocation, a sign-out, a replayed
    /// refresh token): 401 with a message that says so and when the agent asks for a new sign-in.
    #[error("unauthorized (sign-in ended)")]
    SignInEnded { token_expires_in_secs: u64 },
    #[error("model {0:?} is not allowed by your Tollgate grant")]
    ModelNotAllowed(String),
    #[error("model {0:?} is not served by this broker")]
    ModelNotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("rate limit: {message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("budget: {message}")]
    BudgetExceeded {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// Every upstream target failed before the first byte.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// An upstream answered with a client error that we relay (status and OpenAI-shaped body kept).
    #[error("upstream refused the request with {status}")]
    UpstreamClientError {
        status: StatusCode,
        body: bytes::Bytes,
    },
    /// The governance store is down and the proxy fails closed.
    #[error("governance store unavailable")]
    StoreUnavailable,
    /// The settlement queue is full (spend of served requests cannot be stored): refused before
    /// admission, with `Retry-After`.
    #[error("settlement backlog")]
    SettlementBacklog { retry_after_secs: u64 },
    #[error("not found")]
    NotFound,
    /// The route exists, not with this method (the message says what to do instead).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) | ApiError::SignInEnded { .. } => "unauthorized",
            ApiError::ModelNotAllowed(_) => "model_not_allowed",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::BudgetExceeded { .. } => "budget_exceeded",
            ApiError::UpstreamUnavailable(_) => "upstream_unavailable",
            ApiError::UpstreamTimeout => "upstream_timeout",
            ApiError::UpstreamClientError { .. } => "upstream_client_error",
            ApiError::StoreUnavailable | ApiError::SettlementBacklog { .. } => "store_unavailable",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Governance refusals, for `tollgate_refusals_total{reason}`.
    pub fn refusal_reason(&self) -> Option<crate::metrics::RefusalReason> {
        use crate::metrics::RefusalReason as R;
        match self {
            ApiError::Unauthorized("revoked") | ApiError::SignInEnded { .. } => Some(R::Revoked),
            ApiError::Unauthorized(_) => Some(R::BadToken),
            ApiError::ModelNotAllowed(_) | ApiError::ModelNotFound(_) => Some(R::Model),
            ApiError::BudgetExceeded { .. } => Some(R::Budget),
            ApiError::RateLimited { .. } => Some(R::Rate),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750 §3): a request without a token gets the bare
    /// challenge; a token that was sent and refused (expired, revoked, malformed, foreign, outdated grant)
    /// gets `error="invalid_token"`, the signal an OAuth client (Codex's `gateway_oauth`) acts on by
    /// refreshing its token, where it otherwise retries the same token.
    pub fn bearer_challenge(&self) -> HeaderValue {
        match self {
            ApiError::Unauthorized("missing") => {
                HeaderValue::from_static("Bearer realm=\"tollgate\"")
            }
            _ => HeaderValue::from_static(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", \
                 error_description=\"the access token is expired, revoked or invalid\"",
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) | ApiError::SignInEnded { .. } => StatusCode::UNAUTHORIZED,
            // Not 403: Codex retries a 403 five times (about 7 s) before it shows it; a 400 is shown at once
            // with its message (verified with the real CLI, tests/e2e_codex.rs).
            ApiError::ModelNotAllowed(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            // Not 429: Codex drops a 429's body (and shows a fixed text for `insufficient_quota`), and it
            // retries 402/403 as stream errors before showing them. A 400 is shown at once, body included,
            // and not retried — a budget does not come back in seconds. See docs/governance.md.
            ApiError::BudgetExceeded { .. } => StatusCode::BAD_REQUEST,
            ApiError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::UpstreamClientError { status, .. } => *status,
            ApiError::StoreUnavailable | ApiError::SettlementBacklog { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> OpenAiError {
        match self {
            ApiError::Unauthorized("policy_changed") => OpenAiError::new(
                "Tollgate: your access policy changed since this token was issued. Your credential helper (tollgate-token) will fetch a new one with the new grant.",
                "invalid_request_error",
                Some("policy_changed"),
            ),
            ApiError::SignInEnded {
                token_expires_in_secs,
            } => OpenAiError::new(
                format!(
                    "Tollgate: your sign-in was ended (revoked by an administrator, or signed out), so its access token is refused. \
                     Sign in again: `tollgate-token login`; Codex signed in by itself asks you to sign in again when it renews this token, in about {} minute(s).",
                    token_expires_in_secs.div_ceil(60).max(1)
                ),
                "invalid_request_error",
                Some("sign_in_revoked"),
            ),
            ApiError::Unauthorized(_) => OpenAiError::new(
                "Tollgate: missing, expired or invalid access token. Your credential helper (tollgate-token) will fetch a new one.",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            ApiError::ModelNotAllowed(m) => OpenAiError::new(
                format!(
                    "Tollgate: model '{m}' is not allowed by your grant. Ask your platform team, or choose an allowed model (GET /v1/models lists them)."
                ),
                "invalid_request_error",
                Some("model_not_allowed"),
            ),
            ApiError::ModelNotFound(m) => OpenAiError::new(
                format!("Tollgate: model '{m}' is not served by this broker."),
                "invalid_request_error",
                Some("model_not_found"),
            ),
            ApiError::BadRequest(m) => {
                OpenAiError::new(format!("Tollgate: {m}"), "invalid_request_error", None)
            }
            ApiError::PayloadTooLarge(n) => OpenAiError::new(
                format!("Tollgate: request body is larger than {n} bytes."),
                "invalid_request_error",
                Some("request_too_large"),
            ),
            ApiError::RateLimited { message, .. } => OpenAiError::new(
                format!("Tollgate: {message}"),
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            ApiError::BudgetExceeded { message, .. } => OpenAiError::new(
                format!("Tollgate: {message}"),
                "invalid_request_error",
                Some("budget_exceeded"),
            ),
            ApiError::UpstreamUnavailable(_) => OpenAiError::new(
                "Tollgate: every upstream provider for this model failed; try again shortly.",
                "server_error",
                Some("upstream_unavailable"),
            ),
            ApiError::UpstreamTimeout => OpenAiError::new(
                "Tollgate: the upstream provider timed out.",
                "server_error",
                Some("upstream_timeout"),
            ),
            ApiError::UpstreamClientError { .. } => {
                OpenAiError::new("upstream error", "invalid_request_error", None)
            }
            ApiError::StoreUnavailable => OpenAiError::new(
                "Tollgate: governance store unavailable; requests are refused until it is back.",
                "server_error",
                Some("store_unavailable"),
            ),
            ApiError::SettlementBacklog { retry_after_secs } => OpenAiError::new(
                format!(
                    "Tollgate: the spend of earlier requests cannot be recorded right now (the governance store is failing), so new requests are refused until it catches up; retry in {retry_after_secs} s."
                ),
                "server_error",
                Some("store_unavailable"),
            ),
            ApiError::NotFound => OpenAiError::new(
                "Tollgate: no such route.",
                "invalid_request_error",
                Some("not_found"),
            ),
            ApiError::MethodNotAllowed(m) => OpenAiError::new(
                format!("Tollgate: {m}."),
                "invalid_request_error",
                Some("method_not_allowed"),
            ),
            ApiError::Internal(_) => {
                OpenAiError::new("Tollgate: internal error.", "server_error", None)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::UpstreamClientError { body, .. } = &self {
            // The upstream's own OpenAI-shaped error: relay it, it is what the user needs to see.
            let mut r = (status, body.clone()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        if status.is_server_error() {
            tracing::warn!(error = %self, kind = self.kind(), "request failed");
        } else {
            tracing::debug!(error = %self, kind = self.kind(), "request refused");
        }
        let retry_after = match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::BudgetExceeded {
                retry_after_secs, ..
            } => *retry_after_secs,
            ApiError::SettlementBacklog { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let mut r = (status, axum::Json(self.body())).into_response();
        if let Some(s) = retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, self.bearer_challenge());
        }
        r.extensions_mut().insert(ErrorKind(self.kind()));
        if let Some(reason) = self.refusal_reason() {
            r.extensions_mut().insert(reason);
        }
        r
    }
}

impl From<crate::governance::GovernanceError> for ApiError {
    /// What a person reads in Codex when governance refuses: which budget, what is left, when it resets.
    fn from(e: crate::governance::GovernanceError) -> Self {
        use crate::governance::GovernanceError as G;
        match e {
            G::Revoked => ApiError::Unauthorized("revoked"),
            G::RateLimited {
                what,
                retry_after_secs,
            } => ApiError::RateLimited {
                message: format!("rate limit reached ({what}); retry in {retry_after_secs} s."),
                retry_after_secs,
            },
            G::Unpriced { model } => ApiError::BadRequest(format!(
                "model '{model}' has no price configured on this broker, so it cannot be budgeted; ask your platform team to add it under [pricing.models]."
            )),
            G::UnknownBudget { id } => ApiError::BudgetExceeded {
                message: format!(
                    "your grant is charged to budget '{id}', which this broker does not configure; ask your platform team."
                ),
                retry_after_secs: None,
            },
            G::BudgetExceeded(r) => ApiError::BudgetExceeded {
                message: budget_message(&r),
                retry_after_secs: None,
            },
            G::StoreUnavailable => ApiError::StoreUnavailable,
        }
    }
}

fn budget_message(r: &crate::governance::BudgetRefusal) -> String {
    use crate::config::Scope;
    let usd = |n: tollgate::Nanos| n.human();
    let whose = match r.scope {
        Scope::Token => "this token".to_string(),
        s => format!("{} {}", s.as_str(), r.subject),
    };
    let in_flight = if r.in_flight.0 > 0 {
        format!(" ({} held by requests in flight)", usd(r.in_flight))
    } else {
        String::new()
    };
    let reset = match r.resets_at {
        Some(e) => format!("It resets at {}.", crate::governance::window::rfc3339(e)),
        None => "It is a lifetime budget and does not reset.".to_string(),
    };
    format!(
        "{} budget '{}' for {whose} cannot cover this request: {} left of {} ({} spent{in_flight}); the request needs up to {}. {reset}",
        r.window,
        r.budget_id,
        usd(r.left()),
        usd(r.amount),
        usd(r.spent),
        usd(r.need),
    )
}

/// Whether a request speaks Anthropic's protocol: the Messages routes, or any request that carries
/// `anthropic-version` (Claude Code and Anthropic's SDKs send it on every call, `GET /v1/models` too).
pub fn speaks_anthropic(req: &axum::extract::Request) -> bool {
    req.uri().path().starts_with("/v1/messages") || req.headers().contains_key("anthropic-version")
}

/// Anthropic's error `type` for a status (their documented table), keeping a relayed Anthropic type
/// (`overloaded_error`, `billing_error`, …) where the upstream named one.
fn anthropic_error_type(status: StatusCode, given: Option<&str>) -> &'static str {
    const KNOWN: [&str; 10] = [
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    ];
    let by_status = match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    // Only where the status alone does not name the type (a 400, a 5xx): a relayed `overloaded_error`.
    match given.and_then(|g| KNOWN.iter().find(|k| **k == g)) {
        Some(k) if matches!(by_status, "invalid_request_error" | "api_error") => k,
        _ => by_status,
    }
}

/// The stage that shows errors to Anthropic-protocol clients in Anthropic's shape,
/// `{"type":"error","error":{"type":…,"message":…}}`, with the same status, message and headers as every
/// other client gets (statuses chosen for how Claude Code acts on them: docs/claude-code.md). A refusal
/// that retrying cannot fix (budget, grant, bad body) says so in `x-should-retry: false`, which
/// Anthropic's clients obey.
/// A stage of [`crate::routes::edge`]; `next` is the rest of the request.
pub async fn anthropic_shape<F, Fut>(req: axum::extract::Request, next: F) -> Response
where
    F: FnOnce(axum::extract::Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if !speaks_anthropic(&req) {
        return next(req).await;
    }
    let resp = next(req).await;
    let status = resp.status();
    if !status.is_client_error() && !status.is_server_error() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let kind_of = parts.extensions.get::<ErrorKind>().map(|k| k.0);
    // A budget refusal is a 402 here: Claude Code shows a 402's message at once and does not retry it,
    // while it retries a 400 several times and a 403 or 429 for minutes (observed with 2.1.332).
    let status = if kind_of == Some("budget_exceeded") {
        parts.status = StatusCode::PAYMENT_REQUIRED;
        StatusCode::PAYMENT_REQUIRED
    } else {
        status
    };
    let bytes = axum::body::to_bytes(body, 256 * 1024)
        .await
        .unwrap_or_default();
    let parsed = serde_json::from_slice::<OpenAiError>(&bytes).ok();
    let kind = anthropic_error_type(status, parsed.as_ref().map(|e| e.error.kind.as_str()));
    let message = parsed.map(|e| e.error.message).unwrap_or_else(|| {
        status
            .canonical_reason()
            .map_or_else(|| format!("HTTP {status}"), |r| format!("Tollgate: {r}."))
    });
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if matches!(
        kind_of,
        Some(
            "budget_exceeded"
                | "model_not_allowed"
                | "model_not_found"
                | "bad_request"
                | "payload_too_large"
        )
    ) {
        parts
            .headers
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// Attached to error responses so middleware (metrics, audit) can read the kind.
#[derive(Clone, Copy, Debug)]
pub struct ErrorKind(pub &'static str);

/// A token-route error: RFC 6749 §5.2.
#[derive(Debug)]
pub struct OAuthFailure {
    pub status: StatusCode,
    pub error: OAuthError,
}

impl OAuthFailure {
    pub fn new(status: StatusCode, code: OAuthErrorCode, description: impl Into<String>) -> Self {
        OAuthFailure {
            status,
            error: OAuthError {
                error: code,
                error_description: Some(description.into()),
            },
        }
    }
}

impl IntoResponse for OAuthFailure {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.error)).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// An admin-route error (`/admin/*`). OpenAI-style JSON body; store details stay in the logs.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No admin key configured: the admin surface does not exist.
    #[error("admin API disabled")]
    Disabled,
    #[error("admin credential missing or wrong")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    /// The request was well-formed but its content is invalid (e.g. a policy file with an error).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("store error")]
    Store(String),
}

impl AdminError {
    pub fn store(e: impl std::fmt::Display) -> Self {
        AdminError::Store(e.to_string())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            AdminError::Disabled => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AdminError::Store(e) => {
                tracing::error!(error = %e, "admin: store error");
                (StatusCode::INTERNAL_SERVER_ERROR, "store_error")
            }
        };
        let message = match &self {
            AdminError::Disabled => "Tollgate: no such route.".to_string(),
            other => format!("Tollgate admin: {other}"),
        };
        let mut r = (
            status,
            axum::Json(OpenAiError::new(message, "admin_error", Some(code))),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_token_gets_the_rfc_6750_invalid_token_challenge_and_a_missing_one_the_bare_one() {
        let bare = "Bearer realm=\"tollgate\"";
        let invalid = "Bearer realm=\"tollgate\", error=\"invalid_token\", \
                       error_description=\"the access token is expired, revoked or invalid\"";
        for (e, want) in [
            (ApiError::Unauthorized("missing"), bare),
            (ApiError::Unauthorized("malformed"), invalid),
            (ApiError::Unauthorized("expired"), invalid),
            (ApiError::Unauthorized("revoked"), invalid),
            (ApiError::Unauthorized("policy_changed"), invalid),
            (
                ApiError::SignInEnded {
                    token_expires_in_secs: 5,
                },
                invalid,
            ),
        ] {
            let what = format!("{e:?}");
            let r = e.into_response();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(r.headers()[header::WWW_AUTHENTICATE], want, "{what}");
        }
    }

    #[test]
    fn an_ended_sign_in_says_so_and_when_codex_asks_again() {
        for (secs, minutes) in [(0, 1), (1, 1), (60, 1), (61, 2), (599, 10), (600, 10)] {
            let e = ApiError::SignInEnded {
                token_expires_in_secs: secs,
            };
            assert_eq!(e.kind(), "unauthorized");
            assert_eq!(
                e.refusal_reason(),
                Some(crate::metrics::RefusalReason::Revoked)
            );
            let body = serde_json::to_value(e.body()).unwrap_or_default();
            assert_eq!(body["error"]["code"], "sign_in_revoked");
            assert_eq!(
                body["error"]["message"],
                format!(
                    "Tollgate: your sign-in was ended (revoked by an administrator, or signed out), so its access \
                     token is refused. Sign in again: `tollgate-token login`; Codex signed in by itself asks you to \
                     sign in again when it renews this token, in about {minutes} minute(s)."
                ),
                "{secs} s"
            );
        }
    }
}
