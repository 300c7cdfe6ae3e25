//! `POST /v1/responses` and `/v1/chat/completions` with a valid token and an arbitrary body, through
//! the real router to the built-in demo provider: an OpenAI-shaped answer or error, never a panic or 500.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::proxy_request(data);
});
