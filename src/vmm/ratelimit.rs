//! Rate limiting for log lines a guest can trigger.
//!
//! A guest that hammers an unknown port must not flood the journal: each call site owns a
//! [`LogLimiter`] that lets a burst through per window and counts the rest.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A token bucket (Firecracker's rate limiter's): `rate` tokens per second, at most `burst`
/// held (one second's worth unless said otherwise). A disk's throttle, and the guest
/// console's bytes into the journal.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second, holding one second's worth.
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        TokenBucket::with_burst(rate, rate, now)
    }

    /// A full bucket of `burst` tokens, refilled at `rate` per second.
    pub fn with_burst(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Tokens per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst as f64);
    }

    /// How long until `n` tokens are there (zero: now). A request larger than the burst
    /// needs a full bucket.
    pub fn wait_for(&mut self, n: u64, now: Instant) -> Duration {
        self.refill(now);
        let need = n.min(self.burst) as f64;
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate.max(1) as f64)
        }
    }

    /// Takes `n` tokens (after [`Self::wait_for`] said zero). A request larger than the
    /// burst leaves the bucket in debt, so the requests after it wait until it is paid: the
    /// rate holds over time whatever the request sizes (a 2 GiB WRITE_ZEROES on a 50 MB/s
    /// disk is 40 s of its budget, not one second's).
    pub fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// Takes `n` tokens if they are there now; else takes none.
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        let ok = self.wait_for(n, now) == Duration::ZERO;
        if ok {
            self.take(n);
        }
        ok
    }
}

/// Lines allowed per window.
pub const BURST: u32 = 10;
/// Window length.
pub const WINDOW: Duration = Duration::from_secs(5);

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

/// A [`LogLimiter`] a device owns and shares with its worker threads: every queue thread and
/// every activation draws on one budget, so a guest that resets and re-activates the device
/// in a loop (each time with a broken chain) gets no fresh burst of lines per cycle.
#[derive(Debug, Clone, Default)]
pub struct SharedLimiter(Arc<Mutex<LogLimiter>>);

impl SharedLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A shared limiter letting `burst` events per `window` through.
    pub fn with_limits(burst: u32, window: Duration) -> Self {
        SharedLimiter(Arc::new(Mutex::new(LogLimiter::with_limits(burst, window))))
    }

    /// As [`LogLimiter::check`] (a lock poisoned by a panicking thread still counts).
    pub fn check(&self) -> Allowed {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check()
    }
}

/// What [`crate::vmm::virtio::VirtioInterrupt::signal_used_queue_logged`] logs through: a
/// worker's own limiter or its device's shared one.
pub trait Limit {
    fn check(&mut self) -> Allowed;
}

impl Limit for LogLimiter {
    fn check(&mut self) -> Allowed {
        LogLimiter::check(self)
    }
}

impl Limit for SharedLimiter {
    fn check(&mut self) -> Allowed {
        SharedLimiter::check(self)
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

/// Most distinct foreign log targets that get a limiter each; the rest share the last one.
const MAX_TARGETS: usize = 32;

/// A logger that sends records of other crates through a [`LogLimiter`] per target before
/// `inner`: crates such as virtio-queue log conditions a guest controls (a queue outside
/// memory, a bad avail index) at error level themselves, where no `log_limited!` call site
/// of ours can limit them. Volt's own records (target `volt::…`) pass unchanged: ours that a
/// guest can trigger use `log_limited!`.
pub struct ForeignLimited<L> {
    inner: L,
    limiters: std::sync::Mutex<Vec<(String, LogLimiter)>>,
}

impl<L: log::Log> ForeignLimited<L> {
    pub fn new(inner: L) -> Self {
        ForeignLimited {
            inner,
            limiters: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn check(&self, target: &str) -> Allowed {
        let Ok(mut ls) = self.limiters.lock() else {
            return Allowed::No;
        };
        let i = match ls.iter().position(|(t, _)| t == target) {
            Some(i) => i,
            None if ls.len() < MAX_TARGETS => {
                ls.push((target.to_string(), LogLimiter::new()));
                ls.len() - 1
            }
            None => MAX_TARGETS - 1,
        };
        ls[i].1.check()
    }
}

impl<L: log::Log> log::Log for ForeignLimited<L> {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, r: &log::Record<'_>) {
        if r.target() == "volt" || r.target().starts_with("volt::") || !self.enabled(r.metadata()) {
            self.inner.log(r);
            return;
        }
        match self.check(r.target()) {
            Allowed::Yes { suppressed: 0 } => self.inner.log(r),
            Allowed::Yes { suppressed } => self.inner.log(
                &log::Record::builder()
                    .args(format_args!(
                        "{} ({suppressed} similar messages suppressed)",
                        r.args()
                    ))
                    .level(r.level())
                    .target(r.target())
                    .module_path(r.module_path())
                    .file(r.file())
                    .line(r.line())
                    .build(),
            ),
            Allowed::No => {}
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl log::Log for Count {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, _: &log::Record<'_>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn flush(&self) {}
    }

    #[test]
    fn foreign_records_are_limited_per_target_and_ours_pass() {
        use log::Log;
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let l = ForeignLimited::new(Count(n.clone()));
        let rec = |target: &'static str| {
            log::Record::builder()
                .args(format_args!("x"))
                .level(log::Level::Error)
                .target(target)
                .build()
        };
        for _ in 0..1000 {
            l.log(&rec("virtio_queue::queue"));
        }
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), BURST as usize);
        for _ in 0..1000 {
            l.log(&rec("vm_memory::mmap"));
        }
        assert_eq!(
            n.load(std::sync::atomic::Ordering::SeqCst),
            2 * BURST as usize
        );
        for _ in 0..100 {
            l.log(&rec("volt::vmm::virtio::mmio"));
        }
        assert_eq!(
            n.load(std::sync::atomic::Ordering::SeqCst),
            2 * BURST as usize + 100
        );
        // Many targets share the last limiter instead of growing without bound.
        let targets: Vec<String> = (0..100).map(|i| format!("crate{i}")).collect();
        for t in &targets {
            l.log(
                &log::Record::builder()
                    .args(format_args!("x"))
                    .target(t)
                    .build(),
            );
        }
        assert!(l.limiters.lock().map(|v| v.len()).unwrap_or(0) <= MAX_TARGETS);
    }

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
