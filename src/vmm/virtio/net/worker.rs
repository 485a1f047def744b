//! One thread per queue pair: epoll on the TAP queue fd (edge-triggered), the RX and TX
//! queue kicks (ioeventfds), the control queue kick (pair 0 only) and a stop eventfd. No
//! busy polling: the thread sleeps in epoll_wait whenever there is nothing to move.
//!
//! Notifications cost the guest an exit (a kick) or an interrupt entry, and on a host with
//! few cores a kick also wakes this thread onto the vCPU's core: each is asked for only when
//! needed. RX kicks are suppressed while the device holds RX buffers (the TAP, not the
//! guest, says when there is work; the datapath re-enables them when it runs out), TX kicks
//! while a pass runs and while the thread polls for a polling guest's answer ([`super::poll`]);
//! interrupts follow the driver's suppression ([`notify::needs_interrupt`]).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::ctrl;
use super::datapath::{self, ChainFault, FrameIo, RxState, Stats};
use crate::log_limited;
use crate::vmm::ratelimit::SharedLimiter;
use crate::vmm::virtio::pass::Faults;
use crate::vmm::virtio::poll::{self, AdaptivePoll};
use crate::vmm::virtio::{notify, VirtioInterrupt};

const T_TAP: u64 = 0;
const T_RX: u64 = 1;
const T_TX: u64 = 2;
const T_CTRL: u64 = 3;
const T_STOP: u64 = 4;

/// The control queue, its kick, the most queue pairs, and what carries out a command.
pub type CtrlPart = (
    Queue,
    EventFd,
    u16,
    Box<dyn FnMut(ctrl::Command) -> bool + Send>,
);

/// Everything one queue-pair thread owns.
pub struct PairWorker<F: FrameIo + AsRawFd> {
    pub name: String,
    pub rx: Queue,
    pub rx_kick: EventFd,
    pub tx: Queue,
    pub tx_kick: EventFd,
    /// Pair 0 also serves the control queue; `apply` carries out its commands.
    pub ctrl: Option<CtrlPart>,
    pub io: F,
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<VirtioInterrupt>,
    pub stats: Arc<Stats>,
    pub stop: Arc<EventFd>,
    pub mergeable: bool,
    /// The device's limiter for lines the guest causes (shared by every queue thread and
    /// every activation).
    pub log: SharedLimiter,
}

impl<F: FrameIo + AsRawFd> PairWorker<F> {
    fn log_faults(&self, limiter: &mut SharedLimiter, faults: &Faults<ChainFault>) {
        for f in faults {
            log_limited!(
                limiter,
                log::Level::Warn,
                "{}: guest {f}; dropped",
                self.name
            );
        }
        if faults.not_kept() > 0 {
            log_limited!(
                limiter,
                log::Level::Warn,
                "{}: and {} more broken chains in the same pass",
                self.name,
                faults.not_kept()
            );
        }
    }

    fn signal(&self, limiter: &mut SharedLimiter) {
        self.interrupt.signal_used_queue_logged(&self.name, limiter);
    }

    /// Run until the stop eventfd fires.
    pub fn run(mut self) {
        let mut limiter = self.log.clone();
        let mut fds = vec![
            (
                self.io.as_raw_fd(),
                T_TAP,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
            (self.rx_kick.as_raw_fd(), T_RX, EventSet::IN),
            (self.tx_kick.as_raw_fd(), T_TX, EventSet::IN),
            (self.stop.as_raw_fd(), T_STOP, EventSet::IN),
        ];
        if let Some((_, kick, _, _)) = &self.ctrl {
            fds.push((kick.as_raw_fd(), T_CTRL, EventSet::IN));
        }
        let Some(epoll) = crate::vmm::event::worker_epoll(&self.name, &fds) else {
            return;
        };
        let mut rx_state = RxState::new(self.mergeable);
        let mut tx_buf = Vec::with_capacity(datapath::MAX_FRAME);
        // Frames or requests may be waiting from before activation.
        let (mut do_rx, mut do_tx, mut do_ctrl) = (true, true, true);
        let mut events = [EpollEvent::default(); 8];
        // Whether epoll watches the TAP (not while a frame waits for guest buffers).
        let mut tap_watched = true;
        let mut txpoll = AdaptivePoll::default();
        loop {
            let mut notify = false;
            // Frames went to a guest that polls (it wants no interrupt): its answer may follow.
            let mut rx_to_poller = false;
            // Passes cut at their budget: run again at once (after a look at events).
            let (mut rx_more, mut tx_more, mut ctrl_more) = (false, false, false);
            if do_ctrl {
                if let Some((queue, _, max_pairs, apply)) = &mut self.ctrl {
                    let pass = ctrl::process(queue, &self.mem, *max_pairs, apply.as_mut());
                    notify |= pass.used;
                    ctrl_more = pass.more;
                    for f in &pass.faults {
                        log_limited!(limiter, log::Level::Warn, "{}: guest {f}", self.name);
                    }
                }
            }
            if do_tx {
                let _ = notify::suppress_kicks(&mut self.tx, &self.mem);
                let pass = datapath::process_tx(
                    &mut self.tx,
                    &self.mem,
                    &self.io,
                    &mut tx_buf,
                    &self.stats,
                );
                self.log_faults(&mut limiter, &pass.faults);
                tx_more = pass.more;
                if pass.used && notify::needs_interrupt(&mut self.tx, &self.mem) {
                    notify = true;
                }
            }
            if do_rx {
                // No RX kicks while buffers are available: process_rx turns them back on
                // when it runs out (and a frame waits for the guest).
                let _ = notify::suppress_kicks(&mut self.rx, &self.mem);
                let pass = datapath::process_rx(
                    &mut self.rx,
                    &self.mem,
                    &self.io,
                    &mut rx_state,
                    &self.stats,
                );
                self.log_faults(&mut limiter, &pass.faults);
                rx_more = pass.more;
                if pass.used {
                    if notify::needs_interrupt(&mut self.rx, &self.mem) {
                        notify = true;
                    } else {
                        rx_to_poller = true;
                    }
                }
                // A frame waits for buffers: until the guest kicks, more frames on the TAP
                // are nothing this thread can move, and waking for each one (as a sender
                // fills the TAP queue) would only take the CPU from the sender and the vCPU.
                // The TAP's own queue holds or drops them, as for any slow receiver.
                let watch = !rx_state.has_pending();
                if watch != tap_watched {
                    let set = if watch {
                        EventSet::IN | EventSet::EDGE_TRIGGERED
                    } else {
                        EventSet::empty()
                    };
                    let ev = EpollEvent::new(set, T_TAP);
                    match epoll.ctl(ControlOperation::Modify, self.io.as_raw_fd(), ev) {
                        Ok(()) => tap_watched = watch,
                        Err(e) => {
                            log_limited!(
                                limiter,
                                log::Level::Warn,
                                "{}: epoll_ctl failed: {e}",
                                self.name
                            )
                        }
                    }
                }
            }
            if notify {
                self.signal(&mut limiter);
            }
            (do_rx, do_tx, do_ctrl) = (rx_more, tx_more, ctrl_more);
            let unfinished = rx_more || tx_more || ctrl_more;
            if rx_to_poller && !unfinished {
                // The guest's answer is likely on its way: watch TX (see virtio::poll).
                if poll::watch(&mut self.tx, &self.mem, &mut txpoll) {
                    do_tx = true;
                    continue;
                }
            }
            let timeout = if unfinished { 0 } else { -1 };
            let Some(n) = crate::vmm::event::wait_events(&epoll, timeout, &mut events, &self.name)
            else {
                return;
            };
            for ev in &events[..n] {
                match ev.data() {
                    T_STOP => return,
                    T_TAP => {
                        rx_state.backend_ready = true;
                        do_rx = true;
                    }
                    T_RX => {
                        let _ = self.rx_kick.read();
                        do_rx = true;
                    }
                    T_TX => {
                        let _ = self.tx_kick.read();
                        do_tx = true;
                    }
                    T_CTRL => {
                        if let Some((_, kick, _, _)) = &self.ctrl {
                            let _ = kick.read();
                        }
                        do_ctrl = true;
                    }
                    _ => {}
                }
            }
        }
    }
}
