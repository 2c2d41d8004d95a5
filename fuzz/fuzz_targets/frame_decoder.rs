//! The frame decoder never panics, never buffers more than the limit, and gives the same frames
//! whatever the chunking (the first byte picks the chunk size).
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::frame::FrameDecoder;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut whole = FrameDecoder::new(MAX);
    let whole_result = whole.handle_input(input);
    let mut split = FrameDecoder::new(MAX);
    let mut split_result = Ok(());
    for piece in input.chunks(chunk) {
        split_result = split.handle_input(piece);
        assert!(split.buffered_len() <= input.len());
        if split_result.is_err() {
            break;
        }
    }
    assert_eq!(whole_result, split_result);
    loop {
        let (a, b) = (whole.poll_frame(), split.poll_frame());
        assert_eq!(a, b);
        match a {
            Some(frame) => assert!(frame.len() <= MAX),
            None => break,
        }
    }
    assert_eq!(whole.finish(), split.finish());
});
