//! The HTTP/2 frame decoder never panics, gives the same frames (or the same first error)
//! whatever the chunking, and never yields a payload above the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::h2::frame::{Frame, FrameDecoder, FrameError, DEFAULT_MAX_FRAME_SIZE};

fn run(input: &[u8], chunk: usize) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    let mut frames = Vec::new();
    for piece in input.chunks(chunk) {
        decoder.handle_input(piece);
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e @ FrameError::Connection { .. }) => return (frames, Some(e)),
                Err(_) => {} // stream errors: the frame is consumed, decoding goes on
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let whole = run(input, input.len().max(1));
    let split = run(input, usize::from(chunk).max(1));
    assert_eq!(whole, split);
    for frame in &whole.0 {
        if let Frame::Data { flow_len, .. } = frame {
            assert!(*flow_len <= DEFAULT_MAX_FRAME_SIZE);
        }
    }
});
