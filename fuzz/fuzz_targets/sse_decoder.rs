//! The event-stream decoder never panics, never holds more than its limits, and gives the same
//! events (and the same error) whatever the chunking (the first byte picks the chunk size).
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::sse::{SseDecoder, SseEvent, SseLimits};

// The queue limit is unit-tested; here both decoders may queue all they decode.
const LIMITS: SseLimits = SseLimits {
    max_line_bytes: 512,
    max_event_bytes: 2048,
    max_queued_events: usize::MAX,
};

fn drain(decoder: &mut SseDecoder, out: &mut Vec<SseEvent>) {
    while let Some(event) = decoder.poll_event() {
        assert!(event.data.len() <= LIMITS.max_event_bytes);
        out.push(event);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let (mut whole, mut whole_events) = (SseDecoder::new(LIMITS), Vec::new());
    let whole_result = whole.handle_input(input);
    drain(&mut whole, &mut whole_events);
    let (mut split, mut split_events) = (SseDecoder::new(LIMITS), Vec::new());
    let mut split_result = Ok(());
    for piece in input.chunks(chunk) {
        split_result = split.handle_input(piece);
        drain(&mut split, &mut split_events);
        if split_result.is_err() {
            break;
        }
    }
    assert_eq!(whole_result, split_result);
    assert_eq!(whole_events, split_events);
    if whole_result.is_ok() {
        assert_eq!(whole.finish(), split.finish());
    }
});
