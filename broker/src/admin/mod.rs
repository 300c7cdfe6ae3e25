//! The admin API (`/admin/v1/…`) and the spend dashboard (`/admin/dashboard`).
//!
//! Strict by default: with no `[admin] key_sha256` configured every admin route answers 404. Requests
//! authenticate with `Authorization: Bearer <admin key>`, compared as SHA-256 digests in constant time.
//! The dashboard is for browsers, which cannot send a bearer header: `POST /admin/v1/dashboard-link`
//! returns a single-use link (valid 60 s) that sets a session cookie (`HttpOnly`, `SameSite=Strict`,
//! path `/admin`, 8 h) and redirects to the dashboard.

pub mod dashboard;

use crate::app::AppState;
use crate::audit::{AuditEvent, EventKind, GroupBy};
use crate::error::AdminError;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

const TICKET_TTL_SECS: u64 = 60;
const SESSION_TTL_SECS: u64 = 8 * 3600;
const COOKIE: &str = "tollgate_admin";

/// Admin credential and browser sessions.
pub struct AdminAuth {
    key_sha256: Option<[u8; 32]>,
    /// sha256(ticket or session) → (expiry, is_session).
    secrets: Mutex<HashMap<[u8; 32], (u64, bool)>>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl AdminAuth {
    pub fn new(key_sha256: Option<[u8; 32]>) -> Self {
        AdminAuth {
            key_sha256,
            secrets: Mutex::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.key_sha256.is_some()
    }

    /// Is this the admin key? Constant time in the key's content.
    pub fn check_key(&self, presented: &str) -> bool {
        match &self.key_sha256 {
            Some(want) => bool::from(digest(presented).ct_eq(want)),
            None => false,
        }
    }

    /// The bearer token of a request equals the admin key.
    pub fn check_bearer(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, t)| self.check_key(t.trim()))
    }

    fn issue(&self, now: u64, session: bool) -> String {
        let secret = random_secret();
        let ttl = if session {
            SESSION_TTL_SECS
        } else {
            TICKET_TTL_SECS
        };
        let mut m = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, (exp, _)| *exp > now);
        m.insert(digest(&secret), (now + ttl, session));
        secret
    }

    /// Redeem a single-use ticket.
    fn redeem_ticket(&self, ticket: &str, now: u64) -> bool {
        let mut m = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.remove(&digest(ticket)) {
            Some((exp, false)) => exp > now,
            Some(other) => {
                m.insert(digest(ticket), other);
                false
            }
            None => false,
        }
    }

    fn check_session(&self, headers: &HeaderMap, now: u64) -> bool {
        let Some(cookies) = headers.get(header::COOKIE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let m = self
            .secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cookies
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(k, _)| *k == COOKIE)
            .any(|(_, v)| matches!(m.get(&digest(v)), Some((exp, true)) if *exp > now))
    }
}

fn require(app: &AppState, headers: &HeaderMap) -> Result<(), AdminError> {
    if !app.admin.enabled() {
        return Err(AdminError::Disabled);
    }
    if app.admin.check_bearer(headers) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// The admin routes (merged into the app router).
pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/admin/v1/grants", get(grants))
        .route("/admin/v1/spend", get(spend))
        .route("/admin/v1/report", get(report))
        .route("/admin/v1/policy/reload", post(reload_policy))
        .route("/admin/v1/keys/rotate", post(rotate_keys))
        .route("/admin/v1/audit/verify", get(audit_verify))
        .route("/admin/v1/dashboard-link", post(dashboard_link))
        .route("/admin/login", get(login))
        .route("/admin/dashboard", get(dashboard::page))
}

fn audit_admin(app: &AppState, action: &str, detail: serde_json::Value) {
    if let Some(a) = &app.audit {
        a.record(AuditEvent {
            ts: now_i64(app),
            kind: Some(EventKind::Admin),
            actor: "admin".into(),
            detail: json!({"action": action, "detail": detail}),
            ..Default::default()
        });
    }
}

fn now_i64(app: &AppState) -> i64 {
    i64::try_from(app.clock.now_secs()).unwrap_or(i64::MAX)
}

fn audit_sink(app: &AppState) -> Result<&Arc<dyn crate::audit::AuditSink>, AdminError> {
    app.audit
        .as_ref()
        .map(|a| a.sink())
        .ok_or(AdminError::Unavailable("the audit trail is disabled"))
}

/// Let this replica's queued records land before a query reads them.
async fn flushed(app: &AppState) {
    if let Some(a) = &app.audit {
        a.flush().await;
    }
}

/// `GET /admin/v1/grants`: tokens minted and not yet expired, with their revocation state.
async fn grants(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    flushed(&app).await;
    let rows = audit_sink(&app)?
        .live_grants(now_i64(&app))
        .await
        .map_err(AdminError::store)?;
    let out: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|g| {
            let revoked = app.governance.is_revoked(&g.jti, &g.principal, g.issued_at);
            let mut v = serde_json::to_value(&g).unwrap_or_default();
            v["revoked"] = revoked.into();
            v
        })
        .collect();
    Ok(Json(json!({"grants": out})).into_response())
}

#[derive(Deserialize)]
struct SpendQuery {
    by: Option<String>,
    /// Unix seconds or `YYYY-MM-DD`; default 30 days ago.
    since: Option<String>,
    /// Unix seconds or `YYYY-MM-DD` (exclusive); default now.
    until: Option<String>,
}

pub(crate) fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, fmt)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp())
}

/// `GET /admin/v1/spend?by=principal|team|model|provider&since=&until=`: spend per UTC day.
async fn spend(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<SpendQuery>,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    let by_s = q.by.as_deref().unwrap_or("principal");
    let by = GroupBy::parse(by_s).ok_or_else(|| {
        AdminError::BadRequest("by must be principal, team, model or provider".into())
    })?;
    let now = now_i64(&app);
    let t = |v: &Option<String>, d: i64| -> Result<i64, AdminError> {
        v.as_deref().map_or(Ok(d), |s| {
            parse_time(s).ok_or_else(|| {
                AdminError::BadRequest("since/until: unix seconds or YYYY-MM-DD".into())
            })
        })
    };
    let since = t(&q.since, now - 30 * 86_400)?;
    let until = t(&q.until, now + 1)?;
    flushed(&app).await;
    let rows = audit_sink(&app)?
        .spend(by, since, until)
        .await
        .map_err(AdminError::store)?;
    Ok(Json(json!({"by": by_s, "since": since, "until": until, "rows": rows})).into_response())
}

/// `GET /admin/v1/report?from=YYYY-MM-DD&to=YYYY-MM-DD&by=day,team&format=json|csv`: settled spend and
/// tokens by UTC day and/or principal, team, org, model or provider, from the store's `spend` table (the
/// same numbers on every replica). `from` and `to` are inclusive; `to` defaults to today and `from` to 29
/// days before it; `by` defaults to `day`.
async fn report(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<crate::governance::report::ReportParams>,
) -> Result<Response, AdminError> {
    use crate::governance::report::{Format, Report};
    require(&app, &headers)?;
    let req = q.validate(now_i64(&app)).map_err(AdminError::BadRequest)?;
    // This replica's finished requests first, so a report taken right after traffic includes them.
    if !app
        .accounting
        .flush(std::time::Duration::from_secs(2))
        .await
    {
        tracing::warn!(
            "report: settlements still queued after 2 s; the report may miss the newest"
        );
    }
    let report = Report::run(app.governance.store.as_ref(), &req)
        .await
        .map_err(AdminError::store)?;
    Ok(match req.format {
        Format::Json => Json(report.to_json()).into_response(),
        Format::Csv => {
            let mut r = report.to_csv().into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "attachment; filename=\"tollgate-spend-{}-{}.csv\"",
                report.from, report.to
            )) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
    })
}

/// `POST /admin/v1/policy/reload`: re-read the policy file; a bad file is refused and the old policy stays.
async fn reload_policy(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    let result = app.reload_policy().map_err(|e| e.to_string());
    match &result {
        Ok(rules) => audit_admin(&app, "policy_reload", json!({"rules": rules})),
        Err(e) => audit_admin(&app, "policy_reload_failed", json!({"error": e})),
    }
    let rules = result.map_err(AdminError::Invalid)?;
    Ok(Json(json!({"reloaded": true, "rules": rules})).into_response())
}

/// `POST /admin/v1/keys/rotate`: force a signing-key rotation.
///
/// Store-backed keys (the default): a new key is written to the store and published here at once; every
/// replica publishes it on its next key poll and all of them sign with it from `activates_at` (a few key
/// polls from now — publish before sign). Earlier keys stay in the JWKS until every token they signed has
/// expired, so no token stops verifying. Scheduled rotation (`tokens.rotate_secs`) carries on: the next
/// generation's key takes over at its boundary.
///
/// A key file (`tokens.signing_key_file`) is the operator's: 409, replace the file and restart.
async fn rotate_keys(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    let g = &app.governance;
    let Some(km) = &g.keys else {
        let active = app.tokens.keys.active().map(|k| k.kid.clone());
        audit_admin(&app, "rotate_keys_refused", json!({"active_kid": active}));
        return Err(AdminError::Conflict(
            "the signing key comes from tokens.signing_key_file, which the broker does not write: put a new \
             key in that file and restart each replica (tokens signed with the old key stop verifying), or \
             remove signing_key_file to keep keys in the store, where they rotate on a schedule and on demand"
                .into(),
        ));
    };
    let rotated = km
        .rotate(g.store.as_ref(), &app.tokens.keys, app.clock.now_secs())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "forced key rotation failed");
            AdminError::store(e)
        })?;
    audit_admin(
        &app,
        "rotate_keys",
        json!({
            "kid": rotated.kid,
            "previous_kid": rotated.previous_kid,
            "activates_at": rotated.activates_at,
        }),
    );
    Ok(Json(json!({
        "rotated": true,
        "kid": rotated.kid,
        "previous_kid": rotated.previous_kid,
        "activates_at": rotated.activates_at,
        "publish_lead_secs": km.publish_lead_secs,
    }))
    .into_response())
}

/// `GET /admin/v1/audit/verify`: walk the chain.
async fn audit_verify(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    if let Some(a) = &app.audit {
        a.flush().await;
    }
    let v = crate::audit::verify(audit_sink(&app)?.as_ref())
        .await
        .map_err(AdminError::store)?;
    Ok(Json(v).into_response())
}

/// `POST /admin/v1/dashboard-link`: a single-use login link for a browser.
async fn dashboard_link(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    let ticket = app.admin.issue(app.clock.now_secs(), false);
    let path = format!("/admin/login?ticket={ticket}");
    // Links are built on public_url; a port-0 listener without one is reached via its Host header.
    let base = match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if app.tokens.issuer.ends_with(":0") => format!("http://{host}"),
        _ => app.tokens.issuer.clone(),
    };
    Ok(
        Json(json!({"url": format!("{base}{path}"), "path": path, "expires_in": TICKET_TTL_SECS}))
            .into_response(),
    )
}

#[derive(Deserialize)]
struct LoginQuery {
    ticket: String,
}

/// `GET /admin/login?ticket=…`: trade a ticket for a session cookie, then go to the dashboard.
async fn login(
    State(app): State<Arc<AppState>>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, AdminError> {
    if !app.admin.enabled() {
        return Err(AdminError::Disabled);
    }
    let now = app.clock.now_secs();
    if !app.admin.redeem_ticket(&q.ticket, now) {
        return Err(AdminError::Unauthorized);
    }
    let session = app.admin.issue(now, true);
    let secure = if app.tokens.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={session}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={SESSION_TTL_SECS}{secure}"
    );
    let mut r = (StatusCode::SEE_OTHER, "").into_response();
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_static("/admin/dashboard"),
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Admin key or a dashboard session.
pub(crate) fn require_browser(app: &AppState, headers: &HeaderMap) -> Result<(), AdminError> {
    if !app.admin.enabled() {
        return Err(AdminError::Disabled);
    }
    if app.admin.check_bearer(headers) || app.admin.check_session(headers, app.clock.now_secs()) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_tickets() {
        let key = "admin-secret";
        let a = AdminAuth::new(Some(digest(key)));
        assert!(a.check_key(key));
        assert!(!a.check_key("admin-secreT"));
        assert!(!AdminAuth::new(None).check_key(key));
        let t = a.issue(100, false);
        assert!(!a.redeem_ticket(&t, 100 + TICKET_TTL_SECS + 1), "expired");
        let t = a.issue(100, false);
        assert!(a.redeem_ticket(&t, 101));
        assert!(!a.redeem_ticket(&t, 102), "single use");
        let s = a.issue(100, true);
        assert!(!a.redeem_ticket(&s, 101), "a session is not a ticket");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={s}")).expect("hv"),
        );
        assert!(a.check_session(&h, 200));
        assert!(!a.check_session(&h, 100 + SESSION_TTL_SECS + 1));
        assert_eq!(parse_time("2026-11-25"), Some(1_795_564_800));
    }
}
