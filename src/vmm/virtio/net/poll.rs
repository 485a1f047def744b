//! Bounded, adaptive polling of the TX ring right after a frame went to a guest that polls.
//!
//! A guest that polls its RX ring (interrupts off, `VIRTQ_AVAIL_F_NO_INTERRUPT`) usually
//! answers within microseconds: a request/response, a ping, a TCP ACK. Without polling, its
//! answer costs a QueueNotify exit and a wakeup of the queue thread, which on a host with few
//! cores means an IPI to an idle core (~20 us measured here) or, worse, the thread
//! preempting the vCPU on its own core (~80 us of vCPU time on this machine's nested KVM).
//! So after such a delivery the worker keeps TX kicks off and watches the avail index for a
//! short window. The window adapts: it stays while answers arrive inside it, halves each
//! time one does not (the vCPU is descheduled, maybe behind this very thread), and after
//! repeated misses polling stops for a while, then is tried again with a small window.
//! Nothing is polled unless a frame was just delivered to a polling guest, so an idle VM
//! costs no CPU.

use std::time::Duration;

/// Longest window.
pub const MAX_WINDOW: Duration = Duration::from_micros(100);
/// First window, and the one a retry after a pause starts with.
pub const START_WINDOW: Duration = Duration::from_micros(50);
/// Below this the window is not worth spinning for: pause instead.
pub const MIN_WINDOW: Duration = Duration::from_micros(10);
/// Deliveries to let pass, without polling, after the window collapsed.
pub const PAUSE: u32 = 1000;

/// The adaptive window.
#[derive(Debug, Clone)]
pub struct TxPoll {
    window: Duration,
    /// Deliveries left before polling is tried again (0: polling).
    paused: u32,
}

impl Default for TxPoll {
    fn default() -> Self {
        TxPoll {
            window: START_WINDOW,
            paused: 0,
        }
    }
}

impl TxPoll {
    /// How long to poll after a delivery to a polling guest (None: do not poll now).
    pub fn window(&mut self) -> Option<Duration> {
        if self.paused > 0 {
            self.paused -= 1;
            if self.paused == 0 {
                self.window = START_WINDOW;
            }
            return None;
        }
        Some(self.window)
    }

    /// The guest's TX arrived `after` the poll began, inside the window.
    pub fn hit(&mut self, after: Duration) {
        // Keep room for answers twice as slow as this one.
        self.window = self.window.max(after * 2).min(MAX_WINDOW);
    }

    /// The window passed without TX.
    pub fn miss(&mut self) {
        self.window /= 2;
        if self.window < MIN_WINDOW {
            self.paused = PAUSE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_keep_and_widen_the_window_up_to_the_maximum() {
        let mut p = TxPoll::default();
        assert_eq!(p.window(), Some(START_WINDOW));
        p.hit(Duration::from_micros(5));
        assert_eq!(p.window(), Some(START_WINDOW), "a quick answer keeps it");
        p.hit(Duration::from_micros(40));
        assert_eq!(p.window(), Some(Duration::from_micros(80)));
        p.hit(Duration::from_micros(90));
        assert_eq!(p.window(), Some(MAX_WINDOW));
    }

    #[test]
    fn misses_halve_it_then_pause_polling_and_retry_later() {
        let mut p = TxPoll::default();
        let mut misses = 0;
        while p.window().is_some() {
            p.miss();
            misses += 1;
            assert!(misses < 10, "polling never paused");
        }
        // 50 -> 25 -> 12 -> 6: paused after the third miss.
        assert_eq!(misses, 3);
        for _ in 1..PAUSE {
            assert_eq!(p.window(), None);
        }
        assert_eq!(
            p.window(),
            Some(START_WINDOW),
            "tried again after the pause"
        );
    }
}
