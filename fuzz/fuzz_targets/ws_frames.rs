//! The WebSocket machine fed arbitrary bytes after an upgrade (frames, fragments, control
//! frames, close): never panics, never reports a message over the limit, output stays bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::ws::{WsConfig, WsConnection, WsEvent};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let config = WsConfig {
        max_message: 4096,
        max_frame: 1024,
        ..WsConfig::default()
    };
    let (first, rest) = data.split_at(data.len().min(7));
    let mut ws = WsConnection::new(config, now, first);
    let mut out = 0usize;
    for piece in rest.chunks(1 + data.len() % 97) {
        ws.handle_input(now, piece);
        while let Some(event) = ws.poll_event() {
            match event {
                WsEvent::Text(t) => {
                    assert!(t.len() <= config.max_message);
                    ws.send_text(&t);
                }
                WsEvent::Binary(b) => {
                    assert!(b.len() <= config.max_message);
                    ws.send_binary(b);
                }
                WsEvent::Closed { .. } => {}
            }
        }
        while let Some(bytes) = ws.poll_transmit() {
            out += bytes.len();
        }
    }
    ws.handle_timeout(now + Duration::from_secs(100));
    while let Some(bytes) = ws.poll_transmit() {
        out += bytes.len();
    }
    // Echoes plus control answers: never more than a small multiple of the input.
    assert!(
        out <= 256 + data.len() * 2,
        "{out} out for {} in",
        data.len()
    );
});
