//! The node agent's policy under any sequence of outcomes (connections made or refused, check-ins,
//! events, rotations, losses, timers, arbitrary clock steps): never panics, every reported
//! backoff is within bounds, nothing follows `Stop`, and time never has to go back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::node::agent::{
    Action, CertWindow, NodeAgent, Report, MAX_BACKOFF, MIN_BACKOFF, ROTATE_EVENT,
};
use rand_core::SeedableRng;
use std::time::{Duration, Instant};

const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

fuzz_target!(|data: &[u8]| {
    let origin = Instant::now();
    let mut at = Duration::ZERO;
    let wall = |at: Duration| 1_700_000_000_000 + at.as_millis() as u64;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(data.len() as u64);
    let run_for = data
        .first()
        .map(|b| Duration::from_secs(u64::from(*b) * 60));
    let mut agent = NodeAgent::new(DEVICE, None, run_for, origin, wall(at), &mut rng);
    let mut stopped = false;
    for pair in data.chunks(2) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        at += Duration::from_millis(u64::from(arg) * 97);
        let now = origin + at;
        match op % 9 {
            0 => agent.handle_connected(
                now,
                wall(at),
                CertWindow {
                    not_before_ms: wall(at),
                    not_after_ms: wall(at) + u64::from(arg) * 60_000,
                },
            ),
            1 => agent.handle_connect_failed(now, "refused"),
            2 => agent.handle_health(now, arg % 2 == 0),
            3 => agent.handle_event(
                now,
                Some(u64::from(arg)),
                ROTATE_EVENT,
                Some(DEVICE),
                u64::MAX,
            ),
            4 => agent.handle_rotated(now, wall(at), wall(at) + 3_600_000),
            5 => agent.handle_rotation_failed(now, "no"),
            6 => agent.handle_connection_lost(now, "lost"),
            7 => agent.handle_stream_ended(now, Some(u64::from(arg)), "gap"),
            _ => {
                if let Some(deadline) = agent.poll_timeout() {
                    if deadline > now {
                        at = deadline - origin;
                    }
                    agent.handle_timeout(origin + at, wall(at));
                }
            }
        }
        while let Some(action) = agent.poll_event() {
            assert!(!stopped, "{action:?} after Stop");
            match action {
                Action::Report(Report::Disconnected { retry_in, .. }) => {
                    assert!(retry_in >= MIN_BACKOFF && retry_in <= MAX_BACKOFF)
                }
                Action::Stop => stopped = true,
                _ => {}
            }
        }
    }
});
