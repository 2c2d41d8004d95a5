use super::*;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;

const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
const T0_MS: u64 = 1_700_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

/// Simulated time: a monotonic origin and the wall clock at it.
struct Clock {
    origin: Instant,
    at: Duration,
}

impl Clock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            at: Duration::ZERO,
        }
    }
    fn now(&self) -> Instant {
        self.origin + self.at
    }
    fn now_ms(&self) -> u64 {
        T0_MS + self.at.as_millis() as u64
    }
    /// Jumps to `t` (never back).
    fn jump(&mut self, t: Instant) {
        self.at = self.at.max(t - self.origin);
    }
}

fn agent(clock: &Clock, cursor: Option<u64>, run_for: Option<Duration>) -> NodeAgent {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    NodeAgent::new(
        DEVICE,
        cursor,
        run_for,
        clock.now(),
        clock.now_ms(),
        &mut rng,
    )
}

fn actions(agent: &mut NodeAgent) -> Vec<Action> {
    std::iter::from_fn(|| agent.poll_event()).collect()
}

/// A three-hour certificate issued at `clock`'s now.
fn cert(clock: &Clock) -> CertWindow {
    CertWindow {
        not_before_ms: clock.now_ms(),
        not_after_ms: clock.now_ms() + 3 * 3_600_000,
    }
}

/// Advances to the agent's next deadline and fires it.
fn fire(agent: &mut NodeAgent, clock: &mut Clock) -> Vec<Action> {
    let deadline = agent.poll_timeout().expect("a deadline");
    clock.jump(deadline);
    agent.handle_timeout(clock.now(), clock.now_ms());
    actions(agent)
}

fn connect(agent: &mut NodeAgent, clock: &Clock) -> Vec<Action> {
    agent.handle_connected(clock.now(), clock.now_ms(), cert(clock));
    actions(agent)
}

#[test]
fn connects_follows_from_the_cursor_and_checks_in_every_ten_seconds() {
    let mut clock = Clock::new();
    let mut a = agent(&clock, Some(41), None);
    assert_eq!(actions(&mut a), [Action::Connect { replacing: false }]);
    let cert = cert(&clock);
    a.handle_connected(clock.now(), clock.now_ms(), cert);
    assert_eq!(
        actions(&mut a),
        [
            Action::Report(Report::Connected {
                expires_at_ms: cert.not_after_ms
            }),
            Action::Follow {
                resume_from: Some(41)
            },
            Action::CheckHealth,
        ]
    );
    a.handle_health(clock.now(), true);
    for _ in 0..3 {
        let before = clock.now();
        assert_eq!(fire(&mut a, &mut clock), [Action::CheckHealth]);
        assert_eq!(clock.now() - before, HEARTBEAT);
        a.handle_health(clock.now(), true);
    }
    assert!(a.is_connected());
}

#[test]
fn reconnects_with_jittered_exponential_backoff_reset_by_a_connection() {
    let mut clock = Clock::new();
    let mut a = agent(&clock, None, None);
    actions(&mut a);
    let mut expected = MIN_BACKOFF;
    for _ in 0..9 {
        a.handle_connect_failed(clock.now(), "refused");
        let got = actions(&mut a);
        assert_eq!(
            got,
            [Action::Report(Report::Disconnected {
                error: "refused".into(),
                retry_in: expected
            })]
        );
        let before = clock.now();
        assert_eq!(
            fire(&mut a, &mut clock),
            [Action::Connect { replacing: false }]
        );
        let waited = clock.now() - before;
        assert!(
            waited >= expected && waited <= expected + expected / 4 + Duration::from_millis(1),
            "waited {waited:?} for a backoff of {expected:?}"
        );
        expected = (expected * 2).min(MAX_BACKOFF);
    }
    assert_eq!(expected, MAX_BACKOFF, "capped at 30 s");
    connect(&mut a, &clock);
    a.handle_connection_lost(clock.now(), "idle timeout");
    assert_eq!(
        actions(&mut a),
        [Action::Report(Report::Disconnected {
            error: "idle timeout".into(),
            retry_in: MIN_BACKOFF
        })],
        "a connection resets the backoff"
    );
}

#[test]
fn renews_when_a_third_of_the_lifetime_is_left_then_replaces_the_connection() {
    let mut clock = Clock::new();
    let mut a = agent(&clock, Some(7), None);
    actions(&mut a);
    connect(&mut a, &clock);
    a.handle_health(clock.now(), true);
    // Check-ins every 10 s until two hours (of three) have passed.
    let mut rotated = None;
    for _ in 0..1000 {
        let got = fire(&mut a, &mut clock);
        if got.contains(&Action::CheckHealth) {
            a.handle_health(clock.now(), true);
            continue;
        }
        rotated = Some(got);
        break;
    }
    assert_eq!(clock.at, 2 * HOUR, "at a third of the lifetime left");
    assert_eq!(
        rotated.expect("rotation"),
        [
            Action::SaveCursor(7),
            Action::Rotate(RotationReason::Renewal)
        ]
    );
    let expires = clock.now_ms() + 3 * 3_600_000;
    a.handle_rotated(clock.now(), clock.now_ms(), expires);
    assert_eq!(
        actions(&mut a),
        [
            Action::Report(Report::Rotated {
                reason: RotationReason::Renewal,
                expires_at_ms: expires
            }),
            Action::Connect { replacing: true },
        ]
    );
    assert!(
        a.is_connected(),
        "the old connection stays until the new one is up"
    );
    let got = connect(&mut a, &clock);
    assert_eq!(
        got[1],
        Action::Follow {
            resume_from: Some(7)
        }
    );
}

#[test]
fn an_operator_request_rotates_once_and_only_for_this_device() {
    let mut clock = Clock::new();
    let mut a = agent(&clock, None, None);
    actions(&mut a);
    let issued = clock.now_ms();
    connect(&mut a, &clock);
    clock.jump(clock.now() + Duration::from_secs(5));
    // For another device, or older than the certificate in use: nothing but the cursor.
    a.handle_event(
        clock.now(),
        Some(3),
        ROTATE_EVENT,
        Some("01BX5ZZKBKACTAV9WEVGEMMVRZ"),
        issued + 1,
    );
    a.handle_event(clock.now(), Some(4), ROTATE_EVENT, Some(DEVICE), issued - 1);
    a.handle_event(clock.now(), Some(5), "sensor.temp", None, issued + 1);
    assert_eq!(actions(&mut a), []);
    assert_eq!(a.cursor(), Some(5));
    a.handle_event(clock.now(), Some(6), ROTATE_EVENT, Some(DEVICE), issued + 1);
    assert_eq!(
        actions(&mut a),
        [
            Action::SaveCursor(6),
            Action::Rotate(RotationReason::Operator)
        ]
    );
    // The same request again while rotating: nothing more.
    a.handle_event(clock.now(), Some(6), ROTATE_EVENT, Some(DEVICE), issued + 1);
    assert_eq!(actions(&mut a), []);
}

#[test]
fn a_failed_rotation_is_retried_after_a_minute() {
    let mut clock = Clock::new();
    let mut a = agent(&clock, None, None);
    actions(&mut a);
    let issued = clock.now_ms();
    connect(&mut a, &clock);
    a.handle_health(clock.now(), true);
    a.handle_event(clock.now(), Some(1), ROTATE_EVENT, Some(DEVICE), issued + 1);
    actions(&mut a);
    a.handle_rotation_failed(clock.now(), "gateway unreachable");
    assert_eq!(
        actions(&mut a),
        [Action::Report(Report::RotationFailed {
            error: "gateway unreachable".into(),
            retry_in: ROTATION_RETRY
        })]
    );
    let failed_at = clock.now();
    loop {
        let got = fire(&mut a, &mut clock);
        if got == [Action::CheckHealth] {
            a.handle_health(clock.now(), true);
            continue;
        }
        assert_eq!(got.last(), Some(&Action::Rotate(RotationReason::Operator)));
        break;
    }
    assert_eq!(clock.now() - failed_at, ROTATION_RETRY);
}

#[test]
fn a_failed_check_in_or_a_lost_stream_reconnects_from_what_the_log_still_has() {
    let mut clock = Clock::new();
    let mut a = agent(&clock, Some(10), None);
    actions(&mut a);
    connect(&mut a, &clock);
    a.handle_health(clock.now(), false);
    assert!(matches!(
        actions(&mut a).as_slice(),
        [Action::Report(Report::Disconnected { error, .. })] if error == "health check failed"
    ));
    fire(&mut a, &mut clock);
    connect(&mut a, &clock);
    a.handle_stream_ended(clock.now(), Some(500), "resume gap");
    actions(&mut a);
    assert_eq!(a.cursor(), Some(499));
    fire(&mut a, &mut clock);
    let got = connect(&mut a, &clock);
    assert_eq!(
        got[1],
        Action::Follow {
            resume_from: Some(499)
        }
    );
}

#[test]
fn the_run_ends_on_time_even_while_waiting_to_reconnect() {
    let mut clock = Clock::new();
    let mut a = agent(&clock, None, Some(Duration::from_secs(20)));
    actions(&mut a);
    for _ in 0..10 {
        a.handle_connect_failed(clock.now(), "refused");
        actions(&mut a);
        let got = fire(&mut a, &mut clock);
        if got == [Action::Stop] {
            break;
        }
    }
    assert!(a.is_stopped());
    assert_eq!(clock.at, Duration::from_secs(20));
    assert_eq!(a.poll_timeout(), None);
    a.handle_connected(clock.now(), clock.now_ms(), cert(&clock));
    assert_eq!(actions(&mut a), [], "nothing after the stop");
}

/// One step of a simulated run: how the application's work went.
#[derive(Debug, Clone)]
enum Outcome {
    Connects(bool),
    Health(bool),
    RotateEvent,
    Rotation(bool),
    Lost,
    Timeout,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        any::<bool>().prop_map(Outcome::Connects),
        any::<bool>().prop_map(Outcome::Health),
        Just(Outcome::RotateEvent),
        any::<bool>().prop_map(Outcome::Rotation),
        Just(Outcome::Lost),
        Just(Outcome::Timeout),
    ]
}

/// Runs `steps`; with `spurious`, the application also wakes the machine at times nothing is
/// due (between every two steps). Returns every action and the time it was asked for.
fn run(steps: &[Outcome], spurious: bool) -> Vec<(Duration, Action)> {
    let mut clock = Clock::new();
    let mut a = agent(&clock, None, Some(Duration::from_secs(4 * 3600)));
    let mut trace = Vec::new();
    let take = |a: &mut NodeAgent, clock: &Clock, trace: &mut Vec<(Duration, Action)>| {
        for action in actions(a) {
            trace.push((clock.at, action));
        }
    };
    take(&mut a, &clock, &mut trace);
    for step in steps {
        // Each step comes a second after the last; the spurious run also wakes the machine
        // half-way, when nothing is due then.
        let mid = clock.now() + Duration::from_millis(500);
        if spurious && a.poll_timeout().is_none_or(|deadline| mid < deadline) {
            clock.jump(mid);
            a.handle_timeout(clock.now(), clock.now_ms());
            take(&mut a, &clock, &mut trace);
        }
        clock.jump(mid + Duration::from_millis(500));
        let now = clock.now();
        match step {
            Outcome::Connects(true) => a.handle_connected(now, clock.now_ms(), cert(&clock)),
            Outcome::Connects(false) => a.handle_connect_failed(now, "refused"),
            Outcome::Health(ok) => a.handle_health(now, *ok),
            Outcome::RotateEvent => {
                a.handle_event(now, Some(1), ROTATE_EVENT, Some(DEVICE), u64::MAX)
            }
            Outcome::Rotation(true) => a.handle_rotated(now, clock.now_ms(), u64::MAX),
            Outcome::Rotation(false) => a.handle_rotation_failed(now, "no"),
            Outcome::Lost => a.handle_connection_lost(now, "lost"),
            Outcome::Timeout => {
                if let Some(deadline) = a.poll_timeout() {
                    clock.jump(deadline);
                    a.handle_timeout(clock.now(), clock.now_ms());
                }
            }
        }
        take(&mut a, &clock, &mut trace);
    }
    trace
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Waking the machine when nothing is due (a spurious wake-up, an early timer) changes
    /// nothing it asks for.
    #[test]
    fn early_wakeups_do_not_change_the_actions(steps in proptest::collection::vec(outcome(), 0..60)) {
        prop_assert_eq!(run(&steps, true), run(&steps, false));
    }

    /// Whatever happens: every reported backoff is within bounds, nothing follows `Stop`, and a
    /// rotation is only asked for on an open connection.
    #[test]
    fn the_policy_stays_within_its_bounds(steps in proptest::collection::vec(outcome(), 0..80)) {
        let trace = run(&steps, false);
        let mut stopped = false;
        for (_, action) in &trace {
            prop_assert!(!stopped, "{action:?} after Stop");
            match action {
                Action::Report(Report::Disconnected { retry_in, .. }) => {
                    prop_assert!(*retry_in >= MIN_BACKOFF && *retry_in <= MAX_BACKOFF);
                }
                Action::Stop => stopped = true,
                _ => {}
            }
        }
    }
}
