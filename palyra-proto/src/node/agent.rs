//! The node agent's policy (`palyra node run`), as a machine: when to connect and reconnect
//! (exponential backoff from 0.5 s doubling to 30 s, with up to a quarter of jitter), check in
//! (every 10 s, the first at once), renew the certificate (when a third of its lifetime is left,
//! or when the operator publishes `identity.rotate` to the device), retry a failed renewal (after
//! a minute), and move to the new certificate's connection before the old one closes.
//!
//! The application does what the machine asks ([`Action`]) and tells it how that went
//! (`handle_*`); the machine never touches a socket, a file or a clock. Monotonic time comes
//! with every input, wall time (`now_ms`, Unix ms) with the inputs where certificate dates
//! matter, and the jitter from a generator seeded by the injected RNG.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// First wait before reconnecting.
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a connected node checks in (keeps it `online` in the registry).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Wait after a failed rotation before trying again.
pub const ROTATION_RETRY: Duration = Duration::from_secs(60);
/// The event an operator publishes to a device to have it rotate its certificate.
pub const ROTATE_EVENT: &str = "identity.rotate";

/// The validity of the certificate a connection uses (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertWindow {
    /// Start of validity.
    pub not_before_ms: u64,
    /// End of validity.
    pub not_after_ms: u64,
}

impl CertWindow {
    /// When renewal is due: a third of the lifetime left.
    pub fn renew_at_ms(&self) -> u64 {
        let lifetime = self.not_after_ms.saturating_sub(self.not_before_ms);
        self.not_after_ms - lifetime / 3
    }
}

/// Why a rotation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationReason {
    /// A third of the certificate's lifetime is left.
    Renewal,
    /// The operator asked (`identity.rotate`).
    Operator,
}

impl RotationReason {
    /// `renewal` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationReason::Renewal => "renewal",
            RotationReason::Operator => "operator",
        }
    }
}

/// What the application must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Load the identity and open a connection; answer [`NodeAgent::handle_connected`] or
    /// [`NodeAgent::handle_connect_failed`]. With `replacing`, the current connection stays
    /// open until the new one is up, then closes.
    Connect {
        /// A connection is open and is to be replaced by the new one.
        replacing: bool,
    },
    /// Follow the event log from after `resume_from` on the connection; frames go to
    /// [`NodeAgent::handle_event`], its end to [`NodeAgent::handle_stream_ended`].
    Follow {
        /// The last seq acted on.
        resume_from: Option<u64>,
    },
    /// Send `node.health`; answer [`NodeAgent::handle_health`].
    CheckHealth,
    /// Rotate the certificate; answer [`NodeAgent::handle_rotated`] or
    /// [`NodeAgent::handle_rotation_failed`].
    Rotate(RotationReason),
    /// Persist the event cursor (events up to it were acted on, across restarts too).
    SaveCursor(u64),
    /// Tell the person running the node.
    Report(Report),
    /// Close the connection (if any) and end: the run time is over.
    Stop,
}

/// A change worth telling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Connected with a certificate valid until `expires_at_ms`.
    Connected {
        /// End of the certificate's validity.
        expires_at_ms: u64,
    },
    /// The connection could not be made or was lost; the next attempt follows in `retry_in`
    /// (plus jitter).
    Disconnected {
        /// Why.
        error: String,
        /// Backoff before the next attempt.
        retry_in: Duration,
    },
    /// The certificate was rotated.
    Rotated {
        /// Why.
        reason: RotationReason,
        /// End of the new certificate's validity.
        expires_at_ms: u64,
    },
    /// A rotation failed; it is tried again after `retry_in`.
    RotationFailed {
        /// Why.
        error: String,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A connection is being made (`replacing`: the old one is still open).
    Connecting { replacing: bool },
    /// Waiting to reconnect.
    Backoff { until: Instant },
    /// Connected; checks in at `heartbeat_at` unless a check is in flight.
    Connected {
        heartbeat_at: Instant,
        checking: bool,
    },
    /// A rotation runs on the open connection.
    Rotating(RotationReason),
    /// Over.
    Stopped,
}

/// The node agent's policy.
pub struct NodeAgent {
    device_id: String,
    state: State,
    cert: Option<CertWindow>,
    cursor: Option<u64>,
    /// A failed rotation, due again at the instant.
    retry: Option<(RotationReason, Instant)>,
    backoff: Duration,
    stop_at: Option<Instant>,
    /// The last `(now, now_ms)` pair seen, to place wall-clock deadlines on the monotonic clock.
    wall: (Instant, u64),
    jitter: u64,
    actions: VecDeque<Action>,
}

impl NodeAgent {
    /// An agent for `device_id` starting at `now` (wall time `now_ms`), having acted on the
    /// events up to `cursor`, ending after `run_for` if given; `rng` seeds the jitter.
    pub fn new(
        device_id: &str,
        cursor: Option<u64>,
        run_for: Option<Duration>,
        now: Instant,
        now_ms: u64,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Self {
        let mut agent = Self {
            device_id: device_id.to_owned(),
            state: State::Connecting { replacing: false },
            cert: None,
            cursor,
            retry: None,
            backoff: MIN_BACKOFF,
            stop_at: run_for.and_then(|d| now.checked_add(d)),
            wall: (now, now_ms),
            jitter: rng.next_u64() | 1,
            actions: VecDeque::new(),
        };
        agent
            .actions
            .push_back(Action::Connect { replacing: false });
        agent
    }

    /// The last event seq acted on.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// The run is over.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Whether a connection is open (connected or rotating on it).
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. } | State::Rotating(_))
            || self.state == State::Connecting { replacing: true }
    }

    /// The next thing to do.
    pub fn poll_event(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`NodeAgent::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match self.state {
            State::Backoff { until } => Some(until),
            State::Connected {
                heartbeat_at,
                checking,
            } => {
                let heartbeat = (!checking).then_some(heartbeat_at);
                [heartbeat, Some(self.rotation_due_at())]
                    .into_iter()
                    .flatten()
                    .min()
            }
            State::Connecting { .. } | State::Rotating(_) | State::Stopped => None,
        };
        if self.state == State::Stopped {
            return None;
        }
        [own, self.stop_at].into_iter().flatten().min()
    }

    /// Timers: the run ends, the backoff is over, a check-in or a renewal is due.
    pub fn handle_timeout(&mut self, now: Instant, now_ms: u64) {
        self.wall = (now, now_ms);
        if self.stopping(now) {
            return;
        }
        match self.state {
            State::Backoff { until } if now >= until => {
                self.state = State::Connecting { replacing: false };
                self.actions.push_back(Action::Connect { replacing: false });
            }
            State::Connected {
                heartbeat_at,
                checking: false,
            } => {
                if self.rotate_if_due(now) {
                    return;
                }
                if now >= heartbeat_at {
                    self.state = State::Connected {
                        heartbeat_at,
                        checking: true,
                    };
                    self.actions.push_back(Action::CheckHealth);
                }
            }
            State::Connected { checking: true, .. } => {
                self.rotate_if_due(now);
            }
            _ => {}
        }
    }

    /// A connection is up with a certificate valid over `cert`.
    pub fn handle_connected(&mut self, now: Instant, now_ms: u64, cert: CertWindow) {
        self.wall = (now, now_ms);
        if self.state == State::Stopped {
            return;
        }
        self.cert = Some(cert);
        self.backoff = MIN_BACKOFF;
        self.state = State::Connected {
            heartbeat_at: now,
            checking: true,
        };
        self.actions.push_back(Action::Report(Report::Connected {
            expires_at_ms: cert.not_after_ms,
        }));
        self.actions.push_back(Action::Follow {
            resume_from: self.cursor,
        });
        // The first check-in goes out at once.
        self.actions.push_back(Action::CheckHealth);
        self.stopping(now);
    }

    /// The connection could not be made.
    pub fn handle_connect_failed(&mut self, now: Instant, error: impl Into<String>) {
        self.disconnected(now, error.into());
    }

    /// The answer to [`Action::CheckHealth`].
    pub fn handle_health(&mut self, now: Instant, ok: bool) {
        if let State::Connected { .. } = self.state {
            if ok {
                self.state = State::Connected {
                    heartbeat_at: now + HEARTBEAT,
                    checking: false,
                };
            } else {
                self.disconnected(now, "health check failed".into());
            }
        }
    }

    /// An event from the followed log: `seq` is acted on (a rotation request for this device,
    /// newer than the certificate in use, starts a rotation).
    pub fn handle_event(
        &mut self,
        now: Instant,
        seq: Option<u64>,
        name: &str,
        to: Option<&str>,
        occurred_at_ms: u64,
    ) {
        if let Some(seq) = seq {
            self.cursor = Some(seq.max(self.cursor.unwrap_or(0)));
        }
        let newer = self.cert.is_some_and(|c| occurred_at_ms > c.not_before_ms);
        if name == ROTATE_EVENT && to == Some(self.device_id.as_str()) && newer {
            if let State::Connected { .. } = self.state {
                self.start_rotation(RotationReason::Operator);
            } else if !matches!(self.state, State::Rotating(_)) {
                // Not connected now: rotate once connected again.
                self.retry = Some((RotationReason::Operator, now));
            }
        }
    }

    /// The followed log ended: `first_seq` when the log no longer holds what follows the cursor
    /// (continue from what it still has).
    pub fn handle_stream_ended(
        &mut self,
        now: Instant,
        first_seq: Option<u64>,
        error: impl Into<String>,
    ) {
        if let Some(first) = first_seq {
            self.cursor = Some(first.saturating_sub(1));
        }
        if matches!(self.state, State::Connected { .. }) {
            self.disconnected(now, error.into());
        }
    }

    /// The connection was lost.
    pub fn handle_connection_lost(&mut self, now: Instant, error: impl Into<String>) {
        if matches!(
            self.state,
            State::Connected { .. } | State::Rotating(_) | State::Connecting { .. }
        ) {
            self.disconnected(now, error.into());
        }
    }

    /// The rotation succeeded: the new certificate ends at `expires_at_ms`. The new identity's
    /// connection is made next, replacing the current one.
    pub fn handle_rotated(&mut self, now: Instant, now_ms: u64, expires_at_ms: u64) {
        self.wall = (now, now_ms);
        let State::Rotating(reason) = self.state else {
            return;
        };
        self.retry = None;
        self.actions.push_back(Action::Report(Report::Rotated {
            reason,
            expires_at_ms,
        }));
        if self.stopping(now) {
            return;
        }
        self.state = State::Connecting { replacing: true };
        self.actions.push_back(Action::Connect { replacing: true });
    }

    /// The rotation failed: tried again after [`ROTATION_RETRY`] (an operator's request too).
    pub fn handle_rotation_failed(&mut self, now: Instant, error: impl Into<String>) {
        let State::Rotating(reason) = self.state else {
            return;
        };
        self.retry = Some((reason, now + ROTATION_RETRY));
        self.actions
            .push_back(Action::Report(Report::RotationFailed {
                error: error.into(),
                retry_in: ROTATION_RETRY,
            }));
        self.state = State::Connected {
            heartbeat_at: now + HEARTBEAT,
            checking: false,
        };
    }

    /// Ends the run at `stop_at`; true when stopped.
    fn stopping(&mut self, now: Instant) -> bool {
        if self.state == State::Stopped {
            return true;
        }
        if self.stop_at.is_some_and(|t| now >= t) {
            self.state = State::Stopped;
            self.actions.push_back(Action::Stop);
            return true;
        }
        false
    }

    /// When the next rotation is due on the monotonic clock: a failed one's retry, else the
    /// certificate's renewal time.
    fn rotation_due_at(&self) -> Instant {
        if let Some((_, at)) = self.retry {
            return at;
        }
        let Some(cert) = self.cert else {
            return self.wall.0 + Duration::from_secs(86_400);
        };
        let (now, now_ms) = self.wall;
        let wait = Duration::from_millis(cert.renew_at_ms().saturating_sub(now_ms));
        now.checked_add(wait.min(Duration::from_secs(86_400)))
            .unwrap_or(now)
    }

    fn rotate_if_due(&mut self, now: Instant) -> bool {
        if now < self.rotation_due_at() {
            return false;
        }
        let reason = self.retry.map_or(RotationReason::Renewal, |(r, _)| r);
        self.start_rotation(reason);
        true
    }

    fn start_rotation(&mut self, reason: RotationReason) {
        // Acted on once: a restarted node does not rotate again for the same request.
        if let Some(seq) = self.cursor {
            self.actions.push_back(Action::SaveCursor(seq));
        }
        self.state = State::Rotating(reason);
        self.actions.push_back(Action::Rotate(reason));
    }

    fn disconnected(&mut self, now: Instant, error: String) {
        if self.stopping(now) {
            return;
        }
        let retry_in = self.backoff;
        self.actions
            .push_back(Action::Report(Report::Disconnected { error, retry_in }));
        let until = now + retry_in + self.next_jitter(retry_in);
        let until = self.stop_at.map_or(until, |stop| until.min(stop));
        self.state = State::Backoff { until };
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Up to a quarter of `backoff` (xorshift over the injected seed).
    fn next_jitter(&mut self, backoff: Duration) -> Duration {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let range = backoff.as_millis() as u64 / 4 + 1;
        Duration::from_millis(self.jitter % range)
    }
}

#[cfg(test)]
mod tests;
