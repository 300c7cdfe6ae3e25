//! Policy parsing (and, when it parses, deciding for a few identities): never a panic; errors located.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_broker::config::{ConfigError, Source};
use tollgate_broker::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    let source = Source {
        path: "/nonexistent-tollgate-fuzz/policy.toml".into(),
        text: text.to_string(),
    };
    match Policy::from_source(&source) {
        Ok(policy) => tollgate_fuzz::decide_some(&policy),
        Err(ConfigError::Invalid { line, col, .. }) => {
            assert!(
                line >= 1 && line <= lines + 1,
                "line {line} outside 1..={lines}"
            );
            assert!(col >= 1);
        }
        Err(_) => {}
    }
});
