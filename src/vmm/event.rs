//! Events that end or change the VM's life, sent from devices, vCPU threads and the signal
//! thread to the VMM's main loop.

use std::sync::mpsc::{channel, Receiver, Sender};

use vmm_sys_util::epoll::{Epoll, EpollEvent};

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
