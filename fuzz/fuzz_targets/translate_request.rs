//! A Responses request body through the Chat and the Anthropic request translations: a typed error exactly
//! when the body is not an object or `input` has the wrong type; otherwise valid JSON that the upstream API
//! accepts structurally (roles, alternation, non-empty text blocks, ≤ 4 cache breakpoints, thinking budget).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::translate_request(data);
});
