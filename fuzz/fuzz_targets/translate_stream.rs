//! Upstream SSE bytes (Chat chunks or Anthropic Messages events) through the streaming translators, whole
//! and cut at arbitrary points: the same outcome and bytes for every chunking, well-formed Responses SSE,
//! and a terminal event the proxy's usage decoder agrees with.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::translate_stream(data);
});
