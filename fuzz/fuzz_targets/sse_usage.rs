//! The SSE usage decoder sees upstream bytes verbatim. Whatever arrives, it must not panic, and what it
//! concludes (usage, terminal event, streamed text bytes) must not depend on how the bytes were chunked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_broker::usage::{SseUsageDecoder, Wire};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let wire = if data[0] & 1 == 0 {
        Wire::Responses
    } else {
        Wire::Chat
    };
    let split_seed = data[1] as usize;
    let bytes = &data[2..];

    let mut whole = SseUsageDecoder::new(wire);
    whole.feed(bytes);
    let end_whole = whole.finish();

    // Same bytes, cut into pieces of varying size.
    let mut pieces = SseUsageDecoder::new(wire);
    let mut i = 0;
    let mut step = split_seed % 7 + 1;
    while i < bytes.len() {
        let j = (i + step).min(bytes.len());
        pieces.feed(&bytes[i..j]);
        i = j;
        step = (step * 5 + 3) % 11 + 1;
    }
    let end_pieces = pieces.finish();

    assert_eq!(end_whole, end_pieces);
    assert_eq!(whole.usage, pieces.usage);
    assert_eq!(whole.output_text_bytes, pieces.output_text_bytes);
    assert_eq!(whole.events, pieces.events);
});
