//! virtio-rng (entropy device, type 4): one request queue the driver fills with writable
//! buffers; the device fills them from the host's `getrandom(2)`.
//!
//! The data path ([`process_queue`]) has no event loop; [`Rng::activate`] runs it on a worker
//! thread woken by the queue's ioeventfd, stopped through a second eventfd on reset.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
use crate::log_limited;
use crate::vmm::ratelimit::{Limit, SharedLimiter};

/// Virtio device ID of the entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Queue size.
const QUEUE_SIZE: u16 = 256;
/// Largest chunk filled per `getrandom` call.
const CHUNK: usize = 4096;
/// Most bytes one request (descriptor chain) gets; the rest of its buffers stay unwritten
/// (the used length says how much was filled). Linux asks for at most a page or so.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

/// Fills `buf` from the kernel's CSPRNG.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Most bytes one pass fills before the worker looks at its stop flag and the other events
/// again (a driver can queue many requests).
pub const MAX_PASS_BYTES: usize = 1 << 20;

/// What one pass over the queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// The driver must be notified.
    pub notify: bool,
    /// Requests are left for another pass (the byte budget ran out).
    pub more: bool,
}

/// Serves the available requests on `queue`, at most [`MAX_CHAIN_BYTES`] each,
/// [`MAX_PASS_BYTES`] and [`super::pass::CHAINS`] chains in all, and stops early once `stop`
/// is set (checked per chunk).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    errors: &mut impl Limit,
    stop: &AtomicBool,
) -> Pass {
    let mut served = false;
    let mut budget = MAX_PASS_BYTES;
    let mut chunk = vec![0u8; CHUNK];
    let mut more = false;
    // Chains count too: empty or read-only chains write nothing, and must not make a pass
    // endless either.
    let mut chains = super::pass::Budget::default();
    loop {
        if budget == 0 || !chains.take() || stop.load(Ordering::Acquire) {
            more = true;
            break;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let mut left = MAX_CHAIN_BYTES.min(budget);
        let mut written: u32 = 0;
        'chain: for desc in chain.writable() {
            let mut off = 0u64;
            let len = u64::from(desc.len());
            while off < len && left > 0 {
                if stop.load(Ordering::Acquire) {
                    break 'chain;
                }
                let n = (len - off).min(CHUNK as u64).min(left as u64) as usize;
                if let Err(e) = fill_random(&mut chunk[..n]) {
                    log_limited!(
                        errors,
                        log::Level::Warn,
                        "virtio-rng: getrandom failed: {e}"
                    );
                    break 'chain;
                }
                let Some(addr) = desc.addr().checked_add(off) else {
                    break 'chain;
                };
                if mem.write_slice(&chunk[..n], addr).is_err() {
                    log_limited!(
                        errors,
                        log::Level::Warn,
                        "virtio-rng: buffer at {:#x} outside guest memory",
                        addr.0
                    );
                    break 'chain;
                }
                off += n as u64;
                left -= n;
                let Some(w) = written.checked_add(n as u32) else {
                    break 'chain;
                };
                written = w;
            }
            if left == 0 {
                break;
            }
        }
        budget = budget.saturating_sub(written as usize);
        if let Err(e) = queue.add_used(mem, head, written) {
            log_limited!(errors, log::Level::Warn, "virtio-rng: add_used failed: {e}");
        }
        served = true;
    }
    Pass {
        notify: served && super::notify::needs_interrupt(queue, mem),
        more,
    }
}

/// The entropy device.
pub struct Rng {
    worker: Option<Worker>,
    /// Guest-triggered warnings: one budget for every activation (a guest resetting in a
    /// loop gets no fresh burst each time).
    log: SharedLimiter,
}

/// A running worker: its thread, the eventfd that wakes it to stop, and the flag it checks
/// while it fills buffers.
struct Worker {
    handle: JoinHandle<()>,
    kill: Arc<EventFd>,
    stop: Arc<AtomicBool>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Rng {
            worker: None,
            log: SharedLimiter::new(),
        }
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop.store(true, Ordering::Release);
            let _ = w.kill.write(1);
            if w.handle.join().is_err() {
                log::error!("virtio-rng worker panicked");
            }
        }
    }
}

const TOKEN_QUEUE: u64 = 0;
const TOKEN_KILL: u64 = 1;

fn worker(
    mut queue: Queue,
    notify: EventFd,
    kill: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    mut errors: SharedLimiter,
) {
    let Some(epoll) = crate::vmm::event::worker_epoll(
        "virtio-rng",
        &[
            (notify.as_raw_fd(), TOKEN_QUEUE, EventSet::IN),
            (kill.as_raw_fd(), TOKEN_KILL, EventSet::IN),
        ],
    ) else {
        return;
    };
    // Buffers may already be queued before the first kick: serve first, then wait.
    let mut events = [EpollEvent::default(); 2];
    loop {
        let pass = process_queue(&mut queue, &mem, &mut errors, &stop);
        if pass.notify {
            interrupt.signal_used_queue_logged("virtio-rng", &mut errors);
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        // Requests left over: look at the events without sleeping, then serve again.
        let timeout = if pass.more { 0 } else { -1 };
        if !crate::vmm::event::wait_kick(
            &epoll,
            timeout,
            &mut events,
            "virtio-rng",
            &notify,
            TOKEN_KILL,
        ) {
            return;
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.stop_worker();
        let dq = DeviceQueue::only_ready(queues)?;
        let kill = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| ActivateError::Device(format!("eventfd failed: {e}")))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (k, s, log) = (kill.clone(), stop.clone(), self.log.clone());
        let handle = std::thread::Builder::new()
            .name("virtio-rng".into())
            .spawn(move || worker(dq.queue, dq.notify, k, s, mem, interrupt, log))
            .map_err(|e| ActivateError::Device(format!("spawning the worker failed: {e}")))?;
        self.worker = Some(Worker { handle, kill, stop });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Rng {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::ratelimit::LogLimiter;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    #[test]
    fn fills_writable_buffers_and_marks_them_used() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let desc = RawDescriptor::from(SplitDescriptor::new(0x8000, 64, 2 /* WRITE */, 0));
        vq.build_desc_chain(&[desc]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut errors = LogLimiter::new();
        let stop = AtomicBool::new(false);
        assert!(process_queue(&mut q, &mem, &mut errors, &stop).notify);
        assert_eq!(q.next_used(), 1);
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
        assert_ne!(buf, [0u8; 64], "64 random bytes are not all zero");
        assert_eq!(
            process_queue(&mut q, &mem, &mut errors, &stop),
            Pass::default(),
            "nothing left"
        );
    }

    /// A chain of 16 descriptors, each over the 15 MiB above the rings of a 16 MiB guest:
    /// 240 MiB asked for.
    fn greedy_chain(vq: &MockSplitQueue<GuestMemoryMmap>, mem_size: u64) {
        let descs: Vec<RawDescriptor> = (0..16u16)
            .map(|i| {
                let next = if i < 15 { 1 | 2 } else { 2 }; // NEXT | WRITE
                let len = (mem_size - (1 << 20)) as u32;
                RawDescriptor::from(SplitDescriptor::new(1 << 20, len, next, i + 1))
            })
            .collect();
        vq.build_desc_chain(&descs).unwrap();
    }

    #[test]
    fn a_chain_gets_at_most_its_cap() {
        let size = 16 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        greedy_chain(&vq, size as u64);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut errors = LogLimiter::new();
        let stop = AtomicBool::new(false);
        process_queue(&mut q, &mem, &mut errors, &stop);
        assert_eq!(q.next_used(), 1);
        let used_len: u32 = mem.read_obj(vq.used_addr().unchecked_add(4 + 4)).unwrap();
        assert!(
            used_len as usize <= MAX_CHAIN_BYTES,
            "{used_len} bytes for one chain"
        );
    }

    #[test]
    fn reset_stops_a_worker_busy_with_greedy_chains() {
        let size = 16 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 256);
        for _ in 0..16 {
            greedy_chain(&vq, size as u64);
        }
        let queue: Queue = vq.create_queue().unwrap();
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = crate::vmm::devices::IrqLine::new(5).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(irq));
        let mut rng = Rng::new();
        rng.activate(mem, vec![DeviceQueue { queue, notify }], interrupt)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The reset must come back while the worker is (or would be) filling: a hang bound.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            rng.reset();
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(),
            "reset did not stop the worker within 10 s"
        );
    }

    #[test]
    fn a_pass_is_bounded_and_stop_is_honoured() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 64);
        let chains = 2 * MAX_PASS_BYTES / MAX_CHAIN_BYTES;
        for i in 0..chains {
            let addr = (1 << 20) + (i * MAX_CHAIN_BYTES) as u64 / 16;
            let d = SplitDescriptor::new(addr, MAX_CHAIN_BYTES as u32, 2, 0);
            vq.build_desc_chain(&[RawDescriptor::from(d)]).unwrap();
        }
        let mut q: Queue = vq.create_queue().unwrap();
        let mut errors = LogLimiter::new();
        let stop = AtomicBool::new(true);
        assert_eq!(
            process_queue(&mut q, &mem, &mut errors, &stop),
            Pass {
                notify: false,
                more: true
            },
            "a stopped worker fills nothing"
        );
        stop.store(false, Ordering::Release);
        let first = process_queue(&mut q, &mem, &mut errors, &stop);
        assert!(first.more && first.notify);
        assert_eq!(usize::from(q.next_used()), MAX_PASS_BYTES / MAX_CHAIN_BYTES);
        while process_queue(&mut q, &mem, &mut errors, &stop).more {}
        assert_eq!(usize::from(q.next_used()), chains);
    }
}
