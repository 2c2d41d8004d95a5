//! The bottom of the gateway: what every module may use and that uses none of them. Wall time
//! and randomness (each supplied one way), constant-time comparison, a stop signal, and log
//! throttling.

pub mod random;
pub mod stop;
pub mod throttle;
pub mod time;

pub use random::{os_random, RandomFill};
pub use time::{system_clock, WallClock};

/// Equality of secrets (token hashes, session ids) whose time does not depend on where the
/// inputs differ; inputs of different lengths are unequal.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
