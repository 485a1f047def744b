//! The vsock queue thread: one epoll set with the three queue kicks, a stop eventfd, the
//! listening socket and every host stream. Each turn moves what the TX queue holds to the
//! muxer (until a connection throttles the guest), then fills RX buffers with what the
//! muxer has for the guest, then sleeps until a kick, a socket event or a deadline.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::conn::Verdict;
use super::muxer::Muxer;
use super::packet::{Segments, TxPacket, HDR_LEN, MAX_PKT_LEN};
use crate::log_limited;
use crate::vmm::ratelimit::SharedLimiter;
use crate::vmm::virtio::{DeviceQueue, VirtioInterrupt};

const T_RX: u64 = 1 << 41;
const T_TX: u64 = T_RX + 1;
const T_EVENT: u64 = T_RX + 2;
const T_STOP: u64 = T_RX + 3;

/// Most packets moved per queue per turn (then the other queue and the sockets get a go).
const BATCH: usize = 256;

/// Everything the thread owns.
pub struct Worker {
    rx: Queue,
    rx_kick: EventFd,
    tx: Queue,
    tx_kick: EventFd,
    _event: Queue,
    event_kick: EventFd,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    muxer: Muxer,
    stop: Arc<EventFd>,
    scratch: Vec<u8>,
    log: SharedLimiter,
}

impl Worker {
    pub fn new(
        rx: DeviceQueue,
        tx: DeviceQueue,
        event: DeviceQueue,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        muxer: Muxer,
        stop: Arc<EventFd>,
    ) -> Worker {
        Worker {
            rx: rx.queue,
            rx_kick: rx.notify,
            tx: tx.queue,
            tx_kick: tx.notify,
            _event: event.queue,
            event_kick: event.notify,
            mem,
            interrupt,
            muxer,
            stop,
            scratch: vec![0u8; MAX_PKT_LEN as usize],
            log: SharedLimiter::new(),
        }
    }

    /// Log through the device's limiter, which outlives this worker (see
    /// [`Muxer::with_logs`]).
    pub fn with_log(mut self, log: SharedLimiter) -> Worker {
        self.log = log;
        self
    }

    /// Runs until the stop eventfd fires; returns the listening socket for the next start.
    pub fn run(mut self) -> Option<UnixListener> {
        for (fd, token) in [
            (self.rx_kick.as_raw_fd(), T_RX),
            (self.tx_kick.as_raw_fd(), T_TX),
            (self.event_kick.as_raw_fd(), T_EVENT),
            (self.stop.as_raw_fd(), T_STOP),
        ] {
            if let Err(e) = self.muxer.epoll().ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            ) {
                log::error!("virtio-vsock: epoll_ctl failed: {e}");
                return Some(self.muxer.into_listener());
            }
        }
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let (tx_notify, tx_more) = self.process_tx();
            let (rx_notify, rx_more) = self.process_rx();
            if tx_notify || rx_notify {
                self.signal();
            }
            // A full batch may have left work in a ring: look again without sleeping.
            let timeout = if tx_more || rx_more {
                0
            } else {
                self.muxer.next_deadline().map_or(-1, |t| {
                    let ms = t.saturating_duration_since(Instant::now()).as_millis();
                    i32::try_from(ms).unwrap_or(i32::MAX).saturating_add(1)
                })
            };
            let waited = crate::vmm::event::wait_events(
                self.muxer.epoll(),
                timeout,
                &mut events,
                "virtio-vsock",
            );
            let Some(n) = waited else {
                return Some(self.muxer.into_listener());
            };
            for ev in &events[..n] {
                match ev.data() {
                    T_STOP => return Some(self.muxer.into_listener()),
                    T_RX => drain(&self.rx_kick),
                    T_TX => drain(&self.tx_kick),
                    T_EVENT => drain(&self.event_kick),
                    token => self.muxer.handle_event(token, ev.event_set()),
                }
            }
            self.muxer.on_timers(Instant::now());
        }
    }

    fn signal(&mut self) {
        self.interrupt
            .signal_used_queue_logged("virtio-vsock", &mut self.log);
    }

    fn add_used(&mut self, which: Which, head: u16, len: u32) {
        let q = match which {
            Which::Rx => &mut self.rx,
            Which::Tx => &mut self.tx,
        };
        if let Err(e) = q.add_used(&self.mem, head, len) {
            log_limited!(self.log, log::Level::Warn, "virtio-vsock: add_used: {e}");
        }
    }

    fn needs_notification(&mut self, which: Which) -> bool {
        let q = match which {
            Which::Rx => &mut self.rx,
            Which::Tx => &mut self.tx,
        };
        crate::vmm::virtio::notify::needs_interrupt(q, &self.mem)
    }

    /// Guest → host. Returns whether the driver must be interrupted and whether the batch
    /// ran out before the ring did.
    fn process_tx(&mut self) -> (bool, bool) {
        let mut used = false;
        let mut n = 0;
        while n < BATCH {
            n += 1;
            if self.muxer.tx_blocked() {
                break;
            }
            let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            match TxPacket::parse(chain, &self.mem) {
                Err((hdr, e)) => {
                    log_limited!(
                        self.log,
                        log::Level::Warn,
                        "virtio-vsock: guest TX packet dropped: {e}"
                    );
                    if let Some(h) = hdr {
                        self.muxer.reply_rst(&h);
                    }
                }
                Ok(pkt) => {
                    let len = pkt.hdr.len as usize;
                    if !pkt.read_payload(&self.mem, &mut self.scratch) {
                        self.muxer.reply_rst(&pkt.hdr);
                    } else if self.muxer.send_pkt(&pkt.hdr, &self.scratch[..len])
                        == Verdict::Throttle
                    {
                        // Leave it in the ring; it comes again once the host has read.
                        self.tx.go_to_previous_position();
                        break;
                    }
                }
            }
            self.add_used(Which::Tx, head, 0);
            used = true;
        }
        (used && self.needs_notification(Which::Tx), n == BATCH)
    }

    /// Host → guest. Returns whether the driver must be interrupted and whether the batch
    /// ran out with packets still waiting.
    fn process_rx(&mut self) -> (bool, bool) {
        let mut used = false;
        let mut n = 0;
        while n < BATCH {
            n += 1;
            if !self.muxer.has_rx() {
                break;
            }
            let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let segs = match Segments::collect(chain, &self.mem, true) {
                Ok(s) if s.len() >= HDR_LEN as u64 => s,
                Ok(s) => {
                    log_limited!(
                        self.log,
                        log::Level::Warn,
                        "virtio-vsock: guest RX buffer of {} bytes cannot hold a header",
                        s.len()
                    );
                    self.add_used(Which::Rx, head, 0);
                    used = true;
                    continue;
                }
                Err(e) => {
                    log_limited!(
                        self.log,
                        log::Level::Warn,
                        "virtio-vsock: guest RX buffer dropped: {e}"
                    );
                    self.add_used(Which::Rx, head, 0);
                    used = true;
                    continue;
                }
            };
            let cap = (segs.len() - HDR_LEN as u64).min(u64::from(MAX_PKT_LEN)) as usize;
            let Some(hdr) = self.muxer.recv_pkt(&mut self.scratch[..cap]) else {
                self.rx.go_to_previous_position();
                break;
            };
            let len = hdr.len as usize;
            let ok = segs.write_at(&self.mem, 0, &hdr.to_bytes())
                && segs.write_at(&self.mem, HDR_LEN as u64, &self.scratch[..len]);
            if !ok {
                log_limited!(
                    self.log,
                    log::Level::Warn,
                    "virtio-vsock: writing an RX packet into guest memory failed"
                );
            }
            self.add_used(Which::Rx, head, (HDR_LEN + len) as u32);
            used = true;
        }
        (used && self.needs_notification(Which::Rx), n == BATCH)
    }
}

#[derive(Clone, Copy)]
enum Which {
    Rx,
    Tx,
}

fn drain(e: &EventFd) {
    let _ = e.read();
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::epoll::Epoll;

    use super::super::packet::{op, Header, TYPE_STREAM};
    use super::*;
    use crate::vmm::devices::IrqLine;
    use crate::vmm::event::event_channel;
    use crate::vmm::spec::NOTIFY_PORT;

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn hdr(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 700,
            dst_port: NOTIFY_PORT,
            len,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 4096,
            ..Header::default()
        }
    }

    /// A worker over mock queues: TX chains `tx` (descriptor lists), RX buffers `rx`.
    fn run(mem: &GuestMemoryMmap, tx: &[RawDescriptor], rx: &[RawDescriptor]) -> Worker {
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
        txq.add_desc_chains(tx, 0).unwrap();
        rxq.add_desc_chains(rx, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let (events, _rx) = event_channel();
        let muxer = Muxer::new(3, sock, listener, Epoll::new().unwrap(), Some(events)).unwrap();
        let dq = |q: &MockSplitQueue<GuestMemoryMmap>| DeviceQueue {
            queue: q.create_queue().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let irq = Arc::new(VirtioInterrupt::new(IrqLine::new(5).unwrap()));
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut w = Worker::new(dq(&rxq), dq(&txq), dq(&evq), mem.clone(), irq, muxer, stop);
        w.process_tx();
        w.process_rx();
        w
    }

    fn rx_header(mem: &GuestMemoryMmap, at: u64) -> Header {
        let mut b = [0u8; HDR_LEN];
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        Header::from_bytes(&b)
    }

    #[test]
    fn malformed_tx_packets_are_answered_with_rst_and_used() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        // 1: announces 100 payload bytes, carries 10. 2: announces more than 64 KiB.
        mem.write_slice(&hdr(op::RW, 100).to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(&hdr(op::RW, 1 << 20).to_bytes(), GuestAddress(0x11_0000))
            .unwrap();
        let tx = [
            desc(0x10_0000, HDR_LEN as u32, NEXT, 1),
            desc(0x10_1000, 10, 0, 0),
            desc(0x11_0000, HDR_LEN as u32, 0, 0),
        ];
        let rx = [
            desc(0x20_0000, 4096, WRITE, 0),
            desc(0x21_0000, 4096, WRITE, 0),
            desc(0x22_0000, 20, WRITE, 0),
        ];
        let w = run(&mem, &tx, &rx);
        assert_eq!(w.tx.next_used(), 2, "both TX chains returned");
        for at in [0x20_0000, 0x21_0000] {
            let h = rx_header(&mem, at);
            assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, NOTIFY_PORT, 700));
        }
        assert_eq!(w.rx.next_used(), 2, "the 20-byte buffer is left for later");
    }

    #[test]
    fn an_rx_buffer_too_small_for_a_header_is_returned_empty() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_slice(&hdr(op::REQUEST, 0).to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        let tx = [desc(0x10_0000, HDR_LEN as u32, 0, 0)];
        let rx = [desc(0x20_0000, 20, WRITE, 0), desc(0x21_0000, 64, WRITE, 0)];
        let w = run(&mem, &tx, &rx);
        assert_eq!(w.rx.next_used(), 2);
        let h = rx_header(&mem, 0x21_0000);
        assert_eq!(
            h.op,
            op::RESPONSE,
            "the REQUEST to the notify service is answered"
        );
    }
}
