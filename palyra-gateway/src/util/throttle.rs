//! Log lines about a flood at most once a period, with a count of what happened meanwhile, so a
//! burst of refusals or accept errors cannot fill the log (or the disk).

use std::time::{Duration, Instant};

/// Rate limit of one kind of log line.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    last: Option<Instant>,
    since: u64,
}

impl Throttle {
    /// At most one line per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            since: 0,
        }
    }

    /// Counts one occurrence at `now`; `Some(n)` when a line is due, `n` occurrences since the
    /// last line (this one included).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|t| now < t + self.period) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(1));
        assert_eq!(throttle.hit(t0), Some(1));
        for i in 1..1000 {
            assert_eq!(throttle.hit(t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(throttle.hit(t0 + Duration::from_secs(1)), Some(1000));
    }
}
