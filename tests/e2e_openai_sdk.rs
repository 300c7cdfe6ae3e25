//! The official OpenAI Python SDK as a second real client.

mod support;

use support::*;
use tollgate_testkit::{MockConfig, spawn};

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
base, token = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key=token, max_retries=0)
out = {}

# Responses, streaming.
events = []
with client.responses.stream(model="gpt-5.5", input="sdk streaming hello") as stream:
    for ev in stream:
        events.append(ev.type)
    final = stream.get_final_response()
out["stream_events"] = events
out["stream_text"] = final.output_text
out["stream_usage"] = final.usage.input_tokens

# Responses, stream=True raw iterator.
raw = [e.type for e in client.responses.create(model="gpt-5.5", input="raw iterator", stream=True)]
out["raw_events"] = raw

# Chat Completions, plain and streaming.
chat = client.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "sdk chat hello"}])
out["chat_text"] = chat.choices[0].message.content
out["chat_usage"] = chat.usage.prompt_tokens
chunks = list(client.chat.completions.create(model="gpt-5.5", messages=[{"role": "user", "content": "sdk chat stream"}], stream=True))
out["chat_stream_text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

# Errors surface as the SDK's typed exceptions with our message.
try:
    client.responses.create(model="o3", input="nope")
except Exception as e:
    out["forbidden"] = [type(e).__name__, getattr(e, "status_code", None), str(e)]
bad = OpenAI(base_url=base, api_key="not-a-token", max_retries=0)
try:
    bad.models.list()
except Exception as e:
    out["unauthorized"] = [type(e).__name__, getattr(e, "status_code", None)]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_streams_and_chats_through_the_proxy() {
    let mock = spawn(MockConfig {
        api_key: Some(UPSTREAM_KEY.into()),
        ..MockConfig::default()
    })
    .await;
    let broker = Broker::start(BrokerSpec::with_mock(&mock.base_url(), &["gpt-5*"])).await;
    let token = broker.token().await;
    let out = tokio::process::Command::new(python_bin())
        .arg("-c")
        .arg(SCRIPT)
        .arg(format!("{}/v1", broker.url))
        .arg(&token)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sdk script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");

    let events: Vec<&str> = v["stream_events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(events.first(), Some(&"response.created"), "{events:?}");
    assert_eq!(events.last(), Some(&"response.completed"), "{events:?}");
    assert!(events.contains(&"response.output_text.delta"));
    assert!(
        v["stream_text"]
            .as_str()
            .unwrap_or_default()
            .contains("sdk streaming hello"),
        "{v}"
    );
    assert!(v["stream_usage"].as_u64().unwrap_or_default() > 0);
    assert_eq!(
        v["raw_events"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|e| e.as_str()),
        Some("response.completed")
    );
    assert!(
        v["chat_text"]
            .as_str()
            .unwrap_or_default()
            .contains("sdk chat hello"),
        "{v}"
    );
    assert!(v["chat_usage"].as_u64().unwrap_or_default() > 0);
    assert!(
        v["chat_stream_text"]
            .as_str()
            .unwrap_or_default()
            .contains("sdk chat stream"),
        "{v}"
    );
    assert_eq!(v["forbidden"][0], "BadRequestError", "{v}");
    assert_eq!(v["forbidden"][1], 400);
    assert!(
        v["forbidden"][2]
            .as_str()
            .unwrap_or_default()
            .contains("'o3' is not allowed"),
        "{v}"
    );
    assert_eq!(v["unauthorized"][0], "AuthenticationError", "{v}");
    assert_eq!(v["unauthorized"][1], 401);

    // The streamed chat completion reported usage to the broker even though the client did not ask for it.
    let chat_posts = mock.requests_to("/v1/chat/completions");
    let streamed = chat_posts.iter().find(|r| r.stream).expect("streamed chat");
    assert_eq!(streamed.body["stream_options"]["include_usage"], true);
    let usage = broker.usage(&token).await;
    assert_eq!(
        usage["usage"]["input_tokens"],
        mock.total_reported_usage().input_tokens,
        "{usage}"
    );
}
