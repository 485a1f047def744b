//! Virtio devices and their MMIO transport.
//!
//! A device ([`VirtioDevice`]) knows its type, features, config space and what to do with
//! its queues once the driver is done; the transport ([`mmio::MmioTransport`]) implements the
//! virtio-mmio version 2 register interface and feature/status negotiation around it; the
//! registry ([`manager::MmioManager`]) places transports in the MMIO hole, wires their
//! interrupts (irqfd) and queue notifications (ioeventfd), and adds them to the kernel
//! command line.

pub mod blk;
pub mod manager;
pub mod mmio;
pub mod net;
pub mod notify;
pub mod pass;
pub mod poll;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_queue;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::devices::IrqLine;

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// `VIRTIO_F_VERSION_1`: the device follows virtio 1.x (mandatory for the v2 MMIO transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the device needs is not ready or lies outside guest memory.
    #[error("virtio queue {0} is not ready or not inside guest memory")]
    BadQueue(usize),
    /// Device-specific setup failed.
    #[error("device setup failed: {0}")]
    Device(String),
}

/// A queue handed to a device at activation, with its notification eventfd (the ioeventfd
/// KVM signals on QueueNotify).
pub struct DeviceQueue {
    /// The driver-configured queue.
    pub queue: Queue,
    /// Signalled when the driver kicks this queue.
    pub notify: EventFd,
}

impl DeviceQueue {
    /// The one queue of a single-queue device, which the driver must have made ready.
    pub fn only_ready(queues: Vec<DeviceQueue>) -> Result<DeviceQueue, ActivateError> {
        match queues.into_iter().next() {
            Some(dq) if virtio_queue::QueueT::ready(&dq.queue) => Ok(dq),
            _ => Err(ActivateError::BadQueue(0)),
        }
    }
}

/// The interrupt side of a transport, shared between transport and device.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: IrqLine,
}

impl VirtioInterrupt {
    /// An interrupt on `irq`.
    pub fn new(irq: IrqLine) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irq,
        }
    }

    /// Tells the driver a used ring changed.
    ///
    /// The line behaves as a level-triggered one would (QEMU's virtio-mmio): a new edge only
    /// when InterruptStatus goes from 0 to non-zero. A virtio-mmio driver reads
    /// InterruptStatus and writes InterruptACK before it looks at its rings, so an entry added
    /// while a bit is still set is found by the scan that follows the acknowledgement. A
    /// driver that polls and never acknowledges (virtio-drivers' block device) then costs no
    /// injection per request.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise_with(INT_VRING)
    }

    /// Sets `bit` in InterruptStatus; raises the line if no bit was set before.
    fn raise_with(&self, bit: u32) -> std::io::Result<()> {
        if self.status.fetch_or(bit, Ordering::SeqCst) != 0 {
            return Ok(());
        }
        self.irq.raise()
    }

    /// [`Self::signal_used_queue`] for a worker thread: a failure is logged through `limiter`
    /// as `who: interrupt failed: …` (the guest controls how often this runs).
    pub fn signal_used_queue_logged(&self, who: &str, limiter: &mut impl super::ratelimit::Limit) {
        if let Err(e) = self.signal_used_queue() {
            crate::log_limited!(limiter, log::Level::Warn, "{who}: interrupt failed: {e}");
        }
    }

    /// Tells the driver the config space changed (bumps ConfigGeneration).
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise_with(INT_CONFIG)
    }

    /// Current InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Current ConfigGeneration.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Clears the interrupt status (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The interrupt line.
    pub fn irq(&self) -> &IrqLine {
        &self.irq
    }
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 = net, 2 = block, 4 = entropy, ...).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Features the device offers (the transport adds `VIRTIO_F_VERSION_1`); none by default.
    fn features(&self) -> u64 {
        0
    }

    /// The features the driver accepted, once FEATURES_OK is set.
    fn ack_features(&mut self, _features: u64) {}

    /// Reads device config space at `offset` (bytes past the end read as zero); a device
    /// without one reads as zeros.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// Writes device config space at `offset`. By default nothing in it is writable and the
    /// write is ignored (net's MAC is read-only for VERSION_1 drivers, blk offers no
    /// CONFIG_WCE, vsock's CID is the host's to set).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// Starts the device on DRIVER_OK with the driver's queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: std::sync::Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError>;

    /// Stops the device and drops its queues (the driver wrote 0 to Status).
    fn reset(&mut self);

    /// A short description for STATUS= and logs (e.g. the data path in use).
    fn status(&self) -> Option<String> {
        None
    }
}

/// Reads `data.len()` bytes at `offset` from `config`, zero past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_line_gets_an_edge_only_when_interrupt_status_leaves_zero() {
        let irq = crate::vmm::devices::IrqLine::new(5).expect("irq");
        let int = VirtioInterrupt::new(irq);
        let edges = |i: &VirtioInterrupt| i.irq().eventfd().read().unwrap_or(0);
        int.signal_used_queue().expect("signal");
        int.signal_used_queue().expect("signal");
        int.signal_config_change().expect("config");
        assert_eq!(
            edges(&int),
            1,
            "one edge while the driver has not acknowledged"
        );
        assert_eq!(int.status(), INT_VRING | INT_CONFIG);
        int.ack(INT_VRING);
        int.signal_used_queue().expect("signal");
        assert_eq!(edges(&int), 0, "the config bit is still set: no new edge");
        int.ack(INT_VRING | INT_CONFIG);
        int.signal_used_queue().expect("signal");
        assert_eq!(edges(&int), 1, "acknowledged: the next entry raises again");
        int.reset();
        int.signal_config_change().expect("config");
        assert_eq!(edges(&int), 1, "a reset clears the status");
    }

    /// What the test device saw.
    #[derive(Default, Debug)]
    pub struct DummyState {
        pub activated: bool,
        pub resets: u32,
        pub acked: u64,
        pub queues: Vec<(u16, bool)>,
    }

    /// A device type used only in tests: 2 queues, features bit 0 and 5, 8 bytes of config.
    pub struct DummyDevice {
        pub config: [u8; 8],
        pub state: Arc<Mutex<DummyState>>,
    }

    pub const DUMMY_TYPE: u32 = 0x3f;
    pub const DUMMY_FEATURES: u64 = 1 | (1 << 5);

    impl DummyDevice {
        pub fn new() -> (Self, Arc<Mutex<DummyState>>) {
            let state = Arc::new(Mutex::new(DummyState::default()));
            (
                DummyDevice {
                    config: [1, 2, 3, 4, 5, 6, 7, 8],
                    state: state.clone(),
                },
                state,
            )
        }
    }

    impl VirtioDevice for DummyDevice {
        fn device_type(&self) -> u32 {
            DUMMY_TYPE
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 16]
        }
        fn features(&self) -> u64 {
            DUMMY_FEATURES
        }
        fn ack_features(&mut self, f: u64) {
            self.state.lock().unwrap().acked = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.config, offset, data)
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let o = offset as usize;
            if o + data.len() <= self.config.len() {
                self.config[o..o + data.len()].copy_from_slice(data);
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            queues: Vec<DeviceQueue>,
            _interrupt: Arc<VirtioInterrupt>,
        ) -> Result<(), ActivateError> {
            use virtio_queue::QueueT;
            let mut s = self.state.lock().unwrap();
            s.activated = true;
            s.queues = queues
                .iter()
                .map(|q| (q.queue.size(), q.queue.ready()))
                .collect();
            Ok(())
        }
        fn reset(&mut self) {
            let mut s = self.state.lock().unwrap();
            s.activated = false;
            s.resets += 1;
        }
    }

    #[test]
    fn config_bytes_past_the_end_read_zero() {
        let mut d = [0xffu8; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut d);
        assert_eq!(d, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
