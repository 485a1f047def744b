//! The daemon's threads: the signals that stop it, the lease's keep-alive and the watch
//! on the store, each reporting to the main loop over a channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::daemon::Msg;
use super::store;
use super::Cluster;

/// Block SIGTERM/SIGINT in this thread (and the threads it starts) and turn them into a
/// `Stop` message from a thread that waits for them.
pub(super) fn signals(tx: mpsc::Sender<Msg>, stop: Arc<AtomicBool>) {
    // SAFETY: sigset operations on a local set; pthread_sigmask on the calling thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: set is a valid, initialised sigset; sig is a valid out pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        stop.store(true, Ordering::SeqCst);
        let _ = tx.send(Msg::Stop);
    });
}

pub(super) fn keepalive(
    cluster: Cluster,
    lease: i64,
    ttl: u32,
    tx: mpsc::Sender<Msg>,
    stop: Arc<AtomicBool>,
) {
    let every = Duration::from_millis(u64::from(ttl) * 1000 / 3);
    std::thread::spawn(move || {
        let mut failing = false;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(every);
            match cluster.etcd.keepalive(lease) {
                Ok(0) => {
                    let _ = tx.send(Msg::LeaseLost);
                    return;
                }
                Ok(_) => {
                    if failing {
                        log::info!("lease keep-alive works again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        log::warn!(
                            "lease keep-alive failed (retrying): {}",
                            crate::error_chain(&e)
                        );
                    }
                    failing = true;
                }
            }
        }
    });
}

pub(super) fn watch(cluster: Cluster, tx: mpsc::Sender<Msg>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let r = cluster.etcd.watch(store::PREFIX, 0, &mut |_| {
                tx.send(Msg::Changed).is_ok() && !stop.load(Ordering::SeqCst)
            });
            if let Err(e) = r {
                log::debug!("watch ended: {}", crate::error_chain(&e));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}
