//! KVM's coalesced I/O for the UART's transmit register.
//!
//! Every guest write to COM1's THR is otherwise a userspace exit: ~90 us each on the nested
//! KVM of the development machines, so a 200-character boot line costs the guest ~18 ms.
//! With the port registered as a coalesced zone, KVM queues those writes in a ring page it
//! shares with the VMM and returns to the guest at once. The VMM replays the ring, in order,
//! on the device bus: before it handles any exit of any vCPU (so a read of LSR, a write to
//! LCR or the guest's exit port sees every byte written before it), from a flusher thread (a
//! guest that prints and then idles takes no exit), and once more when the VM ends.
//!
//! A UART whose driver waits for the THR-empty interrupt (IER bit 1, Linux's interrupt-driven
//! transmit) must get that interrupt when it writes, not when the ring is next replayed: the
//! serial device turns the zone off while that interrupt is enabled ([`Switch::set`]); the IER
//! write that enables it is an exit, so the bytes queued before it are replayed first.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};

use super::Bus;

/// Whether this KVM queues port writes: the ring's page offset in a vCPU's mapping, if so.
pub fn supported(kvm: &Kvm) -> Option<u32> {
    let offset = kvm.check_extension_int(Cap::CoalescedMmio);
    (offset > 0 && kvm.check_extension_int(Cap::CoalescedPio) > 0).then_some(offset as u32)
}

/// Turns the queueing of a port's writes on and off.
pub trait Switch: Send {
    /// Queue the port's writes (`on`) or let each exit again.
    fn set(&mut self, on: bool) -> io::Result<()>;
    /// Whether the port's writes are queued now.
    fn is_on(&self) -> bool;
}

/// One port registered (or not) as a coalesced zone of a VM.
pub struct Zone {
    vm: Arc<VmFd>,
    port: u64,
    on: bool,
}

impl Zone {
    /// The one-byte port `port` of `vm`, not registered yet.
    pub fn new(vm: Arc<VmFd>, port: u64) -> Zone {
        Zone {
            vm,
            port,
            on: false,
        }
    }
}

impl Switch for Zone {
    fn set(&mut self, on: bool) -> io::Result<()> {
        if on == self.on {
            return Ok(());
        }
        let zone = IoEventAddress::Pio(self.port);
        if on {
            self.vm.register_coalesced_mmio(zone, 1)
        } else {
            self.vm.unregister_coalesced_mmio(zone, 1)
        }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        self.on = on;
        Ok(())
    }

    fn is_on(&self) -> bool {
        self.on
    }
}

/// The VM's ring of queued writes (one page, shared by every vCPU's mapping; this is a
/// mapping of its own, so it outlives any vCPU thread).
pub struct Ring {
    page: NonNull<kvm_coalesced_mmio_ring>,
    len: usize,
    max: u32,
    /// Writes replayed so far (the flusher stays quick while this moves).
    replayed: AtomicU64,
    /// One replayer at a time: the ring has one `first` index, and bytes must reach the
    /// device in order.
    lock: Mutex<()>,
}

// SAFETY: the mapping is only read and its `first` index only written under `lock`; KVM
// writes entries and `last` concurrently, which is the ring's protocol (fences in `drain`).
unsafe impl Send for Ring {}
// SAFETY: as for Send.
unsafe impl Sync for Ring {}

impl Ring {
    /// Maps the ring page at `page_offset` (from [`supported`]) of `vcpu`'s fd.
    pub fn map(vcpu: &VcpuFd, page_offset: u32) -> io::Result<Ring> {
        // SAFETY: sysconf has no preconditions.
        let len = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return Err(io::Error::last_os_error()),
        };
        let offset = libc::off_t::from(page_offset) * len as libc::off_t;
        // SAFETY: a new shared mapping of one page of a vCPU fd, at the offset KVM documents
        // for the coalesced ring; the result is checked and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(p.cast()).ok_or_else(io::Error::last_os_error)?;
        let header = std::mem::size_of::<kvm_coalesced_mmio_ring>();
        let max = ((len - header) / std::mem::size_of::<kvm_coalesced_mmio>()) as u32;
        Ok(Ring {
            page,
            len,
            max,
            replayed: AtomicU64::new(0),
            lock: Mutex::new(()),
        })
    }

    /// Replays every queued write on `bus`, oldest first; returns how many there were.
    pub fn drain(&self, bus: &Bus) -> usize {
        let ring = self.page.as_ptr();
        // SAFETY: `r` is the mapped ring page, valid until Drop; read volatile because KVM
        // moves `last` concurrently.
        let pending = |r: *mut kvm_coalesced_mmio_ring| unsafe {
            std::ptr::addr_of!((*r).first).read_volatile()
                != std::ptr::addr_of!((*r).last).read_volatile()
        };
        if !pending(ring) {
            return 0;
        }
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        loop {
            // SAFETY: as in `pending`; under `lock`, so `first` is ours alone.
            let (first, last) = unsafe {
                (
                    std::ptr::addr_of!((*ring).first).read_volatile(),
                    std::ptr::addr_of!((*ring).last).read_volatile(),
                )
            };
            if first == last || first >= self.max || last >= self.max {
                break;
            }
            // The entry KVM wrote before it moved `last` past it.
            fence(Ordering::Acquire);
            // SAFETY: `first < max` (checked above), so the entry lies inside the mapped page
            // (`max` entries fit after the header); KVM filled it before moving `last`.
            let e: kvm_coalesced_mmio = unsafe {
                std::ptr::addr_of!((*ring).coalesced_mmio)
                    .cast::<kvm_coalesced_mmio>()
                    .add(first as usize)
                    .read_volatile()
            };
            let len = (e.len as usize).min(e.data.len());
            bus.write(e.phys_addr, &e.data[..len]);
            n += 1;
            // The entry is consumed before KVM may reuse its slot.
            fence(Ordering::Release);
            // SAFETY: the ring page is mapped writable; `first` is written only here, under
            // `lock`, and read by KVM to find free slots.
            unsafe { std::ptr::addr_of_mut!((*ring).first).write_volatile((first + 1) % self.max) };
        }
        self.replayed.fetch_add(n as u64, Ordering::Relaxed);
        n
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the page was mapped in `map` with this length and is not used after this.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.len) };
    }
}

/// Replay period while the guest writes, or has been sent console input (its echo).
const HOT: Duration = Duration::from_millis(5);
/// Replay period after [`HOT_ROUNDS`] quiet periods. A wakeup costs ~60 us of CPU on the
/// nested KVM of the development machines, so an idle VM's flusher costs ~0.01 % of a core
/// (20 wakeups a second cost 0.12 %, measured).
const COLD: Duration = Duration::from_millis(500);
/// See [`COLD`].
const HOT_ROUNDS: u32 = 20;

enum Msg {
    Stop,
    Hot,
}

/// The thread that replays the ring when no vCPU exit does: a guest that prints and then
/// idles (HLT with the in-kernel irqchip takes no exit) shows its output within [`HOT`] while
/// it writes or is typed at, and within [`COLD`] after a quiet spell. Dropping it stops the
/// thread.
pub struct Flusher {
    tx: mpsc::Sender<Msg>,
    /// A wake-up is queued and not yet taken (a paste sends one, not one per FIFO refill).
    poked: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Wakes the [`Flusher`] into its quick period (console input arrived: the guest will echo).
#[derive(Clone)]
pub struct Poker {
    tx: mpsc::Sender<Msg>,
    poked: Arc<AtomicBool>,
}

impl Poker {
    pub fn poke(&self) {
        if !self.poked.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Hot);
        }
    }
}

impl Flusher {
    pub fn spawn(ring: Arc<Ring>, bus: Arc<Bus>) -> io::Result<Flusher> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let poked = Arc::new(AtomicBool::new(false));
        let taken = poked.clone();
        let handle = std::thread::Builder::new()
            .name("serial-flush".into())
            .spawn(move || {
                let mut quiet = 0u32;
                let mut seen = 0u64;
                loop {
                    let period = if quiet < HOT_ROUNDS { HOT } else { COLD };
                    match rx.recv_timeout(period) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(Msg::Hot) => {
                            taken.store(false, Ordering::Release);
                            quiet = 0;
                        }
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    ring.drain(&bus);
                    // Output replayed by anyone (a vCPU's exit too) keeps the period short.
                    let now = ring.replayed.load(Ordering::Relaxed);
                    quiet = if now != seen {
                        0
                    } else {
                        quiet.saturating_add(1)
                    };
                    seen = now;
                }
            })?;
        Ok(Flusher {
            tx,
            poked,
            handle: Some(handle),
        })
    }

    /// A handle that wakes this flusher into its quick period.
    pub fn poker(&self) -> Poker {
        Poker {
            tx: self.tx.clone(),
            poked: self.poked.clone(),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                log::error!("the serial flusher thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_pokes_queues_one_wakeup_until_the_flusher_takes_it() {
        let (tx, rx) = mpsc::channel();
        let poked = Arc::new(AtomicBool::new(false));
        let p = Poker {
            tx,
            poked: poked.clone(),
        };
        for _ in 0..1000 {
            p.poke();
        }
        assert!(matches!(rx.try_recv(), Ok(Msg::Hot)));
        assert!(rx.try_recv().is_err(), "one wakeup for the burst");
        poked.store(false, Ordering::Release); // what the flusher does when it wakes
        p.poke();
        assert!(matches!(rx.try_recv(), Ok(Msg::Hot)));
    }
}
