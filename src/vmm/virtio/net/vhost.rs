//! The vhost-net backend: the kernel moves frames between the TAP and the guest's rings.
//! One `/dev/vhost-net` instance per queue pair (vring 0 = RX, 1 = TX): owner, features,
//! memory table, vring num/addr/base, kick (the queue's ioeventfd, polled by the kernel),
//! call, and `VHOST_NET_SET_BACKEND` with the TAP queue fd.
//!
//! virtio-mmio has one interrupt line and an InterruptStatus register the guest reads, so
//! the vhost call eventfds are not wired to the irqfd directly: a relay thread sets
//! InterruptStatus and then raises the line.
//!
//! The argument building ([`vring_config`], [`memory_regions`], [`backend_features`]) is pure
//! and unit-tested; [`VhostNet::start`] itself is tested on a real TAP in `tests/net_tap.rs`
//! (where `/dev/vhost-net` is missing it fails with [`VhostError::Open`] and the device falls
//! back to the userspace path).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::features;
use super::NetParams;
use crate::sys::tap::Tap;
use crate::vmm::virtio::{DeviceQueue, VirtioInterrupt, VIRTIO_F_VERSION_1};

#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("cannot open /dev/vhost-net")]
    Open(#[source] vhost::Error),
    #[error("{op} failed on vhost-net for queue pair {pair}")]
    Ioctl {
        op: &'static str,
        pair: usize,
        #[source]
        source: vhost::Error,
    },
    #[error("queue {0} is not usable by vhost-net")]
    Queue(usize),
    #[error("vhost-net lacks features the guest negotiated: {0:#x}")]
    Features(u64),
    #[error("cannot create an eventfd or relay thread")]
    Setup(#[source] std::io::Error),
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

/// Running vhost-net instances and the interrupt relay; dropping it stops everything.
pub struct VhostNet {
    _instances: Vec<KernNet<Arc<GuestMemoryMmap>>>,
    relay: Option<(JoinHandle<()>, EventFd)>,
}

impl VhostNet {
    /// Set up one vhost-net instance per ready queue pair.
    pub fn start(
        params: &NetParams,
        tap: &Tap,
        mem: &GuestMemoryMmap,
        queues: &[DeviceQueue],
        acked: u64,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<VhostNet, VhostError> {
        let mem = Arc::new(mem.clone());
        let mut instances = Vec::new();
        let mut calls = Vec::new();
        for pair in 0..usize::from(params.queue_pairs) {
            let (Some(rx), Some(tx)) = (queues.get(pair * 2), queues.get(pair * 2 + 1)) else {
                return Err(VhostError::Queue(pair * 2));
            };
            if !rx.queue.ready() || !tx.queue.ready() {
                continue;
            }
            let io = |op, source| VhostError::Ioctl { op, pair, source };
            let net = KernNet::new(mem.clone()).map_err(VhostError::Open)?;
            net.set_owner().map_err(|e| io("VHOST_SET_OWNER", e))?;
            let has = net
                .get_features()
                .map_err(|e| io("VHOST_GET_FEATURES", e))?;
            net.set_features(backend_features(acked, has)?)
                .map_err(|e| io("VHOST_SET_FEATURES", e))?;
            net.set_mem_table(&memory_regions(&mem))
                .map_err(|e| io("VHOST_SET_MEM_TABLE", e))?;
            let file = tap.queues.get(pair).ok_or(VhostError::Queue(pair * 2))?;
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
                net.set_backend(vring, Some(file))
                    .map_err(|e| io("VHOST_NET_SET_BACKEND", e))?;
                calls.push(call);
            }
            instances.push(net);
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VhostError::Setup)?;
        let stop2 = stop.try_clone().map_err(VhostError::Setup)?;
        let name = params.id.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vhost-{name}"))
            .spawn(move || relay(&name, calls, stop2, interrupt))
            .map_err(VhostError::Setup)?;
        Ok(VhostNet {
            _instances: instances,
            relay: Some((handle, stop)),
        })
    }
}

/// Turn vhost "call" events into virtio-mmio interrupts.
fn relay(name: &str, calls: Vec<EventFd>, stop: EventFd, interrupt: Arc<VirtioInterrupt>) {
    let Ok(epoll) = Epoll::new() else {
        log::error!("{name}: vhost relay: epoll_create failed");
        return;
    };
    let stop_token = calls.len() as u64;
    for (i, c) in calls.iter().enumerate() {
        let _ = epoll.ctl(
            ControlOperation::Add,
            c.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        );
    }
    let _ = epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, stop_token),
    );
    let mut events = vec![EpollEvent::default(); calls.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

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
