//! The vhost-net backend: the kernel moves frames between the TAP and the guest's rings.
//! One `/dev/vhost-net` instance per queue pair (vring 0 = RX, 1 = TX): owner, features,
//! memory table, vring num/addr/base, kick (the queue's ioeventfd, polled by the kernel),
//! call, and `VHOST_NET_SET_BACKEND` with the TAP queue fd.
//!
//! The instances are opened when the device is built ([`KernelVhost::open`]), before the VMM
//! drops root and denies `open`: activation only configures them, and a stop hands them back
//! with `VHOST_RESET_OWNER` so the next activation (a guest reset) can take them again.
//! [`VhostOps`] is what activation needs of an instance, so the same code runs against the
//! kernel and against a test double that records the calls.
//!
//! virtio-mmio has one interrupt line and an InterruptStatus register the guest reads, so
//! the vhost call eventfds are not wired to the irqfd directly: a relay thread sets
//! InterruptStatus and then raises the line.
//!
//! The argument building ([`vring_config`], [`memory_regions`], [`backend_features`]) is pure
//! and unit-tested; [`VhostNet::start`] runs on a real TAP in `tests/net_tap.rs` (where
//! `/dev/vhost-net` is missing, [`KernelVhost::open`] fails with [`VhostError::Open`] and the
//! device uses the userspace path) and against a recording double in `tests/net_vhost.rs`.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost::vhost_kern::vhost_binding::{
    vhost_vring_file, VHOST_GET_FEATURES, VHOST_NET_SET_BACKEND,
};
use vhost::vhost_kern::VhostKernBackend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::features;
use super::NetParams;
use crate::vmm::virtio::{DeviceQueue, VirtioInterrupt, VIRTIO_F_VERSION_1};

#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("cannot open /dev/vhost-net")]
    Open(#[source] std::io::Error),
    #[error("/dev/vhost-net opens but does not answer VHOST_GET_FEATURES (a device node without the vhost_net driver behind it)")]
    NotVhost(#[source] std::io::Error),
    #[error("{op} failed on vhost-net for queue pair {pair}")]
    Ioctl {
        op: &'static str,
        pair: usize,
        #[source]
        source: vhost::Error,
    },
    #[error("queue {0} is not usable by vhost-net")]
    Queue(usize),
    #[error("no vhost-net instance was opened for queue pair {0}")]
    NoInstance(usize),
    #[error("vhost-net lacks features the guest negotiated: {0:#x}")]
    Features(u64),
    #[error("cannot create an eventfd or relay thread")]
    Setup(#[source] std::io::Error),
}

impl VhostError {
    /// Whether the guest's own set-up caused it (its rings, its features), not the host.
    pub fn guest_caused(&self) -> bool {
        matches!(
            self,
            VhostError::Features(_)
                | VhostError::Ioctl {
                    source: vhost::Error::InvalidQueue,
                    ..
                }
        )
    }
}

/// What activation needs of one vhost-net instance (object-safe, unlike the vhost crate's
/// `VhostBackend`): the kernel's, or a test double.
pub trait VhostOps: Send {
    fn set_owner(&self) -> vhost::Result<()>;
    fn reset_owner(&self) -> vhost::Result<()>;
    fn get_features(&self) -> vhost::Result<u64>;
    fn set_features(&self, features: u64) -> vhost::Result<()>;
    fn set_mem_table(&self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()>;
    fn set_vring_num(&self, vring: usize, num: u16) -> vhost::Result<()>;
    fn set_vring_addr(&self, vring: usize, config: &VringConfigData) -> vhost::Result<()>;
    fn set_vring_base(&self, vring: usize, base: u16) -> vhost::Result<()>;
    fn set_vring_call(&self, vring: usize, fd: &EventFd) -> vhost::Result<()>;
    fn set_vring_kick(&self, vring: usize, fd: &EventFd) -> vhost::Result<()>;
    fn set_backend(&self, vring: usize, fd: Option<&File>) -> vhost::Result<()>;
}

/// Where each queue pair's instance comes from, for guest memory `mem`. Everything is opened
/// before the sandbox; this only wraps it.
pub trait VhostSource: Send {
    fn instance(
        &self,
        pair: usize,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Box<dyn VhostOps>, VhostError>;
}

/// `/dev/vhost-net` instances, one per queue pair, opened while the VMM may still open files.
#[derive(Debug)]
pub struct KernelVhost {
    fds: Vec<File>,
}

impl KernelVhost {
    /// Open one instance per queue pair.
    pub fn open(pairs: usize) -> Result<KernelVhost, VhostError> {
        Self::open_at(Path::new("/dev/vhost-net"), pairs)
    }

    /// [`KernelVhost::open`] on the device node `path`.
    fn open_at(path: &Path, pairs: usize) -> Result<KernelVhost, VhostError> {
        use std::os::unix::fs::OpenOptionsExt;
        let fds = (0..pairs.max(1))
            .map(|_| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                    .open(path)
                    .map_err(VhostError::Open)
            })
            .collect::<Result<Vec<File>, _>>()?;
        // A node can exist without the driver (kmod's static nodes in a container, say): ask
        // the kernel now, so the data path is decided, and said, before the guest boots.
        if let Some(f) = fds.first() {
            let mut features: u64 = 0;
            // SAFETY: `f` is an open file; VHOST_GET_FEATURES writes one u64 into `features`,
            // which lives for the call; on any other device it fails without writing.
            let r = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(f, VHOST_GET_FEATURES(), &mut features)
            };
            if r < 0 {
                return Err(VhostError::NotVhost(std::io::Error::last_os_error()));
            }
        }
        Ok(KernelVhost { fds })
    }
}

impl VhostSource for KernelVhost {
    fn instance(
        &self,
        pair: usize,
        mem: &Arc<GuestMemoryMmap>,
    ) -> Result<Box<dyn VhostOps>, VhostError> {
        let fd = self
            .fds
            .get(pair)
            .ok_or(VhostError::NoInstance(pair))?
            .try_clone()
            .map_err(VhostError::Setup)?;
        Ok(Box::new(KernFd {
            fd,
            mem: mem.clone(),
        }))
    }
}

/// One opened instance (a dup of the kept fd: the same kernel object) with the guest memory
/// the vhost crate translates ring addresses through.
struct KernFd {
    fd: File,
    mem: Arc<GuestMemoryMmap>,
}

impl AsRawFd for KernFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl VhostKernBackend for KernFd {
    type AS = Arc<GuestMemoryMmap>;

    fn mem(&self) -> &Self::AS {
        &self.mem
    }
}

impl vhost::net::VhostNet for KernFd {
    fn set_backend(&self, vring: usize, fd: Option<&File>) -> vhost::Result<()> {
        let file = vhost_vring_file {
            index: vring as u32,
            fd: fd.map_or(-1, |f| f.as_raw_fd()),
        };
        // SAFETY: the fd is a vhost-net instance and `file` lives across the call; the
        // return value is checked.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(&self.fd, VHOST_NET_SET_BACKEND(), &file)
        };
        if ret < 0 {
            return Err(vhost::Error::IoctlError(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl<T: VhostBackend + vhost::net::VhostNet + Send> VhostOps for T {
    fn set_owner(&self) -> vhost::Result<()> {
        VhostBackend::set_owner(self)
    }
    fn reset_owner(&self) -> vhost::Result<()> {
        VhostBackend::reset_owner(self)
    }
    fn get_features(&self) -> vhost::Result<u64> {
        VhostBackend::get_features(self)
    }
    fn set_features(&self, features: u64) -> vhost::Result<()> {
        VhostBackend::set_features(self, features)
    }
    fn set_mem_table(&self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        VhostBackend::set_mem_table(self, regions).map(|_| ())
    }
    fn set_vring_num(&self, vring: usize, num: u16) -> vhost::Result<()> {
        VhostBackend::set_vring_num(self, vring, num)
    }
    fn set_vring_addr(&self, vring: usize, config: &VringConfigData) -> vhost::Result<()> {
        VhostBackend::set_vring_addr(self, vring, config)
    }
    fn set_vring_base(&self, vring: usize, base: u16) -> vhost::Result<()> {
        VhostBackend::set_vring_base(self, vring, base)
    }
    fn set_vring_call(&self, vring: usize, fd: &EventFd) -> vhost::Result<()> {
        VhostBackend::set_vring_call(self, vring, fd)
    }
    fn set_vring_kick(&self, vring: usize, fd: &EventFd) -> vhost::Result<()> {
        VhostBackend::set_vring_kick(self, vring, fd)
    }
    fn set_backend(&self, vring: usize, fd: Option<&File>) -> vhost::Result<()> {
        vhost::net::VhostNet::set_backend(self, vring, fd)
    }
}

/// The features to hand vhost-net: the ring/header features the guest acked that vhost
/// handles (offloads are the TAP's business). Errors if the guest acked one it lacks.
pub fn backend_features(acked: u64, vhost_has: u64) -> Result<u64, VhostError> {
    let wanted = acked & (features::MRG_RXBUF | features::RING_EVENT_IDX | VIRTIO_F_VERSION_1);
    let missing = wanted & !vhost_has;
    if missing != 0 {
        return Err(VhostError::Features(missing));
    }
    Ok(wanted)
}

/// The vring addresses of `queue` (guest physical; vhost-kern translates them).
pub fn vring_config(queue: &Queue) -> VringConfigData {
    VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: queue.desc_table(),
        used_ring_addr: queue.used_ring(),
        avail_ring_addr: queue.avail_ring(),
        log_addr: None,
    }
}

/// The memory table: every guest RAM region with its host mapping.
pub fn memory_regions(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|r| VhostUserMemoryRegionInfo {
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: -1,
        })
        .collect()
}

/// Running vhost-net instances and the interrupt relay; dropping it stops everything and
/// hands the instances back (`VHOST_RESET_OWNER`) for the next activation.
pub struct VhostNet {
    instances: Vec<Box<dyn VhostOps>>,
    relay: Option<(JoinHandle<()>, EventFd)>,
}

impl VhostNet {
    /// Set up the instance of each ready queue pair from `source`; `tap_queues` are the TAP's
    /// queue fds (the backends), one per pair.
    pub fn start(
        params: &NetParams,
        tap_queues: &[File],
        source: &dyn VhostSource,
        mem: &GuestMemoryMmap,
        queues: &[DeviceQueue],
        acked: u64,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<VhostNet, VhostError> {
        let mem = Arc::new(mem.clone());
        // Built up as it goes, so a failure half-way hands back what was taken.
        let mut started = VhostNet {
            instances: Vec::new(),
            relay: None,
        };
        let mut calls = Vec::new();
        let mut backends = Vec::new();
        for pair in 0..usize::from(params.queue_pairs) {
            let (Some(rx), Some(tx)) = (queues.get(pair * 2), queues.get(pair * 2 + 1)) else {
                return Err(VhostError::Queue(pair * 2));
            };
            if !rx.queue.ready() || !tx.queue.ready() {
                continue;
            }
            let io = |op, source| VhostError::Ioctl { op, pair, source };
            let net = source.instance(pair, &mem)?;
            net.set_owner().map_err(|e| io("VHOST_SET_OWNER", e))?;
            started.instances.push(net);
            let net = started
                .instances
                .last()
                .ok_or(VhostError::NoInstance(pair))?;
            let has = net
                .get_features()
                .map_err(|e| io("VHOST_GET_FEATURES", e))?;
            net.set_features(backend_features(acked, has)?)
                .map_err(|e| io("VHOST_SET_FEATURES", e))?;
            net.set_mem_table(&memory_regions(&mem))
                .map_err(|e| io("VHOST_SET_MEM_TABLE", e))?;
            let file = tap_queues.get(pair).ok_or(VhostError::Queue(pair * 2))?;
            for (vring, q) in [(0usize, rx), (1usize, tx)] {
                let call = EventFd::new(libc::EFD_NONBLOCK).map_err(VhostError::Setup)?;
                net.set_vring_num(vring, q.queue.size())
                    .map_err(|e| io("VHOST_SET_VRING_NUM", e))?;
                net.set_vring_addr(vring, &vring_config(&q.queue))
                    .map_err(|e| io("VHOST_SET_VRING_ADDR", e))?;
                net.set_vring_base(vring, q.queue.next_avail())
                    .map_err(|e| io("VHOST_SET_VRING_BASE", e))?;
                net.set_vring_call(vring, &call)
                    .map_err(|e| io("VHOST_SET_VRING_CALL", e))?;
                net.set_vring_kick(vring, &q.notify)
                    .map_err(|e| io("VHOST_SET_VRING_KICK", e))?;
                backends.push((started.instances.len() - 1, pair, vring, file));
                calls.push(call);
            }
        }
        // Only once every pair's rings are accepted does vhost-net start moving frames: a
        // ring it refuses on a later pair then leaves nothing half started (the userspace
        // path takes over from the rings as the guest left them).
        for (instance, pair, vring, file) in backends {
            let net = started
                .instances
                .get(instance)
                .ok_or(VhostError::NoInstance(pair))?;
            net.set_backend(vring, Some(file))
                .map_err(|source| VhostError::Ioctl {
                    op: "VHOST_NET_SET_BACKEND",
                    pair,
                    source,
                })?;
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VhostError::Setup)?;
        let stop2 = stop.try_clone().map_err(VhostError::Setup)?;
        let name = params.id.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vhost-{name}"))
            .spawn(move || relay(&name, calls, stop2, interrupt))
            .map_err(VhostError::Setup)?;
        started.relay = Some((handle, stop));
        Ok(started)
    }
}

/// Turn vhost "call" events into virtio-mmio interrupts.
fn relay(name: &str, calls: Vec<EventFd>, stop: EventFd, interrupt: Arc<VirtioInterrupt>) {
    let who = format!("{name}: vhost relay");
    let stop_token = calls.len() as u64;
    let fds: Vec<_> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_raw_fd(), i as u64, EventSet::IN))
        .chain([(stop.as_raw_fd(), stop_token, EventSet::IN)])
        .collect();
    let Some(epoll) = crate::vmm::event::worker_epoll(&who, &fds) else {
        return;
    };
    let mut events = vec![EpollEvent::default(); calls.len() + 1];
    loop {
        let Some(n) = crate::vmm::event::wait_events(&epoll, -1, &mut events, &who) else {
            return;
        };
        let mut fire = false;
        for ev in &events[..n] {
            match calls.get(ev.data() as usize) {
                Some(c) => {
                    let _ = c.read();
                    fire = true;
                }
                None => return,
            }
        }
        if fire {
            let _ = interrupt.signal_used_queue();
        }
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        if let Some((h, stop)) = self.relay.take() {
            let _ = stop.write(1);
            let _ = h.join();
        }
        // Detach the TAP and give the instance back: it stays open for the next activation.
        for net in &self.instances {
            let _ = net.set_backend(0, None);
            let _ = net.set_backend(1, None);
            let _ = net.reset_owner();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn a_node_that_is_not_vhost_net_is_refused_when_opened() {
        // /dev/null opens read-write like any character device and answers no vhost ioctl:
        // the stand-in for a /dev/vhost-net node without the driver behind it.
        let err = KernelVhost::open_at(Path::new("/dev/null"), 2).expect_err("not vhost-net");
        assert!(matches!(err, VhostError::NotVhost(_)), "{err:?}");
        assert!(err.to_string().contains("VHOST_GET_FEATURES"), "{err}");
        let missing = KernelVhost::open_at(Path::new("/dev/volt-no-such-node"), 1);
        assert!(matches!(missing, Err(VhostError::Open(_))), "{missing:?}");
        // What the host lacks makes the NIC give vhost-net up; what the guest set up (a ring
        // vhost-net refuses, features it lacks) only for that activation.
        assert!(!err.guest_caused());
        // A queue or TAP fd missing is Volt's own plumbing: not the guest's doing.
        assert!(!VhostError::Queue(0).guest_caused());
        assert!(VhostError::Features(1 << 40).guest_caused());
        let ring = VhostError::Ioctl {
            op: "VHOST_SET_VRING_ADDR",
            pair: 0,
            source: vhost::Error::InvalidQueue,
        };
        assert!(ring.guest_caused());
    }

    #[test]
    fn features_are_masked_to_what_vhost_handles() {
        let acked = VIRTIO_F_VERSION_1
            | features::MRG_RXBUF
            | features::CSUM
            | features::GUEST_TSO4
            | features::RING_EVENT_IDX;
        let has = VIRTIO_F_VERSION_1 | features::MRG_RXBUF | features::RING_EVENT_IDX | (1 << 27);
        assert_eq!(
            backend_features(acked, has).expect("ok"),
            VIRTIO_F_VERSION_1 | features::MRG_RXBUF | features::RING_EVENT_IDX
        );
        assert!(
            matches!(backend_features(acked, VIRTIO_F_VERSION_1), Err(VhostError::Features(f)) if f == features::MRG_RXBUF | features::RING_EVENT_IDX)
        );
    }

    #[test]
    fn memory_table_covers_every_region_with_its_host_mapping() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x20_0000),
        ])
        .expect("mem");
        let t = memory_regions(&mem);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].guest_phys_addr, t[0].memory_size), (0, 0x10_0000));
        assert_eq!(
            (t[1].guest_phys_addr, t[1].memory_size),
            (0x1_0000_0000, 0x20_0000)
        );
        let host0 = mem.get_host_address(GuestAddress(0)).expect("host") as u64;
        assert_eq!(t[0].userspace_addr, host0);
    }

    #[test]
    fn vring_addresses_come_from_the_queue() {
        let mut q = Queue::new(256).expect("queue");
        q.set_size(128);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(0x3000), Some(0));
        let c = vring_config(&q);
        assert_eq!((c.queue_max_size, c.queue_size), (256, 128));
        assert_eq!(
            (c.desc_table_addr, c.avail_ring_addr, c.used_ring_addr),
            (0x1000, 0x2000, 0x3000)
        );
        assert_eq!(c.log_addr, None);
    }
}
