//! The per-stream machine never panics on any bytes in any chunking, and always either yields one
//! request or queues exactly one error frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::node::{RequestStream, StreamEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut stream = RequestStream::new(1024);
    let pieces: Vec<&[u8]> = input.chunks(chunk).collect();
    let mut events = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        stream.handle_input(piece, i + 1 == pieces.len());
        events.extend(stream.poll_event());
    }
    if pieces.is_empty() {
        stream.handle_input(&[], true);
        events.extend(stream.poll_event());
    }
    assert!(events.len() <= 1, "{events:?}");
    if let Some(StreamEvent::Refused { .. }) = events.first() {
        assert!(stream.has_output());
        assert!(stream.is_done());
    }
});
