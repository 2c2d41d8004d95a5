//! Response parsing (client side) never panics; accepted frames round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::node::ResponseFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ResponseFrame::parse(data) {
        let again = ResponseFrame::parse(&frame.to_json()).expect("own output parses");
        assert_eq!(again.seq, frame.seq);
        assert_eq!(again.kind, frame.kind);
    }
});
