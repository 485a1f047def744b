//! Rate limiting for log lines a guest can trigger.
//!
//! A guest that hammers an unknown port must not flood the journal: each call site owns a
//! [`LogLimiter`] that lets a burst through per window and counts the rest.

use std::time::{Duration, Instant};

/// Lines allowed per window.
const BURST: u32 = 10;
/// Window length.
const WINDOW: Duration = Duration::from_secs(5);

/// Lets [`BURST`] events per [`WINDOW`] through and counts the suppressed ones.
#[derive(Debug)]
pub struct LogLimiter {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
    burst: u32,
    window: Duration,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// A limiter with a fresh window.
    pub const fn new() -> Self {
        Self::with_limits(BURST, WINDOW)
    }

    /// A limiter letting `burst` events per `window` through (guest console lines: a
    /// kernel's boot messages in one go, but not a guest printing in a loop).
    pub const fn with_limits(burst: u32, window: Duration) -> Self {
        LogLimiter {
            window_start: None,
            in_window: 0,
            suppressed: 0,
            burst,
            window,
        }
    }

    /// Whether this event may be logged. When a new window starts after suppression, returns
    /// `Some(n)` with the number of events suppressed meanwhile in `suppressed_since`.
    pub fn check(&mut self) -> Allowed {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Allowed {
        let fresh = match self.window_start {
            Some(s) => now.duration_since(s) >= self.window,
            None => true,
        };
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            let suppressed = std::mem::take(&mut self.suppressed);
            Allowed::Yes { suppressed }
        } else {
            self.suppressed += 1;
            Allowed::No
        }
    }
}

/// Outcome of [`LogLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Log it; `suppressed` lines were dropped since the last allowed one.
    Yes {
        /// Count of dropped lines.
        suppressed: u64,
    },
    /// Drop it.
    No,
}

/// Logs at `level` through `limiter`, appending the count of lines dropped since the last one.
#[macro_export]
macro_rules! log_limited {
    ($limiter:expr, $level:expr, $($arg:tt)+) => {
        if let $crate::vmm::ratelimit::Allowed::Yes { suppressed } = $limiter.check() {
            if suppressed > 0 {
                log::log!($level, "{} ({} similar messages suppressed)", format_args!($($arg)+), suppressed);
            } else {
                log::log!($level, $($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_then_reports() {
        let mut l = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.check_at(t0), Allowed::Yes { suppressed: 0 });
        }
        assert_eq!(l.check_at(t0), Allowed::No);
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), Allowed::No);
        assert_eq!(l.check_at(t0 + WINDOW), Allowed::Yes { suppressed: 2 });
        assert_eq!(l.check_at(t0 + WINDOW), Allowed::Yes { suppressed: 0 });
    }

    #[test]
    fn custom_limits() {
        let mut l = LogLimiter::with_limits(2, Duration::from_millis(10));
        let t0 = Instant::now();
        assert!(matches!(l.check_at(t0), Allowed::Yes { .. }));
        assert!(matches!(l.check_at(t0), Allowed::Yes { .. }));
        assert_eq!(l.check_at(t0), Allowed::No);
        assert_eq!(
            l.check_at(t0 + Duration::from_millis(10)),
            Allowed::Yes { suppressed: 1 }
        );
    }
}
