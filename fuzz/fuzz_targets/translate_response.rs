//! A non-streamed upstream answer (Chat completion or Anthropic message, first byte) through the response
//! translation: a well-formed Responses object whose usage, read the way metering reads it, is the
//! upstream's.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::translate_response(data);
});
