//! Bounded, adaptive polling of a queue's avail ring right after the device answered a guest
//! that is likely to come back at once.
//!
//! A guest that polls its rings usually answers within microseconds: the reply to a frame it
//! just received (virtio-net TX after an RX delivery: a request/response, a ping, a TCP ACK),
//! or the next request of a synchronous block driver (virtio-blk, after a completion).
//! Without polling, that costs a QueueNotify and a wakeup of the queue thread, which on a host
//! with few cores means an IPI to an idle core (~8-20 us measured here) or, worse, the thread
//! preempting the vCPU on its own core (~80 us of vCPU time on this machine's nested KVM).
//! So after such an answer the worker keeps the queue's kicks off and watches its avail index
//! for a short window ([`watch`]). The window adapts: it stays while requests arrive inside
//! it, halves each time one does not (the vCPU is descheduled, maybe behind this very
//! thread), and after repeated misses polling stops for a while, then is tried again with a
//! small window. Nothing is polled unless the device just answered, so an idle VM costs no
//! CPU.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// Longest window.
pub const MAX_WINDOW: Duration = Duration::from_micros(100);
/// First window, and the one a retry after a pause starts with.
pub const START_WINDOW: Duration = Duration::from_micros(50);
/// Below this the window is not worth spinning for: pause instead.
pub const MIN_WINDOW: Duration = Duration::from_micros(10);
/// Answers to let pass, without polling, after the window collapsed.
pub const PAUSE: u32 = 1000;

/// The adaptive window.
#[derive(Debug, Clone)]
pub struct AdaptivePoll {
    window: Duration,
    /// Answers left before polling is tried again (0: polling).
    paused: u32,
}

impl Default for AdaptivePoll {
    fn default() -> Self {
        AdaptivePoll {
            window: START_WINDOW,
            paused: 0,
        }
    }
}

impl AdaptivePoll {
    /// How long to poll after an answer (None: do not poll now).
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

    /// The guest's next request arrived `after` the poll began, inside the window.
    pub fn hit(&mut self, after: Duration) {
        // Keep room for answers twice as slow as this one, and at least the first window
        // again: only misses in a row collapse it. Without that floor, a miss now and then
        // (the vCPU descheduled once) left the window halved while quick hits kept it there,
        // so two isolated misses a few hundred requests apart paused polling for
        // [`PAUSE`] answers: a quarter of a 4000-request random-write run went unpolled, and
        // those requests were its slow tenth (traced: p90 150-175k TSC ticks with a pause,
        // 98k without).
        self.window = self.window.max(after * 2).max(START_WINDOW).min(MAX_WINDOW);
    }

    /// The window passed without a request.
    pub fn miss(&mut self) {
        self.window /= 2;
        if self.window < MIN_WINDOW {
            self.paused = PAUSE;
        }
    }
}

/// Watches `queue`'s avail index for up to the window `poll` gives, with the queue's kicks
/// off. Returns whether there is work; when there is none, kicks are back on (and an index
/// that moved meanwhile counts as work). An avail index that cannot be read counts as work,
/// so the caller's processing reports the broken ring.
pub fn watch(queue: &mut Queue, mem: &GuestMemoryMmap, poll: &mut AdaptivePoll) -> bool {
    let Some(window) = poll.window() else {
        return false;
    };
    if super::notify::suppress_kicks(queue, mem).is_err() {
        return false;
    }
    let start = Instant::now();
    loop {
        match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(i) if i.0 != queue.next_avail() => {
                poll.hit(start.elapsed());
                return true;
            }
            Ok(_) => {}
            Err(_) => return true,
        }
        if start.elapsed() >= window {
            break;
        }
        std::hint::spin_loop();
    }
    poll.miss();
    queue.enable_notification(mem).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn watch_finds_a_published_request_and_turns_kicks_back_on_when_none_came() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().expect("queue");
        let mut p = AdaptivePoll::default();
        // Nothing published: the window passes and kicks are on again (used.flags without
        // VRING_USED_F_NO_NOTIFY).
        assert!(!watch(&mut q, &m, &mut p));
        let flags: u16 = m.read_obj(vq.used_addr()).expect("used.flags");
        assert_eq!(u16::from_le(flags) & 1, 0, "kicks back on");
        // The driver publishes a request (avail.idx 1): found while watching.
        m.write_obj(1u16.to_le(), GuestAddress(vq.avail_addr().0 + 2))
            .expect("avail.idx");
        assert!(watch(&mut q, &m, &mut p));
        // No window while paused: nothing is watched, whatever the ring holds.
        let mut paused = AdaptivePoll::default();
        while paused.window().is_some() {
            paused.miss();
        }
        assert!(!watch(&mut q, &m, &mut paused));
    }

    #[test]
    fn hits_keep_and_widen_the_window_up_to_the_maximum() {
        let mut p = AdaptivePoll::default();
        assert_eq!(p.window(), Some(START_WINDOW));
        p.hit(Duration::from_micros(5));
        assert_eq!(p.window(), Some(START_WINDOW), "a quick answer keeps it");
        p.hit(Duration::from_micros(40));
        assert_eq!(p.window(), Some(Duration::from_micros(80)));
        p.hit(Duration::from_micros(90));
        assert_eq!(p.window(), Some(MAX_WINDOW));
    }

    #[test]
    fn only_misses_in_a_row_pause_polling() {
        let mut p = AdaptivePoll::default();
        for _ in 0..100 {
            // One miss, then quick hits: the window is back at the first one each time.
            p.miss();
            assert_eq!(p.window(), Some(START_WINDOW / 2));
            p.hit(Duration::from_micros(3));
            assert_eq!(p.window(), Some(START_WINDOW));
        }
    }

    #[test]
    fn misses_halve_it_then_pause_polling_and_retry_later() {
        let mut p = AdaptivePoll::default();
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
