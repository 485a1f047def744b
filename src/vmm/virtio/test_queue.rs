//! Unit-test helpers shared by the device tests: guest memory and chains on virtio-queue's
//! mock split queue.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Size of [`mem`].
pub const MEM: usize = 0x10_0000;

/// 1 MiB of guest memory at address 0.
pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("mem")
}

/// Add one chain at descriptor index `at`: (addr, len, device-writable) per descriptor.
pub fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, at: u16, descs: &[(u64, u32, bool)]) {
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, (addr, len, w))| {
            let last = i + 1 == descs.len();
            let mut flags = if *w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            RawDescriptor::from(SplitDescriptor::new(
                *addr,
                *len,
                flags,
                if last { 0 } else { at + i as u16 + 1 },
            ))
        })
        .collect();
    vq.add_desc_chains(&raw, at).expect("add chain");
}

/// The used ring's entry `i`: (descriptor id, length written).
pub fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).expect("used").load();
    (e.id(), e.len())
}

/// The used ring's index.
pub fn used_idx(vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    u16::from_le(vq.used().idx().load())
}

/// The used ring's `avail_event` for a queue of `size` entries: where the device asks the
/// driver to kick next (with EVENT_IDX). Read at its real place (8-byte used elements).
pub fn avail_event(vq: &MockSplitQueue<GuestMemoryMmap>, m: &GuestMemoryMmap, size: u16) -> u16 {
    use vm_memory::Bytes;
    let at = GuestAddress(vq.used_addr().0 + 4 + 8 * u64::from(size));
    u16::from_le(m.read_obj(at).expect("avail_event"))
}
