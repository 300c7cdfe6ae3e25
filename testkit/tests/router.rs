//! In-process router tests with `oneshot` (no socket).
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use tollgate_testkit::mock::{MockConfig, MockState, app};
use tower::ServiceExt;

#[tokio::test]
async fn oneshot_chat_completion() {
    let state = MockState::new(MockConfig::default());
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": "m", "messages": [{"role": "user", "content": "hey"}]}).to_string(),
        ))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply to: hey");
    assert_eq!(state.requests().len(), 1);

    let req = Request::post("/v1/nope").body(Body::empty()).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 404);
}
