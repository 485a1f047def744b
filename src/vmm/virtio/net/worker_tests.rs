//! A queue-pair worker thread driven over real guest memory (virtio-queue's mock split
//! queues) and a socketpair standing in for the TAP: which notifications it asks for and
//! which interrupts it sends.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::datapath::{Stats, HDR_LEN};
use super::worker::PairWorker;
use crate::vmm::devices::IrqLine;
use crate::vmm::virtio::notify::AVAIL_F_NO_INTERRUPT;
use crate::vmm::virtio::VirtioInterrupt;

const USED_F_NO_NOTIFY: u16 = 1;

struct Rig {
    mem: GuestMemoryMmap,
    rx_avail: GuestAddress,
    rx_used: GuestAddress,
    tx_avail: GuestAddress,
    tx_used: GuestAddress,
    host: UnixDatagram,
    interrupt: Arc<VirtioInterrupt>,
    tx_kick: EventFd,
    stop: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Rig {
    /// A worker on an RX queue with `rx_buffers` 2 KiB buffers and an empty TX queue.
    fn new(rx_buffers: u16, rx_no_interrupt: bool) -> Rig {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        for i in 0..rx_buffers {
            let d = SplitDescriptor::new(
                0x4_0000 + u64::from(i) * 0x1000,
                2048,
                VRING_DESC_F_WRITE as u16,
                0,
            );
            rxq.add_desc_chains(&[RawDescriptor::from(d)], i)
                .expect("rx chain");
        }
        let rx: Queue = rxq.create_queue().expect("rx queue");
        let tx: Queue = txq.create_queue().expect("tx queue");
        let (io, host) = UnixDatagram::pair().expect("pair");
        io.set_nonblocking(true).expect("nonblocking");
        host.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let interrupt = Arc::new(VirtioInterrupt::new(IrqLine::new(5).expect("irq")));
        let tx_kick = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let mut rig = Rig {
            mem: mem.clone(),
            rx_avail: rxq.avail_addr(),
            rx_used: rxq.used_addr(),
            tx_avail: txq.avail_addr(),
            tx_used: txq.used_addr(),
            host,
            interrupt: interrupt.clone(),
            tx_kick: tx_kick.try_clone().expect("dup"),
            stop: stop.clone(),
            thread: None,
        };
        rig.set_flags(
            rig.rx_avail,
            if rx_no_interrupt {
                AVAIL_F_NO_INTERRUPT
            } else {
                0
            },
        );
        // The test guest keeps TX interrupts off, as polling drivers do.
        rig.set_flags(rig.tx_avail, AVAIL_F_NO_INTERRUPT);
        let w = PairWorker {
            name: "test q0".into(),
            rx,
            rx_kick: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            tx,
            tx_kick,
            ctrl: None,
            io,
            mem,
            interrupt,
            stats: Arc::new(Stats::default()),
            stop,
            mergeable: true,
            log: crate::vmm::ratelimit::SharedLimiter::new(),
        };
        rig.thread = Some(std::thread::spawn(move || w.run()));
        rig
    }

    fn set_flags(&self, ring: GuestAddress, v: u16) {
        self.mem.write_obj(u16::to_le(v), ring).expect("flags");
    }

    fn flags(&self, ring: GuestAddress) -> u16 {
        u16::from_le(self.mem.read_obj(ring).expect("flags"))
    }

    fn used_idx(&self, used: GuestAddress) -> u16 {
        u16::from_le(
            self.mem
                .read_obj(GuestAddress(used.0 + 2))
                .expect("used idx"),
        )
    }

    /// Waits until the used index of `used` reaches `n`.
    fn wait_used(&self, used: GuestAddress, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx(used) != n {
            assert!(
                Instant::now() < deadline,
                "used index stuck at {}",
                self.used_idx(used)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The worker decides about the interrupt right after add_used.
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Interrupts raised since the last call.
    fn interrupts(&self) -> u64 {
        self.interrupt.irq().eventfd().read().unwrap_or(0)
    }

    fn frame(&self, seed: u8) {
        let mut f = vec![0u8; HDR_LEN];
        f.extend((0..200).map(|i: u8| i.wrapping_add(seed)));
        self.host.send(&f).expect("send");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn rx_kicks_are_suppressed_while_buffers_last_and_wanted_once_they_run_out() {
    let rig = Rig::new(2, true);
    rig.frame(1);
    rig.wait_used(rig.rx_used, 1);
    assert_eq!(
        rig.flags(rig.rx_used) & USED_F_NO_NOTIFY,
        USED_F_NO_NOTIFY,
        "a buffer is left: the device asks for no RX kicks"
    );
    rig.frame(2);
    rig.wait_used(rig.rx_used, 2);
    rig.frame(3);
    // No buffer for the third frame: the device must ask for a kick.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.flags(rig.rx_used) & USED_F_NO_NOTIFY != 0 {
        assert!(Instant::now() < deadline, "RX kicks never re-enabled");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn no_interrupt_flag_stops_interrupts_and_clearing_it_brings_them_back() {
    let rig = Rig::new(4, true);
    rig.frame(1);
    rig.wait_used(rig.rx_used, 1);
    assert_eq!(
        rig.interrupts(),
        0,
        "the driver set VIRTQ_AVAIL_F_NO_INTERRUPT"
    );
    rig.set_flags(rig.rx_avail, 0);
    rig.frame(2);
    rig.wait_used(rig.rx_used, 2);
    assert_eq!(rig.interrupts(), 1, "flag cleared: one interrupt");
}

#[test]
fn tx_completions_raise_no_interrupt_when_the_driver_polls() {
    let rig = Rig::new(1, true);
    let f: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    rig.mem
        .write_slice(&f, GuestAddress(0x8_0000))
        .expect("frame");
    // Descriptor 0 of the TX table (at the queue's start), then avail.ring[0] = 0, idx = 1.
    let d = RawDescriptor::from(SplitDescriptor::new(0x8_0000, f.len() as u32, 0, 0));
    rig.mem.write_obj(d, GuestAddress(0x1_0000)).expect("desc");
    rig.mem
        .write_obj(0u16, GuestAddress(rig.tx_avail.0 + 4))
        .expect("ring");
    rig.mem
        .write_obj(u16::to_le(1), GuestAddress(rig.tx_avail.0 + 2))
        .expect("idx");
    rig.tx_kick.write(1).expect("kick");
    let mut got = vec![0u8; 1024];
    let n = rig.host.recv(&mut got).expect("frame on the TAP side");
    assert_eq!(&got[..n], &f[..]);
    rig.wait_used(rig.tx_used, 1);
    assert_eq!(rig.interrupts(), 0);
    assert_eq!(rig.flags(rig.tx_avail), AVAIL_F_NO_INTERRUPT);
}
