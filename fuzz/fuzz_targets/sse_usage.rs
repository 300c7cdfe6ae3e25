//! The SSE usage decoder sees upstream bytes verbatim. Whatever arrives, it must not panic, and what it
//! concludes (usage, terminal event, streamed text bytes) must not depend on how the bytes were chunked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::sse_usage(data);
});
