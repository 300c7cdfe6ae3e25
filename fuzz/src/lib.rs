//! Shared harness of the fuzz targets: one broker app (quickstart-like config, demo provider only, keys
//! in a temp dir) built once per process and driven through its real router with `oneshot`.
//! Crashes found here become regression tests in the crate they concern (not here: this workspace
//! is not part of CI).

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tollgate::IdentityKind;
use tollgate_broker::app::{AppState, router};
use tollgate_broker::clock::SystemClock;
use tollgate_broker::config::{Config, Source};
use tollgate_broker::identity::VerifiedIdentity;
use tollgate_broker::policy::Policy;
use tower::ServiceExt;

/// The static credential of the harness config.
pub const CREDENTIAL: &str = "fuzz-credential";

struct Harness {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let sha = tollgate_broker::identity::static_cred::hash_credential(CREDENTIAL);
        std::fs::write(
            dir.path().join("policy.toml"),
            "[[rule]]\nname = \"fuzz\"\nmatch = { kind = \"static\", subject = \"dev\" }\nprincipal = \"{subject}\"\nteam = \"fuzz\"\nmodels = [\"*\"]\n",
        )
        .expect("write policy");
        let text = format!(
            "policy_file = \"policy.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n[tokens]\naudience = \"tollgate\"\n\
             [[credentials]]\nsubject = \"dev\"\nsha256 = \"{sha}\"\n[store]\nkind = \"sqlite\"\n[pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"5\", output = \"30\" }}\n[[budgets]]\nid = \"d\"\nscope = \"principal\"\namount_usd = \"1000000\"\nwindow = \"daily\"\n[providers.demo]\nkind = \"demo\"\n[[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"demo\" }}]\n"
        );
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, &text).expect("write config");
        let env: BTreeMap<String, String> = BTreeMap::new();
        let config = Config::from_source(Source { path, text }, &env).expect("harness config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let state: Arc<AppState> = rt
            .block_on(AppState::build(&config, Arc::new(SystemClock)))
            .expect("state");
        let app = router(state);
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={CREDENTIAL}&subject_token_type={}",
            urlencode(tollgate::exchange::TOKEN_TYPE_STATIC)
        );
        let (status, body) = rt.block_on(call(&app, "/oauth/token", "application/x-www-form-urlencoded", None, form.into_bytes()));
        assert_eq!(status, StatusCode::OK, "harness mint: {}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("token json");
        let token = v["access_token"].as_str().expect("access_token").to_string();
        Harness { rt, app, token, _dir: dir }
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn call(
    app: &axum::Router,
    path: &str,
    content_type: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::post(path).header(header::CONTENT_TYPE, content_type);
    if let Some(t) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Body::from(body)).expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    (status, bytes)
}

/// Fuzz body of `token_exchange`.
pub fn token_exchange(data: &[u8]) {
    let h = harness();
    let (status, body) = h.rt.block_on(call(
        &h.app,
        "/oauth/token",
        "application/x-www-form-urlencoded",
        None,
        data.to_vec(),
    ));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "non-JSON answer {status}: {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    match status {
        StatusCode::OK => assert!(v["access_token"].is_string(), "200 without a token: {v}"),
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE => {
            assert!(
                v["error"].is_string(),
                "error answer without an RFC 6749 code: {v}"
            );
        }
        other => panic!("unexpected status {other}: {v}"),
    }
}

/// Fuzz body of `proxy_request`: the first byte picks the endpoint.
pub fn proxy_request(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let h = harness();
    let path = if sel & 1 == 0 {
        "/v1/responses"
    } else {
        "/v1/chat/completions"
    };
    let (status, out) = h.rt.block_on(call(
        &h.app,
        path,
        "application/json",
        Some(&h.token),
        body.to_vec(),
    ));
    assert!(
        !status.is_server_error()
            || status == StatusCode::BAD_GATEWAY
            || status == StatusCode::SERVICE_UNAVAILABLE,
        "server error {status} for input: {:?}",
        String::from_utf8_lossy(body)
    );
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|_| {
            panic!(
                "non-JSON error {status}: {:?}",
                String::from_utf8_lossy(&out)
            )
        });
        assert!(v["error"]["message"].is_string(), "not OpenAI-shaped: {v}");
    }
}

/// Run a parsed policy against a few identities (decide must not panic on any rule set).
pub fn decide_some(policy: &Policy) {
    let mut attrs = BTreeMap::new();
    attrs.insert(
        "groups".to_string(),
        vec!["eng".to_string(), "".to_string()],
    );
    let ids = [
        VerifiedIdentity {
            kind: IdentityKind::Static,
            subject: "dev".into(),
            issuer: None,
            attributes: BTreeMap::new(),
        },
        VerifiedIdentity {
            kind: IdentityKind::Static,
            subject: "arn:aws:iam::123456789012:role/ci-{x}".into(),
            issuer: Some("https://issuer.example".into()),
            attributes: attrs,
        },
    ];
    for id in &ids {
        let _ = policy.decide(id);
    }
}
