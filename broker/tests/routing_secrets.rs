//! Upstream keys never reach a log line (captured at trace level, every crate), an error body or a response
//! header — on success, on upstream failures, on refused keys and on translated providers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod routing_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use tollgate_testkit::{Fault, MockConfig, spawn};

const ENV_KEY: &str = "sk-env-key-DO-NOT-LEAK-3f9a0c";
const FILE_KEY: &str = "sk-file-key-DO-NOT-LEAK-77d1e2";
const AZURE_KEY: &str = "azure-key-DO-NOT-LEAK-a61b55";
const ANT_KEY: &str = "sk-ant-key-DO-NOT-LEAK-0b9e44";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_keys_never_reach_logs_bodies_or_headers() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let openai = spawn(MockConfig {
        api_key: Some(ENV_KEY.into()),
        ..MockConfig::default()
    })
    .await;
    let chat = spawn(MockConfig {
        api_key: Some(FILE_KEY.into()),
        ..MockConfig::default()
    })
    .await;
    let azure = spawn(MockConfig {
        api_key: Some(AZURE_KEY.into()),
        ..MockConfig::default()
    })
    .await;
    // This upstream expects another key: ours is refused.
    let ant = spawn(MockConfig {
        api_key: Some("another-key".into()),
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("chat.key");
    std::fs::write(&key_file, format!("{FILE_KEY}\n")).unwrap();
    let cfg = format!(
        "[routing]\nbreaker_failures = 100\n\
         [providers.openai]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"OPENAI_KEY\"\n\
         [providers.chat]\nkind = \"openai-chat\"\nbase_url = \"{}\"\napi_key_file = \"{}\"\n\
         [providers.azure]\nkind = \"azure-openai\"\nbase_url = \"http://{}\"\napi_key_env = \"AZURE_KEY\"\napi_version = \"2025-04-01-preview\"\n\
         [providers.ant]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"ANT_KEY\"\n\
         [[routes]]\nmodel = \"gpt-5.5\"\ntargets = [{{ provider = \"openai\" }}, {{ provider = \"chat\", model = \"llama\" }}]\n\
         [[routes]]\nmodel = \"azure-model\"\ntargets = [{{ provider = \"azure\", model = \"my-deployment\" }}]\n\
         [[routes]]\nmodel = \"claude\"\ntargets = [{{ provider = \"ant\" }}]\n",
        openai.base_url(),
        chat.base_url(),
        key_file.display(),
        azure.addr,
        ant.base_url()
    );
    let broker = routing_support::start(
        &cfg,
        &[
            ("OPENAI_KEY", ENV_KEY),
            ("AZURE_KEY", AZURE_KEY),
            ("ANT_KEY", ANT_KEY),
        ],
    )
    .await;
    let mut answers = Vec::new();

    answers.push(broker.responses("gpt-5.5", "hello").await);
    assert_eq!(answers.last().unwrap().status, 200);
    openai.push_fault(Fault::status(500));
    answers.push(broker.responses("gpt-5.5", "fail over to chat").await);
    assert_eq!(
        answers.last().unwrap().header("x-tollgate-target"),
        Some("chat/llama")
    );
    openai.push_fault(Fault::drop_after_events(2));
    answers.push(broker.responses("gpt-5.5", "mid-stream drop").await);
    openai.push_fault(Fault {
        status: Some(400),
        message: Some("bad request".into()),
        ..Fault::default()
    });
    answers.push(broker.responses("gpt-5.5", "client error").await);
    answers.push(broker.responses("claude", "refused key").await);
    assert_eq!(
        answers.last().unwrap().status,
        502,
        "a refused upstream key is a 502, never a 401"
    );
    answers.push(broker.responses("azure-model", "azure").await);

    // Azure: v1 URL, api-version query, api-key header, no bearer.
    let az = &azure.requests()[0];
    assert_eq!(az.path, "/openai/v1/responses");
    assert_eq!(az.query.as_deref(), Some("api-version=2025-04-01-preview"));
    assert_eq!(az.header("api-key"), Some(AZURE_KEY));
    assert!(az.header("authorization").is_none());
    assert_eq!(az.body["model"], "my-deployment");
    // The upstream saw the keys (so they were really in play).
    assert_eq!(
        openai.requests()[0].header("authorization"),
        Some(format!("Bearer {ENV_KEY}").as_str())
    );
    assert_eq!(
        chat.requests()[0].header("authorization"),
        Some(format!("Bearer {FILE_KEY}").as_str())
    );
    assert_eq!(ant.requests()[0].header("x-api-key"), Some(ANT_KEY));

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("upstream attempt failed"),
        "the capture works"
    );
    for key in [ENV_KEY, FILE_KEY, AZURE_KEY, ANT_KEY] {
        assert!(!logs.contains(key), "key {}… in the logs", &key[..10]);
        for a in &answers {
            assert!(
                !a.body.contains(key),
                "key {}… in a response body",
                &key[..10]
            );
            for (name, v) in &a.headers {
                assert!(
                    !v.to_str().unwrap_or("").contains(key),
                    "key in response header {name}"
                );
            }
        }
    }
}
