//! The device across activations and resets, with its I/O thread running: what must outlive
//! one activation (the rate limiter, the log limiter) and how it stops.

use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{kind, status};
use super::tests::hdr;
use super::*;
use crate::vmm::devices::IrqLine;
use crate::vmm::disk::DiskLimit;
use crate::vmm::ratelimit::{BURST, WINDOW};
use crate::vmm::virtio::test_queue::{add_chain, mem, used_idx};

/// A 64-sector image and a device `name` on it with `limit`.
fn disk(name: &str, limit: DiskLimit) -> (tempfile::NamedTempFile, Blk) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), vec![0u8; 64 * 512]).unwrap();
    let spec = DiskSpec {
        limit,
        ..DiskSpec::new(f.path())
    };
    let blk = Blk::new(name, &spec, "serial").unwrap();
    (f, blk)
}

fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(IrqLine::new(5).unwrap()))
}

/// Activates `blk` on the queue `vq`.
fn activate(blk: &mut Blk, m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) {
    let dq = DeviceQueue {
        queue: vq.create_queue().unwrap(),
        notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    };
    blk.activate(m.clone(), vec![dq], interrupt()).unwrap();
}

/// Adds an IN of `bytes` from sector 0 at descriptor `at` (header at 0x4_0000 + at * 0x100,
/// data at 0x5_0000, status at 0x6_0000 + at).
fn read(vq: &MockSplitQueue<GuestMemoryMmap>, m: &GuestMemoryMmap, at: u16, bytes: u32) {
    let h = 0x4_0000 + u64::from(at) * 0x100;
    m.write_slice(&hdr(kind::IN, 0), GuestAddress(h)).unwrap();
    add_chain(
        vq,
        at,
        &[
            (h, 16, false),
            (0x5_0000, bytes, true),
            (0x6_0000 + u64::from(at), 1, true),
        ],
    );
}

/// Waits up to `limit` for the used index of `vq` to reach `n`; whether it did.
fn used_reaches(vq: &MockSplitQueue<GuestMemoryMmap>, n: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if used_idx(vq) >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    used_idx(vq) >= n
}

#[test]
fn a_reset_neither_refills_the_rate_limiter_nor_forgives_its_debt() {
    // 512 bytes a second: a 32 KiB read goes on the full bucket and owes a minute.
    let (_f, mut blk) = disk(
        "vdt",
        DiskLimit {
            bytes_per_sec: 512,
            ops_per_sec: 0,
        },
    );
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    read(&vq, &m, 0, 32 * 1024);
    activate(&mut blk, &m, &vq);
    assert!(used_reaches(&vq, 1, Duration::from_secs(10)), "served");
    let mut st = 9u8;
    m.read_slice(std::slice::from_mut(&mut st), GuestAddress(0x6_0000))
        .unwrap();
    assert_eq!(st, status::OK);
    // The driver resets the device and sets it up again: its next read, of one sector,
    // still waits for the debt.
    blk.reset();
    let vq = MockSplitQueue::create(&m, GuestAddress(0x2_0000), 16);
    read(&vq, &m, 0, 512);
    activate(&mut blk, &m, &vq);
    assert!(
        !used_reaches(&vq, 1, Duration::from_millis(500)),
        "a reset gave the guest a new burst"
    );
    blk.reset();
}

/// Warnings (and worse) logged by any thread that name a device whose name starts with
/// `vdlog`.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        let line = r.args().to_string();
        if self.enabled(r.metadata()) && line.starts_with("vdlog") {
            LINES.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

/// Installs [`Capture`] as the test process's logger (no other unit test installs one).
fn capture() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).expect("another logger in the unit tests");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

#[test]
fn a_guest_resetting_in_a_loop_gets_one_log_budget_for_its_broken_chains() {
    capture();
    let (_f, mut blk) = disk("vdlog0", DiskLimit::default());
    let m = mem();
    m.write_slice(&hdr(kind::IN, 0), GuestAddress(0x4_0000))
        .unwrap();
    let start = Instant::now();
    let cycles = 3 * BURST;
    for i in 0..cycles {
        // Set up, one chain without a status byte (a warning), reset.
        let vq = MockSplitQueue::create(&m, GuestAddress(0x8_0000 + u64::from(i) * 0x1000), 16);
        add_chain(&vq, 0, &[(0x4_0000, 16, false)]);
        activate(&mut blk, &m, &vq);
        assert!(used_reaches(&vq, 1, Duration::from_secs(10)), "cycle {i}");
        blk.reset();
    }
    let windows = 1 + (start.elapsed().as_secs() / WINDOW.as_secs()) as u32;
    let lines = LINES.lock().unwrap().clone();
    let broken = lines
        .iter()
        .filter(|l| l.starts_with("vdlog0: guest"))
        .count();
    assert!(broken >= 1, "{lines:?}");
    assert!(
        broken <= (BURST * windows) as usize,
        "{broken} warnings for {cycles} cycles in {windows} window(s): {lines:?}"
    );
}
