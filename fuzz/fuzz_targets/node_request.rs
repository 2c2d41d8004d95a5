//! Request JSON parsing never panics; anything it accepts round-trips through the wire form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::node::{parse_request, RequestFrame};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        let again = parse_request(&RequestFrame::from_request(&request).to_json());
        assert_eq!(again.as_ref(), Ok(&request));
    }
});
