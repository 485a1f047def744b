//! The virtio-net control queue: the driver sends `{class, command, data...}` and gets one
//! status byte back. Handled: MQ (VQ_PAIRS_SET), guest offloads, the announce
//! acknowledgement (clears VIRTIO_NET_S_ANNOUNCE), and the RX-mode, MAC and VLAN classes
//! (acknowledged: a TAP already receives everything for the guest).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::datapath::{ChainFault, Pass};
use super::status::LinkStatus;
use crate::log_limited;
use crate::sys::tap::Tap;
use crate::vmm::ratelimit::{Allowed, SharedLimiter};
use crate::vmm::virtio::pass::{self, Dry};
use crate::vmm::virtio::VirtioInterrupt;

pub const CLASS_RX: u8 = 0;
pub const CLASS_MAC: u8 = 1;
pub const CLASS_VLAN: u8 = 2;
pub const CLASS_ANNOUNCE: u8 = 3;
pub const CLASS_MQ: u8 = 4;
pub const CLASS_GUEST_OFFLOADS: u8 = 5;
pub const MQ_VQ_PAIRS_SET: u8 = 0;
pub const ANNOUNCE_ACK: u8 = 0;
pub const GUEST_OFFLOADS_SET: u8 = 0;
pub const OK: u8 = 0;
pub const ERR: u8 = 1;

/// What a control command asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Use this many queue pairs.
    SetQueuePairs(u16),
    /// Guest offload feature bits (VIRTIO_NET_F_GUEST_*).
    SetGuestOffloads(u64),
    /// The driver sent its gratuitous packets (VIRTIO_NET_CTRL_ANNOUNCE_ACK).
    AnnounceAck,
    /// Accepted without effect (RX mode, MAC filters, VLAN filters).
    Ack,
    /// Not understood.
    Unsupported { class: u8, command: u8 },
}

/// Decode a command from its readable bytes.
pub fn parse(req: &[u8], max_pairs: u16) -> Result<Command, String> {
    let (&class, rest) = req.split_first().ok_or("empty control command")?;
    let (&command, data) = rest
        .split_first()
        .ok_or("control command without a command byte")?;
    Ok(match (class, command) {
        (CLASS_MQ, MQ_VQ_PAIRS_SET) => {
            let n = data
                .get(..2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or("VQ_PAIRS_SET without a count")?;
            if n == 0 || n > max_pairs {
                return Err(format!("VQ_PAIRS_SET {n} is outside 1-{max_pairs}"));
            }
            Command::SetQueuePairs(n)
        }
        (CLASS_GUEST_OFFLOADS, GUEST_OFFLOADS_SET) => {
            let b = data.get(..8).ok_or("GUEST_OFFLOADS_SET without a value")?;
            let mut v = [0u8; 8];
            v.copy_from_slice(b);
            Command::SetGuestOffloads(u64::from_le_bytes(v))
        }
        (CLASS_ANNOUNCE, ANNOUNCE_ACK) => Command::AnnounceAck,
        (CLASS_RX | CLASS_MAC | CLASS_VLAN, _) => Command::Ack,
        (class, command) => Command::Unsupported { class, command },
    })
}

/// Whether the driver may send `cmd` with the features it accepted (`acked`): offloads only
/// with CTRL_GUEST_OFFLOADS and only among the GUEST_* offloads it accepted (virtio 1.x
/// §5.1.6.5.6.1); the device answers anything else with an error.
pub fn allowed(acked: u64, cmd: &Command) -> bool {
    use super::features::*;
    match cmd {
        Command::SetGuestOffloads(bits) => {
            let offloads = GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN;
            acked & CTRL_GUEST_OFFLOADS != 0 && bits & !(acked & offloads) == 0
        }
        _ => true,
    }
}

/// Serve the control commands on `queue` (at most [`pass::CHAINS`]), then ask for the next
/// kick; `apply` carries out a command and says whether it worked.
pub fn process(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    max_pairs: u16,
    apply: &mut dyn FnMut(Command) -> bool,
) -> Pass {
    let mut pass = Pass::default();
    let mut budget = pass::Budget::default();
    while budget.take() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // With EVENT_IDX a control queue left at avail_event 0 is never kicked again,
            // and Linux waits for the answer to its next command for ever.
            match budget.dry(queue, mem) {
                Dry::More => continue,
                Dry::Done => break,
                Dry::Fault(f) => {
                    pass.faults.push(ChainFault::Queue(f));
                    break;
                }
            }
        };
        budget.popped();
        let head = chain.head_index();
        let mut req = Vec::new();
        let mut status_addr = None;
        let mut bad = None;
        for desc in chain {
            if desc.is_write_only() {
                if desc.len() >= 1 {
                    status_addr = Some(desc.addr());
                }
            } else if req.len() + desc.len() as usize > 4096 {
                bad = Some(ChainFault::BadLength {
                    head,
                    len: req.len() + desc.len() as usize,
                });
                break;
            } else {
                let start = req.len();
                req.resize(start + desc.len() as usize, 0);
                if mem.read_slice(&mut req[start..], desc.addr()).is_err() {
                    bad = Some(ChainFault::OutOfMemory {
                        head,
                        addr: desc.addr().0,
                    });
                    break;
                }
            }
        }
        let status = match bad {
            Some(f) => {
                pass.faults.push(f);
                ERR
            }
            None => match parse(&req, max_pairs) {
                Ok(cmd) => {
                    if apply(cmd) {
                        OK
                    } else {
                        ERR
                    }
                }
                Err(e) => {
                    pass.faults
                        .push(ChainFault::Queue(format!("control command rejected: {e}")));
                    ERR
                }
            },
        };
        let written = match status_addr {
            Some(addr) if mem.write_obj(status, addr).is_ok() => 1,
            _ => 0,
        };
        if queue.add_used(mem, head, written).is_ok() {
            pass.used = true;
        }
    }
    pass.more = budget.spent();
    pass
}

/// How many TAP changes (queue pairs, offloads) the driver may ask for per
/// [`RECONFIG_WINDOW`].
pub const RECONFIG_BURST: u32 = 20;
pub const RECONFIG_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `cmd` fits the driver's budget of TAP changes (other commands always do).
fn admitted(cmd: &Command, reconfigs: &SharedLimiter) -> bool {
    !matches!(
        cmd,
        Command::SetQueuePairs(_) | Command::SetGuestOffloads(_)
    ) || matches!(reconfigs.check(), Allowed::Yes { .. })
}

/// Carry out a control command on the TAP (or the status bits). The driver sends these at
/// will: its lines go through `limiter`, and the commands that change the TAP (each an ioctl
/// under the kernel's RTNL lock, which every network namespace shares) through `reconfigs`:
/// beyond it they are refused, which the driver is told (a real one changes its queue pairs
/// or offloads a few times in its life, by `ethtool`).
pub fn apply(
    tap: &Tap,
    id: &str,
    status: &LinkStatus,
    pairs: usize,
    cmd: Command,
    limiter: &SharedLimiter,
    reconfigs: &SharedLimiter,
) -> bool {
    if !admitted(&cmd, reconfigs) {
        log_limited!(
            limiter,
            log::Level::Warn,
            "{id}: guest {cmd:?} refused: more than {RECONFIG_BURST} TAP changes in {RECONFIG_WINDOW:?}"
        );
        return false;
    }
    match cmd {
        Command::SetQueuePairs(n) => {
            for q in 0..pairs {
                if let Err(e) = tap.set_queue_enabled(q, q < usize::from(n)) {
                    log_limited!(
                        limiter,
                        log::Level::Warn,
                        "{id}: {}",
                        crate::error_chain(&e)
                    );
                    return false;
                }
            }
            log_limited!(
                limiter,
                log::Level::Info,
                "{id}: guest uses {n} of {pairs} queue pairs"
            );
            true
        }
        Command::SetGuestOffloads(bits) => tap.set_offload(super::tun_offloads(bits)).is_ok(),
        Command::AnnounceAck => {
            if status.ack_announce() {
                log_limited!(
                    limiter,
                    log::Level::Info,
                    "{id}: the guest announced itself on the link"
                );
            }
            true
        }
        Command::Ack => true,
        Command::Unsupported { .. } => false,
    }
}

/// A control queue served on a thread of its own: epoll on its kick and a stop eventfd.
/// The vhost-net path uses it (the userspace path serves the queue from pair 0's worker).
pub struct Server {
    pub name: String,
    pub queue: Queue,
    pub kick: EventFd,
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<VirtioInterrupt>,
    pub max_pairs: u16,
    pub apply: Box<dyn FnMut(Command) -> bool + Send>,
    /// The device's limiter for lines the guest causes.
    pub log: SharedLimiter,
}

const T_KICK: u64 = 0;
const T_STOP: u64 = 1;

impl Server {
    /// Start the thread; the eventfd stops it.
    pub fn spawn(self) -> std::io::Result<(JoinHandle<()>, Arc<EventFd>)> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, T_KICK),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, T_STOP),
        )?;
        let h = std::thread::Builder::new()
            .name(format!("net-{}", self.name.replace(' ', "-")))
            .spawn(move || self.run(&epoll))?;
        Ok((h, stop))
    }

    fn run(mut self, epoll: &Epoll) {
        let mut limiter = self.log.clone();
        let mut events = [EpollEvent::default(); 2];
        loop {
            // Commands may be waiting from before activation, and after every kick.
            let pass = process(&mut self.queue, &self.mem, self.max_pairs, &mut self.apply);
            for f in &pass.faults {
                log_limited!(limiter, log::Level::Warn, "{}: guest {f}", self.name);
            }
            if pass.used {
                self.interrupt
                    .signal_used_queue_logged(&self.name, &mut limiter);
            }
            // A pass cut at its budget goes on at once, after a look at the stop token.
            let timeout = if pass.more { 0 } else { -1 };
            if !crate::vmm::event::wait_kick(
                epoll,
                timeout,
                &mut events,
                &self.name,
                &self.kick,
                T_STOP,
            ) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_commands() {
        assert_eq!(
            parse(&[CLASS_MQ, MQ_VQ_PAIRS_SET, 4, 0], 4),
            Ok(Command::SetQueuePairs(4))
        );
        assert!(parse(&[CLASS_MQ, MQ_VQ_PAIRS_SET, 5, 0], 4).is_err());
        assert!(parse(&[CLASS_MQ, MQ_VQ_PAIRS_SET, 0, 0], 4).is_err());
        assert!(parse(&[CLASS_MQ, MQ_VQ_PAIRS_SET, 1], 4).is_err());
        assert_eq!(
            parse(&[CLASS_GUEST_OFFLOADS, 0, 0x83, 1, 0, 0, 0, 0, 0, 0], 1),
            Ok(Command::SetGuestOffloads(0x183))
        );
        assert_eq!(parse(&[CLASS_RX, 0, 1], 1), Ok(Command::Ack));
        assert_eq!(
            parse(&[CLASS_ANNOUNCE, ANNOUNCE_ACK], 1),
            Ok(Command::AnnounceAck)
        );
        assert_eq!(
            parse(&[CLASS_ANNOUNCE, 1], 1),
            Ok(Command::Unsupported {
                class: CLASS_ANNOUNCE,
                command: 1
            })
        );
        assert_eq!(
            parse(&[9, 9], 1),
            Ok(Command::Unsupported {
                class: 9,
                command: 9
            })
        );
        assert!(parse(&[], 1).is_err());
        assert!(parse(&[CLASS_MQ], 1).is_err());
    }

    #[test]
    fn offloads_are_allowed_only_as_negotiated() {
        use super::super::features::*;
        let acked = CTRL_GUEST_OFFLOADS | GUEST_CSUM | GUEST_TSO4;
        let set = |bits| Command::SetGuestOffloads(bits);
        assert!(allowed(acked, &set(GUEST_CSUM | GUEST_TSO4)));
        assert!(allowed(acked, &set(0)), "turning every offload off");
        assert!(
            !allowed(acked, &set(GUEST_TSO6)),
            "not accepted at negotiation"
        );
        assert!(!allowed(acked & !CTRL_GUEST_OFFLOADS, &set(GUEST_CSUM)));
        assert!(allowed(0, &Command::AnnounceAck));
    }

    /// A driver that flips its queue pairs (or offloads) in a loop gets its first
    /// RECONFIG_BURST changes per window, then errors: each change is a TAP ioctl under the
    /// host-wide RTNL lock. Other commands are never refused.
    #[test]
    fn tap_changes_are_rationed_and_other_commands_are_not() {
        let reconfigs = SharedLimiter::with_limits(RECONFIG_BURST, RECONFIG_WINDOW);
        let got: Vec<bool> = (0..2 * RECONFIG_BURST)
            .map(|i| {
                let cmd = if i % 2 == 0 {
                    Command::SetQueuePairs(1)
                } else {
                    Command::SetGuestOffloads(0)
                };
                admitted(&cmd, &reconfigs)
            })
            .collect();
        let n = RECONFIG_BURST as usize;
        assert!(got[..n].iter().all(|a| *a));
        assert!(got[n..].iter().all(|a| !*a));
        assert!(admitted(&Command::AnnounceAck, &reconfigs));
        assert!(admitted(&Command::Ack, &reconfigs));
    }
}
