//! virtio-net (device type 1) on a TAP: MAC, STATUS, MTU (up to 9000), MRG_RXBUF,
//! CSUM/GUEST_CSUM, TSO4/6 both ways (TUNSETOFFLOAD + the vnet header), EVENT_IDX, a control
//! queue with GUEST_ANNOUNCE (the driver announces itself when it brings the link up, see
//! [`status`]), and MQ (one TAP queue fd per pair, `IFF_MULTI_QUEUE`).
//!
//! Split as the models do: feature negotiation and config space here, the data path in
//! [`datapath`] (no event loop), the control queue in [`ctrl`], thin epoll glue in [`worker`],
//! and the in-kernel backend in [`vhost`] (used when `/dev/vhost-net` works; otherwise the
//! userspace path, with the reason kept for STATUS=).

pub mod ctrl;
pub mod datapath;
pub mod status;
pub mod vhost;
pub mod worker;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
use crate::log_limited;
use crate::sys::tap::{self, Tap};
use crate::vmm::ratelimit::{LogLimiter, SharedLimiter};
use datapath::Stats;
use status::LinkStatus;

/// Virtio device ID of the network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Size of every queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most queue pairs a device offers.
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// Feature bits (virtio 1.x §5.1.3).
pub mod features {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const CTRL_GUEST_OFFLOADS: u64 = 1 << 2;
    pub const MTU: u64 = 1 << 3;
    pub const MAC: u64 = 1 << 5;
    pub const GUEST_TSO4: u64 = 1 << 7;
    pub const GUEST_TSO6: u64 = 1 << 8;
    pub const GUEST_ECN: u64 = 1 << 9;
    pub const HOST_TSO4: u64 = 1 << 11;
    pub const HOST_TSO6: u64 = 1 << 12;
    pub const HOST_ECN: u64 = 1 << 13;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const GUEST_ANNOUNCE: u64 = 1 << 21;
    pub const MQ: u64 = 1 << 22;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
}

/// What the VMM knows about one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetParams {
    /// NIC id from the config (`eth0`); used in logs and fd store names.
    pub id: String,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// Queue pairs (the TAP has this many queue fds).
    pub queue_pairs: u16,
    /// Use vhost-net when `/dev/vhost-net` works.
    pub vhost: bool,
}

/// Which data path a NIC uses, for logs and STATUS=.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Unknown (poisoned lock).
    Idle,
    Vhost,
    /// Userspace, with why vhost-net is not used.
    Userspace {
        reason: String,
    },
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Idle => write!(f, "not started"),
            Backend::Vhost => write!(f, "backend=vhost-net"),
            Backend::Userspace { reason } => write!(f, "backend=userspace ({reason})"),
        }
    }
}

/// The features a device with `params` offers on the userspace data path (VERSION_1 is the
/// transport's). The control queue is always there: it carries the announcement
/// acknowledgement, and with more than one queue pair the MQ and offload commands.
pub fn offered_features(params: &NetParams) -> u64 {
    use features::*;
    let mut f = MAC
        | STATUS
        | MTU
        | MRG_RXBUF
        | RING_EVENT_IDX
        | CSUM
        | GUEST_CSUM
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | CTRL_VQ
        | GUEST_ANNOUNCE;
    if params.queue_pairs > 1 {
        f |= MQ | CTRL_GUEST_OFFLOADS;
    }
    f
}

/// The control queue's index: after the data queues the driver uses (virtio 1.x §5.1.2:
/// 2 x max_virtqueue_pairs with VIRTIO_NET_F_MQ, else 2).
pub fn ctrl_queue_index(params: &NetParams, acked: u64) -> usize {
    let pairs = if acked & features::MQ != 0 {
        params.queue_pairs.clamp(1, MAX_QUEUE_PAIRS)
    } else {
        1
    };
    2 * usize::from(pairs)
}

/// TUN_F_* offloads for the guest features `acked` (what the guest can receive).
pub fn tun_offloads(acked: u64) -> u32 {
    use features::*;
    let mut o = 0;
    if acked & GUEST_CSUM != 0 {
        o |= tap::TUN_F_CSUM;
        if acked & GUEST_TSO4 != 0 {
            o |= tap::TUN_F_TSO4;
        }
        if acked & GUEST_TSO6 != 0 {
            o |= tap::TUN_F_TSO6;
        }
        if acked & GUEST_ECN != 0 && o & (tap::TUN_F_TSO4 | tap::TUN_F_TSO6) != 0 {
            o |= tap::TUN_F_TSO_ECN;
        }
    }
    o
}

/// Config space: mac[6], status u16, max_virtqueue_pairs u16, mtu u16.
pub fn config_space(params: &NetParams, status: u16) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..6].copy_from_slice(&params.mac);
    c[6..8].copy_from_slice(&status.to_le_bytes());
    c[8..10].copy_from_slice(&params.queue_pairs.to_le_bytes());
    c[10..12].copy_from_slice(&params.mtu.to_le_bytes());
    c
}

/// A virtio-net device on a TAP.
pub struct Net {
    params: NetParams,
    tap: Arc<Tap>,
    queue_sizes: Vec<u16>,
    /// What this device offers (the vhost-net path drops what it cannot serve).
    offered: u64,
    acked: u64,
    status: LinkStatus,
    workers: Vec<(JoinHandle<()>, Arc<EventFd>)>,
    vhost: Option<vhost::VhostNet>,
    /// The vhost-net instances, opened when the device is built (before the sandbox).
    vhost_source: Option<Box<dyn vhost::VhostSource>>,
    stats: Vec<Arc<Stats>>,
    backend: Arc<Mutex<Backend>>,
    /// Lines a driver causes at will (each reset ends a run of queue statistics).
    lifecycle: LogLimiter,
    /// The queue threads' lines a guest causes: one budget for all of them, every activation.
    log: SharedLimiter,
    /// The TAP changes the driver asks for over the control queue, every activation.
    reconfigs: SharedLimiter,
}

impl Net {
    /// A device for `params` on `tap` (which must have `params.queue_pairs` queue fds). With
    /// `params.vhost`, every `/dev/vhost-net` instance it will use is opened here, while the
    /// VMM may still open files: after setup it runs as `volt` with `open` denied.
    pub fn new(params: NetParams, tap: Tap) -> Net {
        let pairs = usize::from(params.queue_pairs.clamp(1, MAX_QUEUE_PAIRS));
        let source = if params.vhost {
            vhost::KernelVhost::open(pairs).map(|k| Box::new(k) as Box<dyn vhost::VhostSource>)
        } else {
            Err(vhost::VhostError::Setup(std::io::Error::other(
                "vhost = false in the config",
            )))
        };
        Self::build(params, tap, source)
    }

    /// A device whose vhost-net instances come from `source` (tests: a double that records
    /// what the device asks of vhost-net).
    pub fn with_vhost(params: NetParams, tap: Tap, source: Box<dyn vhost::VhostSource>) -> Net {
        Self::build(params, tap, Ok(source))
    }

    fn build(
        params: NetParams,
        tap: Tap,
        source: Result<Box<dyn vhost::VhostSource>, vhost::VhostError>,
    ) -> Net {
        let pairs = usize::from(params.queue_pairs.clamp(1, MAX_QUEUE_PAIRS));
        // Decide the data path now, so STATUS= says it from the start.
        let (planned, vhost_source) = match source {
            Ok(s) => (Backend::Vhost, Some(s)),
            Err(_) if !params.vhost => (
                Backend::Userspace {
                    reason: "vhost = false in the config".into(),
                },
                None,
            ),
            Err(e) => (
                Backend::Userspace {
                    reason: format!("vhost-net: {}", crate::error_chain(&e)),
                },
                None,
            ),
        };
        log::info!("{}: {planned} on {}", params.id, tap.name);
        let mut offered = offered_features(&params);
        if planned == Backend::Vhost {
            // vhost-net serves the data queues only: no announcement (its acknowledgement
            // would go unanswered), and a single pair needs no control queue.
            offered &= !features::GUEST_ANNOUNCE;
            if pairs == 1 {
                offered &= !features::CTRL_VQ;
            }
        }
        let mut queue_sizes = vec![QUEUE_SIZE; pairs * 2];
        if offered & features::CTRL_VQ != 0 {
            queue_sizes.push(64); // control queue
        }
        Net {
            params,
            tap: Arc::new(tap),
            queue_sizes,
            offered,
            acked: 0,
            status: LinkStatus::default(),
            workers: Vec::new(),
            vhost: None,
            vhost_source,
            stats: Vec::new(),
            backend: Arc::new(Mutex::new(planned)),
            lifecycle: LogLimiter::new(),
            log: SharedLimiter::new(),
            reconfigs: SharedLimiter::with_limits(ctrl::RECONFIG_BURST, ctrl::RECONFIG_WINDOW),
        }
    }

    /// A handle on the backend description (updated at activation).
    pub fn backend(&self) -> Arc<Mutex<Backend>> {
        self.backend.clone()
    }

    fn set_backend(&self, b: Backend) {
        if let Ok(mut g) = self.backend.lock() {
            *g = b;
        }
    }

    fn stop(&mut self) {
        for (h, stop) in self.workers.drain(..) {
            let _ = stop.write(1);
            if h.join().is_err() {
                log::error!("{}: a queue worker panicked", self.params.id);
            }
        }
        self.vhost = None;
        for (i, s) in self.stats.drain(..).enumerate() {
            log_limited!(
                self.lifecycle,
                log::Level::Info,
                "{} queue pair {i}: {}",
                self.params.id,
                s.summary()
            );
        }
    }

    /// The control queue on its own thread (the vhost-net path, where no userspace queue
    /// worker runs): without it a driver that negotiated CTRL_VQ and MQ waits forever for the
    /// answer to VQ_PAIRS_SET.
    fn start_ctrl(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.acked & features::CTRL_VQ == 0 {
            return Ok(());
        }
        let pairs = if self.acked & features::MQ != 0 {
            usize::from(self.params.queue_pairs)
        } else {
            1
        };
        let index = ctrl_queue_index(&self.params, self.acked);
        let Some(c) = queues.into_iter().nth(index) else {
            return Ok(());
        };
        if !virtio_queue::QueueT::ready(&c.queue) {
            return Ok(());
        }
        let apply = ctrl_apply(self, pairs);
        let server = ctrl::Server {
            name: format!("{} ctrl", self.params.id),
            queue: c.queue,
            kick: c.notify,
            mem,
            interrupt,
            max_pairs: self.params.queue_pairs,
            apply,
            log: self.log.clone(),
        };
        let worker = server
            .spawn()
            .map_err(|e| ActivateError::Device(format!("cannot start the control queue: {e}")))?;
        self.workers.push(worker);
        Ok(())
    }

    fn start_userspace(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        // Without VIRTIO_NET_F_MQ the driver uses one pair and finds the control queue at 2.
        let pairs = if self.acked & features::MQ != 0 {
            usize::from(self.params.queue_pairs)
        } else {
            1
        };
        let mut queues: Vec<Option<DeviceQueue>> = queues.into_iter().map(Some).collect();
        let mut ctrl = if self.acked & features::CTRL_VQ != 0 {
            queues
                .get_mut(ctrl_queue_index(&self.params, self.acked))
                .and_then(Option::take)
        } else {
            None
        };
        let mergeable = self.acked & features::MRG_RXBUF != 0;
        for pair in 0..pairs {
            let (Some(rx), Some(tx)) = (
                queues.get_mut(pair * 2).and_then(Option::take),
                queues.get_mut(pair * 2 + 1).and_then(Option::take),
            ) else {
                return Err(ActivateError::BadQueue(pair * 2));
            };
            if !virtio_queue::QueueT::ready(&rx.queue) || !virtio_queue::QueueT::ready(&tx.queue) {
                // The driver uses fewer pairs than offered: leave the rest idle.
                continue;
            }
            let io = self
                .tap
                .queues
                .get(pair)
                .ok_or(ActivateError::BadQueue(pair * 2))?
                .try_clone()
                .map_err(|e| ActivateError::Device(format!("dup of TAP queue fd: {e}")))?;
            let stop = Arc::new(
                EventFd::new(libc::EFD_NONBLOCK)
                    .map_err(|e| ActivateError::Device(format!("eventfd: {e}")))?,
            );
            let stats = Arc::new(Stats::default());
            let ctrl_part = if pair == 0 {
                ctrl.take().map(|c| {
                    let apply = ctrl_apply(self, pairs);
                    (c.queue, c.notify, self.params.queue_pairs, apply)
                })
            } else {
                None
            };
            let w = worker::PairWorker {
                name: format!("{} q{pair}", self.params.id),
                rx: rx.queue,
                rx_kick: rx.notify,
                tx: tx.queue,
                tx_kick: tx.notify,
                ctrl: ctrl_part,
                io,
                mem: mem.clone(),
                interrupt: interrupt.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                mergeable,
                log: self.log.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("net-{}-q{pair}", self.params.id))
                .spawn(move || w.run())
                .map_err(|e| ActivateError::Device(format!("cannot start a queue thread: {e}")))?;
            self.workers.push((h, stop));
            self.stats.push(stats);
        }
        Ok(())
    }
}

/// What carries out the driver's control commands, on whichever thread serves the queue:
/// commands the driver may send ([`ctrl::allowed`]) go to [`ctrl::apply`].
fn ctrl_apply(net: &Net, pairs: usize) -> Box<dyn FnMut(ctrl::Command) -> bool + Send> {
    let (tap, id, status) = (net.tap.clone(), net.params.id.clone(), net.status.clone());
    let (acked, limiter, reconfigs) = (net.acked, net.log.clone(), net.reconfigs.clone());
    Box::new(move |cmd| {
        ctrl::allowed(acked, &cmd)
            && ctrl::apply(&tap, &id, &status, pairs, cmd, &limiter, &reconfigs)
    })
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & (self.offered | super::VIRTIO_F_VERSION_1);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = config_space(&self.params, self.status.bits());
        super::read_config_bytes(&config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        mut queues: Vec<DeviceQueue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.stop();
        let event_idx = self.acked & features::RING_EVENT_IDX != 0;
        for q in &mut queues {
            virtio_queue::QueueT::set_event_idx(&mut q.queue, event_idx);
        }
        self.tap
            .set_vnet_hdr_len(tap::VNET_HDR_LEN)
            .map_err(|e| ActivateError::Device(crate::error_chain(&e)))?;
        self.tap
            .set_offload(tun_offloads(self.acked))
            .map_err(|e| ActivateError::Device(crate::error_chain(&e)))?;
        // Until VQ_PAIRS_SET, the driver uses one pair: keep the kernel from steering
        // frames to queues nobody reads.
        if self.params.queue_pairs > 1 {
            for q in 0..self.tap.queues.len() {
                if let Err(e) = self.tap.set_queue_enabled(q, q == 0) {
                    log_limited!(
                        self.lifecycle,
                        log::Level::Warn,
                        "{}: {}",
                        self.params.id,
                        crate::error_chain(&e)
                    );
                }
            }
        }
        if let Some(source) = &self.vhost_source {
            // Without VIRTIO_NET_F_MQ the driver uses one pair (its control queue is at 2).
            let mut params = self.params.clone();
            if self.acked & features::MQ == 0 {
                params.queue_pairs = 1;
            }
            match vhost::VhostNet::start(
                &params,
                &self.tap.queues,
                source.as_ref(),
                &mem,
                &queues,
                self.acked,
                interrupt.clone(),
            ) {
                Ok(v) => {
                    self.vhost = Some(v);
                    self.set_backend(Backend::Vhost);
                    // vhost-net moves frames; the control queue is still ours to serve.
                    return self.start_ctrl(mem, queues, interrupt);
                }
                Err(e) => {
                    let backend = Backend::Userspace {
                        reason: format!("vhost-net: {}", crate::error_chain(&e)),
                    };
                    log_limited!(
                        self.lifecycle,
                        log::Level::Warn,
                        "{}: {backend} on {}",
                        self.params.id,
                        self.tap.name
                    );
                    self.set_backend(backend);
                    // What the guest chose this time (its rings, its features) may differ
                    // the next time it sets the device up: vhost-net is tried again then.
                    // What the host lacks stays lacking.
                    if !e.guest_caused() {
                        self.vhost_source = None;
                    }
                }
            }
        }
        self.start_userspace(mem, queues, interrupt.clone())?;
        if self.acked & features::GUEST_ANNOUNCE != 0 {
            // The link just came up for this driver: ask it to announce itself.
            self.status.request_announce();
            if let Err(e) = interrupt.signal_config_change() {
                log_limited!(
                    self.lifecycle,
                    log::Level::Warn,
                    "{}: config change interrupt failed: {e}",
                    self.params.id
                );
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
        self.acked = 0;
        self.status.reset();
    }

    fn status(&self) -> Option<String> {
        let b = self
            .backend
            .lock()
            .map(|b| b.to_string())
            .unwrap_or_default();
        Some(format!("{} on {} {b}", self.params.id, self.tap.name))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod worker_tests;
