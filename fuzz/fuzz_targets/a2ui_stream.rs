//! The console stream machine alone, answered by a tiny in-memory log: client messages (one
//! per input line) interleaved with stored records (lines starting with `#`, the rest of the
//! line being the routing tag), socket backlog and time. Never panics; nothing is sent after
//! the close; records reach the client in seq order and the cursor never goes back; answers
//! never outnumber requests.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use palyra_proto::a2ui::state::{Boots, Published};
use palyra_proto::a2ui::stream::{PatchStream, Role, Start, StreamEvent, Transmit, LOW_WATER};
use palyra_proto::node::log::StoredEvent;
use std::sync::Arc;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let role = match data.first() {
        Some(b) if b % 2 == 0 => Role::Agent("fuzz".into()),
        _ => Role::Console,
    };
    let mut s = PatchStream::new(role, start);
    let mut log: Vec<StoredEvent> = Vec::new();
    let mut now = start;
    let mut closed = false;
    let mut last_cursor = 0u64;
    let mut requests = 0usize;
    let mut answers = 0usize;
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        now += Duration::from_millis(u64::from(line.len() as u8) * 50);
        if let Some(tag) = line.strip_prefix(b"#") {
            let seq = log.len() as u64 + 1;
            let tag = String::from_utf8_lossy(tag).into_owned();
            log.push(StoredEvent {
                seq,
                to: (!tag.is_empty()).then(|| Arc::from(tag.as_str())),
                body: Bytes::from(format!(
                    "{{\"type\":\"chat.delta\",\"message_id\":\"m\",\"text\":\"{seq}\"}}"
                )),
            });
            s.handle_log_grown();
        } else if let Ok(text) = std::str::from_utf8(line) {
            requests += 1;
            s.handle_text(now, text);
        } else {
            s.handle_binary(now);
        }
        if s.poll_timeout().is_some_and(|t| now >= t) {
            s.handle_timeout(now);
        }
        let backlog = if i % 3 == 2 { LOW_WATER } else { 0 };
        loop {
            s.handle_backlog(backlog);
            let mut sent = false;
            while let Some(t) = s.poll_transmit() {
                sent = true;
                assert!(!closed, "sent after the close: {t:?}");
                match t {
                    Transmit::Close { .. } => closed = true,
                    Transmit::Text(text) => {
                        let msg: serde_json::Value =
                            serde_json::from_slice(&text).expect("JSON out");
                        if matches!(msg["type"].as_str(), Some("ack" | "error" | "pong")) {
                            answers += 1;
                        }
                    }
                }
            }
            if let Some(c) = s.cursor() {
                assert!(
                    c >= last_cursor,
                    "cursor went back from {last_cursor} to {c}"
                );
                last_cursor = c;
            }
            if sent {
                continue;
            }
            match s.poll_event() {
                None => break,
                Some(StreamEvent::Hello { resume, .. }) => {
                    let start = match resume {
                        Some((_, seq)) if seq <= log.len() as u64 => Start::From(seq),
                        _ => Start::Snapshot {
                            seq: log.len() as u64,
                            reason: "fresh",
                            messages: Vec::new(),
                        },
                    };
                    s.welcome(Boots::new(vec![(1, "fuzz".into())]), start);
                }
                Some(StreamEvent::Publish { ticket, commands }) => {
                    let results = commands
                        .iter()
                        .enumerate()
                        .map(|(n, _)| {
                            Ok(Published {
                                seq: n as u64,
                                id: "x".into(),
                                version: 0,
                            })
                        })
                        .collect();
                    s.handle_published(ticket, results);
                }
                Some(StreamEvent::Read {
                    after, max_records, ..
                }) => {
                    let from = (after as usize).min(log.len());
                    let to = from.saturating_add(max_records).min(log.len());
                    s.handle_records(now, &log[from..to], log.len() as u64, &|_| None);
                }
            }
        }
    }
    assert!(
        answers <= requests,
        "{answers} answers to {requests} requests"
    );
});
