//! The request path against a recording engine: what reaches the disk, and in which order.

use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::io::DiskIo;
use super::request::{self, kind, status, DiskInfo};
use super::tests::{d, hdr};
use super::worker::{self, Ctx, Stats};
use super::*;
use crate::vmm::virtio::test_queue::mem;

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
/// says so (counting down).
#[derive(Default)]
pub(super) struct Recorder {
    calls: Mutex<Vec<Call>>,
    pub failing_flushes: Mutex<u32>,
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
        max_dwz_sectors: MAX_DWZ_SECTORS,
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
