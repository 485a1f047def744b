//! The request path against a recording engine: what reaches the disk, and in which order.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::io::DiskIo;
use super::request::{self, kind, status, DiskInfo};
use super::tests::{d, hdr, NEVER};
use super::throttle::Throttle;
use super::worker::{self, Ctx, Stats};
use super::*;
use crate::vmm::disk::DiskLimit;
use crate::vmm::virtio::test_queue::{add_chain, mem, used, used_idx};

/// One call the request path made on the engine (offsets and lengths in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Read(u64),
    Write(u64),
    Flush,
    Discard(u64, u64),
    WriteZeroes(u64, u64, bool),
}

/// An engine that does nothing but record its calls; its flushes fail while `failing_flushes`
/// says so (counting down); a read sets `stop_on_read` (the device stopping meanwhile).
#[derive(Default)]
pub(super) struct Recorder {
    calls: Mutex<Vec<Call>>,
    pub failing_flushes: Mutex<u32>,
    pub stop_on_read: Option<Arc<AtomicBool>>,
}

impl Recorder {
    fn push(&self, c: Call) -> std::io::Result<()> {
        self.calls.lock().unwrap().push(c);
        Ok(())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl DiskIo for Recorder {
    unsafe fn read_iov(&self, _: &[libc::iovec], offset: u64) -> std::io::Result<()> {
        if let Some(s) = &self.stop_on_read {
            s.store(true, Ordering::Release);
        }
        self.push(Call::Read(offset))
    }
    unsafe fn write_iov(&self, _: &[libc::iovec], offset: u64) -> std::io::Result<()> {
        self.push(Call::Write(offset))
    }
    fn flush(&self) -> std::io::Result<()> {
        self.push(Call::Flush)?;
        let mut n = self.failing_flushes.lock().unwrap();
        if *n > 0 {
            *n -= 1;
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.push(Call::Discard(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        self.push(Call::WriteZeroes(offset, len, unmap))
    }
}

/// An 8 GiB disk: a whole `MAX_DWZ_SECTORS` range fits anywhere near its start.
const SECTORS: u64 = 1 << 24;

fn info() -> DiskInfo {
    DiskInfo {
        capacity: SECTORS,
        read_only: false,
        discard: true,
        write_zeroes: true,
        max_transfer: u64::from(SIZE_MAX) * u64::from(SEG_MAX),
        max_segment: u64::from(SIZE_MAX),
        max_dwz_sectors: MAX_DWZ_SECTORS,
        pad_to: 512,
    }
}

fn ctx<'a>(
    m: &'a GuestMemoryMmap,
    io: &'a dyn DiskIo,
    stats: &'a Stats,
    write_through: bool,
) -> Ctx<'a> {
    Ctx {
        mem: m,
        io,
        info: info(),
        serial: b"",
        write_through,
        stats,
        stop: &NEVER,
    }
}

/// A DISCARD / WRITE_ZEROES segment.
fn seg(sector: u64, n: u32, flags: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&n.to_le_bytes());
    b[12..].copy_from_slice(&flags.to_le_bytes());
    b
}

/// Parses a DISCARD or WRITE_ZEROES request of `segment` (header at 0x1000, segment at
/// 0x2000, status at 0x3000).
fn dwz_request(m: &GuestMemoryMmap, k: u32, segment: [u8; 16]) -> request::Request {
    m.write_slice(&hdr(k, 0), GuestAddress(0x1000)).unwrap();
    m.write_slice(&segment, GuestAddress(0x2000)).unwrap();
    request::parse(
        &[
            d(0x1000, 16, false),
            d(0x2000, 16, false),
            d(0x3000, 1, true),
        ],
        m,
    )
    .unwrap()
}

#[test]
fn write_zeroes_runs_on_the_segment_read_at_parse_time() {
    let m = mem();
    let req = dwz_request(&m, kind::WRITE_ZEROES, seg(8, 2, 0));
    // Another vCPU rewrites the segment after the request was parsed (and charged to the
    // throttle): a 2 GiB range instead of 1 KiB.
    m.write_slice(&seg(0, MAX_DWZ_SECTORS, 0), GuestAddress(0x2000))
        .unwrap();
    let io = Recorder::default();
    let stats = Stats::default();
    assert_eq!(
        worker::execute(&req, &ctx(&m, &io, &stats, false)),
        (status::OK, 0)
    );
    assert_eq!(io.calls(), vec![Call::WriteZeroes(8 * 512, 2 * 512, false)]);
}

#[test]
fn write_through_flushes_after_discard_and_write_zeroes_as_after_a_write() {
    let m = mem();
    for write_through in [true, false] {
        let io = Recorder::default();
        let stats = Stats::default();
        let c = ctx(&m, &io, &stats, write_through);
        let req = dwz_request(&m, kind::DISCARD, seg(8, 2, 0));
        assert_eq!(worker::execute(&req, &c), (status::OK, 0));
        let req = dwz_request(&m, kind::WRITE_ZEROES, seg(16, 1, 1));
        assert_eq!(worker::execute(&req, &c), (status::OK, 0));
        m.write_slice(&hdr(kind::OUT, 4), GuestAddress(0x1000))
            .unwrap();
        let req = request::parse(
            &[
                d(0x1000, 16, false),
                d(0x4000, 512, false),
                d(0x3000, 1, true),
            ],
            &m,
        )
        .unwrap();
        assert_eq!(worker::execute(&req, &c), (status::OK, 0));
        let want = if write_through {
            vec![
                Call::Discard(8 * 512, 1024),
                Call::Flush,
                Call::WriteZeroes(16 * 512, 512, true),
                Call::Flush,
                Call::Write(4 * 512),
                Call::Flush,
            ]
        } else {
            vec![
                Call::Discard(8 * 512, 1024),
                Call::WriteZeroes(16 * 512, 512, true),
                Call::Write(4 * 512),
            ]
        };
        assert_eq!(io.calls(), want, "write_through = {write_through}");
    }
}

#[test]
fn a_failed_flush_fails_every_later_one_across_engines() {
    let m = mem();
    m.write_slice(&hdr(kind::FLUSH, 0), GuestAddress(0x1000))
        .unwrap();
    let flush = request::parse(&[d(0x1000, 16, false), d(0x3000, 1, true)], &m).unwrap();
    let failed = Arc::new(AtomicBool::new(false));
    let rec = Recorder::default();
    *rec.failing_flushes.lock().unwrap() = 1;
    let stats = Stats::default();
    let io = io::StickyFlush::new(Box::new(rec), failed.clone(), "vdt");
    let c = ctx(&m, &io, &stats, false);
    assert_eq!(worker::execute(&flush, &c), (status::IOERR, 0));
    // The engine would say OK now (its fdatasync found nothing left to write): still IOERR.
    assert_eq!(worker::execute(&flush, &c), (status::IOERR, 0));
    assert_eq!(worker::execute(&flush, &c), (status::IOERR, 0));
    // After a reset, the next activation's engine (a fresh fd) keeps the failure.
    let io = io::StickyFlush::new(Box::new(Recorder::default()), failed, "vdt");
    let c = ctx(&m, &io, &stats, true);
    assert_eq!(worker::execute(&flush, &c), (status::IOERR, 0));
    m.write_slice(&hdr(kind::OUT, 4), GuestAddress(0x1000))
        .unwrap();
    let write = request::parse(
        &[
            d(0x1000, 16, false),
            d(0x4000, 512, false),
            d(0x3000, 1, true),
        ],
        &m,
    )
    .unwrap();
    assert_eq!(
        worker::execute(&write, &c),
        (status::IOERR, 0),
        "a write-through write is not durable either"
    );
}

/// Writes an indirect table at `at` for an IN of sector 0: the header at 0x1_0000, `pieces`
/// data descriptors of 512 bytes from 0x4_0000, the status byte at `status`.
fn indirect_in(m: &GuestMemoryMmap, at: u64, pieces: usize, status: u64) -> RawDescriptor {
    m.write_slice(&hdr(kind::IN, 0), GuestAddress(0x1_0000))
        .unwrap();
    let mut table = vec![(0x1_0000u64, 16u32, false)];
    table.extend((0..pieces as u64).map(|i| (0x4_0000 + i * 512, 512, true)));
    table.push((status, 1, true));
    for (i, &(addr, len, write)) in table.iter().enumerate() {
        let last = i + 1 == table.len();
        let mut flags = 0u16;
        if !last {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        if write {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&addr.to_le_bytes());
        e[8..12].copy_from_slice(&len.to_le_bytes());
        e[12..14].copy_from_slice(&flags.to_le_bytes());
        e[14..].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        m.write_slice(&e, GuestAddress(at + i as u64 * 16)).unwrap();
    }
    RawDescriptor::from(SplitDescriptor::new(
        at,
        table.len() as u32 * 16,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ))
}

#[test]
fn a_chain_of_more_than_seg_max_plus_two_descriptors_is_refused() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    // Through indirect tables (not offered, but followed): SEG_MAX data descriptors (the
    // most a request may have), then one more.
    let seg_max = SEG_MAX as usize;
    vq.add_desc_chains(&[indirect_in(&m, 0x8_0000, seg_max, 0x7_0000)], 0)
        .unwrap();
    vq.add_desc_chains(&[indirect_in(&m, 0x9_0000, seg_max + 1, 0x7_0001)], 1)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let io = Recorder::default();
    let stats = Stats::default();
    let mut t = Throttle::new(&DiskLimit::default(), Instant::now());
    let c = ctx(&m, &io, &stats, false);
    let pass = worker::process(&mut q, &c, &mut t, &mut None, &mut Vec::new());
    assert!(pass.used);
    let mut st = [9u8; 2];
    m.read_slice(&mut st, GuestAddress(0x7_0000)).unwrap();
    assert_eq!(st, [status::OK, status::IOERR]);
    assert_eq!(
        io.calls(),
        vec![Call::Read(0)],
        "only the first one is read"
    );
    assert_eq!(used(&vq, 0), (0, seg_max as u32 * 512 + 1));
    assert_eq!(used(&vq, 1), (1, 1));
}

#[test]
fn a_segment_larger_than_size_max_is_refused_once_size_max_is_accepted() {
    let r = |lens: &[u64]| request::Request {
        kind: kind::OUT,
        sector: 0,
        data: lens
            .iter()
            .map(|&len| request::Segment {
                addr: GuestAddress(0),
                len,
            })
            .collect(),
        data_len: lens.iter().sum(),
        status: GuestAddress(0),
        dwz: None,
    };
    let max = u64::from(SIZE_MAX);
    assert_eq!(request::check(&r(&[max, max]), &info()), Ok(()));
    assert_eq!(
        request::check(&r(&[max - 512, max + 512]), &info()),
        Err(status::IOERR)
    );
    let not_accepted = DiskInfo {
        max_segment: u64::MAX,
        ..info()
    };
    assert_eq!(
        request::check(&r(&[max - 512, max + 512]), &not_accepted),
        Ok(())
    );
}

#[test]
fn a_pass_ends_before_its_next_request_once_the_device_stops() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    for i in 0..3u16 {
        let h = 0x1_0000 + u64::from(i) * 0x100;
        m.write_slice(&hdr(kind::IN, u64::from(i)), GuestAddress(h))
            .unwrap();
        add_chain(
            &vq,
            i * 3,
            &[
                (h, 16, false),
                (0x2_0000, 512, true),
                (0x3_0000 + u64::from(i), 1, true),
            ],
        );
    }
    let mut q: Queue = vq.create_queue().unwrap();
    // The device is reset while the first request runs.
    let stop = Arc::new(AtomicBool::new(false));
    let io = Recorder {
        stop_on_read: Some(stop.clone()),
        ..Recorder::default()
    };
    let stats = Stats::default();
    let c = Ctx {
        stop: &stop,
        ..ctx(&m, &io, &stats, false)
    };
    let mut t = Throttle::new(&DiskLimit::default(), Instant::now());
    worker::process(&mut q, &c, &mut t, &mut None, &mut Vec::new());
    assert_eq!(io.calls(), vec![Call::Read(0)]);
    assert_eq!(used_idx(&vq), 1, "the other two are left in the ring");
}

#[test]
fn the_throttle_charges_what_padding_moves_on_the_host() {
    let r = super::tests::bare_request;
    // 512-byte blocks: the data alone.
    assert_eq!(worker::padded_cost(&r(kind::OUT, 1, 512), 512), 512);
    // A 4Kn image without the page cache: a sector inside a block is a block read and
    // written; a read of it is a block read; whole blocks are their data.
    assert_eq!(worker::padded_cost(&r(kind::OUT, 1, 512), 4096), 8192);
    assert_eq!(worker::padded_cost(&r(kind::IN, 1, 512), 4096), 4096);
    assert_eq!(worker::padded_cost(&r(kind::OUT, 8, 8192), 4096), 8192);
    // Both ends inside blocks: two blocks read, three written.
    assert_eq!(
        worker::padded_cost(&r(kind::OUT, 1, 8192), 4096),
        12288 + 8192
    );
}
