//! The model list a token holder sees: `GET /v1/models` (OpenAI's `data` list plus Codex's `models` key) and
//! the Codex catalog `GET /v1/codex/models` (for `model_catalog_url`: Codex's `{"models": [...]}` alone).
//!
//! Both hold only what the caller's grant may use and the router serves; Codex entries are the operator's
//! `[models.<name>.codex]` metadata, never invented (an entry's `base_instructions` replaces Codex's system
//! prompt). Codex asks with `?client_version=X.Y.Z`: an entry whose `minimal_client_version` is newer is left
//! out for that client. Every answer carries a strong `ETag` (a hash of the exact body), and a request whose
//! `If-None-Match` names it gets `304 Not Modified` with no body: Codex asks at every start, and a grant's list
//! changes only when the policy or the config does.

use crate::app::AppState;
use crate::error::ApiError;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tollgate::Claims;
use tollgate::grant::Grant;

/// The query Codex sends: `?client_version=0.171.0`. Other parameters are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct ModelsQuery {
    client_version: Option<String>,
}

impl ModelsQuery {
    /// The client's version, if it sent one; a value that is not `MAJOR.MINOR.PATCH[-…]` is a 400.
    pub fn client_version(&self) -> Result<Option<ClientVersion>, ApiError> {
        self.client_version
            .as_deref()
            .map(|v| {
                ClientVersion::parse(v).ok_or_else(|| {
                    ApiError::BadRequest("client_version must be a version such as 0.171.0".into())
                })
            })
            .transpose()
    }
}

/// A client version, compared by its numeric `MAJOR.MINOR.PATCH` (a pre-release or build suffix is
/// ignored: Codex's own builds send plain versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientVersion(u64, u64, u64);

impl ClientVersion {
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 64 {
            return None;
        }
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse::<u64>().ok()
            }
        });
        let v = ClientVersion(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }
}

/// What one caller may see: model names (sorted, unique) and the Codex entries among them.
pub struct Granted<'a> {
    pub names: Vec<String>,
    pub codex: Vec<&'a serde_json::Value>,
}

/// The models `grant` may use that this broker serves, and their operator-supplied Codex entries (those a
/// client of version `client` may read).
pub fn granted<'a>(app: &'a AppState, grant: &Grant, client: Option<ClientVersion>) -> Granted<'a> {
    let mut names: Vec<String> = app
        .router()
        .literal_models()
        .into_iter()
        .filter(|m| grant.allows_model(m))
        .collect();
    for p in &grant.models {
        if p.is_literal() && app.router().serves(p.as_str()) {
            names.push(p.as_str().to_string());
        }
    }
    for slug in app.codex_models().keys() {
        if grant.allows_model(slug) && app.router().serves(slug) {
            names.push(slug.clone());
        }
    }
    names.sort();
    names.dedup();
    let codex = app
        .codex_models()
        .iter()
        .filter(|(slug, entry)| names.contains(slug) && readable_by(entry, client))
        .map(|(_, v)| v)
        .collect();
    Granted { names, codex }
}

/// Whether a client of version `client` may be given `entry`: always, unless the entry names a
/// `minimal_client_version` newer than the client's (a client that sends no version gets every entry).
fn readable_by(entry: &serde_json::Value, client: Option<ClientVersion>) -> bool {
    let (Some(client), Some(min)) = (
        client,
        entry
            .get("minimal_client_version")
            .and_then(serde_json::Value::as_str),
    ) else {
        return true;
    };
    ClientVersion::parse(min).is_none_or(|min| client >= min)
}

impl Granted<'_> {
    /// OpenAI's list shape, with Codex's `models` key beside it (Codex reads only `models`; other clients
    /// read `data`).
    pub fn openai_and_codex(&self) -> serde_json::Value {
        let data: Vec<serde_json::Value> = self
            .names
            .iter()
            .map(|n| serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "tollgate"}))
            .collect();
        serde_json::json!({"object": "list", "data": data, "models": self.codex})
    }

    /// Codex's catalog shape alone (`model_catalog_url`).
    pub fn codex_only(&self) -> serde_json::Value {
        serde_json::json!({"models": self.codex})
    }
}

/// The strong entity tag of a body: its SHA-256, quoted (the same bytes always get the same tag, on every
/// replica).
pub fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// Whether an `If-None-Match` header matches `etag` (RFC 9110 §13.1.2: a list of tags or `*`, compared
/// weakly, so `W/"x"` matches `"x"`).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// A JSON answer with its `ETag`, or `304 Not Modified` when the client already holds it. Private to the
/// caller (the list depends on the grant): shared caches must not keep it, and the client revalidates.
pub fn etagged(request: &HeaderMap, body: &serde_json::Value) -> Response {
    etagged_as("", None, request, body)
}

/// [`etagged`], with one log line naming the list (`what`) and the client's version.
pub fn etagged_as(
    what: &'static str,
    client: Option<ClientVersion>,
    request: &HeaderMap,
    body: &serde_json::Value,
) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(_) => return ApiError::Internal("model list".into()).into_response(),
    };
    let etag = etag_of(&bytes);
    let not_modified = none_match(request, &etag);
    if !what.is_empty() {
        tracing::info!(
            list = what,
            client_version = ?client.map(|ClientVersion(a, b, c)| format!("{a}.{b}.{c}")),
            not_modified,
            "model list answered"
        );
    }
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    h.insert(header::VARY, HeaderValue::from_static("authorization"));
    resp
}

/// `GET /v1/codex/models`: the Codex catalog for `model_catalog_url` (which Codex fetches whatever its
/// provider's auth; the plain `{base_url}/models` only with command auth).
pub async fn codex_catalog(
    State(app): State<Arc<AppState>>,
    Extension(claims): Extension<Arc<Claims>>,
    Query(q): Query<ModelsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let client = q.client_version()?;
    let g = granted(&app, &claims.grant, client);
    Ok(etagged_as(
        "codex_catalog",
        client,
        &headers,
        &g.codex_only(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_versions_parse_and_order_numerically() {
        let v = |s| ClientVersion::parse(s);
        assert_eq!(v("0.171.0"), Some(ClientVersion(0, 171, 0)));
        assert_eq!(v("1.2.3-alpha.1"), Some(ClientVersion(1, 2, 3)));
        assert!(v("0.171.0") > v("0.169.10"));
        assert!(v("0.99.0") < v("0.171.0"));
        for bad in [
            "",
            "0.171",
            "0.171.0.1",
            "a.b.c",
            "0..1",
            "-1.0.0",
            "1.0.x",
            "0.1.9999999999",
        ] {
            assert_eq!(v(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn minimal_client_version_hides_an_entry_from_older_clients_only() {
        let e = serde_json::json!({"slug": "m", "minimal_client_version": "0.171.0"});
        let plain = serde_json::json!({"slug": "m"});
        let cv = ClientVersion::parse;
        for (entry, client, expect) in [
            (&e, cv("0.169.0"), false),
            (&e, cv("0.171.0"), true),
            (&e, cv("0.172.1"), true),
            (&e, None, true),
            (&plain, cv("0.1.0"), true),
        ] {
            assert_eq!(readable_by(entry, client), expect, "{entry} {client:?}");
        }
    }

    #[test]
    fn if_none_match_matches_lists_star_and_weak_forms() {
        let tag = etag_of(b"{}");
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 34);
        assert_eq!(tag, etag_of(b"{}"), "stable");
        assert_ne!(tag, etag_of(b"{ }"));
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).expect("hv"));
            h
        };
        assert!(none_match(&with(&tag), &tag));
        assert!(none_match(&with(&format!("\"x\", {tag}")), &tag));
        assert!(none_match(&with(&format!("W/{tag}")), &tag));
        assert!(none_match(&with("*"), &tag));
        assert!(!none_match(&with("\"other\""), &tag));
        assert!(!none_match(&HeaderMap::new(), &tag));
    }

    #[test]
    fn answers_carry_the_etag_and_a_matching_request_gets_304_without_a_body() {
        let body = serde_json::json!({"models": [{"slug": "m"}]});
        let first = etagged(&HeaderMap::new(), &body);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG]
            .to_str()
            .expect("etag")
            .to_string();
        assert_eq!(first.headers()[header::CACHE_CONTROL], "private, no-cache");
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&tag).expect("hv"),
        );
        let again = etagged(&h, &body);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag.as_str());
        let changed = etagged(&h, &serde_json::json!({"models": []}));
        assert_eq!(
            changed.status(),
            StatusCode::OK,
            "a changed list is sent again"
        );
    }
}
