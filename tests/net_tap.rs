//! Real TAPs in a private network namespace (a thread that unshared CLONE_NEWNET), so
//! nothing touches the host's links. Skips unless root with /dev/net/tun.

use std::os::fd::OwnedFd;

use volt::sys::tap::{self, Tap, TapError};

fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP: needs root and /dev/net/tun");
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
