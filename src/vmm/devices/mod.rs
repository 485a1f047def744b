//! Legacy devices and the PIO/MMIO buses the vCPU threads dispatch exits to.
//!
//! A bus maps non-overlapping address ranges to devices. Buses are built before the vCPUs
//! start and then shared read-only; each device sits behind its own mutex.

pub mod coalesced;
pub mod i8042;
pub mod legacy;
pub mod serial;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use kvm_ioctls::VmFd;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// A device on a bus. `offset` is relative to the start of the range it was inserted at.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Failure while building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps the range at {other:#x}")]
    Overlap {
        /// New range start.
        base: u64,
        /// New range length.
        len: u64,
        /// Start of the existing range.
        other: u64,
    },
    /// Zero-length or wrapping range.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange {
        /// Range start.
        base: u64,
        /// Range length.
        len: u64,
    },
}

/// Address ranges mapped to devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `base..base+len` to `dev`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        // The closest range starting below `end` is the only one that can overlap.
        if let Some((&other, &(olen, _))) = self.ranges.range(..end).next_back() {
            if other + olen > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.ranges.insert(base, (len, dev));
        Ok(())
    }

    /// The device covering `addr` and the offset into its range.
    fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((dev, addr - base))
    }

    /// Dispatches a read; `false` when nothing is mapped at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, off)) => {
                lock(dev).read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `false` when nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, off)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned mutex (a panicking vCPU thread must not take
/// the other vCPUs down with it).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An interrupt line on one GSI: an eventfd registered as a KVM irqfd, or, once
/// [`IrqLine::inject_directly`] was called, `KVM_IRQ_LINE` from the raising thread.
///
/// Why both: for a GSI routed to the in-kernel PIC/IOAPIC (not MSI), KVM cannot inject from
/// the eventfd's wakeup and defers every irqfd signal to a kworker, a normal task that must
/// be scheduled first: measured here under load, 14 ms passed between a queue thread's
/// signal and the injection while that thread and a sender kept the CPU busy.
/// `KVM_IRQ_LINE` injects (and kicks the vCPU) in the caller's own context.
#[derive(Debug)]
pub struct IrqLine {
    evt: EventFd,
    gsi: u32,
    direct: OnceLock<Arc<VmFd>>,
    /// Serialises raise() pulses: two threads interleaving "assert, assert, deassert,
    /// deassert" would make one edge for two raises, and the second's used entries could be
    /// missed by a driver already in its handler.
    pulse: Mutex<()>,
}

impl IrqLine {
    /// A new, unregistered line for `gsi`.
    pub fn new(gsi: u32) -> std::io::Result<Self> {
        Ok(IrqLine {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            gsi,
            direct: OnceLock::new(),
            pulse: Mutex::new(()),
        })
    }

    /// From now on, raise the interrupt with `KVM_IRQ_LINE` on `vm` (an edge: assert, then
    /// deassert, as KVM's irqfd does) instead of signalling the eventfd. Once only.
    pub fn inject_directly(&self, vm: Arc<VmFd>) {
        let _ = self.direct.set(vm);
    }

    /// The eventfd to register with `KVM_IRQFD`.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Raises the interrupt (an edge on the GSI).
    pub fn raise(&self) -> std::io::Result<()> {
        let Some(vm) = self.direct.get() else {
            return self.evt.write(1);
        };
        let _pulse = lock(&self.pulse);
        vm.set_irq_line(self.gsi, true)
            .and_then(|()| vm.set_irq_line(self.gsi, false))
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.raise()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Rec {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn ranges_dispatch_with_offsets_and_reject_overlaps() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Rec::default()));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x400, 1, Arc::new(Mutex::new(Rec::default())))
            .unwrap();
        assert_eq!(
            bus.insert(0x3f0, 9, Arc::new(Mutex::new(Rec::default()))),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9,
                other: 0x3f8
            })
        );
        assert!(bus
            .insert(0x3ff, 2, Arc::new(Mutex::new(Rec::default())))
            .is_err());
        assert!(bus
            .insert(0x3fa, 1, Arc::new(Mutex::new(Rec::default())))
            .is_err());
        assert!(bus
            .insert(0x10, 0, Arc::new(Mutex::new(Rec::default())))
            .is_err());
        bus.insert(0x3f0, 8, Arc::new(Mutex::new(Rec::default())))
            .unwrap();

        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d[0], 5);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(a.lock().unwrap().last, Some((7, vec![7])));
        assert!(!bus.read(0x401, &mut d));
        assert!(!bus.write(0x0, &[1]));
    }
}
