//! The ACP line reader never panics, never keeps a line over its limit, and reads the same
//! messages whatever the chunking (the first byte picks the chunk size).
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::jsonrpc::{LineReader, Message};

fn read(input: &[u8], chunk: usize) -> Vec<Message> {
    let mut reader = LineReader::new(256);
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        reader.handle_input(piece);
        while let Some(m) = reader.poll_message() {
            out.push(m);
        }
    }
    reader.handle_end();
    while let Some(m) = reader.poll_message() {
        out.push(m);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let whole = read(input, input.len().max(1));
    let split = read(input, usize::from(chunk).max(1));
    assert_eq!(whole, split);
});
