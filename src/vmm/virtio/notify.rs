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

/// Turns the driver's kicks off while the device is busy with the queue or watching it: the
/// `VIRTQ_USED_F_NO_NOTIFY` flag, or with EVENT_IDX (where a driver ignores the flag, and
/// virtio-queue's `disable_notification` writes nothing) an `avail_event` one behind the next
/// index the device reads. The driver kicks when its publish crosses `avail_event`, so one
/// left where the last re-arm put it would cost a kick, an exit and a wakeup per request
/// during a poll window; one behind cannot be crossed before the index wraps, and the driver
/// is never more than a ring ahead. `enable_notification` (re-arm) puts it back.
pub fn suppress_kicks(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<(), virtio_queue::Error> {
    if !queue.event_idx_enabled() {
        return queue.disable_notification(mem);
    }
    let at = queue
        .used_ring()
        .checked_add(4 + 8 * u64::from(queue.size()))
        .map(GuestAddress)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    let behind = queue.next_avail().wrapping_sub(1);
    mem.store(u16::to_le(behind), at, Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::virtio::test_queue::avail_event;
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

    /// Whether a driver publishing from `old` to `new` kicks (`vring_need_event`).
    fn driver_kicks(event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    #[test]
    fn kicks_are_suppressed_with_event_idx_too() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q: Queue = vq.create_queue().expect("queue");
        q.set_event_idx(true);
        q.set_next_avail(5);
        // Re-armed: the driver's next publish (5 -> 6) kicks.
        q.enable_notification(&m).expect("enable");
        assert!(driver_kicks(avail_event(&vq, &m, 16), 6, 5));
        // Suppressed (while the device polls the ring): no publish kicks, however far the
        // driver gets ahead within a ring, and from wherever it starts.
        suppress_kicks(&mut q, &m).expect("suppress");
        let event = avail_event(&vq, &m, 16);
        for old in 5..5 + 16 {
            for new in old + 1..=5 + 16 {
                assert!(!driver_kicks(event, new, old), "{old} -> {new} kicks");
            }
        }
        // virtio-queue's own disable leaves the re-armed index, which the driver crosses.
        q.enable_notification(&m).expect("enable");
        q.disable_notification(&m).expect("disable");
        assert!(driver_kicks(avail_event(&vq, &m, 16), 6, 5));
        // Without EVENT_IDX the flag does it.
        let mut plain: Queue = vq.create_queue().expect("queue");
        suppress_kicks(&mut plain, &m).expect("suppress");
        let flags: u16 = m.read_obj(vq.used_addr()).expect("used.flags");
        assert_eq!(u16::from_le(flags) & 1, 1, "VIRTQ_USED_F_NO_NOTIFY");
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
