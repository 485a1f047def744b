//! virtio-blk (device type 2) on a raw image file or block device: SEG_MAX, SIZE_MAX,
//! BLK_SIZE, FLUSH, RO, DISCARD, WRITE_ZEROES, GET_ID and EVENT_IDX, one request queue served
//! by one I/O thread per disk (never on a vCPU thread).
//!
//! Split as Firecracker's block device: request parsing and bounds checks in [`request`],
//! the I/O engine behind a trait in [`io`], the queue pass and its thread in [`worker`],
//! the rate limiter in [`throttle`], the image lock in [`lock`]. The image is opened and
//! locked when the device is built (before the sandbox), so the I/O thread only needs
//! preadv/pwritev/fdatasync/fallocate.

pub mod image;
pub mod io;
pub mod lock;
pub mod request;
pub mod throttle;
pub mod worker;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use super::{ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
use crate::vmm::disk::{CacheMode, DiskSpec, SECTOR_SIZE};
use crate::vmm::event::Stop;
use io::{DiskIo, OpenError, SyncIo};
use request::DiskInfo;
use worker::Stats;

/// Virtio device ID of the block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data segment (`size_max`), bytes.
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request (`seg_max`): a chain holds at most a queue's worth of
/// descriptors, two of them header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest DISCARD / WRITE_ZEROES range, sectors (`max_discard_sectors`, 2 GiB).
pub const MAX_DWZ_SECTORS: u32 = 1 << 22;

/// Feature bits (virtio 1.x §5.2.3).
pub mod features {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const TOPOLOGY: u64 = 1 << 10;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

/// Size of the config space we fill (up to `write_zeroes_may_unmap` and its padding).
pub const CONFIG_LEN: usize = 60;

/// Features offered for a disk whose image has blocks of `block` bytes (VERSION_1 is the
/// transport's). TOPOLOGY where the block is larger than a sector: the guest still addresses
/// 512-byte sectors, but aligns its I/O to the block, so the host need not pad it.
pub fn offered_features(read_only: bool, block: u64) -> u64 {
    use features::*;
    let mut f = SIZE_MAX | SEG_MAX | BLK_SIZE | FLUSH | RING_EVENT_IDX;
    if block > SECTOR_SIZE {
        f |= TOPOLOGY;
    }
    if read_only {
        f |= RO;
    } else {
        f |= DISCARD | WRITE_ZEROES;
    }
    f
}

/// `struct virtio_blk_config` for a disk of `capacity` sectors whose image takes discards in
/// blocks of `block` bytes (512, or 4096 on a 4Kn device).
pub fn config_space(capacity: u64, block: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, b: &[u8]| c[off..off + b.len()].copy_from_slice(b);
    put(0, &capacity.to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    // 16: geometry (not offered), 20: blk_size.
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    // The block in sectors: what the guest aligns its I/O and its discards to.
    let sectors = u32::try_from(block / SECTOR_SIZE).unwrap_or(1).max(1);
    // 24: topology (offered when the block is larger than a sector): physical_block_exp,
    // alignment_offset, min_io_size (sectors), opt_io_size.
    put(24, &[sectors.trailing_zeros() as u8]);
    put(26, &u16::try_from(sectors).unwrap_or(1).to_le_bytes());
    // 32: writeback, 34: num_queues (not offered).
    put(36, &MAX_DWZ_SECTORS.to_le_bytes()); // max_discard_sectors
    put(40, &1u32.to_le_bytes()); // max_discard_seg
                                  // discard_sector_alignment, in sectors: a guest that keeps to it never needs a discard
                                  // turned into zeroes.
    put(44, &sectors.to_le_bytes());
    put(48, &MAX_DWZ_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
    c[56] = 1; // write_zeroes_may_unmap
    c
}

/// The I/O engine on an image's `file`.
fn engine(
    file: std::fs::File,
    direct: Option<io::Direct>,
    block_device: bool,
    block: u64,
) -> SyncIo {
    let e = SyncIo::new(file, direct);
    if block_device {
        e.on_device_of_block(block)
    } else {
        e
    }
}

/// A virtio-blk device.
pub struct Blk {
    /// `vda`, for logs.
    name: String,
    spec: DiskSpec,
    /// The engine, until activation hands it to the I/O thread (and back at reset).
    io: Option<Box<dyn DiskIo>>,
    /// A second handle for a re-activation after reset (the first went with the thread).
    file: std::fs::File,
    /// Opened with O_DIRECT (`cache = none`).
    direct: Option<io::Direct>,
    /// The image's block ([`io::Image::block`]).
    block: u64,
    /// A block device's image: its fallocate takes whole blocks.
    block_device: bool,
    capacity: u64,
    serial: Vec<u8>,
    config: [u8; CONFIG_LEN],
    acked: u64,
    worker: Option<(JoinHandle<throttle::Throttle>, Arc<Stop>)>,
    /// The rate limiter, between activations: the I/O thread hands it back when it stops, so
    /// a reset neither refills the buckets nor forgives a debt (the guest decides how often
    /// it resets).
    throttle: Option<throttle::Throttle>,
    stats: Arc<Stats>,
    /// A flush failed: every later one fails too, across resets ([`io::StickyFlush`]).
    flush_failed: Arc<AtomicBool>,
    queue_sizes: [u16; 1],
    /// The guest decides how often the device stops (resets): its summary line is limited.
    stop_log: crate::vmm::ratelimit::LogLimiter,
    /// The I/O threads' lines the guest causes (broken chains): one budget for the device,
    /// not a fresh one per activation.
    log: crate::vmm::ratelimit::SharedLimiter,
}

/// Why a disk could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    #[error("disk {name}")]
    Open {
        name: String,
        #[source]
        source: OpenError,
    },
    #[error("disk {name}: cannot duplicate the image fd")]
    Dup {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl BlkError {
    /// Whether retrying cannot help.
    pub fn is_config_error(&self) -> bool {
        match self {
            BlkError::Open { source, .. } => source.is_config_error(),
            BlkError::Dup { .. } => false,
        }
    }
}

impl Blk {
    /// Opens and locks the image of `spec` as guest disk `name` (`vda`), with `serial` for
    /// GET_ID.
    pub fn new(name: &str, spec: &DiskSpec, serial: &str) -> Result<Blk, BlkError> {
        let image = io::open_image(spec).map_err(|source| BlkError::Open {
            name: name.to_string(),
            source,
        })?;
        let file = image.file.try_clone().map_err(|source| BlkError::Dup {
            name: name.to_string(),
            source,
        })?;
        let capacity = image.size / SECTOR_SIZE;
        log::info!(
            "{name}: {}{}, cache={}, serial {serial:?}{}",
            io::describe(&spec.path, &image),
            if spec.readonly { ", read-only" } else { "" },
            match spec.cache {
                CacheMode::None => "none",
                CacheMode::Writeback => "writeback",
            },
            if spec.limit.is_limited() {
                format!(
                    ", limits {} B/s {} ops/s (0 = none)",
                    spec.limit.bytes_per_sec, spec.limit.ops_per_sec
                )
            } else {
                String::new()
            }
        );
        let direct = (spec.cache == CacheMode::None).then_some(io::Direct {
            block: image.block,
            size: image.size,
        });
        let block = image.block;
        Ok(Blk {
            name: name.to_string(),
            spec: spec.clone(),
            io: Some(Box::new(engine(
                image.file,
                direct,
                image.block_device,
                block,
            ))),
            file,
            direct,
            block,
            block_device: image.block_device,
            capacity,
            serial: serial.as_bytes().to_vec(),
            config: config_space(capacity, block),
            acked: 0,
            worker: None,
            throttle: Some(throttle::Throttle::new(&spec.limit, Instant::now())),
            stats: Arc::new(Stats::default()),
            flush_failed: Arc::new(AtomicBool::new(false)),
            queue_sizes: [QUEUE_SIZE],
            stop_log: crate::vmm::ratelimit::LogLimiter::new(),
            log: crate::vmm::ratelimit::SharedLimiter::new(),
        })
    }

    /// Counters (shared with the I/O thread).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    fn info(&self) -> DiskInfo {
        DiskInfo {
            capacity: self.capacity,
            read_only: self.spec.readonly,
            discard: self.acked & features::DISCARD != 0,
            write_zeroes: self.acked & features::WRITE_ZEROES != 0,
            max_transfer: u64::from(SIZE_MAX) * u64::from(SEG_MAX),
            // Enforced rather than no longer offered: the spec makes size_max the largest
            // segment a driver that accepted the feature may send, and Linux honours it.
            max_segment: if self.acked & features::SIZE_MAX != 0 {
                u64::from(SIZE_MAX)
            } else {
                u64::MAX
            },
            max_dwz_sectors: MAX_DWZ_SECTORS,
            pad_to: self.direct.map_or(SECTOR_SIZE, |d| d.block),
        }
    }

    fn stop(&mut self) {
        if let Some((h, stop)) = self.worker.take() {
            stop.ask();
            match h.join() {
                Ok(t) => self.throttle = Some(t),
                Err(_) => log::error!("{}: the I/O thread panicked", self.name),
            }
            crate::log_limited!(
                self.stop_log,
                log::Level::Info,
                "{}: {}",
                self.name,
                self.stats.summary()
            );
        }
    }
}

/// The devices for every disk of `spec`, in guest order, images opened and locked.
pub fn devices_for(spec: &crate::vmm::VmSpec) -> Result<Vec<Blk>, BlkError> {
    spec.disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let serial = crate::vmm::disk::serial_of(d, &spec.uuid, &spec.name, i);
            Blk::new(&crate::vmm::disk::disk_name(i), d, &serial)
        })
        .collect()
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        offered_features(self.spec.readonly, self.block)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & (self.features() | super::VIRTIO_F_VERSION_1);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.stop();
        let mut dq = DeviceQueue::only_ready(queues)?;
        virtio_queue::QueueT::set_event_idx(
            &mut dq.queue,
            self.acked & features::RING_EVENT_IDX != 0,
        );
        let io = match self.io.take() {
            Some(io) => io,
            None => {
                let f = self
                    .file
                    .try_clone()
                    .map_err(|e| ActivateError::Device(format!("dup of the image fd: {e}")))?;
                Box::new(engine(f, self.direct, self.block_device, self.block))
            }
        };
        let stop =
            Arc::new(Stop::new().map_err(|e| ActivateError::Device(format!("eventfd: {e}")))?);
        let w = worker::Worker {
            name: self.name.clone(),
            queue: dq.queue,
            kick: dq.notify,
            stop: stop.clone(),
            mem,
            io: Box::new(io::StickyFlush::new(
                io,
                self.flush_failed.clone(),
                &self.name,
            )),
            info: self.info(),
            serial: self.serial.clone(),
            write_through: self.acked & features::FLUSH == 0,
            // Only a thread that panicked (or never started) did not hand its throttle back.
            throttle: self
                .throttle
                .take()
                .unwrap_or_else(|| throttle::Throttle::new(&self.spec.limit, Instant::now())),
            interrupt,
            stats: self.stats.clone(),
            log: self.log.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("blk-{}", self.name))
            .spawn(move || w.run())
            .map_err(|e| ActivateError::Device(format!("cannot start the I/O thread: {e}")))?;
        self.worker = Some((h, stop));
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
        self.acked = 0;
    }

    fn status(&self) -> Option<String> {
        Some(format!(
            "virtio-blk {} on {}{}",
            self.name,
            self.spec.path.display(),
            if self.spec.readonly { " (ro)" } else { "" }
        ))
    }
}

impl Drop for Blk {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod exec_tests;
#[cfg(test)]
mod tests;
