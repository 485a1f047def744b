//! The virtio-mmio device registry: one call places a device in the MMIO hole, gives it an
//! IRQ, wires irqfd and ioeventfds, puts it on the MMIO bus and appends
//! `virtio_mmio.device=<size>@<addr>:<irq>` to the guest command line.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{reg, MmioError, MmioTransport, MMIO_WINDOW_SIZE};
use super::{VirtioDevice, VirtioInterrupt};
use crate::vmm::devices::{Bus, BusError, IrqLine};
use crate::vmm::memory::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_END};

/// GSIs handed to virtio-mmio devices, in order (8 is the RTC's).
pub const VIRTIO_IRQS: &[u32] = &[
    5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];

/// The KVM calls the registry needs (a trait so tests run without `/dev/kvm`).
pub trait EventRegistrar {
    /// `KVM_IRQFD`: `evt` raises `gsi`.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error>;
    /// `KVM_IOEVENTFD`: a 32-bit MMIO write of `datamatch` at `addr` signals `evt`.
    fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), kvm_ioctls::Error>;
}

impl EventRegistrar for VmFd {
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        VmFd::register_irqfd(self, evt, gsi)
    }

    fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), kvm_ioctls::Error> {
        VmFd::register_ioevent(self, evt, &IoEventAddress::Mmio(addr), datamatch)
    }
}

/// Failure while registering a virtio-mmio device.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No MMIO window left.
    #[error("no virtio-mmio window left below {VIRTIO_MMIO_END:#x}")]
    NoWindow,
    /// No IRQ left.
    #[error("no IRQ left for another virtio-mmio device ({} in use)", VIRTIO_IRQS.len())]
    NoIrq,
    /// The interrupt eventfd could not be created.
    #[error("eventfd for the virtio interrupt failed")]
    EventFd(#[source] std::io::Error),
    /// The transport could not be built.
    #[error("building the virtio-mmio transport failed")]
    Transport(#[source] MmioError),
    /// `KVM_IRQFD` failed.
    #[error("KVM_IRQFD for GSI {gsi} failed")]
    Irqfd {
        /// GSI.
        gsi: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_IOEVENTFD` failed.
    #[error("KVM_IOEVENTFD for queue {queue} at {addr:#x} failed")]
    Ioeventfd {
        /// Queue index.
        queue: usize,
        /// Notify register address.
        addr: u64,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The window could not be put on the MMIO bus.
    #[error("placing the virtio-mmio window on the MMIO bus failed")]
    Bus(#[source] BusError),
    /// The command line has no room for the device entry.
    #[error("adding the virtio_mmio.device= entry to the kernel command line failed: {0}")]
    Cmdline(linux_loader::cmdline::Error),
}

/// A registered device.
#[derive(Clone)]
pub struct MmioSlot {
    /// Window base address.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// GSI.
    pub irq: u32,
    /// Virtio device type.
    pub device_type: u32,
    /// The transport (also on the MMIO bus).
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Allocates windows and IRQs for virtio-mmio devices.
#[derive(Default)]
pub struct MmioManager {
    slots: Vec<MmioSlot>,
}

impl MmioManager {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registered devices, in registration order.
    pub fn slots(&self) -> &[MmioSlot] {
        &self.slots
    }

    /// Registers `device`: window + IRQ, irqfd, one ioeventfd per queue on QueueNotify
    /// (datamatch = queue index), MMIO bus entry and the kernel command line entry.
    pub fn register(
        &mut self,
        vm: &dyn EventRegistrar,
        bus: &mut Bus,
        cmdline: &mut Cmdline,
        mem: GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
    ) -> Result<MmioSlot, ManagerError> {
        let index = self.slots.len() as u64;
        let base = VIRTIO_MMIO_BASE + index * MMIO_WINDOW_SIZE;
        if base + MMIO_WINDOW_SIZE > VIRTIO_MMIO_END {
            return Err(ManagerError::NoWindow);
        }
        let irq = *VIRTIO_IRQS
            .get(self.slots.len())
            .ok_or(ManagerError::NoIrq)?;
        let line = IrqLine::new(irq).map_err(ManagerError::EventFd)?;
        let interrupt = Arc::new(VirtioInterrupt::new(line));
        let transport =
            MmioTransport::new(device, mem, interrupt.clone()).map_err(ManagerError::Transport)?;
        vm.register_irqfd(interrupt.irq().eventfd(), irq)
            .map_err(|source| ManagerError::Irqfd { gsi: irq, source })?;
        let notify_addr = base + reg::QUEUE_NOTIFY;
        for (queue, evt) in transport.queue_notify_fds().iter().enumerate() {
            vm.register_ioevent(evt, notify_addr, queue as u32)
                .map_err(|source| ManagerError::Ioeventfd {
                    queue,
                    addr: notify_addr,
                    source,
                })?;
        }
        let device_type = transport.device_type();
        let transport = Arc::new(Mutex::new(transport));
        bus.insert(base, MMIO_WINDOW_SIZE, transport.clone())
            .map_err(ManagerError::Bus)?;
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW_SIZE, GuestAddress(base), irq, None)
            .map_err(ManagerError::Cmdline)?;
        let slot = MmioSlot {
            base,
            size: MMIO_WINDOW_SIZE,
            irq,
            device_type,
            transport,
        };
        log::info!("virtio-mmio device type {device_type} at {base:#x} (4 KiB), IRQ {irq}");
        self.slots.push(slot.clone());
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::virtio::tests::DummyDevice;
    use std::cell::RefCell;

    #[derive(Default)]
    struct FakeVm {
        irqfds: RefCell<Vec<u32>>,
        ioevents: RefCell<Vec<(u64, u32)>>,
    }

    impl EventRegistrar for FakeVm {
        fn register_irqfd(&self, _evt: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
            self.irqfds.borrow_mut().push(gsi);
            Ok(())
        }
        fn register_ioevent(
            &self,
            _evt: &EventFd,
            addr: u64,
            datamatch: u32,
        ) -> Result<(), kvm_ioctls::Error> {
            self.ioevents.borrow_mut().push((addr, datamatch));
            Ok(())
        }
    }

    fn register_dummy(
        mgr: &mut MmioManager,
        vm: &FakeVm,
        bus: &mut Bus,
        cmdline: &mut Cmdline,
        mem: &GuestMemoryMmap,
    ) -> Result<MmioSlot, ManagerError> {
        mgr.register(
            vm,
            bus,
            cmdline,
            mem.clone(),
            Box::new(DummyDevice::new().0),
        )
    }

    #[test]
    fn register_allocates_windows_irqs_and_cmdline_entries() {
        let vm = FakeVm::default();
        let mut bus = Bus::new();
        let mut cmdline = Cmdline::try_from("console=ttyS0", 4096).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut mgr = MmioManager::new();
        let a = register_dummy(&mut mgr, &vm, &mut bus, &mut cmdline, &mem).unwrap();
        let b = register_dummy(&mut mgr, &vm, &mut bus, &mut cmdline, &mem).unwrap();
        assert_eq!((a.base, a.irq), (0xd000_0000, 5));
        assert_eq!((b.base, b.irq), (0xd000_1000, 6));
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(*vm.irqfds.borrow(), vec![5, 6]);
        assert_eq!(
            *vm.ioevents.borrow(),
            vec![
                (0xd000_0050, 0),
                (0xd000_0050, 1),
                (0xd000_1050, 0),
                (0xd000_1050, 1)
            ]
        );
        // The windows are on the bus.
        let mut d = [0u8; 4];
        assert!(bus.read(0xd000_1000, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0x7472_6976);
        assert!(!bus.read(0xd000_2000, &mut d));
        assert_eq!(mgr.slots().len(), 2);
    }

    #[test]
    fn registry_runs_out_of_irqs_cleanly() {
        let vm = FakeVm::default();
        let mut bus = Bus::new();
        let mut cmdline = Cmdline::new(16384).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut mgr = MmioManager::new();
        for _ in 0..VIRTIO_IRQS.len() {
            register_dummy(&mut mgr, &vm, &mut bus, &mut cmdline, &mem).unwrap();
        }
        let e = register_dummy(&mut mgr, &vm, &mut bus, &mut cmdline, &mem)
            .err()
            .unwrap();
        assert!(matches!(e, ManagerError::NoIrq), "{e}");
    }
}
