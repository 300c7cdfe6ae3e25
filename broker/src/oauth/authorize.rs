//! The browser's way through a sign-in: `GET /oauth/authorize` (the client's request, validated) → the IdP
//! (`POST /oauth/login` first when several are configured) → `GET /oauth/callback` (the IdP's code
//! redeemed server-side, the ID token verified, the policy asked) → the consent page → `POST
//! /oauth/consent` → back to the client with a single-use code (or, for a device sign-in, the device
//! approved).
//!
//! The login session lives in the store (any replica serves the next step) under the SHA-256 of a random
//! id that only the browser's cookie holds; the IdP's `state` names the session and must come back to the
//! browser that holds its cookie (no login CSRF); every form carries the session's CSRF token.

use super::pages::{self, esc};
use super::store::digest;
use super::{OAuth, Scope, StoredIdentity, random_token, redirect_allowed, same};
use crate::app::AppState;
use crate::policy::Decision;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What the sign-in is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "flow", rename_all = "snake_case")]
pub enum Flow {
    /// Authorization code for a client on this machine.
    Code {
        client_id: String,
        redirect_uri: String,
        state: String,
        code_challenge: String,
        scope: Scope,
        resource: Option<String>,
    },
    /// Approving a device that showed the person a user code (RFC 8628).
    Device {
        device_hash: String,
        user_code: String,
        client_id: String,
        scope: Scope,
    },
}

/// A login session's state (JSON in `oauth_logins.data`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub flow: Flow,
    /// The IdP chosen (set at once when only one is configured).
    pub idp: Option<String>,
    /// Sent to the IdP, must come back in the ID token.
    pub nonce: String,
    /// Our PKCE verifier towards the IdP.
    pub verifier: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// The person, once the IdP has signed them in.
    pub identity: Option<StoredIdentity>,
}

/// The authorization request's query (RFC 6749 §4.1.1, RFC 7636, RFC 8707).
#[derive(Debug, Deserialize)]
pub struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    resource: Option<String>,
}

fn not_configured() -> Response {
    pages::error(
        StatusCode::NOT_FOUND,
        "Not found",
        "People sign-in is not configured on this broker.",
    )
}

fn unavailable() -> Response {
    pages::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "The sign-in service is unavailable for a moment. Start the sign-in again from your application.",
    )
}

/// `redirect_uri` with the answer's parameters added (and the issuer, RFC 9207).
fn client_redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut u = reqwest::Url::parse(redirect_uri).ok()?;
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(u.into())
}

fn origin(uri: &str) -> Vec<String> {
    reqwest::Url::parse(uri)
        .map(|u| vec![u.origin().ascii_serialization()])
        .unwrap_or_default()
}

/// `GET /oauth/authorize`.
pub async fn authorize(
    State(app): State<Arc<AppState>>,
    Query(q): Query<AuthorizeQuery>,
) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return not_configured();
    };
    // Without a known client and an allowed redirect URI nothing may be sent anywhere (RFC 6749 §4.1.2.1).
    let Some(client) = q.client_id.as_deref().and_then(|c| oauth.client(c)) else {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Unknown application",
            "This application is not registered with Tollgate.",
        );
    };
    let Some(redirect_uri) = q
        .redirect_uri
        .as_deref()
        .filter(|u| redirect_allowed(client, u))
    else {
        tracing::info!(client = %client.id, "authorization refused: redirect_uri not allowed");
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Wrong return address",
            "The application asked to be sent back to an address it is not registered for.",
        );
    };
    let state = q.state.clone().unwrap_or_default();
    let iss = oauth.public_url.clone();
    let fail = |code: &str, why: &str| {
        tracing::info!(client = %client.id, error = code, why, "authorization refused");
        let mut params = vec![("error", code), ("error_description", why)];
        if !state.is_empty() {
            params.push(("state", state.as_str()));
        }
        params.push(("iss", iss.as_str()));
        match client_redirect(redirect_uri, &params) {
            Some(l) => pages::redirect(&l, &[]),
            None => pages::error(StatusCode::BAD_REQUEST, "Bad request", why),
        }
    };
    if q.response_type.as_deref() != Some("code") {
        return fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    if state.is_empty() || state.len() > 1024 {
        return fail("invalid_request", "state is required (at most 1024 bytes)");
    }
    match q.code_challenge_method.as_deref() {
        Some("S256") => {}
        Some(_) => {
            return fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            );
        }
        None => {
            return fail(
                "invalid_request",
                "PKCE is required: code_challenge with code_challenge_method=S256",
            );
        }
    }
    let challenge = q.code_challenge.clone().unwrap_or_default();
    // A S256 challenge is 43 base64url characters.
    if challenge.len() != 43
        || !challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return fail(
            "invalid_request",
            "code_challenge must be a base64url SHA-256 (43 characters)",
        );
    }
    if let Some(r) = &q.resource
        && !oauth.resource_ok(r)
    {
        return fail("invalid_target", "resource is not this broker");
    }
    let scope = match Scope::parse(q.scope.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail("invalid_scope", &e),
    };
    start_login(
        &oauth,
        Flow::Code {
            client_id: client.id.clone(),
            redirect_uri: redirect_uri.to_string(),
            state: state.clone(),
            code_challenge: challenge,
            scope,
            resource: q.resource.clone(),
        },
    )
    .await
}

/// Open a login session for `flow` and send the browser to the IdP (or to the choice of IdP).
pub async fn start_login(oauth: &OAuth, flow: Flow) -> Response {
    let id = random_token();
    let idp_state = random_token();
    let only = (oauth.idps.len() == 1).then(|| oauth.idps[0].cfg.name.clone());
    let login = Login {
        flow,
        idp: only.clone(),
        nonce: random_token(),
        verifier: random_token(),
        csrf: random_token(),
        identity: None,
    };
    let Ok(data) = serde_json::to_string(&login) else {
        return unavailable();
    };
    let ttl = i64::try_from(oauth.cfg.login_ttl_secs).unwrap_or(600);
    if let Err(e) = oauth
        .store
        .put_login(&digest(&id), &idp_state, &data, oauth.now() + ttl)
        .await
    {
        tracing::error!(error = %e, "could not store a login session");
        return unavailable();
    }
    let cookie = pages::cookie(
        super::LOGIN_COOKIE,
        &id,
        "/oauth",
        ttl,
        "Lax",
        oauth.secure_cookies,
    );
    match only {
        Some(name) => to_idp(oauth, &name, &login, &idp_state, &[cookie]).await,
        None => {
            let mut buttons = String::new();
            let mut actions = Vec::new();
            for i in &oauth.idps {
                buttons.push_str(&format!(
                    "<button type=\"submit\" name=\"idp\" value=\"{}\">{}</button>\n",
                    esc(&i.cfg.name),
                    esc(&i.cfg.display_name)
                ));
                if let Some(o) = i.authorization_origin().await {
                    actions.push(o);
                }
            }
            pages::page(
                StatusCode::OK,
                "Sign in to Tollgate",
                &format!(
                    "<p>Choose how to sign in.</p>\n<form method=\"post\" action=\"/oauth/login\">\n\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n{buttons}</form>",
                    esc(&login.csrf)
                ),
                &actions,
                &[cookie],
            )
        }
    }
}

async fn to_idp(
    oauth: &OAuth,
    name: &str,
    login: &Login,
    idp_state: &str,
    cookies: &[String],
) -> Response {
    let Some(idp) = oauth.idp(name) else {
        return unavailable();
    };
    match idp
        .authorization_url(
            &oauth.callback_url(),
            idp_state,
            &login.nonce,
            &super::pkce_challenge(&login.verifier),
        )
        .await
    {
        Ok(url) => pages::redirect(&url, cookies),
        Err(e) => {
            tracing::warn!(idp = name, error = %e, "IdP discovery failed");
            unavailable()
        }
    }
}

/// The browser's login session: `(id_hash, login, raw data)` when the cookie names a live one.
async fn session(
    oauth: &OAuth,
    headers: &HeaderMap,
) -> Result<(String, Login, String), Box<Response>> {
    let expired = || {
        pages::error(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "This sign-in has expired or was started in another browser. Start it again from your application.",
        )
    };
    let expired = || Box::new(expired());
    let id = pages::cookie_value(headers, super::LOGIN_COOKIE).ok_or_else(expired)?;
    let id_hash = digest(id);
    let data = match oauth.store.login(&id_hash, oauth.now()).await {
        Ok(Some(d)) => d,
        Ok(None) => return Err(expired()),
        Err(e) => {
            tracing::error!(error = %e, "could not read a login session");
            return Err(Box::new(unavailable()));
        }
    };
    let login: Login = serde_json::from_str(&data).map_err(|_| expired())?;
    Ok((id_hash, login, data))
}

fn csrf_refused() -> Response {
    tracing::info!("sign-in form refused: CSRF token missing or wrong");
    pages::error(
        StatusCode::FORBIDDEN,
        "Request refused",
        "This form was not sent from the sign-in page. Start the sign-in again from your application.",
    )
}

#[derive(Deserialize)]
pub struct ChooseForm {
    csrf: String,
    idp: String,
}

/// `POST /oauth/login`: the person chose an IdP.
pub async fn choose(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<ChooseForm>,
) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return not_configured();
    };
    let (id_hash, mut login, old) = match session(&oauth, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !same(&f.csrf, &login.csrf) {
        return csrf_refused();
    }
    if login.identity.is_some() || oauth.idp(&f.idp).is_none() {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Unknown sign-in choice.",
        );
    }
    login.idp = Some(f.idp.clone());
    let idp_state = random_token();
    let Ok(new) = serde_json::to_string(&login) else {
        return unavailable();
    };
    // The state changes with the choice: one IdP round trip per session.
    match oauth
        .store
        .update_login_state(&id_hash, &old, &new, &idp_state, oauth.now())
        .await
    {
        Ok(true) => to_idp(&oauth, &f.idp, &login, &idp_state, &[]).await,
        Ok(false) => pages::error(
            StatusCode::CONFLICT,
            "Sign-in already moved on",
            "This sign-in already continued in another tab.",
        ),
        Err(e) => {
            tracing::error!(error = %e, "could not update a login session");
            unavailable()
        }
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

/// `GET /oauth/callback`: the IdP sends the browser back here.
pub async fn callback(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return not_configured();
    };
    let now = oauth.now();
    let mismatch = || {
        tracing::info!("IdP callback refused: state unknown, expired or from another browser");
        pages::error(
            StatusCode::BAD_REQUEST,
            "Sign-in could not be completed",
            "This answer from the identity provider does not belong to a sign-in started in this browser. Start again from your application.",
        )
    };
    let Some(state) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return mismatch();
    };
    let (id_hash, data) = match oauth.store.login_by_state(state, now).await {
        Ok(Some(x)) => x,
        Ok(None) => return mismatch(),
        Err(e) => {
            tracing::error!(error = %e, "could not read a login session");
            return unavailable();
        }
    };
    // The state must come back to the browser that started the sign-in (its cookie), or an attacker could
    // make a victim's browser finish the attacker's sign-in.
    let cookie_hash = pages::cookie_value(&headers, super::LOGIN_COOKIE).map(digest);
    if !cookie_hash.is_some_and(|h| same(&h, &id_hash)) {
        return mismatch();
    }
    let Ok(mut login) = serde_json::from_str::<Login>(&data) else {
        return mismatch();
    };
    let Some(idp) = login.idp.as_deref().and_then(|n| oauth.idp(n)) else {
        return mismatch();
    };
    if login.identity.is_some() {
        return mismatch();
    }
    if let Some(err) = &q.error {
        tracing::info!(idp = %idp.cfg.name, error = %err.chars().take(64).collect::<String>(), "the IdP returned an error");
        return declined(&app, &oauth, &id_hash, &login).await;
    }
    let Some(code) = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 4096)
    else {
        return mismatch();
    };
    let identity = match idp
        .redeem(code, &oauth.callback_url(), &login.verifier, &login.nonce)
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(idp = %idp.cfg.name, error = %e, "IdP sign-in refused");
            app.metrics().mint("user", "idp_refused");
            let _ = oauth.store.take_login(&id_hash, now).await;
            return pages::error(
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "The identity provider's answer could not be verified. Start again from your application.",
            );
        }
    };
    let grant = match app.policy().decide(&identity) {
        Decision::Allow {
            grant,
            max_ttl_secs,
            ..
        } => (grant, max_ttl_secs),
        _ => {
            tracing::info!(subject = %identity.subject, idp = %idp.cfg.name, "signed in, but no policy rule grants access");
            app.metrics().mint("user", "denied");
            let _ = oauth.store.take_login(&id_hash, now).await;
            return pages::error(
                StatusCode::FORBIDDEN,
                "No access",
                "You are signed in, but your account has no access to Tollgate. Ask your administrator.",
            );
        }
    };
    login.identity = Some(StoredIdentity::from(&identity));
    let Ok(new) = serde_json::to_string(&login) else {
        return unavailable();
    };
    match oauth.store.update_login(&id_hash, &data, &new, now).await {
        Ok(true) => {}
        Ok(false) => return mismatch(),
        Err(e) => {
            tracing::error!(error = %e, "could not update a login session");
            return unavailable();
        }
    }
    consent_page(&app, &oauth, &login, &grant.0, grant.1)
}

/// The consent page: who, which application, what is granted (models, budgets, token life).
fn consent_page(
    app: &AppState,
    oauth: &OAuth,
    login: &Login,
    grant: &tollgate::Grant,
    rule_ttl: Option<u64>,
) -> Response {
    let who = login.identity.as_ref().map_or("", StoredIdentity::display);
    let (client_id, device, actions) = match &login.flow {
        Flow::Code {
            client_id,
            redirect_uri,
            ..
        } => (client_id.as_str(), None, origin(redirect_uri)),
        Flow::Device {
            client_id,
            user_code,
            ..
        } => (client_id.as_str(), Some(user_code.as_str()), vec![]),
    };
    let client_name = oauth
        .client(client_id)
        .map_or(client_id, |c| c.name.as_str());
    let models: Vec<String> = grant
        .models
        .iter()
        .map(|m| format!("<li><code>{}</code></li>", esc(m.as_str())))
        .collect();
    let budgets: Vec<String> = grant
        .budgets
        .iter()
        .map(|id| match app.budgets().iter().find(|b| &b.id == id) {
            Some(b) => format!(
                "<li>{} {} ({}, per {})</li>",
                esc(&b.amount.human()),
                esc(b.window.as_str()),
                esc(id),
                esc(b.scope.as_str())
            ),
            None => format!("<li>{}</li>", esc(id)),
        })
        .collect();
    let ttl = access_ttl(app, oauth, rule_ttl);
    let mut body = String::new();
    if let Some(code) = device {
        body.push_str(&format!(
            "<p>A device is asking to sign in as you. Check that it shows this code:</p>\n\
             <p class=\"code\" aria-label=\"device code\">{}</p>\n",
            esc(code)
        ));
    }
    body.push_str(&format!(
        "<p>Allow <strong>{}</strong> to use Tollgate as you?</p>\n<dl>\n\
         <dt>Signed in as</dt><dd>{}</dd>\n<dt>Principal</dt><dd>{}</dd>\n\
         <dt>Models</dt><dd><ul>{}</ul></dd>\n<dt>Budgets</dt><dd>{}</dd>\n\
         <dt>Access token life</dt><dd>{} minutes, renewed without asking until you sign out or an administrator revokes it</dd>\n</dl>\n\
         <form method=\"post\" action=\"/oauth/consent\">\n<input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n</form>",
        esc(client_name),
        esc(who),
        esc(&grant.principal),
        models.join(""),
        if budgets.is_empty() {
            "none".to_string()
        } else {
            format!("<ul>{}</ul>", budgets.join(""))
        },
        ttl.div_ceil(60),
        esc(&login.csrf),
    ));
    pages::page(StatusCode::OK, "Allow access", &body, &actions, &[])
}

/// The access token life for a person: `oauth.access_ttl_secs` (or `tokens.default_ttl_secs`), capped by
/// the rule and `tokens.max_ttl_secs`.
pub fn access_ttl(app: &AppState, oauth: &OAuth, rule_ttl: Option<u64>) -> u64 {
    let t = &app.token_endpoint();
    let ceiling = rule_ttl.unwrap_or(t.max_ttl_secs).min(t.max_ttl_secs);
    oauth
        .cfg
        .access_ttl_secs
        .unwrap_or(t.default_ttl_secs)
        .max(crate::token::limits::MIN_TTL_SECS)
        .min(ceiling)
}

/// The person said no (at the IdP or on the consent page): the client hears `access_denied`.
async fn declined(app: &AppState, oauth: &OAuth, id_hash: &str, login: &Login) -> Response {
    let now = oauth.now();
    let _ = oauth.store.take_login(id_hash, now).await;
    audit_consent(app, login, "denied");
    match &login.flow {
        Flow::Code {
            redirect_uri,
            state,
            ..
        } => match client_redirect(
            redirect_uri,
            &[
                ("error", "access_denied"),
                ("state", state),
                ("iss", &oauth.public_url),
            ],
        ) {
            Some(l) => pages::redirect(&l, &[]),
            None => pages::error(
                StatusCode::BAD_REQUEST,
                "Access denied",
                "Access was denied.",
            ),
        },
        Flow::Device { device_hash, .. } => {
            if let Err(e) = oauth.store.decide_device(device_hash, None, now).await {
                tracing::error!(error = %e, "could not deny a device");
            }
            pages::error(
                StatusCode::OK,
                "Access denied",
                "The device was not allowed to sign in. You can close this window.",
            )
        }
    }
}

fn audit_consent(app: &AppState, login: &Login, outcome: &str) {
    let Some(audit) = &app.audit() else { return };
    let (client_id, flow) = match &login.flow {
        Flow::Code { client_id, .. } => (client_id, "code"),
        Flow::Device { client_id, .. } => (client_id, "device"),
    };
    let who = login
        .identity
        .as_ref()
        .map_or(String::new(), |i| i.subject.clone());
    audit.record(crate::audit::AuditEvent {
        ts: i64::try_from(app.clock().now_secs()).unwrap_or(i64::MAX),
        kind: Some(crate::audit::EventKind::Admin),
        actor: who.clone(),
        principal: None,
        request_id: Some(crate::request_id::request_id()),
        detail: serde_json::json!({
            "action": "oauth_consent",
            "outcome": outcome,
            "client_id": client_id,
            "flow": flow,
            "subject": who,
            "idp": login.identity.as_ref().map(|i| i.idp().to_string()),
        }),
        ..Default::default()
    });
}

#[derive(Deserialize)]
pub struct ConsentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
}

/// `POST /oauth/consent`.
pub async fn consent(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<ConsentForm>,
) -> Response {
    let Some(oauth) = app.oauth().clone() else {
        return not_configured();
    };
    let (id_hash, login, _) = match session(&oauth, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if f.csrf.is_empty() || !same(&f.csrf, &login.csrf) {
        return csrf_refused();
    }
    let Some(identity) = login.identity.clone() else {
        return csrf_refused();
    };
    if f.decision != "approve" {
        return declined(&app, &oauth, &id_hash, &login).await;
    }
    let now = oauth.now();
    // Answered once: the session ends here, whichever tab was first.
    match oauth.store.take_login(&id_hash, now).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return pages::error(
                StatusCode::CONFLICT,
                "Already answered",
                "This sign-in was already answered.",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "could not end a login session");
            return unavailable();
        }
    }
    audit_consent(&app, &login, "approved");
    let clear = pages::cookie(
        super::LOGIN_COOKIE,
        "",
        "/oauth",
        0,
        "Lax",
        oauth.secure_cookies,
    );
    match &login.flow {
        Flow::Code {
            client_id,
            redirect_uri,
            state,
            code_challenge,
            scope,
            resource,
        } => {
            let code = random_token();
            let data = CodeData {
                redirect_uri: redirect_uri.clone(),
                code_challenge: code_challenge.clone(),
                scope: scope.clone(),
                resource: resource.clone(),
                identity,
            };
            let Ok(json) = serde_json::to_string(&data) else {
                return unavailable();
            };
            let exp = now + i64::try_from(oauth.cfg.code_ttl_secs).unwrap_or(60);
            if let Err(e) = oauth
                .store
                .put_code(&digest(&code), client_id, &json, exp)
                .await
            {
                tracing::error!(error = %e, "could not store an authorization code");
                return unavailable();
            }
            match client_redirect(
                redirect_uri,
                &[
                    ("code", &code),
                    ("state", state),
                    ("iss", &oauth.public_url),
                ],
            ) {
                Some(l) => pages::redirect(&l, &[clear]),
                None => unavailable(),
            }
        }
        Flow::Device {
            device_hash,
            user_code,
            ..
        } => {
            let Ok(json) = serde_json::to_string(&identity) else {
                return unavailable();
            };
            match oauth
                .store
                .decide_device(device_hash, Some(&json), now)
                .await
            {
                Ok(true) => pages::page(
                    StatusCode::OK,
                    "Device signed in",
                    &format!(
                        "<p role=\"status\">The device showing <span class=\"code\">{}</span> is signed in. You can close this window.</p>",
                        esc(user_code)
                    ),
                    &[],
                    &[clear],
                ),
                Ok(false) => pages::error(
                    StatusCode::GONE,
                    "Code expired",
                    "This device code has expired or was already used. Start again on the device.",
                ),
                Err(e) => {
                    tracing::error!(error = %e, "could not approve a device");
                    unavailable()
                }
            }
        }
    }
}

/// What an authorization code stands for (JSON in `oauth_codes.data`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CodeData {
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: Scope,
    pub resource: Option<String>,
    pub identity: StoredIdentity,
}
