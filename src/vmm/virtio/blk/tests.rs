//! Request parsing, checks and the queue pass over real guest memory (virtio-queue's mock
//! split queue) and a real image file.

use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use proptest::prelude::*;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::io::SyncIo;
use super::request::{self, kind, status, Desc, DiskInfo};
use super::throttle::Throttle;
use super::worker::{self, Ctx, Stats};
use super::*;
use crate::vmm::disk::DiskLimit;
use crate::vmm::virtio::test_queue::{add_chain, mem, used, MEM};

const DISK_SECTORS: u64 = 64;

/// A stop flag nobody sets.
pub(super) static NEVER: AtomicBool = AtomicBool::new(false);

pub(super) fn hdr(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn info() -> DiskInfo {
    DiskInfo {
        capacity: DISK_SECTORS,
        read_only: false,
        discard: true,
        write_zeroes: true,
        max_transfer: u64::from(SIZE_MAX) * u64::from(SEG_MAX),
        max_segment: u64::from(SIZE_MAX),
        max_dwz_sectors: MAX_DWZ_SECTORS,
        pad_to: 512,
    }
}

/// A request of `kind` at `sector` said to carry `len` bytes, without its pieces (for the
/// checks and the throttle's charge, which look at the header and the length).
pub(super) fn bare_request(kind: u32, sector: u64, len: u64) -> request::Request {
    request::Request {
        kind,
        sector,
        data: Vec::new(),
        data_len: len,
        status: GuestAddress(0),
        dwz: None,
    }
}

pub(super) fn d(addr: u64, len: u32, write: bool) -> Desc {
    Desc {
        addr: GuestAddress(addr),
        len,
        write,
    }
}

#[test]
fn parse_splits_header_data_and_status_across_descriptors() {
    let m = mem();
    // The header split over two descriptors, data sharing the last one with the status.
    let h = hdr(kind::IN, 5);
    m.write_slice(&h[..6], GuestAddress(0x1000)).unwrap();
    m.write_slice(&h[6..], GuestAddress(0x2000)).unwrap();
    let r = request::parse(
        &[
            d(0x1000, 6, false),
            d(0x2000, 10, false),
            d(0x3000, 512, true),
            d(0x4000, 513, true),
        ],
        &m,
    )
    .unwrap();
    assert_eq!((r.kind, r.sector, r.data_len), (kind::IN, 5, 1024));
    assert_eq!(r.status, GuestAddress(0x4000 + 512));
    assert_eq!(
        r.data,
        vec![
            request::Segment {
                addr: GuestAddress(0x3000),
                len: 512
            },
            request::Segment {
                addr: GuestAddress(0x4000),
                len: 512
            }
        ]
    );
    // OUT: data is the readable bytes after the header, even inside the header's buffer.
    m.write_slice(&hdr(kind::OUT, 1), GuestAddress(0x1000))
        .unwrap();
    let r = request::parse(&[d(0x1000, 16 + 512, false), d(0x5000, 1, true)], &m).unwrap();
    assert_eq!(r.data_len, 512);
    assert_eq!(r.data[0].addr, GuestAddress(0x1010));
}

#[test]
fn parse_rejects_broken_chains() {
    let m = mem();
    m.write_slice(&hdr(kind::IN, 0), GuestAddress(0x1000))
        .unwrap();
    let fault = |descs: &[Desc]| request::parse(descs, &m).unwrap_err();
    assert_eq!(
        fault(&[d(0x1000, 16, false)]).fault,
        request::Fault::NoStatus
    );
    assert_eq!(fault(&[]).fault, request::Fault::NoStatus);
    assert_eq!(
        fault(&[d(0x1000, 16, false), d(MEM as u64, 1, true)]).status,
        None
    );
    let e = fault(&[d(0x1000, 8, false), d(0x2000, 1, true)]);
    assert_eq!(e.fault, request::Fault::ShortHeader(8));
    assert_eq!(e.status, Some(GuestAddress(0x2000)));
    assert_eq!(
        fault(&[
            d(0x1000, 16, false),
            d(0x2000, 8, true),
            d(0x3000, 8, false),
            d(0x4000, 1, true)
        ])
        .fault,
        request::Fault::ReadableAfterWritable
    );
    assert_eq!(
        fault(&[
            d(0x1000, 16, false),
            d(MEM as u64 - 8, 512, true),
            d(0x4000, 1, true)
        ])
        .fault,
        request::Fault::OutOfMemory(MEM as u64 - 8)
    );
}

#[test]
fn check_bounds_sizes_directions_and_features() {
    let r = bare_request;
    let i = info();
    assert_eq!(
        request::check(&r(kind::IN, 0, 512 * DISK_SECTORS), &i),
        Ok(())
    );
    assert_eq!(
        request::check(&r(kind::IN, 1, 512 * DISK_SECTORS), &i),
        Err(status::IOERR)
    );
    assert_eq!(request::check(&r(kind::OUT, DISK_SECTORS, 0), &i), Ok(()));
    assert_eq!(
        request::check(&r(kind::OUT, u64::MAX, 512), &i),
        Err(status::IOERR)
    );
    assert_eq!(request::check(&r(kind::IN, 0, 100), &i), Err(status::IOERR));
    assert_eq!(request::check(&r(kind::FLUSH, u64::MAX, 0), &i), Ok(()));
    assert_eq!(request::check(&r(99, 0, 0), &i), Err(status::UNSUPP));
    assert_eq!(
        request::check(&r(kind::DISCARD, 0, 32), &i),
        Err(status::UNSUPP)
    );
    assert_eq!(request::check(&r(kind::DISCARD, 0, 16), &i), Ok(()));
    let ro = DiskInfo {
        read_only: true,
        discard: false,
        write_zeroes: false,
        ..i
    };
    assert_eq!(
        request::check(&r(kind::OUT, 0, 512), &ro),
        Err(status::IOERR)
    );
    assert_eq!(request::check(&r(kind::IN, 0, 512), &ro), Ok(()));
    assert_eq!(
        request::check(&r(kind::WRITE_ZEROES, 0, 16), &ro),
        Err(status::UNSUPP)
    );
    let seg = |sector, n, flags| request::DwzSegment {
        sector,
        num_sectors: n,
        flags,
    };
    assert_eq!(seg(2, 4, 0).check(kind::DISCARD, &i), Ok((1024, 2048)));
    assert_eq!(seg(2, 4, 1).check(kind::DISCARD, &i), Err(status::UNSUPP));
    assert_eq!(seg(2, 4, 1).check(kind::WRITE_ZEROES, &i), Ok((1024, 2048)));
    assert_eq!(
        seg(60, 5, 0).check(kind::WRITE_ZEROES, &i),
        Err(status::IOERR)
    );
    assert_eq!(
        seg(u64::MAX, 1, 0).check(kind::DISCARD, &i),
        Err(status::IOERR)
    );
}

/// An image of DISK_SECTORS sectors, sector n filled with byte n.
fn image() -> (tempfile::NamedTempFile, std::fs::File) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i / 512) as u8).collect();
    std::fs::write(f.path(), &data).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(f.path())
        .unwrap();
    (f, file)
}

/// A worker's context on `m` and `io` with the test disk's info and no serial.
fn ctx<'a>(m: &'a GuestMemoryMmap, io: &'a SyncIo, stats: &'a Stats) -> Ctx<'a> {
    Ctx {
        mem: m,
        io,
        info: info(),
        serial: b"",
        write_through: false,
        stats,
        stop: &NEVER,
    }
}

fn run(q: &mut Queue, m: &GuestMemoryMmap, file: &std::fs::File, info: DiskInfo) -> worker::Pass {
    let io = SyncIo::new(file.try_clone().unwrap(), None);
    let stats = Stats::default();
    let ctx = Ctx {
        mem: m,
        io: &io,
        info,
        serial: b"volt-serial",
        write_through: false,
        stats: &stats,
        stop: &NEVER,
    };
    let mut t = Throttle::new(&DiskLimit::default(), Instant::now());
    worker::process(q, &ctx, &mut t, &mut None, &mut Vec::new())
}

#[test]
fn queue_pass_reads_writes_flushes_and_answers_errors() {
    let m = mem();
    let (_tmp, file) = image();
    let vq = MockSplitQueue::new(&m, 32);
    // 0: read sectors 3-4.
    m.write_slice(&hdr(kind::IN, 3), GuestAddress(0x1_0000))
        .unwrap();
    add_chain(
        &vq,
        0,
        &[
            (0x1_0000, 16, false),
            (0x2_0000, 1024, true),
            (0x3_0000, 1, true),
        ],
    );
    // 3: write sector 10 with 0xab.
    m.write_slice(&hdr(kind::OUT, 10), GuestAddress(0x1_1000))
        .unwrap();
    m.write_slice(&[0xab; 512], GuestAddress(0x4_0000)).unwrap();
    add_chain(
        &vq,
        3,
        &[
            (0x1_1000, 16, false),
            (0x4_0000, 512, false),
            (0x3_0001, 1, true),
        ],
    );
    // 6: flush.  8: read past the end.  10: unknown type.  12: GET_ID.  14: no status.
    m.write_slice(&hdr(kind::FLUSH, 0), GuestAddress(0x1_2000))
        .unwrap();
    add_chain(&vq, 6, &[(0x1_2000, 16, false), (0x3_0002, 1, true)]);
    m.write_slice(&hdr(kind::IN, DISK_SECTORS), GuestAddress(0x1_3000))
        .unwrap();
    add_chain(
        &vq,
        8,
        &[
            (0x1_3000, 16, false),
            (0x2_1000, 512, true),
            (0x3_0003, 1, true),
        ],
    );
    m.write_slice(&hdr(77, 0), GuestAddress(0x1_4000)).unwrap();
    add_chain(&vq, 11, &[(0x1_4000, 16, false), (0x3_0004, 1, true)]);
    m.write_slice(&hdr(kind::GET_ID, 0), GuestAddress(0x1_5000))
        .unwrap();
    add_chain(
        &vq,
        13,
        &[
            (0x1_5000, 16, false),
            (0x5_0000, 20, true),
            (0x3_0005, 1, true),
        ],
    );
    add_chain(&vq, 16, &[(0x1_5000, 16, false)]);
    // Avail ring: the heads.
    for (i, h) in [0u16, 3, 6, 8, 11, 13, 16].iter().enumerate() {
        vq.avail().ring().ref_at(i).unwrap().store(u16::to_le(*h));
    }
    vq.avail().idx().store(u16::to_le(7));
    let mut q: Queue = vq.create_queue().unwrap();
    let pass = run(&mut q, &m, &file, info());
    assert!(pass.used);
    let mut st = [0u8; 6];
    m.read_slice(&mut st, GuestAddress(0x3_0000)).unwrap();
    assert_eq!(
        st,
        [
            status::OK,
            status::OK,
            status::OK,
            status::IOERR,
            status::UNSUPP,
            status::OK
        ]
    );
    let mut data = [0u8; 1024];
    m.read_slice(&mut data, GuestAddress(0x2_0000)).unwrap();
    assert!(data[..512].iter().all(|&b| b == 3) && data[512..].iter().all(|&b| b == 4));
    let mut s = [0u8; 512];
    file.read_exact_at(&mut s, 10 * 512).unwrap();
    assert_eq!(s, [0xab; 512]);
    let mut id = [0xffu8; 20];
    m.read_slice(&mut id, GuestAddress(0x5_0000)).unwrap();
    assert_eq!(&id[..11], b"volt-serial");
    assert!(id[11..].iter().all(|&b| b == 0));
    assert_eq!(used(&vq, 0), (0, 1025));
    assert_eq!(used(&vq, 1), (3, 1));
    assert_eq!(used(&vq, 3), (8, 1));
    assert_eq!(used(&vq, 5), (13, 21));
    assert_eq!(used(&vq, 6), (16, 0));
    assert_eq!(pass.faults.len(), 1, "{:?}", pass.faults);
}

#[test]
fn a_pass_over_a_ring_of_broken_requests_stops_at_its_budget() {
    let m = mem();
    let (_tmp, file) = image();
    let chains = crate::vmm::virtio::pass::CHAINS;
    let vq = MockSplitQueue::new(&m, 2048);
    // Requests without a status byte (one driver-readable header), more than one pass takes.
    m.write_slice(&hdr(kind::IN, 0), GuestAddress(0x2_0000))
        .unwrap();
    for i in 0..chains + 10 {
        add_chain(&vq, i as u16, &[(0x2_0000, 16, false)]);
    }
    let mut q: Queue = vq.create_queue().unwrap();
    let pass = run(&mut q, &m, &file, info());
    assert!(pass.more && pass.used);
    assert_eq!(pass.faults.len(), chains);
    assert_eq!(pass.faults.iter().count(), crate::vmm::virtio::pass::KEPT);
    let pass = run(&mut q, &m, &file, info());
    assert!(!pass.more && pass.faults.len() == 10);
}

#[test]
fn discard_and_write_zeroes_zero_the_range() {
    let m = mem();
    let (_tmp, file) = image();
    let vq = MockSplitQueue::new(&m, 16);
    let seg = |sector: u64, n: u32, flags: u32| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&sector.to_le_bytes());
        b[8..12].copy_from_slice(&n.to_le_bytes());
        b[12..].copy_from_slice(&flags.to_le_bytes());
        b
    };
    m.write_slice(&hdr(kind::DISCARD, 0), GuestAddress(0x1_0000))
        .unwrap();
    m.write_slice(&seg(8, 8, 0), GuestAddress(0x2_0000))
        .unwrap();
    add_chain(
        &vq,
        0,
        &[
            (0x1_0000, 16, false),
            (0x2_0000, 16, false),
            (0x3_0000, 1, true),
        ],
    );
    m.write_slice(&hdr(kind::WRITE_ZEROES, 0), GuestAddress(0x1_1000))
        .unwrap();
    m.write_slice(&seg(20, 2, 0), GuestAddress(0x2_1000))
        .unwrap();
    add_chain(
        &vq,
        3,
        &[
            (0x1_1000, 16, false),
            (0x2_1000, 16, false),
            (0x3_0001, 1, true),
        ],
    );
    vq.avail().ring().ref_at(0).unwrap().store(u16::to_le(0));
    vq.avail().ring().ref_at(1).unwrap().store(u16::to_le(3));
    vq.avail().idx().store(u16::to_le(2));
    let mut q: Queue = vq.create_queue().unwrap();
    run(&mut q, &m, &file, info());
    let mut st = [9u8; 2];
    m.read_slice(&mut st, GuestAddress(0x3_0000)).unwrap();
    assert_eq!(st, [status::OK, status::OK]);
    let mut all = vec![0u8; (DISK_SECTORS * 512) as usize];
    file.read_exact_at(&mut all, 0).unwrap();
    for s in 0..DISK_SECTORS as usize {
        let zero = (8..16).contains(&s) || (20..22).contains(&s);
        let want = if zero { 0 } else { s as u8 };
        assert!(
            all[s * 512..(s + 1) * 512].iter().all(|&b| b == want),
            "sector {s}"
        );
    }
}

#[test]
fn throttle_defers_and_resumes() {
    let m = mem();
    let (_tmp, file) = image();
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
                (0x2_0000 + u64::from(i) * 0x1000, 512, true),
                (0x3_0000 + u64::from(i), 1, true),
            ],
        );
        vq.avail()
            .ring()
            .ref_at(usize::from(i))
            .unwrap()
            .store(u16::to_le(i * 3));
    }
    vq.avail().idx().store(u16::to_le(3));
    let mut q: Queue = vq.create_queue().unwrap();
    let io = SyncIo::new(file.try_clone().unwrap(), None);
    let stats = Stats::default();
    let ctx = ctx(&m, &io, &stats);
    let mut t = Throttle::new(
        &DiskLimit {
            bytes_per_sec: 0,
            ops_per_sec: 2,
        },
        Instant::now(),
    );
    let mut deferred = None;
    let pass = worker::process(&mut q, &ctx, &mut t, &mut deferred, &mut Vec::new());
    assert!(pass.wait.is_some() && deferred.is_some());
    assert_eq!(u16::from_le(vq.used().idx().load()), 2);
    std::thread::sleep(pass.wait.unwrap());
    let pass = worker::process(&mut q, &ctx, &mut t, &mut deferred, &mut Vec::new());
    assert!(pass.wait.is_none() && deferred.is_none());
    assert_eq!(u16::from_le(vq.used().idx().load()), 3);
}

/// A request of three descriptors at descriptor `at`: its header (`kind`, `sector`) at
/// 0x1_0000 + at * 0x100, one data piece, its status byte at 0x3_0000 + at.
fn request(
    vq: &MockSplitQueue<GuestMemoryMmap>,
    m: &GuestMemoryMmap,
    at: u16,
    (kind, sector): (u32, u64),
    data: (u64, u32, bool),
) {
    let h = 0x1_0000 + u64::from(at) * 0x100;
    m.write_slice(&hdr(kind, sector), GuestAddress(h)).unwrap();
    add_chain(
        vq,
        at,
        &[(h, 16, false), data, (0x3_0000 + u64::from(at), 1, true)],
    );
}

#[test]
fn write_zeroes_counts_its_range_against_the_bytes_limit() {
    let m = mem();
    let (_tmp, file) = image();
    let vq = MockSplitQueue::new(&m, 16);
    // WRITE_ZEROES of 32 sectors (16 KiB), then a 512-byte read, on a 4 KiB/s disk.
    let mut seg = [0u8; 16];
    seg[8..12].copy_from_slice(&32u32.to_le_bytes());
    m.write_slice(&seg, GuestAddress(0x2_0000)).unwrap();
    request(&vq, &m, 0, (kind::WRITE_ZEROES, 0), (0x2_0000, 16, false));
    request(&vq, &m, 3, (kind::IN, 40), (0x4_0000, 512, true));
    let mut q: Queue = vq.create_queue().unwrap();
    let io = SyncIo::new(file.try_clone().unwrap(), None);
    let stats = Stats::default();
    let ctx = ctx(&m, &io, &stats);
    let limit = DiskLimit {
        bytes_per_sec: 4096,
        ops_per_sec: 0,
    };
    let mut t = Throttle::new(&limit, Instant::now());
    let mut deferred = None;
    let pass = worker::process(&mut q, &ctx, &mut t, &mut deferred, &mut Vec::new());
    // The zeroing went through on the full bucket and owes 12 KiB: the read waits ~3 s.
    assert_eq!(u16::from_le(vq.used().idx().load()), 1);
    let wait = pass.wait.expect("the read waits");
    assert!(wait > std::time::Duration::from_millis(2900), "{wait:?}");
}

#[test]
fn flushes_cost_against_a_bytes_limit_alone() {
    let m = mem();
    let (_tmp, file) = image();
    let vq = MockSplitQueue::new(&m, 16);
    // Five FLUSHes at once on a disk limited in bytes only: each is a cache flush of the
    // host device, so each costs a page; the first goes on the full bucket, the rest wait.
    for i in 0..5u16 {
        request(&vq, &m, i * 3, (kind::FLUSH, 0), (0x2_0000, 1, true));
    }
    let mut q: Queue = vq.create_queue().unwrap();
    let io = SyncIo::new(file.try_clone().unwrap(), None);
    let stats = Stats::default();
    let ctx = ctx(&m, &io, &stats);
    let limit = DiskLimit {
        bytes_per_sec: 512,
        ops_per_sec: 0,
    };
    let mut t = Throttle::new(&limit, Instant::now());
    let pass = worker::process(&mut q, &ctx, &mut t, &mut None, &mut Vec::new());
    assert_eq!(stats.flushes.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(pass.wait.is_some(), "the rest wait");
    assert_eq!(t.work_cost(), super::throttle::WORK_COST);
    // A page whatever the rate: a guest that syncs often is not stalled by a generous limit.
    let fast = Throttle::new(
        &DiskLimit {
            bytes_per_sec: 100_000_000,
            ops_per_sec: 0,
        },
        Instant::now(),
    );
    assert_eq!(fast.work_cost(), 4096);
    assert_eq!(Throttle::default().work_cost(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Hostile descriptors: anything parses to a request that lies in guest memory, or to an
    /// error; a request that passes the checks never reaches beyond the disk.
    #[test]
    fn hostile_chains_stay_in_bounds(
        descs in proptest::collection::vec((0u64..(MEM as u64 + 0x2000), 0u32..0x4_0000, any::<bool>()), 0..12),
        k in prop_oneof![Just(kind::IN), Just(kind::OUT), Just(kind::GET_ID), Just(kind::DISCARD), any::<u32>()],
        sector in prop_oneof![0u64..80, any::<u64>()],
    ) {
        let m = mem();
        let list: Vec<Desc> = descs.iter().map(|&(a, l, w)| d(a, l, w)).collect();
        if let Some(first) = list.first() {
            let _ = m.write_slice(&hdr(k, sector), first.addr);
        }
        match request::parse(&list, &m) {
            Ok(r) => {
                for s in &r.data {
                    prop_assert!(s.addr.0 + s.len <= MEM as u64);
                }
                prop_assert!(r.status.0 < MEM as u64);
                if request::check(&r, &info()).is_ok() && (r.kind == kind::IN || r.kind == kind::OUT) {
                    prop_assert!(r.sector * 512 + r.data_len <= DISK_SECTORS * 512);
                }
            }
            Err(e) => {
                if let Some(s) = e.status {
                    prop_assert!(s.0 < MEM as u64);
                }
            }
        }
    }
}
