//! The device authorization grant (RFC 8628) for SSH sessions and headless machines:
//! `POST /oauth/device_authorization` gives the device a `device_code` (secret, polled at `/oauth/token`)
//! and a short `user_code` the person types (or follows in `verification_uri_complete`) at
//! `GET /oauth/device` on any browser; `POST /oauth/device` (CSRF double-submit cookie) starts the IdP
//! sign-in, and the consent page approves that one device.

use super::authorize::{Flow, start_login};
use super::pages::{self, esc};
use super::store::digest;
use super::{Scope, random_token, same};
use crate::app::AppState;
use crate::error::OAuthFailure;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tollgate::OAuthErrorCode;

/// User-code letters: no vowels (no words), no look-alikes (RFC 8628 §6.1): 20^8 ≈ 2.6·10^10 codes.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// What a device asked for (JSON in `oauth_devices.data`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceData {
    pub scope: Scope,
    pub resource: Option<String>,
}

fn user_code() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut s = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            s.push('-');
        }
        s.push(char::from(
            USER_CODE_ALPHABET[rng.random_range(0..USER_CODE_ALPHABET.len())],
        ));
    }
    s
}

/// What the person typed, as stored: upper case, letters of the alphabet only, `XXXX-XXXX`.
pub fn normalize_user_code(typed: &str) -> Option<String> {
    let letters: Vec<u8> = typed
        .bytes()
        .map(|b| b.to_ascii_uppercase())
        .filter(|b| b.is_ascii_alphabetic())
        .collect();
    if letters.len() != 8 || !letters.iter().all(|b| USER_CODE_ALPHABET.contains(b)) {
        return None;
    }
    let s = String::from_utf8(letters).ok()?;
    Some(format!("{}-{}", &s[..4], &s[4..]))
}

fn bad(code: OAuthErrorCode, d: &str) -> Response {
    OAuthFailure::new(StatusCode::BAD_REQUEST, code, d).into_response()
}

/// `POST /oauth/device_authorization` (form: `client_id`, `scope`, `resource`).
pub async fn authorization(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return crate::error::ApiError::NotFound.into_response();
    };
    let form = match super::form::parse_form(&headers, &body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(client) = get("client_id").and_then(|c| oauth.client(c)) else {
        return OAuthFailure::new(
            StatusCode::UNAUTHORIZED,
            OAuthErrorCode::InvalidClient,
            "unknown client_id",
        )
        .into_response();
    };
    let scope = match Scope::parse(get("scope")) {
        Ok(s) => s,
        Err(e) => return bad(OAuthErrorCode::InvalidScope, &e),
    };
    let resource = get("resource").map(str::to_string);
    if resource.as_deref().is_some_and(|r| !oauth.resource_ok(r)) {
        return bad(OAuthErrorCode::InvalidTarget, "resource is not this broker");
    }
    let data = match serde_json::to_string(&DeviceData { scope, resource }) {
        Ok(d) => d,
        Err(_) => return bad(OAuthErrorCode::ServerError, "could not start"),
    };
    let now = oauth.now();
    let ttl = i64::try_from(oauth.cfg.device_code_ttl_secs).unwrap_or(600);
    let interval = i64::try_from(oauth.cfg.device_poll_interval_secs).unwrap_or(5);
    let device_code = random_token();
    // A user code that collides with a live one is drawn again.
    for _ in 0..5 {
        let code = user_code();
        match oauth
            .store
            .put_device(
                &digest(&device_code),
                &code,
                &client.id,
                &data,
                interval,
                now + ttl,
            )
            .await
        {
            Ok(true) => {
                let uri = format!("{}/oauth/device", oauth.public_url);
                tracing::info!(client = %client.id, "device authorization started");
                let mut r = axum::Json(json!({
                    "device_code": device_code,
                    "user_code": code,
                    "verification_uri": uri,
                    "verification_uri_complete": format!("{uri}?user_code={code}"),
                    "expires_in": ttl,
                    "interval": interval,
                }))
                .into_response();
                pages::security_headers(r.headers_mut());
                return r;
            }
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "could not store a device code");
                break;
            }
        }
    }
    OAuthFailure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        OAuthErrorCode::TemporarilyUnavailable,
        "could not start a device sign-in; try again",
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct PageQuery {
    user_code: Option<String>,
}

async fn form_page(oauth: &super::OAuth, prefill: &str, message: Option<&str>) -> Response {
    let csrf = random_token();
    let cookie = pages::cookie(
        super::CSRF_COOKIE,
        &csrf,
        "/oauth/device",
        i64::try_from(oauth.cfg.login_ttl_secs).unwrap_or(600),
        "Strict",
        oauth.secure_cookies,
    );
    let msg = message.map_or(String::new(), |m| {
        format!("<p class=\"err\" role=\"alert\">{}</p>\n", esc(m))
    });
    // The POST answers with a redirect to the IdP: its origin must be in `form-action`.
    let mut actions = Vec::new();
    for i in &oauth.idps {
        if let Some(o) = i.authorization_origin().await {
            actions.push(o);
        }
    }
    pages::page(
        if message.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        "Sign in a device",
        &format!(
            "{msg}<p>Enter the code your device shows.</p>\n\
             <form method=\"post\" action=\"/oauth/device\">\n\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
             <label for=\"user_code\">Device code</label>\n\
             <input id=\"user_code\" name=\"user_code\" value=\"{}\" autocomplete=\"off\" autocapitalize=\"characters\" spellcheck=\"false\" required>\n\
             <button type=\"submit\">Continue</button>\n</form>",
            esc(&csrf),
            esc(prefill)
        ),
        &actions,
        &[cookie],
    )
}

/// `GET /oauth/device[?user_code=…]`: the verification page.
pub async fn page(State(app): State<Arc<AppState>>, Query(q): Query<PageQuery>) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return crate::error::ApiError::NotFound.into_response();
    };
    let prefill = q
        .user_code
        .as_deref()
        .and_then(normalize_user_code)
        .unwrap_or_default();
    form_page(&oauth, &prefill, None).await
}

#[derive(Deserialize)]
pub struct DeviceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user_code: String,
}

/// `POST /oauth/device`: a code was entered; sign the person in for it.
pub async fn submit(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<DeviceForm>,
) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return crate::error::ApiError::NotFound.into_response();
    };
    let cookie = pages::cookie_value(&headers, super::CSRF_COOKIE).unwrap_or("");
    if cookie.is_empty() || f.csrf.is_empty() || !same(cookie, &f.csrf) {
        tracing::info!("device form refused: CSRF token missing or wrong");
        return pages::error(
            StatusCode::FORBIDDEN,
            "Request refused",
            "This form was not sent from the device sign-in page. Open the page again.",
        );
    }
    let Some(code) = normalize_user_code(&f.user_code) else {
        return form_page(
            &oauth,
            "",
            Some("That is not a device code. Check it and try again."),
        )
        .await;
    };
    let found = match oauth.store.device_by_user_code(&code, oauth.now()).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "could not read a device code");
            return pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The sign-in service is unavailable for a moment.",
            );
        }
    };
    let Some((device_hash, client_id, data)) = found else {
        return form_page(
            &oauth,
            "",
            Some("No device is waiting with that code, or it has expired. Check the code, or start again on the device."),
        )
        .await;
    };
    let scope = serde_json::from_str::<DeviceData>(&data)
        .map(|d| d.scope)
        .unwrap_or_else(|_| Scope("models".into()));
    start_login(
        &oauth,
        Flow::Device {
            device_hash,
            user_code: code,
            client_id,
            scope,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_round_trip_and_typos_are_refused() {
        for _ in 0..100 {
            let c = user_code();
            assert_eq!(c.len(), 9);
            assert_eq!(normalize_user_code(&c).as_deref(), Some(c.as_str()));
            assert_eq!(
                normalize_user_code(&c.to_lowercase().replace('-', " ")).as_deref(),
                Some(c.as_str())
            );
        }
        assert_eq!(normalize_user_code("BCDF-GHJA"), None); // a vowel
        assert_eq!(normalize_user_code("BCDF-GHJ"), None);
        assert_eq!(normalize_user_code(""), None);
    }
}
