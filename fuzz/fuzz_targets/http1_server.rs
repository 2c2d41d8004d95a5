//! The HTTP/1.1 server machine fed arbitrary bytes (heads, Content-Length and chunked bodies,
//! pipelining), answering every request after reading its body: never panics, keeps its
//! buffered input and output bounded, and a rejected connection ends closed.
#![no_main]
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use palyra_proto::http1::server::{Event, Http1Server, ResponseBody, ServerConfig};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let config = ServerConfig::default();
    let mut server = Http1Server::new(config, now);
    let mut out = 0usize;
    let mut rejected = false;
    // Split points come from the data itself so chunk boundaries vary.
    let step = 1 + data.first().copied().unwrap_or(0) as usize;
    for piece in data.chunks(step) {
        if !server.wants_input() {
            break;
        }
        server.handle_input(now, piece);
        while let Some(event) = server.poll_event() {
            match event {
                Event::Request(_) => {
                    let _ = server.read_body(now, 4096);
                }
                Event::BodyEnd => {
                    let _ = server.respond(
                        now,
                        StatusCode::OK,
                        &HeaderMap::new(),
                        ResponseBody::Full(Bytes::from_static(b"ok")),
                    );
                }
                Event::Body(b) => assert!(b.len() <= data.len()),
                Event::Rejected(_) => rejected = true,
            }
        }
        while let Some(bytes) = server.poll_transmit() {
            out += bytes.len();
        }
    }
    server.handle_timeout(now + Duration::from_secs(120));
    while let Some(bytes) = server.poll_transmit() {
        out += bytes.len();
    }
    if rejected {
        assert!(server.is_closed());
    }
    // At most one small answer per request, and a request takes at least 16 bytes.
    assert!(
        out <= 512 + data.len() * 16,
        "{out} bytes out for {} in",
        data.len()
    );
});
