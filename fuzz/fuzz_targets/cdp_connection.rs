//! The DevTools-protocol connection never panics on what a browser sends, answers every command
//! at most once, and gives the same events and counters whatever the chunking (the first byte
//! picks the chunk size).
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::cdp::{CdpConfig, CdpConnection, CdpEvent, CommandId};
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn connection(now: Instant) -> CdpConnection {
    let mut c = CdpConnection::new(CdpConfig {
        max_message: 256,
        max_pending: 8,
        ..CdpConfig::default()
    });
    for i in 0..8 {
        let session = (i % 2 == 1).then_some("S");
        let _ = c.send_command(now, session, "Runtime.evaluate", Value::Null, Duration::from_secs(1));
    }
    c
}

fn drain(c: &mut CdpConnection, out: &mut Vec<CdpEvent>) {
    while let Some(event) = c.poll_event() {
        out.push(event);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let now = Instant::now();
    let (mut whole, mut whole_events) = (connection(now), Vec::new());
    whole.handle_input(now, input);
    drain(&mut whole, &mut whole_events);
    let (mut split, mut split_events) = (connection(now), Vec::new());
    for piece in input.chunks(chunk) {
        split.handle_input(now, piece);
        drain(&mut split, &mut split_events);
    }
    assert_eq!(whole_events, split_events);
    assert_eq!(whole.stats(), split.stats());
    // Every command is answered once, even when the browser goes away.
    whole.handle_eof();
    drain(&mut whole, &mut whole_events);
    let mut answered = HashSet::new();
    for event in &whole_events {
        if let CdpEvent::Response { id, .. } = event {
            assert!(answered.insert(*id), "{id:?} answered twice");
        }
    }
    assert_eq!(answered.len(), 8);
    assert!(answered.iter().all(|CommandId(n)| (1..=8).contains(n)));
});
