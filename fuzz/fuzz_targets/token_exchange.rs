//! `POST /oauth/token` with an arbitrary form body, through the real router: the answer is 200 with a
//! token or an RFC 6749 error (400/401/503) in JSON, never a 5xx from a parse bug, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::token_exchange(data);
});
