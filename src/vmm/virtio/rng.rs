//! virtio-rng (entropy device, type 4): one request queue the driver fills with writable
//! buffers; the device fills them from the host's `getrandom(2)`.
//!
//! The data path ([`process_queue`]) has no event loop; [`Rng::activate`] runs it on a worker
//! thread woken by the queue's ioeventfd, stopped through a second eventfd on reset.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
use crate::log_limited;
use crate::vmm::ratelimit::LogLimiter;

/// Virtio device ID of the entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Queue size.
const QUEUE_SIZE: u16 = 256;
/// Largest chunk filled per `getrandom` call.
const CHUNK: usize = 4096;

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

/// Serves every available request on `queue`. Returns whether the driver must be notified.
pub fn process_queue(queue: &mut Queue, mem: &GuestMemoryMmap, errors: &mut LogLimiter) -> bool {
    let mut served = false;
    let mut chunk = vec![0u8; CHUNK];
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut written: u32 = 0;
        for desc in chain.writable() {
            let mut off = 0u64;
            while off < u64::from(desc.len()) {
                let n = (u64::from(desc.len()) - off).min(CHUNK as u64) as usize;
                if let Err(e) = fill_random(&mut chunk[..n]) {
                    log_limited!(
                        errors,
                        log::Level::Warn,
                        "virtio-rng: getrandom failed: {e}"
                    );
                    break;
                }
                let addr = desc.addr().unchecked_add(off);
                if mem.write_slice(&chunk[..n], addr).is_err() {
                    log_limited!(
                        errors,
                        log::Level::Warn,
                        "virtio-rng: buffer at {:#x} outside guest memory",
                        addr.0
                    );
                    break;
                }
                off += n as u64;
                written += n as u32;
            }
        }
        if let Err(e) = queue.add_used(mem, head, written) {
            log_limited!(errors, log::Level::Warn, "virtio-rng: add_used failed: {e}");
        }
        served = true;
    }
    served && super::notify::needs_interrupt(queue, mem)
}

/// The entropy device.
pub struct Rng {
    worker: Option<(JoinHandle<()>, Arc<EventFd>)>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Self {
        Rng { worker: None }
    }

    fn stop_worker(&mut self) {
        if let Some((handle, kill)) = self.worker.take() {
            let _ = kill.write(1);
            if handle.join().is_err() {
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
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
) {
    let mut errors = LogLimiter::new();
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            log::error!("virtio-rng: epoll_create failed: {e}");
            return;
        }
    };
    for (fd, token) in [
        (notify.as_raw_fd(), TOKEN_QUEUE),
        (kill.as_raw_fd(), TOKEN_KILL),
    ] {
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        ) {
            log::error!("virtio-rng: epoll_ctl failed: {e}");
            return;
        }
    }
    // Buffers may already be queued before the first kick.
    let mut serve = true;
    let mut events = [EpollEvent::default(); 2];
    loop {
        if serve && process_queue(&mut queue, &mem, &mut errors) {
            if let Err(e) = interrupt.signal_used_queue() {
                log_limited!(
                    errors,
                    log::Level::Warn,
                    "virtio-rng: interrupt failed: {e}"
                );
            }
        }
        serve = false;
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("virtio-rng: epoll_wait failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_KILL => return,
                _ => {
                    let _ = notify.read();
                    serve = true;
                }
            }
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

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.stop_worker();
        let Some(dq) = queues.into_iter().next() else {
            return Err(ActivateError::BadQueue(0));
        };
        if !dq.queue.ready() {
            return Err(ActivateError::BadQueue(0));
        }
        let kill = Arc::new(
            EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| ActivateError::Device(format!("eventfd failed: {e}")))?,
        );
        let k = kill.clone();
        let handle = std::thread::Builder::new()
            .name("virtio-rng".into())
            .spawn(move || worker(dq.queue, dq.notify, k, mem, interrupt))
            .map_err(|e| ActivateError::Device(format!("spawning the worker failed: {e}")))?;
        self.worker = Some((handle, kill));
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
        assert!(process_queue(&mut q, &mem, &mut errors));
        assert_eq!(q.next_used(), 1);
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
        assert_ne!(buf, [0u8; 64], "64 random bytes are not all zero");
        assert!(!process_queue(&mut q, &mem, &mut errors), "nothing left");
    }
}
