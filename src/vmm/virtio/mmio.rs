//! The virtio-mmio transport, version 2 (virtio 1.x §4.2.2).
//!
//! Registers are 32-bit and must be accessed with aligned 32-bit loads and stores; any other
//! access to the register area is ignored (reads return zero). The device config space at
//! 0x100 takes 8-, 16- and 32-bit accesses. Nothing a guest writes here can fail the VMM: bad
//! values are ignored and logged through a rate limiter.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{status, DeviceQueue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::log_limited;
use crate::vmm::devices::BusDevice;
use crate::vmm::ratelimit::LogLimiter;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Transport version: 2 (modern, virtio 1.x).
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the guest ("VOLT" would do; QEMU's is "QEMU").
pub const MMIO_VENDOR_ID: u32 = 0x544c_4f56;

/// Register offsets.
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Size of one transport's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// One virtio device behind the MMIO register interface.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    interrupt: Arc<VirtioInterrupt>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver set a feature bit beyond 63 (never offered).
    driver_features_beyond_64: bool,
    queue_sel: u32,
    status: u32,
    /// The device runs (activated at DRIVER_OK, not stopped since).
    device_active: bool,
    guest_errors: LogLimiter,
    /// Lifecycle lines a driver causes at will: FAILED, failed activations.
    lifecycle: LogLimiter,
}

/// Failure while building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device asked for an invalid queue size.
    #[error("virtio device type {device} asks for invalid queue size {size} (must be a power of two up to 32768)")]
    QueueSize {
        /// Device type.
        device: u32,
        /// Size.
        size: u16,
    },
    /// An eventfd for queue notification could not be created.
    #[error("eventfd for virtio queue notification failed")]
    EventFd(#[source] std::io::Error),
}

impl MmioTransport {
    /// Wraps `device`, with queues from its max sizes and `interrupt` as its interrupt.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<Self, MmioError> {
        let mut queues = Vec::new();
        let mut notify = Vec::new();
        for &size in device.queue_max_sizes() {
            queues.push(Queue::new(size).map_err(|_| MmioError::QueueSize {
                device: device.device_type(),
                size,
            })?);
            notify.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            queues,
            notify,
            interrupt,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond_64: false,
            queue_sel: 0,
            status: 0,
            device_active: false,
            guest_errors: LogLimiter::new(),
            lifecycle: LogLimiter::new(),
        })
    }

    /// The per-queue notification eventfds, in queue order (to register as ioeventfds with
    /// datamatch = queue index).
    pub fn queue_notify_fds(&self) -> &[EventFd] {
        &self.notify
    }

    /// The interrupt shared with the device.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The device type.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The device's own description (see [`super::VirtioDevice::status`]).
    pub fn device_status(&self) -> Option<String> {
        self.device.status()
    }

    /// Current device status.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Whether queue registers may be written now: features negotiated, driver not yet OK.
    fn queue_config_allowed(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        // Drain stale kicks so a re-initialised device does not see them.
        for evt in &self.notify {
            let _ = evt.read();
        }
        self.interrupt.reset();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond_64 = false;
        self.queue_sel = 0;
        self.status = 0;
        self.device_active = false;
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: length reads as all ones ("no such region").
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                let driver_stage = self.status & (status::DRIVER | status::FEATURES_OK);
                if driver_stage != status::DRIVER {
                    log_limited!(
                        self.guest_errors,
                        log::Level::Warn,
                        "virtio-mmio: DriverFeatures written in status {:#x}, ignored",
                        self.status
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    // Bits beyond 63 are never offered: a set bit there is unacceptable.
                    _ => self.driver_features_beyond_64 |= v != 0,
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            reg::QUEUE_NOTIFY => {
                // Normally KVM's ioeventfd takes these; a trapped kick is forwarded the same way.
                match self.notify.get(v as usize) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            log_limited!(
                                self.guest_errors,
                                log::Level::Warn,
                                "virtio-mmio: forwarding queue {v} notification failed: {e}"
                            );
                        }
                    }
                    None => {
                        log_limited!(
                            self.guest_errors,
                            log::Level::Warn,
                            "virtio-mmio: notify for nonexistent queue {v}"
                        );
                    }
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => {}
            _ => {
                log_limited!(
                    self.guest_errors,
                    log::Level::Debug,
                    "virtio-mmio: write {v:#x} to read-only or unknown register {offset:#x}"
                );
            }
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if offset == reg::QUEUE_READY && v == 0 && self.status & status::DRIVER_OK != 0 {
            self.stop_queue();
            return;
        }
        // A device the driver stopped (see stop_queue) takes its queue teardown writes.
        let stopped = self.status & status::DRIVER_OK != 0 && !self.device_active;
        if !self.queue_config_allowed() && !stopped {
            log_limited!(
                self.guest_errors,
                log::Level::Warn,
                "virtio-mmio: queue register {offset:#x} written in status {:#x}, ignored",
                self.status
            );
            return;
        }
        let sel = self.queue_sel;
        let Some(q) = self.selected_queue() else {
            return;
        };
        if offset == reg::QUEUE_READY {
            q.set_ready(v == 1);
            return;
        }
        if q.ready() {
            // The driver must not change a live queue.
            return;
        }
        let lo = |cur: u64| (cur & !0xffff_ffff) | u64::from(v);
        let hi = |cur: u64| (cur & 0xffff_ffff) | (u64::from(v) << 32);
        let ok = match offset {
            reg::QUEUE_NUM => q.try_set_size(v.min(u32::from(u16::MAX)) as u16).is_ok(),
            reg::QUEUE_DESC_LOW => q
                .try_set_desc_table_address(GuestAddress(lo(q.desc_table())))
                .is_ok(),
            reg::QUEUE_DESC_HIGH => q
                .try_set_desc_table_address(GuestAddress(hi(q.desc_table())))
                .is_ok(),
            reg::QUEUE_DRIVER_LOW => q
                .try_set_avail_ring_address(GuestAddress(lo(q.avail_ring())))
                .is_ok(),
            reg::QUEUE_DRIVER_HIGH => q
                .try_set_avail_ring_address(GuestAddress(hi(q.avail_ring())))
                .is_ok(),
            reg::QUEUE_DEVICE_LOW => q
                .try_set_used_ring_address(GuestAddress(lo(q.used_ring())))
                .is_ok(),
            reg::QUEUE_DEVICE_HIGH => q
                .try_set_used_ring_address(GuestAddress(hi(q.used_ring())))
                .is_ok(),
            _ => true,
        };
        // Teardown of a stopped queue writes zeroes (QueueNum 0 included): not worth a line.
        let teardown = stopped && v == 0;
        if !ok && !teardown {
            log_limited!(
                self.guest_errors,
                log::Level::Warn,
                "virtio-mmio: invalid value {v:#x} for queue {sel} register {offset:#x}, ignored"
            );
        }
    }

    /// The driver stops using a live queue (virtio 1.x §4.2.2.2: write 0 to QueueReady, read
    /// it back; virtio-drivers does this before it frees the ring). The device's workers
    /// hold the queue, so the device is stopped as a whole: it must not touch the ring again.
    /// It stays stopped until the driver resets it.
    fn stop_queue(&mut self) {
        let sel = self.queue_sel;
        let was_ready = self.selected_queue().is_some_and(|q| {
            let r = q.ready();
            q.set_ready(false);
            r
        });
        if was_ready && self.device_active {
            log_limited!(
                self.guest_errors,
                log::Level::Info,
                "virtio-mmio: driver stopped queue {sel} of device type {}; device stopped until reset",
                self.device.device_type()
            );
            self.device.reset();
            self.device_active = false;
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & self.status != self.status {
            log_limited!(
                self.guest_errors,
                log::Level::Warn,
                "virtio-mmio: status {:#x} -> {v:#x} clears bits without a reset, ignored",
                self.status
            );
            return;
        }
        let new = v & !self.status;
        let mut s = self.status;
        if new & status::ACKNOWLEDGE != 0 && s == 0 {
            s |= status::ACKNOWLEDGE;
        }
        if new & status::DRIVER != 0 && s & status::ACKNOWLEDGE != 0 {
            s |= status::DRIVER;
        }
        if new & status::FEATURES_OK != 0 && s & status::DRIVER != 0 {
            let unoffered = self.driver_features & !self.offered_features();
            if unoffered != 0 || self.driver_features_beyond_64 {
                log_limited!(self.guest_errors, log::Level::Warn, "virtio-mmio: driver accepted unoffered features {unoffered:#x}; FEATURES_OK refused");
            } else if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                log_limited!(self.guest_errors, log::Level::Warn, "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy driver); FEATURES_OK refused");
            } else {
                s |= status::FEATURES_OK;
                self.device.ack_features(self.driver_features);
            }
        }
        if new & status::DRIVER_OK != 0 && s & status::FEATURES_OK != 0 {
            s |= status::DRIVER_OK;
            self.device_active = true;
            if let Err(e) = self.activate() {
                self.device_active = false;
                log_limited!(
                    self.lifecycle,
                    log::Level::Warn,
                    "virtio-mmio: device type {} failed to start: {e}",
                    self.device.device_type()
                );
                s |= status::DEVICE_NEEDS_RESET;
                let _ = self.interrupt.signal_config_change();
            }
        }
        if new & status::FAILED != 0 {
            log_limited!(
                self.lifecycle,
                log::Level::Info,
                "virtio-mmio: driver marked device type {} FAILED",
                self.device.device_type()
            );
            s |= status::FAILED;
        }
        self.status = s;
    }

    fn activate(&mut self) -> Result<(), super::ActivateError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, (q, evt)) in self.queues.iter().zip(&self.notify).enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(super::ActivateError::BadQueue(i));
            }
            let queue =
                Queue::try_from(q.state()).map_err(|_| super::ActivateError::BadQueue(i))?;
            let notify = evt
                .try_clone()
                .map_err(|e| super::ActivateError::Device(format!("dup of queue eventfd: {e}")))?;
            queues.push(DeviceQueue { queue, notify });
        }
        self.device
            .activate(self.mem.clone(), queues, self.interrupt.clone())
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log_limited!(
                self.guest_errors,
                log::Level::Warn,
                "virtio-mmio: {}-byte read at {offset:#x} (registers are 32-bit aligned)",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log_limited!(
                self.guest_errors,
                log::Level::Warn,
                "virtio-mmio: {}-byte write at {offset:#x} (registers are 32-bit aligned)",
                data.len()
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
