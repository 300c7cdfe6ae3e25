//! The admin API (`/admin/v1/…`, including people's sign-ins under `/admin/v1/oauth/`) and the spend
//! dashboard (`/admin/dashboard`).
//!
//! Strict by default: with no `[admin] key_sha256` configured every admin route answers 404. Requests
//! authenticate with `Authorization: Bearer <admin key>`, compared as SHA-256 digests in constant time.
//! The dashboard is for browsers, which cannot send a bearer header: `POST /admin/v1/dashboard-link`
//! returns a single-use link (valid 60 s) that sets a session cookie (`HttpOnly`, `SameSite=Strict`,
//! path `/admin`, 8 h) and redirects to the dashboard.

pub mod auth;
pub mod dashboard;

use crate::app::AppState;
use crate::audit::{AuditEvent, EventKind, GroupBy};
use crate::error::AdminError;
use auth::{COOKIE, SESSION_TTL_SECS, TICKET_TTL_SECS};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

fn require(app: &AppState, headers: &HeaderMap) -> Result<(), AdminError> {
    if !app.admin().enabled() {
        return Err(AdminError::Disabled);
    }
    if app.admin().check_bearer(headers) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// The admin routes (merged into the app router).
pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/admin/v1/revoke", post(revoke))
        .route("/admin/v1/grants", get(grants))
        .route("/admin/v1/spend", get(spend))
        .route("/admin/v1/report", get(report))
        .route("/admin/v1/sessions/{session_id}", get(session))
        .route("/admin/v1/policy/reload", post(reload_policy))
        .route("/admin/v1/keys/rotate", post(rotate_keys))
        .route("/admin/v1/keys/retire", post(retire_key))
        .route("/admin/v1/audit/verify", get(audit_verify))
        .route("/admin/v1/dashboard-link", post(dashboard_link))
        .route("/admin/v1/oauth/sessions", get(oauth_sessions))
        .route("/admin/v1/oauth/revoke", post(oauth_revoke))
        .route("/admin/login", get(login))
        .route("/admin/dashboard", get(dashboard::page))
}

fn audit_admin(app: &AppState, action: &str, detail: serde_json::Value) {
    if let Some(a) = &app.audit() {
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
    i64::try_from(app.clock().now_secs()).unwrap_or(i64::MAX)
}

fn audit_sink(app: &AppState) -> Result<&Arc<dyn crate::audit::AuditSink>, AdminError> {
    app.audit()
        .as_ref()
        .map(|a| a.sink())
        .ok_or(AdminError::Unavailable("the audit trail is disabled"))
}

/// Let this replica's queued records land before a query reads them.
async fn flushed(app: &AppState) {
    if let Some(a) = &app.audit() {
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
            let revoked = app
                .governance()
                .is_revoked(&g.jti, &g.principal, g.issued_at);
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
        .accounting()
        .flush(std::time::Duration::from_secs(2))
        .await
    {
        tracing::warn!(
            "report: settlements still queued after 2 s; the report may miss the newest"
        );
    }
    let report = Report::run(app.governance().store.as_ref(), &req)
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

/// `GET /admin/v1/sessions/{session_id}`: what one Codex session cost (every request recorded with that
/// `session-id`, all time), split by `request_kind` (`turn`, `compaction`) and sub-agent kind, with the
/// compaction and sub-agent subtotals. A session with nothing recorded answers zeros.
async fn session(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(session_id): axum::extract::Path<String>,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    if !crate::session::is_valid_id(&session_id) {
        return Err(AdminError::BadRequest(format!(
            "session_id: 1 to {} characters of A-Z a-z 0-9 - _ . :",
            crate::session::MAX_ID_CHARS
        )));
    }
    // This replica's finished requests first, as for the report.
    if !app
        .accounting()
        .flush(std::time::Duration::from_secs(2))
        .await
    {
        tracing::warn!(
            "session: settlements still queued after 2 s; the answer may miss the newest"
        );
    }
    let usage = app
        .governance()
        .store
        .session_usage(&session_id)
        .await
        .map_err(AdminError::store)?;
    Ok(Json(crate::governance::report::SessionReport::new(
        &session_id,
        usage,
    ))
    .into_response())
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
    let g = &app.governance();
    let Some(km) = &g.keys else {
        let active = app.tokens().keys.active().map(|k| k.kid.clone());
        audit_admin(&app, "rotate_keys_refused", json!({"active_kid": active}));
        return Err(AdminError::Conflict(
            "the signing key comes from tokens.signing_key_file, which the broker does not write: put a new \
             key in that file and restart each replica (tokens signed with the old key stop verifying), or \
             remove signing_key_file to keep keys in the store, where they rotate on a schedule and on demand"
                .into(),
        ));
    };
    let rotated = km
        .rotate(g.store.as_ref(), &app.tokens().keys, app.clock().now_secs())
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireRequest {
    kid: String,
    /// Free text kept in the store and the audit trail.
    reason: Option<String>,
}

/// `POST /admin/v1/keys/retire` `{"kid": "…", "reason": "…"}`: retire a signing key now (e.g. it leaked).
///
/// The key leaves this replica's JWKS at once and every other replica's on its next key poll (every
/// second); every token it signed is refused from then on (cached verifications are dropped). If it was
/// the key signing, the next scheduled key — in every JWKS a generation ahead — signs instead. The key
/// stays in the store (audit checkpoints it signed can still be checked) but is never used again.
/// Audited, refusals included. With `tokens.signing_key_file` there is no other key to move to: 409.
async fn retire_key(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    let req: RetireRequest = serde_json::from_slice(&body).map_err(|_| {
        AdminError::BadRequest("expected {\"kid\": \"…\", \"reason\": \"…\"}".into())
    })?;
    if req.kid.is_empty() || req.kid.len() > 128 {
        return Err(AdminError::BadRequest("kid is empty or too long".into()));
    }
    let g = &app.governance();
    let Some(km) = &g.keys else {
        audit_admin(
            &app,
            "retire_key_refused",
            json!({"kid": req.kid, "reason": req.reason, "why": "signing_key_file"}),
        );
        return Err(AdminError::Conflict(
            "the signing key comes from tokens.signing_key_file, which the broker does not write: put a new \
             key in that file and restart each replica (tokens signed with the old key stop verifying)"
                .into(),
        ));
    };
    let retired = km
        .retire(
            g.store.as_ref(),
            &app.tokens().keys,
            &req.kid,
            req.reason.as_deref(),
            app.clock().now_secs(),
        )
        .await;
    let retired = match retired {
        Ok(r) => r,
        Err(crate::governance::keys::RetireError::UnknownKid) => {
            audit_admin(
                &app,
                "retire_key_refused",
                json!({"kid": req.kid, "reason": req.reason, "why": "unknown_kid"}),
            );
            return Err(AdminError::Invalid(format!(
                "no signing key with kid {:?} in the store (see /.well-known/jwks.json)",
                req.kid
            )));
        }
        Err(crate::governance::keys::RetireError::Store(e)) => {
            tracing::error!(error = %e, "key retirement failed");
            return Err(AdminError::store(e));
        }
    };
    audit_admin(
        &app,
        "retire_key",
        json!({
            "kid": retired.kid,
            "reason": req.reason,
            "retired_at": retired.retired_at,
            "already_retired": retired.already_retired,
            "was_signing": retired.was_signing,
            "signing_kid": retired.signing_kid,
        }),
    );
    Ok(Json(json!({
        "retired": true,
        "kid": retired.kid,
        "retired_at": retired.retired_at,
        "already_retired": retired.already_retired,
        "was_signing": retired.was_signing,
        "signing_kid": retired.signing_kid,
    }))
    .into_response())
}

/// `GET /admin/v1/audit/verify`: walk the chain.
async fn audit_verify(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    if let Some(a) = &app.audit() {
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
    let ticket = app.admin().issue(app.clock().now_secs(), false);
    let path = format!("/admin/login?ticket={ticket}");
    // Links are built on public_url; a port-0 listener without one is reached via its Host header.
    let base = match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if app.tokens().issuer.ends_with(":0") => format!("http://{host}"),
        _ => app.tokens().issuer.clone(),
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
    if !app.admin().enabled() {
        return Err(AdminError::Disabled);
    }
    let now = app.clock().now_secs();
    if !app.admin().redeem_ticket(&q.ticket, now) {
        return Err(AdminError::Unauthorized);
    }
    let session = app.admin().issue(now, true);
    let secure = if app.tokens().issuer.starts_with("https://") {
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
    if !app.admin().enabled() {
        return Err(AdminError::Disabled);
    }
    if app.admin().check_bearer(headers)
        || app.admin().check_session(headers, app.clock().now_secs())
    {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse() {
        assert_eq!(parse_time("2026-11-25"), Some(1_795_564_800));
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    jti: Option<String>,
    principal: Option<String>,
    /// Free text kept in the audit trail.
    reason: Option<String>,
}

/// `POST /admin/v1/revoke` `{"jti": "..."}` or `{"principal": "..."}`: effective here at once, on other
/// replicas within one poll interval.
async fn revoke(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, AdminError> {
    use crate::governance::store::RevocationKind;
    require(&app, &headers)?;
    let req: RevokeRequest = serde_json::from_slice(&body).map_err(|_| {
        AdminError::BadRequest("expected {\"jti\": ...} or {\"principal\": ...}".into())
    })?;
    let (kind, value) = match (req.jti, req.principal) {
        (Some(j), None) if !j.is_empty() => (RevocationKind::Jti, j),
        (None, Some(p)) if !p.is_empty() => (RevocationKind::Principal, p),
        _ => {
            return Err(AdminError::BadRequest(
                "give exactly one of jti and principal".into(),
            ));
        }
    };
    let seq = app.governance().revoke(kind, &value).await.map_err(|e| {
        tracing::error!(error = %e, "revocation could not be stored");
        AdminError::Unavailable("the governance store is unavailable; nothing was revoked")
    })?;
    tracing::info!(kind = kind.as_str(), value = %value, seq, "revocation by admin");
    if let Some(a) = &app.audit() {
        let (principal, jti) = match kind {
            RevocationKind::Jti => (None, Some(value.clone())),
            RevocationKind::Principal => (Some(value.clone()), None),
        };
        a.record(AuditEvent {
            ts: now_i64(&app),
            kind: Some(EventKind::Revocation),
            actor: "admin".into(),
            principal,
            jti,
            detail: json!({"kind": kind.as_str(), "value": value, "seq": seq, "reason": req.reason}),
            ..Default::default()
        });
    }
    Ok(Json(json!({"revoked": {kind.as_str(): value}, "seq": seq})).into_response())
}

#[derive(Deserialize)]
struct OAuthSessionsQuery {
    /// A principal (as the policy named it) or an IdP subject.
    who: String,
    /// Include revoked and ended sign-ins. Default false.
    #[serde(default)]
    all: bool,
}

fn oauth_of(app: &AppState) -> Result<&Arc<crate::oauth::OAuth>, AdminError> {
    app.oauth().as_ref().ok_or(AdminError::Unavailable(
        "people sign-in ([oauth]) is not configured",
    ))
}

/// `GET /admin/v1/oauth/sessions?who=<principal or subject>[&all=true]`: a person's sign-ins (refresh-token
/// families): client, IdP, when signed in, last refreshed, until when, revoked or not.
async fn oauth_sessions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<OAuthSessionsQuery>,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    let oauth = oauth_of(&app)?;
    if q.who.is_empty() || q.who.len() > 512 {
        return Err(AdminError::BadRequest("who: a principal or subject".into()));
    }
    let families = oauth
        .store
        .families(&q.who, !q.all, now_i64(&app))
        .await
        .map_err(AdminError::store)?;
    audit_admin(
        &app,
        "oauth_sessions",
        json!({"who": q.who, "all": q.all, "count": families.len()}),
    );
    Ok(Json(json!({"who": q.who, "sessions": families})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuthRevokeBody {
    /// One sign-in.
    family_id: Option<String>,
    /// Every live sign-in of this principal or subject.
    who: Option<String>,
    reason: Option<String>,
}

/// `POST /admin/v1/oauth/revoke` `{"family_id": …}` or `{"who": …}`: end one or all of a person's
/// sign-ins. The refresh tokens stop at once; the access tokens they minted are revoked (refused at their
/// next request on every replica). Audited.
async fn oauth_revoke(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    require(&app, &headers)?;
    let oauth = oauth_of(&app)?.clone();
    let b: OAuthRevokeBody =
        serde_json::from_slice(&body).map_err(|e| AdminError::BadRequest(format!("body: {e}")))?;
    let reason = b
        .reason
        .as_deref()
        .unwrap_or("admin")
        .chars()
        .take(200)
        .collect::<String>();
    let families: Vec<String> = match (&b.family_id, &b.who) {
        (Some(f), None) => vec![f.clone()],
        (None, Some(w)) => oauth
            .store
            .families(w, true, now_i64(&app))
            .await
            .map_err(AdminError::store)?
            .into_iter()
            .map(|f| f.family_id)
            .collect(),
        _ => {
            return Err(AdminError::BadRequest(
                "give exactly one of family_id and who".into(),
            ));
        }
    };
    let mut revoked = Vec::new();
    for f in &families {
        if crate::oauth::grant::revoke_family(&app, &oauth, f, &reason, "admin").await {
            revoked.push(f.clone());
        }
    }
    audit_admin(
        &app,
        "oauth_revoke",
        json!({"family_id": b.family_id, "who": b.who, "reason": reason, "revoked": revoked}),
    );
    Ok(Json(json!({"revoked": revoked})).into_response())
}
