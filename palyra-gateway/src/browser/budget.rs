//! Session budgets: what a client asks for in `CreateSessionRequest.budget`, clamped to the
//! server's limits. Every value follows one rule: 0 (or absent) means the server's value, any
//! other value is capped at it, so a client can only ask for less. The action rate window is the
//! one value that works the other way (a shorter window is a higher rate), so it is raised to
//! at least the server's.
//!
//! Per-call values (`timeout_ms`, `max_bytes`, ...) follow the same rule against the session's
//! budget: [`per_call`]. A zero never means "1 ms" or "1 byte".

use palyra_proto::pb::palyra::browser::v1::SessionBudget;
use std::time::Duration;

/// Budgets of one session, and the server's limits when they are the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Longest navigation (Navigate, OpenTab).
    pub navigation_timeout_ms: u64,
    /// Session lifetime from its creation.
    pub session_lifetime_ms: u64,
    /// A session idle this long is closed.
    pub idle_ttl_ms: u64,
    /// Largest screenshot.
    pub screenshot_bytes: u64,
    /// Largest response body reported (PDF, snapshot payloads).
    pub response_bytes: u64,
    /// Longest wait of an action (click, type, ...).
    pub action_timeout_ms: u64,
    /// Longest text typed at once.
    pub type_input_bytes: u64,
    /// Actions over the session's life.
    pub actions_per_session: u64,
    /// Actions per rate window.
    pub actions_per_window: u64,
    /// The rate window.
    pub action_rate_window_ms: u64,
    /// Action log entries kept.
    pub action_log_entries: u64,
    /// Largest DOM summary of Observe.
    pub observe_snapshot_bytes: u64,
    /// Largest visible text of Observe.
    pub visible_text_bytes: u64,
    /// Network log entries kept per tab.
    pub network_log_entries: u64,
    /// Bytes of network log returned at once.
    pub network_log_bytes: u64,
    /// Tabs open at once.
    pub tabs: u64,
}

impl Default for Budget {
    /// The server defaults of the reference implementation.
    fn default() -> Self {
        Self {
            navigation_timeout_ms: 15_000,
            session_lifetime_ms: 30 * 60_000,
            idle_ttl_ms: 10 * 60_000,
            screenshot_bytes: 256 * 1024,
            response_bytes: 512 * 1024,
            action_timeout_ms: 5_000,
            type_input_bytes: 4096,
            actions_per_session: 256,
            actions_per_window: 20,
            action_rate_window_ms: 1_000,
            action_log_entries: 256,
            observe_snapshot_bytes: 64 * 1024,
            visible_text_bytes: 16 * 1024,
            network_log_entries: 256,
            network_log_bytes: 64 * 1024,
            tabs: 32,
        }
    }
}

/// `requested`, or `server` when 0, capped at `server`.
pub fn capped(requested: u64, server: u64) -> u64 {
    if requested == 0 {
        server
    } else {
        requested.min(server)
    }
}

/// A per-call value against the session's budget: 0 means the budget, more is capped at it.
pub fn per_call(requested: u64, budget: u64) -> u64 {
    capped(requested, budget)
}

impl Budget {
    /// The budget of a session that asked for `requested` (and `idle_ttl_ms`) under these limits.
    pub fn clamp(&self, requested: Option<&SessionBudget>, idle_ttl_ms: u64) -> Budget {
        let r = requested.cloned().unwrap_or_default();
        Budget {
            navigation_timeout_ms: capped(r.max_navigation_timeout_ms, self.navigation_timeout_ms),
            session_lifetime_ms: capped(r.max_session_lifetime_ms, self.session_lifetime_ms),
            idle_ttl_ms: capped(idle_ttl_ms, self.idle_ttl_ms),
            screenshot_bytes: capped(r.max_screenshot_bytes, self.screenshot_bytes),
            response_bytes: capped(r.max_response_bytes, self.response_bytes),
            action_timeout_ms: capped(r.max_action_timeout_ms, self.action_timeout_ms),
            type_input_bytes: capped(r.max_type_input_bytes, self.type_input_bytes),
            actions_per_session: capped(r.max_actions_per_session, self.actions_per_session),
            actions_per_window: capped(r.max_actions_per_window, self.actions_per_window),
            action_rate_window_ms: r.action_rate_window_ms.max(self.action_rate_window_ms),
            action_log_entries: capped(r.max_action_log_entries, self.action_log_entries),
            observe_snapshot_bytes: capped(
                r.max_observe_snapshot_bytes,
                self.observe_snapshot_bytes,
            ),
            visible_text_bytes: capped(r.max_visible_text_bytes, self.visible_text_bytes),
            network_log_entries: capped(r.max_network_log_entries, self.network_log_entries),
            network_log_bytes: capped(r.max_network_log_bytes, self.network_log_bytes),
            tabs: self.tabs,
        }
    }

    /// The budget as the wire shows it.
    pub fn to_proto(&self) -> SessionBudget {
        SessionBudget {
            max_navigation_timeout_ms: self.navigation_timeout_ms,
            max_session_lifetime_ms: self.session_lifetime_ms,
            max_screenshot_bytes: self.screenshot_bytes,
            max_response_bytes: self.response_bytes,
            max_action_timeout_ms: self.action_timeout_ms,
            max_type_input_bytes: self.type_input_bytes,
            max_actions_per_session: self.actions_per_session,
            max_actions_per_window: self.actions_per_window,
            action_rate_window_ms: self.action_rate_window_ms,
            max_action_log_entries: self.action_log_entries,
            max_observe_snapshot_bytes: self.observe_snapshot_bytes,
            max_visible_text_bytes: self.visible_text_bytes,
            max_network_log_entries: self.network_log_entries,
            max_network_log_bytes: self.network_log_bytes,
        }
    }

    /// An action's timeout: `requested` ms (0: the budget's), capped at the budget.
    pub fn action_timeout(&self, requested: u64) -> Duration {
        Duration::from_millis(per_call(requested, self.action_timeout_ms))
    }

    /// A navigation's timeout: `requested` ms (0: the budget's), capped at the budget.
    pub fn navigation_timeout(&self, requested: u64) -> Duration {
        Duration::from_millis(per_call(requested, self.navigation_timeout_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_the_server_value_and_more_is_capped() {
        let server = Budget::default();
        let asked = SessionBudget {
            max_navigation_timeout_ms: 1_000,
            max_session_lifetime_ms: u64::MAX,
            max_screenshot_bytes: 0,
            max_actions_per_window: 1_000_000,
            action_rate_window_ms: 1,
            ..SessionBudget::default()
        };
        let b = server.clamp(Some(&asked), 0);
        assert_eq!(b.navigation_timeout_ms, 1_000);
        assert_eq!(b.session_lifetime_ms, server.session_lifetime_ms);
        assert_eq!(b.screenshot_bytes, server.screenshot_bytes);
        assert_eq!(b.idle_ttl_ms, server.idle_ttl_ms);
        assert_eq!(b.actions_per_window, server.actions_per_window);
        // A 1 ms window would be 20,000 actions a second: the window is the server's at least.
        assert_eq!(b.action_rate_window_ms, server.action_rate_window_ms);
        assert_eq!(server.clamp(None, 5).idle_ttl_ms, 5);
    }

    #[test]
    fn per_call_values_never_mean_one_unit_when_zero() {
        let b = Budget::default();
        assert_eq!(b.action_timeout(0), Duration::from_millis(5_000));
        assert_eq!(b.action_timeout(250), Duration::from_millis(250));
        assert_eq!(b.action_timeout(60_000), Duration::from_millis(5_000));
        assert_eq!(b.navigation_timeout(0), Duration::from_millis(15_000));
        assert_eq!(per_call(0, 4096), 4096);
    }

    #[test]
    fn the_wire_form_round_trips_through_clamp() {
        let b = Budget::default();
        assert_eq!(b.clamp(Some(&b.to_proto()), b.idle_ttl_ms), b);
    }
}
