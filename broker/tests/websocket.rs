//! The WebSocket mode of `/v1/responses` in-process (the router served on port 0, the demo provider, a fake
//! clock): warm-up without an upstream call, an incremental turn continued from `previous_response_id`, an
//! unknown id, and the per-turn checks with time moved instead of waited for — an expired token, a revoked
//! one, and the 60-minute connection limit — each an error frame, then the connection closes.

use axum::http::header;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate_broker::app::AppState;
use tollgate_broker::clock::FakeClock;
use tollgate_broker::config::{Config, Source};
use tollgate_broker::governance::store::RevocationKind;
use tollgate_broker::routes::router;

const CRED: &str = "websocket-test-credential";
const NOW: u64 = 1_900_000_000;

struct Harness {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    clock: FakeClock,
    url: String,
}

async fn harness() -> Harness {
    harness_with("[providers.demo]\nkind = \"demo\"\n[[routes]]\nmodel = \"*\"\ntargets = [{ provider = \"demo\" }]\n")
        .await
}

/// The broker with these providers and routes.
async fn harness_with(providers: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let sha = tollgate_broker::identity::static_cred::hash_credential(CRED);
    let cfg = format!(
        "policy_file = \"policy.toml\"\n[server]\nstate_dir = \"state\"\n\
         [tokens]\nmax_ttl_secs = 7200\n[[credentials]]\nsubject = \"dev\"\nsha256 = \"{sha}\"\n\
         {providers}\
         [pricing]\nunpriced = \"charge\"\nunpriced_price = {{ input = \"1.25\", output = \"10\" }}\n"
    );
    std::fs::write(dir.path().join("broker.toml"), &cfg).expect("cfg");
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[rule]]\nname = \"dev\"\nmatch = { kind = \"static\", subject = \"dev\" }\nmodels = [\"gpt-5*\"]\nmax_ttl_secs = 7200\n",
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let app = router(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Harness {
        _dir: dir,
        state,
        clock,
        url,
    }
}

async fn token(h: &Harness, ttl: u64) -> (String, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/oauth/token", h.url))
        .form(&[
            ("grant_type", tollgate::exchange::GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", CRED),
            ("subject_token_type", tollgate::exchange::TOKEN_TYPE_STATIC),
            ("requested_ttl_secs", &ttl.to_string()),
        ])
        .send()
        .await
        .expect("mint");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let t = v["access_token"].as_str().expect("token").to_string();
    let claims = t.split('.').nth(1).expect("jwt");
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .expect("b64"),
    )
    .expect("claims");
    (t, claims["jti"].as_str().expect("jti").to_string())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(h: &Harness, token: &str) -> (Socket, String) {
    let mut req = format!("ws://{}/v1/responses", h.url)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("hv"),
    );
    req.headers_mut()
        .insert("x-codex-turn-state", "ts-123".parse().expect("hv"));
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let state = resp.headers()["x-codex-turn-state"]
        .to_str()
        .expect("turn state")
        .to_string();
    (ws, state)
}

/// Send one frame and read events until a terminal one (or an error frame, or the end).
async fn turn(ws: &mut Socket, frame: Value) -> Vec<Value> {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    let mut events = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).expect("event json");
        let ty = v["type"].as_str().unwrap_or_default().to_string();
        events.push(v);
        if matches!(
            ty.as_str(),
            "response.completed" | "response.failed" | "response.incomplete" | "error"
        ) {
            break;
        }
    }
    events
}

async fn closed(ws: &mut Socket) -> bool {
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await,
        Ok(None | Some(Ok(Message::Close(_))) | Some(Err(_)))
    )
}

fn user(text: &str) -> Value {
    json!([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_then_incremental_turns_then_each_per_turn_check_ends_the_connection() {
    let h = harness().await;
    let (t, _) = token(&h, 7200).await;
    let (mut ws, state) = connect(&h, &t).await;
    assert_eq!(state, "ts-123", "the turn state is echoed");

    // Warm-up: created and completed, no upstream call, nothing charged.
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "gpt-5.5", "input": user("first"), "generate": false}),
    )
    .await;
    let types: Vec<&str> = ev.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["response.created", "response.completed"]);
    let warm = ev[1]["response"]["id"].as_str().expect("id").to_string();

    // The next turn sends only its new input: the upstream gets both messages.
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "gpt-5.5", "previous_response_id": warm, "input": user("second")}),
    )
    .await;
    let done = ev.last().expect("events");
    assert_eq!(done["type"], "response.completed", "{ev:?}");
    let text = done["response"]["output"].to_string();
    assert!(text.contains("demo provider"), "{text}");
    let second = done["response"]["id"].as_str().expect("id").to_string();

    // And the one after continues from that answer.
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "gpt-5.5", "previous_response_id": second, "input": user("third")}),
    )
    .await;
    assert_eq!(ev.last().expect("events")["type"], "response.completed");

    // An id this connection never answered: an error frame; the connection stays.
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "gpt-5.5", "previous_response_id": "resp_nope", "input": user("x")}),
    )
    .await;
    assert_eq!(ev[0]["error"]["code"], "previous_response_not_found");
    // A model outside the grant: refused as over HTTP, as an error frame.
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "o3", "input": user("x")}),
    )
    .await;
    assert_eq!(
        (ev[0]["type"].as_str(), ev[0]["status"].as_u64()),
        (Some("error"), Some(400))
    );
    assert_eq!(ev[0]["error"]["code"], "model_not_allowed");
    // Two generating turns were accounted, as two POSTs would be.
    let usage: Value = reqwest::Client::new()
        .get(format!("http://{}/v1/tollgate/usage", h.url))
        .bearer_auth(&t)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    assert_eq!(usage["usage"]["requests"], 2, "{usage}");

    // 60 minutes later (the token is still valid): the limit, then the connection closes.
    h.clock.advance(3600);
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "gpt-5.5", "input": user("late")}),
    )
    .await;
    assert_eq!(ev[0]["error"]["code"], "websocket_connection_limit_reached");
    assert!(closed(&mut ws).await);

    // A token that expires while connected: 401 on the next turn, then closed.
    let (short, _) = token(&h, 60).await;
    let (mut ws, _) = connect(&h, &short).await;
    h.clock.advance(61 + h.state.tokens().leeway_secs);
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "gpt-5.5", "input": user("x")}),
    )
    .await;
    assert_eq!(
        (ev[0]["status"].as_u64(), ev[0]["error"]["code"].as_str()),
        (Some(401), Some("expired"))
    );
    assert!(closed(&mut ws).await);

    // A token revoked while connected: the same.
    let (t, jti) = token(&h, 600).await;
    let (mut ws, _) = connect(&h, &t).await;
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "gpt-5.5", "input": user("ok")}),
    )
    .await;
    assert_eq!(ev.last().expect("events")["type"], "response.completed");
    h.state
        .governance()
        .revoke(RevocationKind::Jti, &jti)
        .await
        .expect("revoke");
    let ev = turn(
        &mut ws,
        json!({"type": "response.create", "model": "gpt-5.5", "input": user("x")}),
    )
    .await;
    assert_eq!(ev[0]["status"].as_u64(), Some(401), "{ev:?}");
    assert!(closed(&mut ws).await);

    // A plain GET is still an OpenAI-shaped 405.
    let (t, _) = token(&h, 600).await;
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/responses", h.url))
        .bearer_auth(&t)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405);
}

/// Codex 0.171.0's own WebSocket session (`testdata/codex-0.171/websocket_session.json`, recorded by
/// `record.sh` from the real CLI: its handshake headers and its three `response.create` frames — the
/// warm-up, the turn, the tool call's follow-up), replayed through an `openai` upstream. Each turn reaches
/// the upstream as the POST Codex would have sent over HTTP: the whole conversation (the warm-up's input,
/// the turn's, the answer, the tool output) and nothing of the WebSocket framing (`type`, `generate`,
/// `previous_response_id`, `client_metadata`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_0171_websocket_frames_replay_as_full_posts_upstream() {
    use tollgate_testkit::mock::{self, MockConfig};
    let up = mock::spawn(MockConfig::default()).await;
    let h = harness_with(&format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\n[[routes]]\nmodel = \"*\"\ntargets = [{{ provider = \"up\" }}]\n",
        up.base_url()
    ))
    .await;
    let (t, _) = token(&h, 7200).await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/testdata/codex-0.171/websocket_session.json"
    );
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    assert_eq!(fx["codex_version"], "0.171.0");
    let rec = &fx["request"];
    assert_eq!(
        rec["headers"]["openai-beta"],
        "responses_websockets=2026-02-06"
    );

    // The handshake as Codex sent it, with our token (the upgrade's own headers are the client library's).
    let mut req = format!("ws://{}/v1/responses", h.url)
        .into_client_request()
        .expect("request");
    for (k, v) in rec["headers"].as_object().expect("headers") {
        if matches!(
            k.as_str(),
            "authorization"
                | "host"
                | "connection"
                | "upgrade"
                | "sec-websocket-key"
                | "sec-websocket-version"
                | "sec-websocket-extensions"
        ) {
            continue;
        }
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.as_str().expect("str").parse().expect("value"),
        );
    }
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {t}").parse().expect("hv"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");

    let frames = rec["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 3, "warm-up, turn, follow-up");
    assert_eq!(frames[0]["generate"], false);
    let input = |f: &Value| f["input"].as_array().expect("input").clone();

    // Warm-up: answered by the broker, nothing upstream.
    let ev = turn(&mut ws, frames[0].clone()).await;
    let types: Vec<&str> = ev
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, ["response.created", "response.completed"]);
    assert!(up.requests_to("/v1/responses").is_empty());
    let warm = ev[1]["response"]["id"].as_str().expect("id").to_string();

    // The turn, continued from the warm-up: the upstream gets both inputs, as one POST.
    let mut f1 = frames[1].clone();
    f1["previous_response_id"] = json!(warm);
    let ev = turn(&mut ws, f1).await;
    let done = ev.last().expect("events");
    assert_eq!(done["type"], "response.completed", "{ev:?}");
    let posts = up.requests_to("/v1/responses");
    assert_eq!(posts.len(), 1);
    let mut expected = input(&frames[0]);
    expected.extend(input(&frames[1]));
    assert_eq!(posts[0].body["input"], Value::Array(expected.clone()));
    for k in [
        "type",
        "generate",
        "previous_response_id",
        "client_metadata",
    ] {
        assert!(posts[0].body.get(k).is_none(), "{k} went upstream");
    }
    assert_eq!(posts[0].body["stream"], true);
    assert_eq!(
        posts[0].body["tools"], frames[1]["tools"],
        "tools unchanged"
    );
    let r1 = done["response"]["id"].as_str().expect("id").to_string();
    expected.extend(
        done["response"]["output"]
            .as_array()
            .expect("output")
            .clone(),
    );

    // The follow-up (the tool's output), continued from the turn: everything so far, then the output.
    let mut f2 = frames[2].clone();
    f2["previous_response_id"] = json!(r1);
    let ev = turn(&mut ws, f2).await;
    assert_eq!(
        ev.last().expect("events")["type"],
        "response.completed",
        "{ev:?}"
    );
    let posts = up.requests_to("/v1/responses");
    assert_eq!(posts.len(), 2);
    expected.extend(input(&frames[2]));
    assert_eq!(posts[1].body["input"], Value::Array(expected));
    assert!(posts[1].body.get("client_metadata").is_none());
}
