//! Wall time, supplied one way: services get a [`WallClock`] (Unix milliseconds) when they are
//! built and read it when they stamp or check a date; the protocol machines get `now_ms`
//! arguments from them. Tests hand in a fixed or stepped clock.

use std::sync::Arc;
use std::time::SystemTime;

pub use palyra_proto::time::{from_unix_ms, unix_ms};

/// Wall-clock time in Unix milliseconds.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock.
pub fn system_clock() -> WallClock {
    Arc::new(|| unix_ms(SystemTime::now()))
}
