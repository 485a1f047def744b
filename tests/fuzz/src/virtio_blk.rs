//! `virtio_blk`: the virtio-blk request path (parse, check, execute, complete) against a
//! hostile driver. The input lays out one split queue in small guest memory (size, ring
//! addresses, indices, descriptors, avail ring, all fuzzer-chosen, possibly overlapping),
//! picks the disk's negotiated features (read-only, DISCARD, WRITE_ZEROES, FLUSH), then runs
//! a program: queue passes, guest-memory writes (request headers, DISCARD segments, anything)
//! and the guest adding chains between kicks. The image is a 32 KiB memfd.
//!
//! Checked: no panic, no hang; the device never returns more chains than it took; the image
//! never changes size; a read-only image never changes content.

use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use volt::vmm::disk::DiskLimit;
use volt::vmm::virtio::blk::io::SyncIo;
use volt::vmm::virtio::blk::request::{self, DiskInfo};
use volt::vmm::virtio::blk::throttle::Throttle;
use volt::vmm::virtio::blk::worker::{self, Ctx, Stats};

use super::cursor::Cursor;
use super::split_queue::{self, Lens};

/// The device's queue size (virtio-blk's `QUEUE_SIZE`).
const MAX_QUEUE: u16 = 256;
/// Disk size in sectors.
const SECTORS: u64 = 64;
/// Most program steps per input.
const MAX_OPS: usize = 64;

fn image() -> Option<std::fs::File> {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"volt-fuzz-blk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd nobody else owns.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    let data: Vec<u8> = (0..SECTORS * 512).map(|i| (i / 512) as u8 ^ 0x5a).collect();
    f.write_all_at(&data, 0).ok()?;
    Some(f)
}

pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let Some(mem) = split_queue::memory() else {
        return;
    };
    let Some(file) = image() else {
        return;
    };
    let hdr = c.u8();
    let size = 1u16 << (hdr % 9);
    let event_idx = hdr & 0x10 != 0;
    let read_only = hdr & 0x20 != 0;
    let feats = c.u8();
    let Some((mut q, l)) = split_queue::queue(&mem, &mut c, MAX_QUEUE, size, event_idx) else {
        return;
    };

    let _ = mem.write_obj(u16::from(c.u8() & 1), GuestAddress(l.avail));
    let _ = mem.write_obj(l.start, GuestAddress(l.avail + 2));
    let _ = mem.write_obj(0u16, GuestAddress(l.used));
    let _ = mem.write_obj(l.start, GuestAddress(l.used + 2));
    split_queue::fill(&mem, &l, &mut c, Lens::Sectors);

    let io = SyncIo::new(file.try_clone().expect("dup memfd"), None);
    let stats = Stats::default();
    let ctx = Ctx {
        mem: &mem,
        io: &io,
        info: DiskInfo {
            capacity: SECTORS,
            read_only,
            discard: !read_only && feats & 1 != 0,
            write_zeroes: !read_only && feats & 2 != 0,
            max_transfer: 1 << 20,
            max_segment: 1 << 20,
            max_dwz_sectors: u32::from(feats >> 4) * 4,
            pad_to: 512,
        },
        serial: b"fuzz-serial-0123456789",
        write_through: feats & 4 != 0,
        stats: &stats,
        stop: &std::sync::atomic::AtomicBool::new(false),
    };
    let original = {
        let mut v = vec![0u8; (SECTORS * 512) as usize];
        let _ = file.read_exact_at(&mut v, 0);
        v
    };
    let mut throttle = Throttle::new(&DiskLimit::default(), std::time::Instant::now());
    let mut deferred = None;
    let mut descs = Vec::new();
    let avail0 = q.next_avail();
    let used0 = q.next_used();

    for _ in 0..MAX_OPS {
        if c.is_empty() {
            break;
        }
        let op = c.u8();
        match op % 6 {
            0 | 1 => {
                let _ = worker::process(&mut q, &ctx, &mut throttle, &mut deferred, &mut descs);
            }
            2 => {
                // A request header at a fuzzed address: a known type most of the time.
                let a = u64::from(c.u16());
                let kind = match c.u8() % 8 {
                    0 => request::kind::IN,
                    1 => request::kind::OUT,
                    2 => request::kind::FLUSH,
                    3 => request::kind::GET_ID,
                    4 => request::kind::DISCARD,
                    5 => request::kind::WRITE_ZEROES,
                    _ => c.u32(),
                };
                let sector = if c.bool() { u64::from(c.u8()) } else { c.u64() };
                let mut h = [0u8; 16];
                h[..4].copy_from_slice(&kind.to_le_bytes());
                h[8..].copy_from_slice(&sector.to_le_bytes());
                let _ = mem.write_slice(&h, GuestAddress(a));
            }
            3 => {
                // A DISCARD / WRITE_ZEROES segment.
                let a = u64::from(c.u16());
                let mut s = [0u8; 16];
                s[..8].copy_from_slice(&u64::from(c.u8()).to_le_bytes());
                s[8..12].copy_from_slice(&u32::from(c.u8()).to_le_bytes());
                s[12..].copy_from_slice(&u32::from(c.u8() & 3).to_le_bytes());
                let _ = mem.write_slice(&s, GuestAddress(a));
            }
            4 => split_queue::add_buffer(&mem, &l, &mut c, Lens::Sectors),
            _ => split_queue::write_raw(&mem, &mut c),
        }
        split_queue::check_used(&q, avail0, used0);
    }
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, SECTORS * 512, "the image changed size");
    if read_only {
        let mut now = vec![0u8; original.len()];
        let _ = file.read_exact_at(&mut now, 0);
        assert!(now == original, "a read-only image was written");
    }
}
