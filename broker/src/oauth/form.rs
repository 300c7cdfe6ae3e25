//! The form body of every grant of `POST /oauth/token` and of `POST /oauth/device_authorization`: one
//! RFC 6749 §3.2 parser (a leaf: the token endpoint, the people grants and the device flow all use it).

use crate::error::OAuthFailure;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use tollgate::OAuthErrorCode;

fn fail(code: OAuthErrorCode, d: &str) -> OAuthFailure {
    OAuthFailure::new(StatusCode::BAD_REQUEST, code, d)
}

/// A strict form body: `application/x-www-form-urlencoded`, no repeated parameter (RFC 6749 §3.2).
pub fn parse_form(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Vec<(String, String)>, OAuthFailure> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(fail(
            OAuthErrorCode::InvalidRequest,
            "content-type must be application/x-www-form-urlencoded",
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| fail(OAuthErrorCode::InvalidRequest, "malformed form body"))?;
    let mut seen = std::collections::BTreeSet::new();
    if pairs.iter().any(|(k, _)| !seen.insert(k.as_str())) {
        return Err(fail(
            OAuthErrorCode::InvalidRequest,
            "a parameter is repeated",
        ));
    }
    Ok(pairs)
}
