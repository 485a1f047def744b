//! Real TAPs in a private network namespace (a thread that unshared CLONE_NEWNET), so
//! nothing touches the host's links. Skips unless root with /dev/net/tun.

mod common;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use volt::sys::tap::{self, Tap, TapError};
use volt::vmm::devices::IrqLine;
use volt::vmm::virtio::net::vhost::{KernelVhost, VhostError, VhostNet};
use volt::vmm::virtio::net::NetParams;
use volt::vmm::virtio::{DeviceQueue, VirtioInterrupt, VIRTIO_F_VERSION_1};

fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        common::report::skip("needs root and /dev/net/tun");
        return None;
    }
    let h = std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread, which ends with the test.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        f()
    });
    Some(h.join().expect("test thread"))
}

#[test]
fn create_open_and_adopt_multiqueue_tap() {
    in_private_netns(|| {
        assert_eq!(tap::link_kind("tap-t1"), None);
        let t = Tap::create("tap-t1", 4).expect("create");
        assert_eq!(t.queues.len(), 4);
        t.set_vnet_hdr_len(tap::VNET_HDR_LEN).expect("vnet hdr");
        t.set_offload(tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6)
            .expect("offload");
        assert_eq!(tap::link_kind("tap-t1"), Some(true));
        assert_eq!(tap::driver("tap-t1").as_deref(), Some("tun"));
        assert!(matches!(
            Tap::create("tap-t1", 4),
            Err(TapError::Exists { .. })
        ));
        // Persist it, close every fd, and open it again as a networkd-made TAP would be.
        t.set_persist(true).expect("persist");
        let index = volt::net::link::index("tap-t1").expect("index");
        drop(t);
        let t = Tap::open("tap-t1", 4).expect("open existing");
        assert_eq!(volt::net::link::index("tap-t1"), Some(index));
        // Asking for other flags than the TAP has fails clearly.
        assert!(matches!(
            Tap::open("tap-t1", 1),
            Err(TapError::SetIff { .. })
        ));
        // fd store round trip: the same fds adopted back after TUNGETIFF checks.
        let fds: Vec<OwnedFd> = t.dup_fds().expect("dup");
        let back = Tap::from_fds("tap-t1", 4, fds).expect("adopt");
        assert_eq!(back.queues.len(), 4);
        let fds: Vec<OwnedFd> = back.dup_fds().expect("dup");
        assert!(matches!(
            Tap::from_fds("tap-other", 4, fds),
            Err(TapError::Mismatch { .. })
        ));
        back.set_persist(false).expect("unpersist");
        drop((t, back));
        assert_eq!(
            tap::link_kind("tap-t1"),
            None,
            "non-persistent TAP goes with its last fd"
        );
    });
}

#[test]
fn open_refuses_missing_and_non_tap_links() {
    in_private_netns(|| {
        assert!(matches!(
            Tap::open("tap-none", 1),
            Err(TapError::Missing { .. })
        ));
        assert_eq!(tap::link_kind("lo"), Some(false));
        assert!(matches!(Tap::open("lo", 1), Err(TapError::NotTap { .. })));
    });
}

#[test]
fn delete_link_over_netlink() {
    in_private_netns(|| {
        let t = Tap::create("tap-del", 1).expect("create");
        t.set_persist(true).expect("persist");
        drop(t);
        assert!(volt::net::link::delete("tap-del").expect("delete"));
        assert_eq!(volt::net::link::index("tap-del"), None);
        assert!(!volt::net::link::delete("tap-del").expect("delete again is a no-op"));
    });
}

/// A ready queue of 256 entries with its rings at `base` (descriptors), `base + 0x1000`
/// (available) and `base + 0x2000` (used).
fn ready_queue(base: u64) -> DeviceQueue {
    let mut q = Queue::new(256).expect("queue");
    q.set_size(256);
    q.set_desc_table_address(Some(base as u32), Some((base >> 32) as u32));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_ready(true);
    DeviceQueue {
        queue: q,
        notify: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
    }
}

/// Volt's `VhostNet::start` on a real TAP with a ready queue pair, checked against what this
/// host offers: where `/dev/vhost-net` opens, the instance is opened first and the kernel
/// data path is then set up with `open` denied (as after the VMM's setup); where it does not
/// (a kernel without CONFIG_VHOST_NET), opening fails with `VhostError::Open`, the error the
/// device falls back to the userspace path on.
#[test]
fn vhost_net_start_sets_up_the_kernel_path_or_fails_to_open_it() {
    in_private_netns(|| {
        let vhost_opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vhost-net")
            .is_ok();
        let t = Tap::create("tap-vh", 1).expect("create");
        t.set_vnet_hdr_len(tap::VNET_HDR_LEN).expect("vnet hdr");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)])
            .expect("guest memory");
        let queues = vec![ready_queue(0x1_0000), ready_queue(0x2_0000)];
        let params = NetParams {
            id: "eth0".into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mtu: 1500,
            queue_pairs: 1,
            vhost: true,
        };
        let interrupt = Arc::new(VirtioInterrupt::new(IrqLine::new(5).expect("irq line")));
        let opened = KernelVhost::open(1);
        if opened.is_ok() {
            // From here on this thread may not open files, like the VMM after its setup:
            // activation must use what was opened before.
            let deny = volt::vmm::sandbox::open_denied().expect("filter");
            seccompiler::apply_filter(&deny).expect("install the filter");
        }
        let started = opened.and_then(|k| {
            VhostNet::start(
                &params,
                &t.queues,
                &k,
                &mem,
                &queues,
                VIRTIO_F_VERSION_1,
                interrupt,
            )
        });
        match (vhost_opens, started) {
            (true, Ok(v)) => drop(v),
            (false, Err(VhostError::Open(_))) => {}
            (true, Err(e)) => panic!("/dev/vhost-net opens here, yet start failed: {e:?}"),
            (false, Ok(_)) => panic!("start succeeded without a usable /dev/vhost-net"),
            (false, Err(e)) => panic!("without /dev/vhost-net start must fail to open it: {e:?}"),
        }
    });
}
