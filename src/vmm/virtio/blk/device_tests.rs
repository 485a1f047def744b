//! The device across activations and resets, with its I/O thread running: what must outlive
//! one activation (the rate limiter, the log limiter) and how it stops.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

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
    activate_on(blk, m, vq.create_queue().unwrap(), interrupt());
}

/// Activates `blk` on `queue` with `interrupt`; returns the queue's kick.
fn activate_on(
    blk: &mut Blk,
    m: &GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
) -> EventFd {
    let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let kick = notify.try_clone().unwrap();
    let dq = DeviceQueue { queue, notify };
    blk.activate(m.clone(), vec![dq], interrupt).unwrap();
    kick
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

/// Warnings (and worse) logged by any thread that name a device of these tests (`vd…`).
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Called with each record virtio-queue logs on the I/O thread of the device `vdstop`.
type Hook = Box<dyn FnMut() + Send>;
static STOP_HOOK: Mutex<Option<Hook>> = Mutex::new(None);

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.target().starts_with("virtio_queue")
            && std::thread::current().name() == Some("blk-vdstop")
        {
            if let Some(hook) = STOP_HOOK.lock().unwrap().as_mut() {
                hook();
            }
        }
        let line = r.args().to_string();
        if self.enabled(r.metadata()) && line.starts_with("vd") {
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

/// A queue of 16 at 0x1_0000 (descriptors), 0x2_0000 (avail) and 0x3_0000 (used): apart,
/// since a guest that goes round the ring uses every slot (virtio-queue's mock lays out an
/// avail ring of `len` bytes, and its last slots overlap the used ring).
fn spaced_queue() -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_ready(true);
    q.set_desc_table_address(Some(0x1_0000), Some(0));
    q.set_avail_ring_address(Some(0x2_0000), Some(0));
    q.set_used_ring_address(Some(0x3_0000), Some(0));
    q
}

/// The guest of [`a_reset_stops_the_thread_while_the_guest_keeps_the_ring_busy`], driven
/// from the I/O thread itself so that no timing decides: what it has read, and the avail
/// index it publishes.
struct BusyGuest {
    mem: GuestMemoryMmap,
    /// Chains read (the device's next avail index, modulo 2^16).
    served: AtomicU32,
    errors: AtomicU32,
}

/// Where the avail index of [`spaced_queue`] lies.
const AVAIL_IDX: GuestAddress = GuestAddress(0x2_0002);

impl BusyGuest {
    fn publish(&self, idx: u16) {
        self.mem
            .store(u16::to_le(idx), AVAIL_IDX, Ordering::SeqCst)
            .unwrap();
    }
}

/// An engine whose reads move the guest's avail index out of range (more than a ring ahead):
/// the rest of the device's pass finds nothing it can take.
struct BusyIo(Arc<BusyGuest>);

impl io::DiskIo for BusyIo {
    unsafe fn read_iov(&self, _: &[libc::iovec], _: u64) -> std::io::Result<()> {
        let served = self.0.served.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        self.0.publish((served as u16).wrapping_add(17));
        Ok(())
    }
    unsafe fn write_iov(&self, _: &[libc::iovec], _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_reset_stops_the_thread_while_the_guest_keeps_the_ring_busy() {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    capture();
    let (_f, mut blk) = disk("vdstop", DiskLimit::default());
    let m = mem();
    // One read at descriptor 0; every avail slot (zeroed) names it.
    m.write_slice(&hdr(kind::IN, 0), GuestAddress(0x4_0000))
        .unwrap();
    let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    for (i, (addr, len, flags)) in [
        (0x4_0000, 16, next),
        (0x5_0000, 512, write | next),
        (0x6_0000, 1, write),
    ]
    .into_iter()
    .enumerate()
    {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i as u16 + 1));
        m.write_obj(d, GuestAddress(0x1_0000 + i as u64 * 16))
            .unwrap();
    }
    // Each pass of the device: it reads the chain, whose read moves the avail index out of
    // range; its next two pops fail (virtio-queue logs each), and the pass ends, having used
    // a chain. At the second failure the guest publishes the chain again, which the device's
    // poll finds at once: it goes on to the next pass without sleeping, pass after pass.
    let guest = Arc::new(BusyGuest {
        mem: m.clone(),
        served: AtomicU32::new(0),
        errors: AtomicU32::new(0),
    });
    *STOP_HOOK.lock().unwrap() = Some(Box::new({
        let guest = guest.clone();
        move || {
            if guest.errors.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
                guest.publish((guest.served.load(Ordering::SeqCst) as u16).wrapping_add(1));
            }
        }
    }));
    guest.publish(1);
    blk.io = Some(Box::new(BusyIo(guest.clone())));
    activate_on(&mut blk, &m, spaced_queue(), interrupt());
    let end = Instant::now() + Duration::from_secs(20);
    while guest.served.load(Ordering::SeqCst) < 1000 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        guest.served.load(Ordering::SeqCst) >= 1000,
        "the guest keeps the device busy"
    );
    // The driver resets the device from a vCPU thread, which waits for the I/O thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let resetter = std::thread::spawn(move || {
        blk.reset();
        let _ = tx.send(());
        blk
    });
    let joined = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    assert!(
        joined,
        "the reset never returned: the I/O thread missed its stop"
    );
    drop(resetter.join().unwrap());
    *STOP_HOOK.lock().unwrap() = None;
    let lines = LINES.lock().unwrap().clone();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("vdstop: the I/O thread")),
        "{lines:?}"
    );
}

#[test]
fn config_space_layout() {
    let c = config_space(0x1_0000_0002, 512);
    assert_eq!(
        u64::from_le_bytes(c[0..8].try_into().unwrap()),
        0x1_0000_0002
    );
    assert_eq!(u32::from_le_bytes(c[8..12].try_into().unwrap()), SIZE_MAX);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 1);
    assert_eq!(c[56], 1);
    assert_eq!(c[24], 0);
    // A 4Kn image: discards in whole 4096-byte blocks (8 sectors), and a topology of
    // 4096-byte physical blocks (2^3 sectors) with a minimum I/O of 8 sectors.
    let c = config_space(8, 4096);
    assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
    assert_eq!(c[24], 3);
    assert_eq!(u16::from_le_bytes(c[26..28].try_into().unwrap()), 8);
    assert_ne!(offered_features(false, 4096) & features::TOPOLOGY, 0);
    assert_eq!(offered_features(false, 512) & features::TOPOLOGY, 0);
    assert_ne!(offered_features(true, 512) & features::RO, 0);
    assert_eq!(offered_features(true, 512) & features::DISCARD, 0);
    assert_eq!(offered_features(false, 512) & features::RO, 0);
}
