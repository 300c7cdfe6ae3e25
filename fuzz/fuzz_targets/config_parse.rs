//! Broker config parsing: arbitrary TOML must give a `Config` or a located error, never a panic, and a
//! located error must point inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use tollgate_broker::config::{Config, ConfigError, Source};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    let source = Source {
        path: "/nonexistent-tollgate-fuzz/broker.toml".into(),
        text: text.to_string(),
    };
    let env: BTreeMap<String, String> = BTreeMap::new();
    if let Err(ConfigError::Invalid { line, col, .. }) = Config::from_source(source, &env) {
        assert!(
            line >= 1 && line <= lines + 1,
            "line {line} outside 1..={lines}"
        );
        assert!(col >= 1);
    }
});
