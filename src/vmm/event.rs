//! Events that end or change the VM's life, sent from devices, vCPU threads and the signal
//! thread to the VMM's main loop.

use std::sync::mpsc::{channel, Receiver, Sender};

use std::os::unix::io::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// A worker thread's epoll watching each `(fd, token, events)`, or `None` after logging why the
/// thread cannot start (`who` names it).
pub fn worker_epoll(who: &str, fds: &[(RawFd, u64, EventSet)]) -> Option<Epoll> {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            log::error!("{who}: epoll_create failed: {e}; the thread stops");
            return None;
        }
    };
    for &(fd, token, set) in fds {
        if let Err(e) = epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token)) {
            log::error!("{who}: epoll_ctl failed: {e}; the thread stops");
            return None;
        }
    }
    Some(epoll)
}

/// `epoll_wait` for a worker thread: the number of events (0 when a signal interrupted the
/// wait), or `None` after logging why the thread must end (`who` names it).
pub fn wait_events(
    epoll: &Epoll,
    timeout_ms: i32,
    events: &mut [EpollEvent],
    who: &str,
) -> Option<usize> {
    match epoll.wait(timeout_ms, events) {
        Ok(n) => Some(n),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Some(0),
        Err(e) => {
            log::error!("{who}: epoll_wait failed: {e}; the thread stops");
            None
        }
    }
}

/// A worker thread's stop request: an eventfd for its epoll set, and a flag it reads between
/// passes and between requests without a system call. A worker that goes from one pass to the
/// next without sleeping (a guest that keeps its ring busy while the worker polls it) never
/// looks at the eventfd, and the vCPU that resets the device waits for that worker.
#[derive(Debug)]
pub struct Stop {
    fd: vmm_sys_util::eventfd::EventFd,
    asked: std::sync::atomic::AtomicBool,
}

impl Stop {
    pub fn new() -> std::io::Result<Stop> {
        Ok(Stop {
            fd: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?,
            asked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Asks the worker to stop.
    pub fn ask(&self) {
        self.asked.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.fd.write(1);
    }

    /// The flag [`Stop::ask`] sets.
    pub fn flag(&self) -> &std::sync::atomic::AtomicBool {
        &self.asked
    }

    /// Whether [`Stop::ask`] was called.
    pub fn asked(&self) -> bool {
        self.asked.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl std::os::fd::AsRawFd for Stop {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// [`wait_events`] for a worker woken by one kick eventfd and one stop token: `false` when the
/// thread must end (stop fired or the wait failed), `true` after draining a kick or a timeout.
pub fn wait_kick(
    epoll: &Epoll,
    timeout_ms: i32,
    events: &mut [EpollEvent],
    who: &str,
    kick: &vmm_sys_util::eventfd::EventFd,
    stop_token: u64,
) -> bool {
    let Some(n) = wait_events(epoll, timeout_ms, events, who) else {
        return false;
    };
    for ev in &events[..n] {
        if ev.data() == stop_token {
            return false;
        }
        let _ = kick.read();
    }
    true
}

/// Something the main loop must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest wrote `n` to the debug-exit port.
    GuestExit(u8),
    /// The guest asked for a reset (i8042 `0xFE`): the VM ends cleanly.
    GuestReset,
    /// The host asked the VM to stop (SIGTERM/SIGINT, with the signal number).
    HostStop(i32),
    /// A vCPU thread hit an unrecoverable error (description).
    VcpuFailed(u8, String),
    /// A vCPU thread ended (after a stop request or an error).
    VcpuExited(u8),
    /// The guest sent an sd_notify message over vsock (`READY=1`, the first `STATUS=`).
    GuestNotify {
        /// `READY=1` was in it.
        ready: bool,
        /// Its `STATUS=` text, if any.
        status: Option<String>,
    },
}

/// Cloneable sending side handed to devices and threads.
#[derive(Debug, Clone)]
pub struct EventSender(Sender<VmEvent>);

impl EventSender {
    /// Sends `ev`; a closed main loop (VM already ending) is not an error.
    pub fn send(&self, ev: VmEvent) {
        if self.0.send(ev).is_err() {
            log::debug!("VM event dropped: the main loop has already ended");
        }
    }
}

/// A new event channel.
pub fn event_channel() -> (EventSender, Receiver<VmEvent>) {
    let (tx, rx) = channel();
    (EventSender(tx), rx)
}
