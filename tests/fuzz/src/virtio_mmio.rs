//! `virtio_mmio`: a guest driving one virtio-mmio transport with arbitrary register reads and
//! writes (any offset in the 4 KiB window, 1/2/4/8-byte accesses), plus guest-memory writes
//! and a "well-behaved driver" step that reaches DRIVER_OK quickly, over small guest memory
//! with a hole.
//!
//! The device is either the real entropy device ([`volt::vmm::virtio::rng::Rng`], whose
//! activation starts its worker thread) or a probe device with fuzzer-chosen queue sizes,
//! features and activation result, which records what the transport hands it and runs the
//! rng data path over the activated queues synchronously. (The net device needs a real TAP:
//! `Tap::from_fds` checks TUNGETIFF, so it cannot sit on a socketpair here.)
//!
//! Checked after every access: no panic; Status only ever holds
//! ACKNOWLEDGE <= DRIVER <= FEATURES_OK <= DRIVER_OK in that order (DEVICE_NEEDS_RESET only
//! with DRIVER_OK), and reads back as the transport reports it; identification registers are
//! constant; badly sized or misaligned register reads return zero; a reset clears Status and
//! InterruptStatus; the probe is acknowledged only offered features including VERSION_1 (on
//! the FEATURES_OK write), activated only on the DRIVER_OK write and only with queues that are
//! inside guest memory.

use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use volt::vmm::devices::{BusDevice, IrqLine};
use volt::vmm::ratelimit::LogLimiter;
use volt::vmm::virtio::mmio::{reg, MmioTransport, MMIO_MAGIC, MMIO_VENDOR_ID, MMIO_VERSION};
use volt::vmm::virtio::{
    read_config_bytes, rng, status, ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_VERSION_1,
};

use super::cursor::Cursor;

/// Most operations per input.
const MAX_OPS: usize = 512;
/// Guest RAM: 64 KiB at 0 and 4 KiB at 128 KiB (a hole between).
const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1000)];
const PROBE_TYPE: u32 = 0x2a;

const REGS: [u64; 27] = [
    reg::MAGIC_VALUE,
    reg::VERSION,
    reg::DEVICE_ID,
    reg::VENDOR_ID,
    reg::DEVICE_FEATURES,
    reg::DEVICE_FEATURES_SEL,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM_MAX,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::INTERRUPT_STATUS,
    reg::INTERRUPT_ACK,
    reg::STATUS,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_DRIVER_LOW,
    reg::QUEUE_DRIVER_HIGH,
    reg::QUEUE_DEVICE_LOW,
    reg::QUEUE_DEVICE_HIGH,
    reg::SHM_SEL,
    reg::SHM_LEN_LOW,
    reg::SHM_BASE_HIGH,
    reg::CONFIG_GENERATION,
    reg::CONFIG,
];

/// What the probe device saw.
#[derive(Debug, Default)]
struct ProbeLog {
    acked: Vec<u64>,
    activations: usize,
    resets: usize,
    /// (size, ready, valid in memory) of the queues of the last activation.
    queues: Vec<(u16, bool, bool)>,
}

struct Probe {
    sizes: Vec<u16>,
    features: u64,
    config: [u8; 8],
    activate_ok: bool,
    log: Arc<Mutex<ProbeLog>>,
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        PROBE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        lock(&self.log).acked.push(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(o) = usize::try_from(offset) else {
            return;
        };
        if let Some(dst) = o
            .checked_add(data.len())
            .and_then(|end| self.config.get_mut(o..end))
        {
            dst.copy_from_slice(data);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        _interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let mut log = lock(&self.log);
        log.activations += 1;
        log.queues = queues
            .iter()
            .map(|q| (q.queue.size(), q.queue.ready(), q.queue.is_valid(&mem)))
            .collect();
        drop(log);
        if !self.activate_ok {
            return Err(ActivateError::Device("the probe refuses".into()));
        }
        // Serve the queues once, as the rng worker would, but on this thread.
        let mut errors = LogLimiter::new();
        for mut q in queues.into_iter().map(|q| q.queue) {
            if q.ready() {
                rng::process_queue(
                    &mut q,
                    &mem,
                    &mut errors,
                    &std::sync::atomic::AtomicBool::new(false),
                );
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        lock(&self.log).resets += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

struct Harness {
    t: MmioTransport,
    mem: GuestMemoryMmap,
    probe: Option<(Arc<Mutex<ProbeLog>>, u64, bool)>,
}

pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(
        &RAM.iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect::<Vec<_>>(),
    ) else {
        return;
    };
    let Ok(irq) = IrqLine::new(5) else { return };
    let interrupt = Arc::new(VirtioInterrupt::new(irq));
    let kind = c.u8();
    let (device, probe): (Box<dyn VirtioDevice>, _) = if kind % 4 == 3 {
        (Box::new(rng::Rng::new()), None)
    } else {
        let n = 1 + usize::from(c.u8() % 3);
        let sizes = (0..n)
            .map(|_| {
                let b = c.u8();
                if b & 0x80 != 0 {
                    c.u16()
                } else {
                    1 << (b % 9)
                }
            })
            .collect();
        let features = c.u64();
        let activate_ok = kind & 0x10 == 0;
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        let mut config = [0u8; 8];
        config.copy_from_slice(&c.u64().to_le_bytes());
        let dev = Probe {
            sizes,
            features,
            config,
            activate_ok,
            log: log.clone(),
        };
        (Box::new(dev), Some((log, features, activate_ok)))
    };
    let queue_count = device.queue_max_sizes().len();
    let Ok(t) = MmioTransport::new(device, mem.clone(), interrupt) else {
        // Invalid queue sizes are refused at construction: nothing for a guest to drive.
        return;
    };
    let mut h = Harness { t, mem, probe };
    assert_eq!(h.t.queue_notify_fds().len(), queue_count);
    h.check(None);
    for _ in 0..MAX_OPS {
        if c.is_empty() {
            break;
        }
        h.step(&mut c);
    }
}

impl Harness {
    fn step(&mut self, c: &mut Cursor) {
        let op = c.u8();
        match op % 8 {
            0..=4 => {
                let size = 1usize << ((op >> 4) & 3);
                let offset = if op & 0x40 != 0 {
                    REGS[usize::from(c.u8()) % REGS.len()]
                } else {
                    u64::from(c.u16()) % 0x1000
                };
                if op & 0x08 != 0 {
                    let v = c.u64().to_le_bytes();
                    self.write(offset, &v[..size]);
                } else {
                    self.read(offset, size);
                }
            }
            5 => self.driver(c),
            6 => {
                let addr = u64::from(c.u16());
                let v = c.u64();
                let _ = self.mem.write_obj(v, GuestAddress(addr));
            }
            _ => {
                let offset = reg::CONFIG + u64::from(c.u8());
                let size = 1usize << (op >> 6);
                if op & 0x08 != 0 {
                    let v = c.u64().to_le_bytes();
                    self.write(offset, &v[..size]);
                } else {
                    self.read(offset, size);
                }
            }
        }
    }

    fn read(&mut self, offset: u64, size: usize) {
        let mut d = [0xa5u8; 8];
        self.t.read(offset, &mut d[..size]);
        let v = u64::from_le_bytes(d);
        if offset < reg::CONFIG {
            if size != 4 || !offset.is_multiple_of(4) {
                assert_eq!(
                    &d[..size],
                    &[0u8; 8][..size],
                    "{size}-byte read at {offset:#x}"
                );
            } else {
                let v = v as u32;
                match offset {
                    reg::MAGIC_VALUE => assert_eq!(v, MMIO_MAGIC),
                    reg::VERSION => assert_eq!(v, MMIO_VERSION),
                    reg::VENDOR_ID => assert_eq!(v, MMIO_VENDOR_ID),
                    reg::DEVICE_ID => assert_eq!(v, self.t.device_type()),
                    reg::STATUS => assert_eq!(v, self.t.status()),
                    _ => {}
                }
            }
        }
        self.check(None);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let before = self.t.status();
        self.t.write(offset, data);
        let status_write = (offset == reg::STATUS && data.len() == 4)
            .then(|| u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
        self.check(status_write.map(|v| (before, v)));
    }

    /// A driver doing the right thing, with fuzzer-chosen features and queue addresses.
    fn driver(&mut self, c: &mut Cursor) {
        self.write(reg::STATUS, &0u32.to_le_bytes());
        self.write(reg::STATUS, &status::ACKNOWLEDGE.to_le_bytes());
        self.write(
            reg::STATUS,
            &(status::ACKNOWLEDGE | status::DRIVER).to_le_bytes(),
        );
        w32(&mut self.t, reg::DEVICE_FEATURES_SEL, 0);
        let lo = r32(&mut self.t, reg::DEVICE_FEATURES);
        w32(&mut self.t, reg::DEVICE_FEATURES_SEL, 1);
        let hi = r32(&mut self.t, reg::DEVICE_FEATURES);
        let offered = (u64::from(hi) << 32) | u64::from(lo);
        let features = offered ^ (c.u64() & c.u64());
        for sel in 0..2u32 {
            w32(&mut self.t, reg::DRIVER_FEATURES_SEL, sel);
            self.write(
                reg::DRIVER_FEATURES,
                &((features >> (32 * sel)) as u32).to_le_bytes(),
            );
        }
        self.write(
            reg::STATUS,
            &(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).to_le_bytes(),
        );
        let queues = c.u8() % 4;
        for _ in 0..queues {
            w32(&mut self.t, reg::QUEUE_SEL, u32::from(c.u8() % 4));
            let max = r32(&mut self.t, reg::QUEUE_NUM_MAX);
            let num = max >> (c.u8() % 9);
            self.write(reg::QUEUE_NUM, &num.to_le_bytes());
            for r in [
                reg::QUEUE_DESC_LOW,
                reg::QUEUE_DRIVER_LOW,
                reg::QUEUE_DEVICE_LOW,
            ] {
                self.write(r, &u32::from(c.u16()).to_le_bytes());
                self.write(r + 4, &0u32.to_le_bytes());
            }
            self.write(reg::QUEUE_READY, &1u32.to_le_bytes());
        }
        self.write(
            reg::STATUS,
            &(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK)
                .to_le_bytes(),
        );
        // Kick every queue.
        for q in 0..4u32 {
            self.write(reg::QUEUE_NOTIFY, &q.to_le_bytes());
        }
    }

    /// Invariants after an access; `status_write` is (Status before, value written) when the
    /// access was a Status write.
    fn check(&mut self, status_write: Option<(u32, u32)>) {
        let s = self.t.status();
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::DEVICE_NEEDS_RESET
            | status::FAILED;
        assert_eq!(s & !known, 0, "unknown status bits in {s:#x}");
        let implies = [
            (status::DRIVER, status::ACKNOWLEDGE),
            (status::FEATURES_OK, status::DRIVER),
            (status::DRIVER_OK, status::FEATURES_OK),
            (status::DEVICE_NEEDS_RESET, status::DRIVER_OK),
        ];
        for (bit, needs) in implies {
            assert!(
                s & bit == 0 || s & needs != 0,
                "status {s:#x} has {bit:#x} without {needs:#x}"
            );
        }
        assert_eq!(r32(&mut self.t, reg::STATUS), s);
        if let Some((_, 0)) = status_write {
            assert_eq!(s, 0, "reset left status {s:#x}");
            assert_eq!(
                r32(&mut self.t, reg::INTERRUPT_STATUS),
                0,
                "reset left an interrupt"
            );
        }
        let Some((log, offered, activate_ok)) = &self.probe else {
            return;
        };
        let mut log = lock(log);
        let allowed = offered | VIRTIO_F_VERSION_1;
        match status_write {
            Some((before, v)) => {
                let acked_now = before & status::FEATURES_OK == 0 && s & status::FEATURES_OK != 0;
                let activated_now = before & status::DRIVER_OK == 0 && s & status::DRIVER_OK != 0;
                assert_eq!(
                    log.acked.len(),
                    usize::from(acked_now),
                    "ack_features calls (status {before:#x} -> write {v:#x} -> {s:#x})"
                );
                // The transport refuses a ready queue outside guest memory itself (then the
                // device is not called and DEVICE_NEEDS_RESET is set).
                assert!(
                    log.activations <= usize::from(activated_now),
                    "activate calls (status {before:#x} -> write {v:#x} -> {s:#x})"
                );
                if activated_now && log.activations == 0 {
                    assert_ne!(
                        s & status::DEVICE_NEEDS_RESET,
                        0,
                        "DRIVER_OK without activation or DEVICE_NEEDS_RESET"
                    );
                }
                if v == 0 {
                    assert_eq!(log.resets, 1, "a Status write of 0 resets the device once");
                }
            }
            None => {
                assert!(
                    log.acked.is_empty(),
                    "features acknowledged outside a Status write"
                );
                assert_eq!(log.activations, 0, "activated outside a Status write");
                assert_eq!(log.resets, 0, "reset outside a Status write");
            }
        }
        for &f in &log.acked {
            assert_eq!(
                f & !allowed,
                0,
                "acknowledged unoffered features {f:#x} (offered {allowed:#x})"
            );
            assert_ne!(
                f & VIRTIO_F_VERSION_1,
                0,
                "acknowledged without VERSION_1: {f:#x}"
            );
        }
        if log.activations > 0 {
            for (i, &(size, ready, valid)) in log.queues.iter().enumerate() {
                assert!(
                    !ready || valid,
                    "queue {i} handed over ready but outside guest memory"
                );
                assert!(size.is_power_of_two(), "queue {i} size {size}");
            }
            let failed = s & status::DEVICE_NEEDS_RESET != 0;
            assert_eq!(
                failed, !activate_ok,
                "DEVICE_NEEDS_RESET {failed} but the probe said ok={activate_ok}"
            );
        }
        log.acked.clear();
        log.activations = 0;
        log.resets = 0;
    }
}
