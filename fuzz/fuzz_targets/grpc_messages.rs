//! gRPC message framing never panics, never yields a message above the cap, and gives the same
//! messages (or the same status) whatever the chunking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::grpc::codec::MessageDecoder;

fn run(input: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Option<palyra_proto::grpc::Status>) {
    let mut decoder = MessageDecoder::new(1024);
    let mut messages = Vec::new();
    for piece in input.chunks(chunk) {
        decoder.handle_input(piece);
        loop {
            match decoder.poll_message() {
                Ok(Some(m)) => {
                    assert!(m.len() <= 1024);
                    messages.push(m.to_vec());
                }
                Ok(None) => break,
                Err(status) => return (messages, Some(status)),
            }
        }
    }
    (messages, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    assert_eq!(
        run(input, input.len().max(1)),
        run(input, usize::from(chunk).max(1))
    );
    let _ = palyra_proto::grpc::codec::percent_decode(input);
    let _ = palyra_proto::grpc::codec::parse_timeout(input);
    let _ = palyra_proto::grpc::codec::base64_decode(input);
});
