//! Rate limits for log lines that a client can cause: one line per period, saying how many
//! were left out since the last, so a flood of bad input never becomes a flood of log.

use std::time::{Duration, Instant};

/// Rate limit for warnings that an attacker could otherwise turn into a log flood.
pub struct Throttle {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(events suppressed since the last line)` when a line is due.
    pub fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_lines_report_what_they_suppressed() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.due(), Some(0));
        assert_eq!(t.due(), None);
        assert_eq!(t.due(), None);
        t.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.due(), Some(2));
    }
}
