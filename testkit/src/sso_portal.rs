//! A fake AWS IAM Identity Center portal: the one operation a credential provider calls,
//! `GetRoleCredentials` (`GET /federation/credentials?account_id=…&role_name=…` with the person's access
//! token in `x-amz-sso_bearer_token`). moto has no `sso` portal service (only `sso-admin`), so this one
//! follows the AWS SSO API reference and what the real portal answers:
//!
//! - 200 `{"roleCredentials":{"accessKeyId","secretAccessKey","sessionToken","expiration"}}`
//!   (`expiration` in epoch milliseconds);
//! - 401 `UnauthorizedException` "Session token not found or invalid" for an unknown, missing or
//!   revoked token;
//! - 403 `ForbiddenException` "No access" when the person is not assigned that role in that account;
//! - 400 `InvalidRequestException` when `account_id` or `role_name` is missing;
//! - restJson1 errors: the type in `x-amzn-ErrorType`, the text in the body's `message`.
//!
//! It also serves the one SSO OIDC operation a credential provider calls, `CreateToken` with the refresh
//! grant (`POST /token`, JSON `clientId`, `clientSecret`, `grantType = "refresh_token"`,
//! `refreshToken`): 200 `{"accessToken","tokenType":"Bearer","expiresIn","refreshToken"}`; 400
//! `InvalidGrantException` (`{"error":"invalid_grant","error_description":…}`) for an unknown or used
//! refresh token, 401 `InvalidClientException` for a wrong client, 400 `UnsupportedGrantTypeException`.
//! (Two services in AWS, `portal.sso.*` and `oidc.*`; one listener here, the tests set both endpoints.)
//!
//! The role credentials it hands out are whatever the test assigns: real session credentials from moto's
//! `sts:AssumeRole`, so the broker's replay of the signed `GetCallerIdentity` is checked by moto's SigV4.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Role credentials as `GetRoleCredentials` returns them.
#[derive(Clone, Debug)]
pub struct RoleCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    /// Epoch milliseconds.
    pub expiration_ms: i64,
}

/// A refresh grant the fake OIDC service honours once.
#[derive(Clone, Debug)]
pub struct RefreshGrant {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// What the refresh returns.
    pub new_access_token: String,
    pub expires_in: u64,
    /// The rotated refresh token returned (and then the only one honoured), or none returned.
    pub new_refresh_token: Option<String>,
}

/// (account, role) → the credentials a person gets for it.
type Roles = BTreeMap<(String, String), RoleCredentials>;

#[derive(Default)]
struct PortalState {
    /// Access token → what that signed-in person may take.
    assignments: Mutex<HashMap<String, Roles>>,
    calls: AtomicU64,
    /// Refresh token → grant.
    refresh: Mutex<HashMap<String, RefreshGrant>>,
    refreshes: AtomicU64,
    /// Every bearer token presented, in order (to assert which sign-in was used).
    seen_tokens: Mutex<Vec<String>>,
}

pub struct PortalHandle {
    pub addr: SocketAddr,
    state: Arc<PortalState>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for PortalHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl PortalHandle {
    /// The portal's base URL (what `AWS_ENDPOINT_URL_SSO` is set to).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A signed-in person (`access_token`) may take `role` in `account`, getting `creds`.
    pub fn assign(&self, access_token: &str, account: &str, role: &str, creds: RoleCredentials) {
        self.state
            .assignments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(access_token.to_string())
            .or_default()
            .insert((account.to_string(), role.to_string()), creds);
    }

    /// The person signed out (or the session was revoked): the token is no longer known.
    pub fn revoke(&self, access_token: &str) {
        self.state
            .assignments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(access_token);
    }

    /// Honour this refresh grant (once: the refresh token is used up by the refresh).
    pub fn allow_refresh(&self, g: RefreshGrant) {
        self.state
            .refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(g.refresh_token.clone(), g);
    }

    /// How many `CreateToken` calls arrived.
    pub fn refreshes(&self) -> u64 {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// How many `GetRoleCredentials` calls arrived.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn seen_tokens(&self) -> Vec<String> {
        self.state
            .seen_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Start on `127.0.0.1:0`.
pub async fn spawn() -> anyhow::Result<PortalHandle> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(PortalState::default());
    let app = Router::new()
        .route("/federation/credentials", get(get_role_credentials))
        .route("/token", axum::routing::post(create_token))
        .with_state(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Ok(PortalHandle {
        addr,
        state,
        shutdown: Some(tx),
    })
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut r = (status, Json(json!({ "message": message }))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{kind}:http://internal.amazon.com/coral/com.amazonaws.switchboard.portal/"
    )) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

/// SSO OIDC errors: the type in `x-amzn-ErrorType`, OAuth's `error` and `error_description` in the body.
fn oidc_error(status: StatusCode, kind: &str, error: &str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{kind}:")) {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

async fn create_token(
    State(s): State<Arc<PortalState>>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    s.refreshes.fetch_add(1, Ordering::SeqCst);
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    if field("grantType") != "refresh_token" {
        return oidc_error(
            StatusCode::BAD_REQUEST,
            "UnsupportedGrantTypeException",
            "unsupported_grant_type",
            "Unsupported grant type",
        );
    }
    let mut grants = s.refresh.lock().unwrap_or_else(|e| e.into_inner());
    let Some(g) = grants.get(&field("refreshToken")).cloned() else {
        return oidc_error(
            StatusCode::BAD_REQUEST,
            "InvalidGrantException",
            "invalid_grant",
            "Invalid refresh token provided",
        );
    };
    if g.client_id != field("clientId") || g.client_secret != field("clientSecret") {
        return oidc_error(
            StatusCode::UNAUTHORIZED,
            "InvalidClientException",
            "invalid_client",
            "Invalid client provided",
        );
    }
    grants.remove(&g.refresh_token);
    let mut answer = json!({
        "accessToken": g.new_access_token,
        "tokenType": "Bearer",
        "expiresIn": g.expires_in,
    });
    if let Some(r) = &g.new_refresh_token {
        answer["refreshToken"] = json!(r);
    }
    Json(answer).into_response()
}

async fn get_role_credentials(
    State(s): State<Arc<PortalState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let (Some(account), Some(role)) = (q.get("account_id"), q.get("role_name")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestException",
            "account_id and role_name are required",
        );
    };
    let Some(token) = headers
        .get("x-amz-sso_bearer_token")
        .and_then(|v| v.to_str().ok())
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedException",
            "Session token not found or invalid",
        );
    };
    s.seen_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(token.to_string());
    let assignments = s.assignments.lock().unwrap_or_else(|e| e.into_inner());
    let Some(roles) = assignments.get(token) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedException",
            "Session token not found or invalid",
        );
    };
    let Some(c) = roles.get(&(account.clone(), role.clone())) else {
        return error(StatusCode::FORBIDDEN, "ForbiddenException", "No access");
    };
    Json(json!({
        "roleCredentials": {
            "accessKeyId": c.access_key_id,
            "secretAccessKey": c.secret_access_key,
            "sessionToken": c.session_token,
            "expiration": c.expiration_ms,
        }
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_like_the_portal() {
        let p = spawn().await.expect("portal");
        p.assign(
            "tok",
            "123456789012",
            "Dev",
            RoleCredentials {
                access_key_id: "ASIA1".into(),
                secret_access_key: "sk".into(),
                session_token: "st".into(),
                expiration_ms: 1_796_616_000_000,
            },
        );
        let http = reqwest::Client::new();
        let call = |token: Option<&'static str>, q: &'static str| {
            let mut r = http.get(format!("{}/federation/credentials?{q}", p.url()));
            if let Some(t) = token {
                r = r.header("x-amz-sso_bearer_token", t);
            }
            r.send()
        };
        let r = call(Some("tok"), "account_id=123456789012&role_name=Dev")
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["roleCredentials"]["accessKeyId"], "ASIA1");
        assert_eq!(v["roleCredentials"]["expiration"], 1_796_616_000_000_i64);
        for (token, q, status, kind) in [
            (
                Some("tok"),
                "account_id=123456789012&role_name=Admin",
                403,
                "ForbiddenException",
            ),
            (
                Some("nope"),
                "account_id=123456789012&role_name=Dev",
                401,
                "UnauthorizedException",
            ),
            (
                None,
                "account_id=123456789012&role_name=Dev",
                401,
                "UnauthorizedException",
            ),
            (
                Some("tok"),
                "account_id=123456789012",
                400,
                "InvalidRequestException",
            ),
        ] {
            let r = call(token, q).await.expect("send");
            assert_eq!(r.status(), status, "{q}");
            let t = r
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert!(t.starts_with(&format!("{kind}:")), "{t}");
        }
        p.revoke("tok");
        let r = call(Some("tok"), "account_id=123456789012&role_name=Dev")
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        assert_eq!(p.calls(), 6);
    }
}
