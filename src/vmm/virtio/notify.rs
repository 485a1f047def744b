//! Notification suppression in both directions (virtio 1.x §2.7.7 and §2.7.10), for the
//! devices' queue workers.
//!
//! Used-buffer notifications (device → driver, an interrupt): with `VIRTIO_F_EVENT_IDX` the
//! driver's `used_event` decides (virtio-queue implements that); without it the driver's
//! `VIRTQ_AVAIL_F_NO_INTERRUPT` flag does, which virtio-queue 0.18 ignores ("isn't supported
//! yet": its `needs_notification` answers `true`). A driver that polls its rings sets that
//! flag; interrupting it anyway costs it an interrupt entry for nothing, so
//! [`needs_interrupt`] honours it, as the spec says a device SHOULD.
//!
//! Available-buffer notifications (driver → device, a QueueNotify write): the device sets
//! `VIRTQ_USED_F_NO_NOTIFY` (or, with EVENT_IDX, leaves `avail_event` behind) while it does
//! not need them; see the queue workers for when.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver does not want used-buffer notifications.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Whether the driver wants an interrupt for the used entries added since the last call.
///
/// Call after `add_used` (the fence orders those writes before the read of the driver's
/// flags or event index). A flags word that cannot be read (the ring left guest memory) reads
/// as "interrupt": a spurious interrupt is harmless, a lost one is not.
pub fn needs_interrupt(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem).unwrap_or(true);
    }
    fence(Ordering::SeqCst);
    match mem.load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Acquire) {
        Ok(flags) => u16::from_le(flags) & AVAIL_F_NO_INTERRUPT == 0,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem")
    }

    /// The driver's avail.flags.
    fn set_avail_flags(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, v: u16) {
        m.write_obj(u16::to_le(v), vq.avail_addr()).expect("flags");
    }

    /// The driver's used_event (after the avail ring of `size` entries).
    fn set_used_event(
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        size: u64,
        v: u16,
    ) {
        let a = vq.avail_addr().0 + 4 + 2 * size;
        m.write_obj(u16::to_le(v), GuestAddress(a))
            .expect("used_event");
    }

    #[test]
    fn no_interrupt_flag_is_honoured_without_event_idx() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().expect("queue");
        assert!(needs_interrupt(&mut q, &m), "flags 0: interrupt");
        set_avail_flags(&m, &vq, AVAIL_F_NO_INTERRUPT);
        assert!(!needs_interrupt(&mut q, &m), "NO_INTERRUPT: none");
        set_avail_flags(&m, &vq, 0);
        assert!(needs_interrupt(&mut q, &m), "flag cleared again: interrupt");
    }

    #[test]
    fn event_idx_decides_when_negotiated_and_the_flag_is_ignored() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().expect("queue");
        q.set_event_idx(true);
        // The driver asks for an interrupt once used entry 0 is written (used_event = 0),
        // and sets the flag, which it must not rely on with EVENT_IDX.
        set_avail_flags(&m, &vq, AVAIL_F_NO_INTERRUPT);
        set_used_event(&m, &vq, 16, 0);
        q.add_used(&m, 0, 0).expect("add_used");
        assert!(needs_interrupt(&mut q, &m));
        // used_event still 0: the next entry needs none.
        q.add_used(&m, 1, 0).expect("add_used");
        assert!(!needs_interrupt(&mut q, &m));
    }

    #[test]
    fn an_unreadable_ring_means_interrupt() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().expect("queue");
        q.set_avail_ring_address(Some(0x20_0000), Some(0));
        assert!(needs_interrupt(&mut q, &m));
    }
}
