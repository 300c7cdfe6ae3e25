//! In-process router tests (`oneshot`): token exchange, auth, model checks and bad input, each with the right
//! status and an OpenAI- or RFC 6749-shaped body. No sockets: the routes go to the built-in demo provider.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source};
use tollgate_broker::routes::router;
use tower::ServiceExt;

const CRED: &str = "router-test-credential";
const NOW: u64 = 1_900_000_000;

struct Harness {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    clock: FakeClock,
}

async fn harness() -> Harness {
    harness_with("").await
}

async fn harness_with(extra: &str) -> Harness {
    harness_tokens("", extra).await
}

/// `tokens_extra` goes into `[tokens]`, `extra` at the end of the config.
async fn harness_tokens(tokens_extra: &str, extra: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let sha = tollgate_broker::identity::static_cred::hash_credential(CRED);
    let cfg = format!(
        "policy_file = \"policy.toml\"\n[server]\nstate_dir = \"state\"\nmax_body_bytes = 4096\n\
         [tokens]\nmax_ttl_secs = 600\n{tokens_extra}[[credentials]]\nsubject = \"dev\"\nsha256 = \"{sha}\"\n\
         [providers.demo]\nkind = \"demo\"\n[[routes]]\nmodel = \"gpt-5.5\"\ntargets = [{{ provider = \"demo\" }}]\n\
         [[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"demo\" }}]\n\
         [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1.25\", output = \"10\" }}\n{extra}"
    );
    std::fs::write(dir.path().join("broker.toml"), &cfg).expect("cfg");
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\", subject = \"dev\" }\nmodels = [\"gpt-5*\", \"demo\"]\n",
    )
    .expect("policy");
    let env: BTreeMap<String, String> = BTreeMap::new();
    let config = Config::from_source(
        Source {
            path: dir.path().join("broker.toml"),
            text: cfg,
        },
        &env,
    )
    .expect("config");
    let clock = FakeClock::new(NOW);
    let state = AppState::build(&config, Arc::new(clock.clone()))
        .await
        .expect("state");
    Harness {
        _dir: dir,
        state,
        clock,
    }
}

async fn call(
    h: &Harness,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let resp = router(h.state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, v)
}

fn exchange_req(body: &str) -> Request<Body> {
    Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_string()))
        .expect("req")
}

fn urlenc(s: &str) -> String {
    s.replace(':', "%3A")
}

async fn token(h: &Harness) -> String {
    let body = format!(
        "grant_type={}&subject_token={CRED}&subject_token_type={}&requested_ttl_secs=99999",
        urlenc(tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE),
        urlenc(tollgate::exchange::TOKEN_TYPE_STATIC)
    );
    let (s, _, v) = call(h, exchange_req(&body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["expires_in"], 600,
        "TTL is clamped to the configured maximum"
    );
    v["access_token"].as_str().expect("token").to_string()
}

fn post(path: &str, token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(body.into()).expect("req")
}

fn assert_openai_error(v: &serde_json::Value) {
    assert!(
        v["error"]["message"].is_string(),
        "not an OpenAI error body: {v}"
    );
    assert!(
        v["error"]["type"].is_string(),
        "not an OpenAI error body: {v}"
    );
    assert!(
        v["error"].get("code").is_some(),
        "not an OpenAI error body: {v}"
    );
}

#[tokio::test]
async fn exchange_then_proxy_then_models() {
    let h = harness().await;
    let t = token(&h).await;
    let (s, headers, v) = call(
        &h,
        post(
            "/v1/responses",
            Some(&t),
            r#"{"model":"gpt-5.5","input":"hi","extra_field":{"kept":true}}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "completed");
    assert_eq!(headers["x-tollgate-provider"], "demo");

    let req = Request::get("/v1/models")
        .header(header::AUTHORIZATION, format!("Bearer {t}"))
        .body(Body::empty())
        .expect("req");
    let (s, _, v) = call(&h, req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec!["demo", "gpt-5.5"],
        "literal routes and grant models the token may use"
    );
    assert_eq!(
        v["models"],
        serde_json::json!([]),
        "no invented Codex metadata"
    );
}

/// Both model lists (OpenAI + Codex at `/v1/models`, Codex's catalog at `/v1/codex/models`), for each
/// client version and each `If-None-Match`: a strong `ETag` that follows the body, 304 without a body when
/// the client holds it, entries filtered by grant and by `minimal_client_version`.
#[tokio::test]
async fn model_lists_carry_an_etag_and_answer_304_when_unchanged() {
    let meta = |slug: &str, extra: &str| {
        format!(
            "[models.{slug:?}.codex]\ndisplay_name = {slug:?}\nbase_instructions = \"operator text\"\n{extra}\n"
        )
    };
    let h = harness_with(&format!(
        "{}{}{}",
        meta("gpt-5.5", ""),
        meta("gpt-5-new", "minimal_client_version = \"0.171.0\""),
        meta("o3-not-granted", "")
    ))
    .await;
    let t = token(&h).await;
    let get = |path: &str, inm: Option<&str>| {
        let mut b = Request::get(path).header(header::AUTHORIZATION, format!("Bearer {t}"));
        if let Some(tag) = inm {
            b = b.header(header::IF_NONE_MATCH, tag);
        }
        b.body(Body::empty()).expect("req")
    };
    let slugs = |v: &serde_json::Value| -> Vec<String> {
        v["models"]
            .as_array()
            .expect("models")
            .iter()
            .filter_map(|m| m["slug"].as_str().map(str::to_string))
            .collect()
    };
    let mut tags = std::collections::BTreeSet::new();
    for base in ["/v1/models", "/v1/codex/models"] {
        for (query, expect) in [
            ("", vec!["gpt-5-new", "gpt-5.5"]),
            ("?client_version=0.171.0", vec!["gpt-5-new", "gpt-5.5"]),
            ("?client_version=0.169.0", vec!["gpt-5.5"]),
        ] {
            let path = format!("{base}{query}");
            let (s, headers, v) = call(&h, get(&path, None)).await;
            assert_eq!(s, StatusCode::OK, "{path}: {v}");
            assert_eq!(slugs(&v), expect, "{path}: granted and version-filtered");
            assert_eq!(
                v["models"][0]["base_instructions"], "operator text",
                "verbatim"
            );
            assert_eq!(v.get("data").is_some(), base == "/v1/models", "{path}: {v}");
            let tag = headers[header::ETAG].to_str().expect("etag").to_string();
            assert!(tag.starts_with('"'), "a strong tag: {tag}");
            assert_eq!(headers[header::CACHE_CONTROL], "private, no-cache");
            tags.insert(tag.clone());
            for (inm, status) in [
                (tag.clone(), StatusCode::NOT_MODIFIED),
                (format!("\"stale\", {tag}"), StatusCode::NOT_MODIFIED),
                ("\"stale\"".to_string(), StatusCode::OK),
            ] {
                let resp = router(h.state.clone())
                    .oneshot(get(&path, Some(&inm)))
                    .await
                    .expect("infallible");
                assert_eq!(resp.status(), status, "{path} If-None-Match {inm}");
                assert_eq!(resp.headers()[header::ETAG], tag.as_str());
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(
                    body.is_empty(),
                    status == StatusCode::NOT_MODIFIED,
                    "{path}"
                );
            }
        }
    }
    // Different bodies, different tags: two shapes × two distinct lists.
    assert_eq!(tags.len(), 4, "{tags:?}");
    let (s, _, v) = call(&h, get("/v1/models?client_version=latest", None)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_openai_error(&v);
    // No token, no list.
    let (s, _, _) = call(
        &h,
        Request::get("/v1/codex/models")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_tokens_are_401_openai_shaped() {
    let h = harness().await;
    let good = token(&h).await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = good.split('.').collect();
    let alg_none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    // A token signed by a different broker's key.
    let other = harness().await;
    let foreign = token(&other).await;
    // A tampered payload under a valid signature.
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(r#"{"sub":"root"}"#),
        parts[2]
    );
    let body = r#"{"model":"gpt-5.5","input":"x"}"#;
    for (name, tok) in [
        ("missing", None),
        ("garbage", Some("garbage")),
        ("alg none", Some(alg_none.as_str())),
        ("foreign key", Some(foreign.as_str())),
        ("tampered", Some(tampered.as_str())),
    ] {
        let (s, headers, v) = call(&h, post("/v1/responses", tok, body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{name}: {v}");
        assert_openai_error(&v);
        assert_eq!(v["error"]["code"], "invalid_api_key", "{name}");
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
        // Nothing about why: the same message for every failure.
        assert!(
            !v.to_string().contains("kid") && !v.to_string().contains("signature"),
            "{name}: {v}"
        );
    }
    // Expired, by moving the fake clock past exp + leeway — even though the token is cached as verified.
    let (s, _, _) = call(&h, post("/v1/responses", Some(&good), body)).await;
    assert_eq!(s, StatusCode::OK);
    h.clock.advance(600 + 31);
    let (s, _, v) = call(&h, post("/v1/responses", Some(&good), body)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "expired token: {v}");
}

#[tokio::test]
async fn bad_requests_are_openai_shaped() {
    let h = harness().await;
    let t = token(&h).await;
    let too_large = format!(r#"{{"model":"gpt-5.5","input":"{}"}}"#, "x".repeat(5000));
    let cases: Vec<(&str, Body, StatusCode, Option<&str>)> = vec![
        (
            "malformed json",
            Body::from("{\"model\": "),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "not an object",
            Body::from("[1,2]"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "missing model",
            Body::from(r#"{"input":"x"}"#),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "too large",
            Body::from(too_large),
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("request_too_large"),
        ),
        (
            "model not allowed",
            Body::from(r#"{"model":"o3","input":"x"}"#),
            StatusCode::BAD_REQUEST,
            Some("model_not_allowed"),
        ),
    ];
    for (name, body, status, code) in cases {
        let (s, _, v) = call(&h, post("/v1/responses", Some(&t), body)).await;
        assert_eq!(s, status, "{name}: {v}");
        assert_openai_error(&v);
        if let Some(c) = code {
            assert_eq!(v["error"]["code"], c, "{name}");
        }
    }
    let (_, _, v) = call(
        &h,
        post(
            "/v1/chat/completions",
            Some(&t),
            r#"{"model":"o3","messages":[]}"#,
        ),
    )
    .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("'o3'"),
        "the message names the model: {v}"
    );
    let (s, _, v) = call(
        &h,
        Request::get("/v1/nope").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_openai_error(&v);
}

#[tokio::test]
async fn token_endpoint_errors_are_rfc6749() {
    let h = harness().await;
    let gt = urlenc(tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE);
    let st = urlenc(tollgate::exchange::TOKEN_TYPE_STATIC);
    let cases = [
        (
            "grant_type=password&username=a".to_string(),
            "unsupported_grant_type",
        ),
        (
            format!("grant_type={gt}&subject_token=wrong&subject_token_type={st}"),
            "invalid_grant",
        ),
        (
            format!("grant_type={gt}&subject_token={CRED}&subject_token_type=urn%3Ax"),
            "invalid_request",
        ),
        (
            format!("grant_type={gt}&subject_token={CRED}&subject_token_type={st}&audience=other"),
            "invalid_target",
        ),
        (
            format!(
                "grant_type={gt}&subject_token={CRED}&subject_token_type={st}&scope=model%3Ao3"
            ),
            "invalid_scope",
        ),
        (format!("grant_type={gt}"), "invalid_request"),
    ];
    for (body, code) in cases {
        let (s, headers, v) = call(&h, exchange_req(&body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"], code, "{body}: {v}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert!(!v.to_string().contains(CRED));
    }
    let req = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .expect("req");
    let (s, _, v) = call(&h, req).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
}

#[tokio::test]
async fn discovery_and_jwks_publish_public_keys_only() {
    let h = harness().await;
    let (s, _, v) = call(
        &h,
        Request::get("/.well-known/jwks.json")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let keys = v["keys"].as_array().expect("keys");
    // The signing key and the next rotation's key, published ahead of use (docs/governance.md).
    assert_eq!(keys.len(), 2);
    for k in keys {
        assert_eq!(k["alg"], "ES256");
        assert!(k.get("d").is_none());
    }
    let (_, _, d) = call(
        &h,
        Request::get("/.well-known/openid-configuration")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert!(
        d["jwks_uri"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/.well-known/jwks.json")
    );
    let t = token(&h).await;
    let header = jsonwebtoken::decode_header(&t).expect("header");
    assert!(
        keys.iter()
            .any(|k| k["kid"].as_str() == header.kid.as_deref())
    );
}

#[tokio::test]
async fn streaming_passes_sse_through_and_records_usage() {
    let h = harness().await;
    let t = token(&h).await;
    let (s, headers, v) = call(
        &h,
        post(
            "/v1/responses",
            Some(&t),
            r#"{"model":"gpt-5.5","stream":true,"input":"stream me"}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    let text = v.as_str().expect("sse text");
    let events = tollgate_testkit::sse::parse(text.as_bytes());
    assert_eq!(
        events.last().and_then(|e| e.event.clone()).as_deref(),
        Some("response.completed")
    );
    // The usage report is the store's record (the same on every replica), once the request has settled.
    assert!(
        h.state
            .accounting()
            .flush(std::time::Duration::from_secs(10))
            .await
    );
    let req = Request::get("/v1/tollgate/usage")
        .header(header::AUTHORIZATION, format!("Bearer {t}"))
        .body(Body::empty())
        .expect("req");
    let (s, _, v) = call(&h, req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let usage = &v["usage"];
    assert_eq!(usage["requests"], 1, "{v}");
    assert!(
        usage["input_tokens"].as_i64() > Some(0) && usage["output_tokens"].as_i64() > Some(0),
        "{v}"
    );
    assert_eq!(usage["incomplete_streams"], 0, "{v}");
}

#[tokio::test]
async fn operator_supplied_codex_metadata_is_listed_only_for_allowed_models() {
    let h = harness_with(
        "[models.\"gpt-5.5\".codex]\ndisplay_name = \"GPT-5.5 via Tollgate\"\nbase_instructions = \"B\"\npriority = 1\n\
         [models.\"o3\".codex]\ndisplay_name = \"o3\"\nbase_instructions = \"B\"\npriority = 2\n",
    ).await;
    let t = token(&h).await;
    let req = Request::get("/v1/models?client_version=0.169.0")
        .header(header::AUTHORIZATION, format!("Bearer {t}"))
        .body(Body::empty())
        .expect("req");
    let (s, _, v) = call(&h, req).await;
    assert_eq!(s, StatusCode::OK);
    let models = v["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "o3 is outside the grant: {v}");
    assert_eq!(
        models[0]["slug"], "gpt-5.5",
        "slug defaults to the table name"
    );
    assert_eq!(models[0]["display_name"], "GPT-5.5 via Tollgate");
    assert_eq!(models[0]["priority"], 1);
}

fn exchange_body(extra: &str) -> String {
    format!(
        "grant_type={}&subject_token={CRED}&subject_token_type={}{extra}",
        urlenc(tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE),
        urlenc(tollgate::exchange::TOKEN_TYPE_STATIC)
    )
}

#[tokio::test]
async fn the_token_endpoint_has_its_own_small_body_limit() {
    let h = harness().await;
    // A valid exchange padded past the endpoint's 16 KiB limit is refused, in the RFC 6749 shape, and
    // mints nothing (it used to mint with up to the proxy's 16 MiB).
    let padded = exchange_body(&format!("&scope_pad={}", "x".repeat(20 * 1024)));
    let (s, _, v) = call(&h, exchange_req(&padded)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"], "invalid_request", "{v}");
    assert!(v.get("access_token").is_none());
    // Refused before the body is read: a declared length over the limit is enough.
    let req = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::CONTENT_LENGTH, "10485760")
        .body(Body::empty())
        .expect("req");
    let (s, _, _) = call(&h, req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn token_exchanges_are_rate_limited_per_address() {
    let h = harness_tokens("exchanges_per_minute_per_address = 10\n", "").await;
    let mut statuses = Vec::new();
    let peer = |last: u8| {
        axum::extract::ConnectInfo(tollgate_broker::token::limits::PeerAddr(
            std::net::SocketAddr::from(([192, 0, 2, last], 40000)),
        ))
    };
    for _ in 0..12 {
        let mut req = exchange_req(&exchange_body(""));
        req.extensions_mut().insert(peer(1));
        let (s, headers, v) = call(&h, req).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(v["error"], "temporarily_unavailable", "{v}");
            assert!(headers.contains_key(header::RETRY_AFTER));
        }
        statuses.push(s.as_u16());
    }
    // Burst of 10 (at least 10), then refused until the clock of the limiter moves on.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses[10..], [429, 429], "{statuses:?}");
    // Another address has its own allowance.
    let mut req = exchange_req(&exchange_body(""));
    req.extensions_mut().insert(peer(2));
    assert_eq!(call(&h, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn requested_ttl_errors_name_the_parameter_and_zero_is_refused() {
    let h = harness().await;
    let (s, _, v) = call(&h, exchange_req(&exchange_body("&requested_ttl_secs=soon"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("requested_ttl_secs"),
        "{v}"
    );
    let (s, _, v) = call(&h, exchange_req(&exchange_body("&requested_ttl_secs=0"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("requested_ttl_secs")
    );
    // One second is raised to the documented minimum.
    let (s, _, v) = call(&h, exchange_req(&exchange_body("&requested_ttl_secs=1"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["expires_in"],
        tollgate_broker::token::endpoint::MIN_TTL_SECS
    );
}

#[tokio::test]
async fn an_identity_without_a_rule_gets_the_generic_refusal() {
    let h = harness().await;
    // Replace the policy with one that matches nobody, then exchange a valid credential.
    std::fs::write(
        h.state.policy_file(),
        "[[rule]]\nname = \"other\"\nmatch = { kind = \"static\", subject = \"someone-else\" }\nmodels = [\"demo\"]\n",
    )
    .expect("policy");
    h.state.reload_policy().expect("reload");
    let (s, _, v) = call(&h, exchange_req(&exchange_body(""))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "invalid_grant");
    assert_eq!(
        v["error_description"], "the subject token was not accepted",
        "{v}"
    );
}

#[tokio::test]
async fn get_on_the_responses_route_is_an_openai_shaped_405() {
    let h = harness().await;
    let t = token(&h).await;
    let req = Request::get("/v1/responses")
        .header(header::AUTHORIZATION, format!("Bearer {t}"))
        .body(Body::empty())
        .expect("req");
    let (s, _, v) = call(&h, req).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "method_not_allowed");
    // Without a token the bearer layer answers first.
    let req = Request::get("/v1/responses")
        .body(Body::empty())
        .expect("req");
    let (s, _, _) = call(&h, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_from_a_replaced_policy_gets_401_policy_changed_and_a_new_one_works() {
    let h = harness().await;
    let old = token(&h).await;
    let models = |t: &str| {
        Request::get("/v1/models")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .body(Body::empty())
            .expect("req")
    };
    assert_eq!(call(&h, models(&old)).await.0, StatusCode::OK);
    // The same content reloaded (SIGHUP, a touched file) changes nothing.
    h.clock.advance(1);
    h.state.reload_policy().expect("reload");
    assert_eq!(call(&h, models(&old)).await.0, StatusCode::OK);
    // A rule added after the one that decided the token cannot change its grant (first match wins).
    let original = std::fs::read_to_string(h.state.policy_file()).expect("policy");
    std::fs::write(
        h.state.policy_file(),
        format!("{original}[[rule]]\nname = \"later\"\nmatch = {{ kind = \"static\", subject = \"ci\" }}\nmodels = [\"demo\"]\n"),
    )
    .expect("policy");
    h.state.reload_policy().expect("reload");
    assert_eq!(call(&h, models(&old)).await.0, StatusCode::OK);
    // The deciding rule changed: the old token's grant is outdated.
    std::fs::write(
        h.state.policy_file(),
        "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\", subject = \"dev\" }\nmodels = [\"demo\"]\n",
    )
    .expect("policy");
    h.state.reload_policy().expect("reload");
    let (s, headers, v) = call(&h, models(&old)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"]["code"], "policy_changed", "{v}");
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));
    // What the helper does next: mint again, under the new policy.
    let new = token(&h).await;
    let (s, _, v) = call(&h, models(&new)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["demo"], "the new grant applies at once: {v}");
}

/// The exchange grant and the people grants share one form parser (RFC 6749 §3.2): a form body only, and
/// no parameter twice — a repeated `subject_token` could smuggle a second proof. Each refusal mints nothing.
#[tokio::test]
async fn exchange_form_rules_refuse_wrong_content_type_and_repeated_parameters() {
    let h = harness().await;
    let good = format!(
        "grant_type={}&subject_token={CRED}&subject_token_type={}",
        urlenc(tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE),
        urlenc(tollgate::exchange::TOKEN_TYPE_STATIC)
    );
    let json = Request::post("/oauth/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(good.clone()))
        .expect("req");
    let repeated = exchange_req(&format!("{good}&subject_token={CRED}"));
    for (req, want) in [
        (
            json,
            "content-type must be application/x-www-form-urlencoded",
        ),
        (repeated, "a parameter is repeated"),
    ] {
        let (s, _, v) = call(&h, req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"], "invalid_request", "{v}");
        assert_eq!(v["error_description"], want, "{v}");
        assert!(v.get("access_token").is_none(), "{v}");
    }
    // The same body, well formed, mints: the refusals above were the form rules, not the proof.
    let (s, _, v) = call(&h, exchange_req(&good)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
