//! What the virtio targets share: small guest memory with a hole, and one split queue whose
//! size, ring addresses, indices, descriptors and avail ring the fuzzer lays out (possibly
//! overlapping, possibly outside memory), as a hostile driver would.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::cursor::Cursor;

/// Guest RAM: 64 KiB at 0 and 4 KiB at 128 KiB (a hole between).
pub const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1000)];

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Guest memory laid out as [`RAM`].
pub fn memory() -> Option<GuestMemoryMmap> {
    GuestMemoryMmap::<()>::from_ranges(
        &RAM.iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect::<Vec<_>>(),
    )
    .ok()
}

/// An address: mostly inside the first region, sometimes in the second or anywhere.
pub fn addr(c: &mut Cursor, mode: u8) -> u64 {
    match mode & 3 {
        3 => c.u64(),
        2 => 0x2_0000 + u64::from(c.u16() % 0x1100),
        _ => u64::from(c.u16()),
    }
}

/// Where the driver put the queue.
pub struct Layout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The avail and used indices the queue starts at.
    pub start: u16,
}

/// A ready queue of `size` (≤ `max_size`) with fuzzer-chosen ring addresses and start index,
/// `event_idx` as negotiated; `None` where the transport would refuse to activate it
/// (rings outside guest memory).
pub fn queue(
    mem: &GuestMemoryMmap,
    c: &mut Cursor,
    max_size: u16,
    size: u16,
    event_idx: bool,
) -> Option<(Queue, Layout)> {
    let rings = c.u8();
    let desc = addr(c, rings) & !0xf;
    let avail = addr(c, rings >> 2) & !1;
    let used = addr(c, rings >> 4) & !3;
    let start = c.u16();

    let mut q = Queue::new(max_size).ok()?;
    q.set_size(size);
    if q.try_set_desc_table_address(GuestAddress(desc)).is_err()
        || q.try_set_avail_ring_address(GuestAddress(avail)).is_err()
        || q.try_set_used_ring_address(GuestAddress(used)).is_err()
    {
        return None;
    }
    q.set_ready(true);
    if !q.is_valid(mem) {
        return None;
    }
    q.set_event_idx(event_idx);
    q.set_next_avail(start);
    q.set_next_used(start);
    let layout = Layout {
        size,
        desc,
        avail,
        used,
        start,
    };
    Some((q, layout))
}

/// How a descriptor's length is picked in the fuzzer's length mode 1.
#[derive(Clone, Copy)]
pub enum Lens {
    /// Whole sectors, sometimes one byte more (virtio-blk data buffers).
    Sectors,
    /// Any 16-bit length.
    Short,
}

/// Writes descriptor `i` of the table: fuzzed address, length, flags (unknown bits too) and
/// next index.
pub fn write_desc(mem: &GuestMemoryMmap, l: &Layout, i: u16, c: &mut Cursor, lens: Lens) {
    let mode = c.u8();
    let a = addr(c, mode);
    let len = match ((mode >> 2) & 3, lens) {
        (0, _) => u32::from(c.u8()),
        (1, Lens::Sectors) => 512 * u32::from(c.u8() % 8) + u32::from(c.u8() % 2),
        (1 | 2, _) => u32::from(c.u16()),
        _ => c.u32(),
    };
    let fb = c.u8();
    let mut flags = u16::from(fb) & (F_NEXT | F_WRITE | F_INDIRECT);
    if fb & 0x80 != 0 {
        flags |= u16::from(fb) << 8; // unknown flag bits
    }
    let next = if fb & 0x40 != 0 {
        c.u16()
    } else {
        u16::from(c.u8()) % l.size.max(1)
    };
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&a.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    let _ = mem.write_slice(&raw, GuestAddress(l.desc + 16 * u64::from(i)));
}

/// The guest publishes `head` in the avail ring and bumps the index.
pub fn publish(mem: &GuestMemoryMmap, l: &Layout, head: u16) {
    let idx_at = GuestAddress(l.avail + 2);
    let Ok(idx) = mem.read_obj::<u16>(idx_at) else {
        return;
    };
    let slot = GuestAddress(l.avail + 4 + 2 * u64::from(idx % l.size));
    let _ = mem.write_obj(head, slot);
    let _ = mem.write_obj(idx.wrapping_add(1), idx_at);
}

/// The driver's first descriptors (up to the queue size) and the heads it published before
/// the first kick (in range mostly, any index sometimes).
pub fn fill(mem: &GuestMemoryMmap, l: &Layout, c: &mut Cursor, lens: Lens) {
    let ndesc = u16::from(c.u8()).min(l.size);
    for i in 0..ndesc {
        write_desc(mem, l, i, c, lens);
    }
    let heads = c.u8();
    for _ in 0..heads {
        let b = c.u8();
        let head = if b & 0x80 != 0 {
            c.u16()
        } else {
            u16::from(b) % l.size
        };
        publish(mem, l, head);
    }
}

/// The guest adds a buffer between kicks: rewrites a descriptor and publishes it.
pub fn add_buffer(mem: &GuestMemoryMmap, l: &Layout, c: &mut Cursor, lens: Lens) {
    let i = u16::from(c.u8()) % l.size;
    write_desc(mem, l, i, c, lens);
    publish(mem, l, i);
}

/// Up to 255 fuzzer bytes written at a fuzzed address below 64 KiB.
pub fn write_raw(mem: &GuestMemoryMmap, c: &mut Cursor) {
    let a = u64::from(c.u16());
    let n = usize::from(c.u8());
    let _ = mem.write_slice(c.bytes(n), GuestAddress(a));
}

/// The invariant of every pass: the device never returns more chains than it took since the
/// queue's indices were `avail0` and `used0`.
pub fn check_used(q: &Queue, avail0: u16, used0: u16) {
    let taken = q.next_avail().wrapping_sub(avail0);
    let returned = q.next_used().wrapping_sub(used0);
    assert!(
        returned <= taken,
        "{returned} chains returned but only {taken} taken"
    );
}
