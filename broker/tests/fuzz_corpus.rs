//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/`) and crash regressions
//! (`fuzz/regressions/<target>/`) through the same target functions the libFuzzer binaries run
//! (`fuzz/src/lib.rs`, included below), on the stable toolchain. A property that a fuzz run once broke
//! fails here, in CI, without nightly.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every input committed for `target`: seeds and regressions. Fails if there are none, so a renamed
/// folder cannot silently turn the test into a no-op.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.expect("dir entry").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("read input");
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    assert!(
        !out.is_empty(),
        "no committed inputs for fuzz target {target}"
    );
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    for (path, bytes) in inputs(target) {
        let r = std::panic::catch_unwind(|| f(&bytes));
        assert!(
            r.is_ok(),
            "fuzz target {target} fails on {}",
            path.display()
        );
    }
}

#[test]
fn fuzz_corpus_config_parse() {
    replay("config_parse", targets::config_parse);
}

#[test]
fn fuzz_corpus_policy_parse() {
    replay("policy_parse", targets::policy_parse);
}

#[test]
fn fuzz_corpus_sse_usage() {
    replay("sse_usage", targets::sse_usage);
}

#[test]
fn fuzz_corpus_token_exchange() {
    replay("token_exchange", targets::token_exchange);
}

#[test]
fn fuzz_corpus_proxy_request() {
    replay("proxy_request", targets::proxy_request);
}

#[test]
fn fuzz_corpus_translate_request() {
    replay("translate_request", targets::translate_request);
}

#[test]
fn fuzz_corpus_translate_response() {
    replay("translate_response", targets::translate_response);
}

#[test]
fn fuzz_corpus_translate_stream() {
    replay("translate_stream", targets::translate_stream);
}
