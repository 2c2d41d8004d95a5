//! The HPACK decoder never panics, never grows its table past the limit, and whatever it
//! accepts re-encodes and decodes to the same fields.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::h2::hpack::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into two blocks decoded with shared state.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(split).min(rest.len());
    let mut decoder = Decoder::new(4096);
    for block in [&rest[..cut], &rest[cut..]] {
        match decoder.decode(block, 16 * 1024) {
            Ok(fields) => {
                let mut encoder = Encoder::new(4096);
                let mut out = Vec::new();
                encoder.encode(&fields, &mut out);
                let again = Decoder::new(4096)
                    .decode(&out, usize::MAX)
                    .expect("own encoding decodes");
                assert_eq!(again.len(), fields.len());
                for (a, b) in again.iter().zip(&fields) {
                    assert_eq!((&a.name, &a.value), (&b.name, &b.value));
                }
            }
            Err(_) => break,
        }
        assert!(decoder.table_size() <= 4096);
    }
});
