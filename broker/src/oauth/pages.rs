//! The sign-in pages: small, server-rendered, accessible HTML (labels, `lang`, headings, one action per
//! button), no JavaScript. Every page is `no-store`, cannot be framed (`frame-ancestors 'none'`,
//! `X-Frame-Options: DENY`), leaks no referrer, and carries a CSP that allows nothing but its own inline
//! style (by hash) and form posts to the places the page names (`form-action`: Chromium applies it to the
//! redirect a form post answers with, so a consent page names the client's redirect origin).

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#111}\
h1{font-size:1.4rem}code,.code{font-family:ui-monospace,monospace;font-size:1.3rem;letter-spacing:.1em}\
dl{display:grid;grid-template-columns:max-content auto;gap:.25rem 1rem}dt{font-weight:600}\
button,input{font-size:1rem;padding:.4rem .8rem;margin:.25rem .5rem .25rem 0}.err{color:#a00}";

/// HTML-escape text for element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn style_hash() -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()))
}

/// A page: `body` is HTML already escaped by the caller; `form_actions` are the origins forms may post
/// (and be redirected) to besides `'self'`; `cookies` are `Set-Cookie` values.
pub fn page(
    status: StatusCode,
    title: &str,
    body: &str,
    form_actions: &[String],
    cookies: &[String],
) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>{t} · Tollgate</title>\
         <style>{STYLE}</style></head><body><main>\n<h1>{t}</h1>\n{body}\n</main></body></html>\n",
        t = esc(title)
    );
    let mut actions = String::from("'self'");
    for a in form_actions {
        // Origins only (scheme://host[:port]), which cannot hold a `;` or a space.
        if !a.contains([';', ' ', ',', '\'']) {
            actions.push(' ');
            actions.push_str(a);
        }
    }
    let csp = format!(
        "default-src 'none'; style-src 'sha256-{}'; form-action {actions}; frame-ancestors 'none'; \
         base-uri 'none'; img-src 'none'",
        style_hash()
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    security_headers(h);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    r
}

/// The headers every sign-in answer carries, pages and redirects alike.
pub fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}

/// A `303 See Other` to `location` (after a form post or to the IdP), with the security headers.
pub fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    security_headers(h);
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    r
}

/// A page that says what went wrong in words, never which internal check failed.
pub fn error(status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        title,
        &format!("<p class=\"err\" role=\"alert\">{}</p>", esc(message)),
        &[],
        &[],
    )
}

/// A `Set-Cookie` value.
pub fn cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    same_site: &str,
    secure: bool,
) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={same_site}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A cookie's value from the request.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_headers() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let r = page(
            StatusCode::OK,
            "T<",
            "<p>x</p>",
            &["http://127.0.0.1:5".into(), "x; script-src *".into()],
            &[],
        );
        let h = r.headers();
        let csp = h
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            csp.contains("form-action 'self' http://127.0.0.1:5;"),
            "{csp}"
        );
        assert!(!csp.contains("script-src"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(
            h.get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
            Some(&b"no-store"[..])
        );
        assert_eq!(
            h.get(header::X_FRAME_OPTIONS).map(|v| v.as_bytes()),
            Some(&b"DENY"[..])
        );
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a_tollgate_login=x; tollgate_login=abc; other=1"),
        );
        assert_eq!(cookie_value(&h, "tollgate_login"), Some("abc"));
        assert_eq!(cookie_value(&h, "missing"), None);
    }
}
