//! The virtio-net data path, with no event loop: move frames between a queue pair and a
//! frame backend (a TAP queue fd, or a socket in tests).
//!
//! Everything here assumes a hostile driver: descriptor chains are walked by virtio-queue
//! (loop and length checks), every guest access goes through vm-memory (bounds-checked), a
//! chain of the wrong shape is dropped and counted, never trusted.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vmm::virtio::notify;
use crate::vmm::virtio::pass::{self, Dry, Faults};

/// Size of `struct virtio_net_hdr_v1` (VIRTIO_F_VERSION_1: num_buffers is always there).
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFF: usize = 10;
/// Largest frame plus header we move: 64 KiB GSO frame + Ethernet header + vnet header.
pub const MAX_FRAME: usize = 65_562 + HDR_LEN;

/// Most descriptors of a TX chain that are sent straight from guest memory; a longer chain
/// is gathered into a buffer first.
pub const MAX_TX_IOV: usize = 16;
/// The most descriptors one RX chain may have (Linux's largest, without mergeable buffers, is
/// MAX_SKB_FRAGS + 2). A longer chain is a fault: the walk stops there, whatever the guest
/// put in an indirect table.
pub const MAX_RX_DESCS: usize = 64;
/// The most chains one received frame may take (mergeable buffers). A frame that needs more
/// is dropped (and its chains given back empty), so a pass can always finish a frame: see
/// [`pass::CHAINS`].
pub const MAX_RX_CHAINS: usize = 256;

/// Reads and writes whole frames (vnet header included).
pub trait FrameIo {
    /// One frame into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// One frame from `buf`.
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize>;
    /// One frame gathered by the kernel from `iov` (pieces of guest memory), no copy here.
    ///
    /// # Safety
    /// Every iovec must be valid for reads of `iov_len` bytes for the whole call.
    unsafe fn write_frame_iov(&self, iov: &[libc::iovec]) -> io::Result<usize>;
}

fn cvt(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

impl FrameIo for std::fs::File {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes of writes.
        cvt(unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes of reads.
        cvt(unsafe { libc::write(self.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
    }

    unsafe fn write_frame_iov(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller guarantees every iovec is readable; the count fits a c_int.
        cvt(unsafe { libc::writev(self.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) })
    }
}

impl FrameIo for std::os::unix::net::UnixDatagram {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }

    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)
    }

    unsafe fn write_frame_iov(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: msghdr is plain old data; zero is an empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr().cast_mut();
        msg.msg_iovlen = iov.len();
        // SAFETY: the caller guarantees every iovec is readable; msg points at them only.
        cvt(unsafe { libc::sendmsg(self.as_raw_fd(), &msg, 0) })
    }
}

/// Per-queue-pair counters, readable from other threads.
#[derive(Debug, Default)]
pub struct Stats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames from the host dropped: no guest buffer large enough.
    pub rx_dropped: AtomicU64,
    /// Frames from the guest dropped: bad chains or backend write errors.
    pub tx_dropped: AtomicU64,
    /// Descriptor chains of the wrong shape or outside guest memory.
    pub bad_descriptors: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "rx {} packets {} bytes ({} dropped), tx {} packets {} bytes ({} dropped), {} bad descriptors",
            g(&self.rx_packets),
            g(&self.rx_bytes),
            g(&self.rx_dropped),
            g(&self.tx_packets),
            g(&self.tx_bytes),
            g(&self.tx_dropped),
            g(&self.bad_descriptors)
        )
    }
}

/// What went wrong in a guest-supplied chain (rate-limited into the log by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainFault {
    /// A TX chain had a device-writable descriptor, or an RX chain a readable one.
    WrongDirection { head: u16 },
    /// The chain is too short for a header, or longer than any frame.
    BadLength { head: u16, len: usize },
    /// A descriptor points outside guest memory.
    OutOfMemory { head: u16, addr: u64 },
    /// An RX chain has more than [`MAX_RX_DESCS`] descriptors.
    TooManyDescriptors { head: u16 },
    /// A received frame would take more than [`MAX_RX_CHAINS`] chains (it is dropped).
    TooManyBuffers { len: usize },
    /// The queue itself is broken (avail ring outside memory, bad index).
    Queue(String),
}

impl std::fmt::Display for ChainFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainFault::WrongDirection { head } => write!(
                f,
                "descriptor chain {head} has a buffer in the wrong direction"
            ),
            ChainFault::BadLength { head, len } => {
                write!(f, "descriptor chain {head} has an unusable length {len}")
            }
            ChainFault::OutOfMemory { head, addr } => write!(
                f,
                "descriptor chain {head} points outside guest memory ({addr:#x})"
            ),
            ChainFault::TooManyDescriptors { head } => write!(
                f,
                "descriptor chain {head} has more than {MAX_RX_DESCS} descriptors"
            ),
            ChainFault::TooManyBuffers { len } => write!(
                f,
                "receive buffers are too small: a frame of {len} bytes would take more than {MAX_RX_CHAINS} of them (dropped)"
            ),
            ChainFault::Queue(e) => write!(f, "queue error: {e}"),
        }
    }
}

/// Result of one pass over a queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Chains were returned to the driver (it may need an interrupt).
    pub used: bool,
    /// Faults seen (the caller logs them, rate-limited).
    pub faults: Faults<ChainFault>,
    /// The pass stopped at its budget ([`pass::CHAINS`]) with work left: call again soon.
    pub more: bool,
}

/// Send every frame the driver queued on the TX queue to `io`.
pub fn process_tx(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    io: &dyn FrameIo,
    buf: &mut Vec<u8>,
    stats: &Stats,
) -> Pass {
    let mut pass = Pass::default();
    let mut budget = pass::Budget::default();
    while budget.take() {
        let chain = match queue.pop_descriptor_chain(mem) {
            Some(c) => {
                budget.popped();
                c
            }
            None => match budget.dry(queue, mem) {
                Dry::More => continue,
                Dry::Done => break,
                Dry::Fault(f) => {
                    pass.faults.push(ChainFault::Queue(f));
                    break;
                }
            },
        };
        let head = chain.head_index();
        // Pieces of the frame in guest memory, each checked to lie inside one region: the
        // kernel gathers them itself (writev), with no copy here. Chains of more pieces
        // than MAX_TX_IOV are gathered into `buf`.
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_TX_IOV];
        let mut addrs = [(GuestAddress(0), 0usize); MAX_TX_IOV];
        let mut pieces = 0usize;
        let mut total = 0usize;
        let mut fault = None;
        buf.clear();
        for desc in chain {
            if desc.is_write_only() {
                fault = Some(ChainFault::WrongDirection { head });
                break;
            }
            let len = desc.len() as usize;
            if total + len > MAX_FRAME {
                fault = Some(ChainFault::BadLength {
                    head,
                    len: total + len,
                });
                break;
            }
            let Ok(slice) = vm_memory::GuestMemoryBackend::get_slice(mem, desc.addr(), len) else {
                fault = Some(ChainFault::OutOfMemory {
                    head,
                    addr: desc.addr().0,
                });
                break;
            };
            if pieces == MAX_TX_IOV {
                // Too many pieces to pass on: gather the ones so far, then the rest.
                for a in &addrs {
                    let start = buf.len();
                    buf.resize(start + a.1, 0);
                    let _ = mem.read_slice(&mut buf[start..], a.0);
                }
                pieces = MAX_TX_IOV + 1;
            }
            if pieces > MAX_TX_IOV {
                let start = buf.len();
                buf.resize(start + len, 0);
                slice.copy_to(&mut buf[start..]);
            } else {
                iov[pieces] = libc::iovec {
                    iov_base: slice.ptr_guard().as_ptr().cast_mut().cast(),
                    iov_len: len,
                };
                addrs[pieces] = (desc.addr(), len);
                pieces += 1;
            }
            total += len;
        }
        if fault.is_none() && total < HDR_LEN {
            fault = Some(ChainFault::BadLength { head, len: total });
        }
        match fault {
            Some(f) => {
                Stats::add(&stats.bad_descriptors, 1);
                Stats::add(&stats.tx_dropped, 1);
                pass.faults.push(f);
            }
            None => {
                let sent = if pieces > MAX_TX_IOV {
                    io.write_frame(buf)
                } else {
                    // SAFETY: every iovec covers a range get_slice checked to lie in one
                    // mapped region of `mem`, which outlives this call.
                    unsafe { io.write_frame_iov(&iov[..pieces]) }
                };
                match sent {
                    Ok(_) => {
                        Stats::add(&stats.tx_packets, 1);
                        Stats::add(&stats.tx_bytes, (total - HDR_LEN) as u64);
                    }
                    Err(_) => Stats::add(&stats.tx_dropped, 1),
                }
            }
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            pass.faults.push(ChainFault::Queue(e.to_string()));
            break;
        }
        pass.used = true;
    }
    pass.more = budget.spent();
    pass
}

/// A frame read from the backend that the guest has no buffer for yet.
#[derive(Debug)]
pub struct RxState {
    buf: Vec<u8>,
    /// Length of the pending frame in `buf` (0: none).
    pending: usize,
    /// Whether the backend may have more frames (cleared on WouldBlock).
    pub backend_ready: bool,
    /// VIRTIO_NET_F_MRG_RXBUF negotiated: a frame may span several chains.
    pub mergeable: bool,
    /// Scratch for one frame's chains (head, range in `pieces`), kept to avoid per-frame
    /// allocations.
    chains: Vec<(u16, std::ops::Range<usize>)>,
    pieces: Vec<(GuestAddress, usize)>,
}

impl RxState {
    pub fn new(mergeable: bool) -> RxState {
        RxState {
            buf: vec![0; MAX_FRAME],
            pending: 0,
            backend_ready: true,
            mergeable,
            chains: Vec::with_capacity(64),
            pieces: Vec::with_capacity(64),
        }
    }

    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// How many receive pieces the state holds room for (it is never shrunk).
    #[cfg(test)]
    pub(super) fn pieces_capacity(&self) -> usize {
        self.pieces.capacity()
    }
}

/// Writable space of one chain: (address, length) pieces appended to `pieces`, validated to
/// lie in guest memory; returns the head and the chain's total length. On a fault nothing
/// is left appended.
fn writable_pieces(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    pieces: &mut Vec<(GuestAddress, usize)>,
) -> Result<(u16, usize), ChainFault> {
    let head = chain.head_index();
    let start = pieces.len();
    let mut total = 0usize;
    let mut fault = None;
    for (i, desc) in chain.enumerate() {
        if i == MAX_RX_DESCS {
            fault = Some(ChainFault::TooManyDescriptors { head });
            break;
        }
        if !desc.is_write_only() {
            fault = Some(ChainFault::WrongDirection { head });
            break;
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        if vm_memory::GuestMemoryBackend::get_slice(mem, desc.addr(), len).is_err() {
            fault = Some(ChainFault::OutOfMemory {
                head,
                addr: desc.addr().0,
            });
            break;
        }
        total = total.saturating_add(len);
        pieces.push((desc.addr(), len));
    }
    if fault.is_none() && total < HDR_LEN {
        fault = Some(ChainFault::BadLength { head, len: total });
    }
    match fault {
        Some(f) => {
            pieces.truncate(start);
            Err(f)
        }
        None => Ok((head, total)),
    }
}

/// Copy `data` into `pieces`; returns bytes written.
fn scatter(mem: &GuestMemoryMmap, pieces: &[(GuestAddress, usize)], data: &[u8]) -> usize {
    let mut off = 0;
    for (addr, len) in pieces {
        if off >= data.len() {
            break;
        }
        let n = (*len).min(data.len() - off);
        if mem.write_slice(&data[off..off + n], *addr).is_err() {
            break;
        }
        off += n;
    }
    off
}

/// Deliver frames from `io` to the RX queue until the backend is empty or the guest has no
/// buffers left (then the frame stays pending and notifications are re-armed).
pub fn process_rx(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    io: &dyn FrameIo,
    st: &mut RxState,
    stats: &Stats,
) -> Pass {
    let mut pass = Pass::default();
    // Whether this call already went round once for the pending frame because the avail
    // index moved. Once per frame: a ring laid over itself (used.flags on avail.idx) makes
    // the index move under our own notification writes, and must not spin the worker.
    let mut followed = false;
    // Frames and chains this pass has taken (see [`pass::CHAINS`]).
    let mut budget = pass::Budget::default();
    while budget.take() {
        if st.pending == 0 {
            followed = false;
            if !st.backend_ready {
                break;
            }
            match io.read_frame(&mut st.buf) {
                Ok(n) if n >= HDR_LEN => st.pending = n,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.backend_ready = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    st.backend_ready = false;
                    break;
                }
            }
        }
        let len = st.pending;
        // Collect chains until the frame fits (one chain unless mergeable).
        let mut start_avail = queue.next_avail();
        // The driver's avail index before this attempt: more buffers arrived only if it moves.
        let avail_before = queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map(|i| i.0)
            .ok();
        let chains = &mut st.chains;
        let pieces = &mut st.pieces;
        chains.clear();
        pieces.clear();
        let mut room = 0usize;
        let mut out_of_buffers = false;
        // Chains gathered for this frame since the last broken one (see [`MAX_RX_CHAINS`]).
        let mut popped = 0usize;
        let mut too_many = false;
        let mut out_of_budget = false;
        // The pass's `take` above admitted the first chain; each further one must fit too.
        let mut admitted = true;
        while room < len {
            if popped == MAX_RX_CHAINS {
                too_many = true;
                break;
            }
            if !admitted && !budget.left() {
                out_of_budget = true;
                break;
            }
            admitted = false;
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                out_of_buffers = true;
                break;
            };
            popped += 1;
            budget.charge();
            let start = pieces.len();
            match writable_pieces(chain, mem, pieces) {
                Ok((head, total)) => {
                    room += total;
                    chains.push((head, start..pieces.len()));
                }
                Err(f) => {
                    // A broken chain goes back used with length 0.
                    let head = match &f {
                        ChainFault::WrongDirection { head }
                        | ChainFault::BadLength { head, .. }
                        | ChainFault::OutOfMemory { head, .. }
                        | ChainFault::TooManyDescriptors { head } => *head,
                        ChainFault::Queue(_) | ChainFault::TooManyBuffers { .. } => 0,
                    };
                    Stats::add(&stats.bad_descriptors, 1);
                    pass.faults.push(f);
                    // Give back the broken chain and any gathered for this frame (length
                    // 0), and never rewind past them: the frame starts over after them.
                    for h in std::iter::once(head).chain(chains.drain(..).map(|c| c.0)) {
                        if queue.add_used(mem, h, 0).is_ok() {
                            pass.used = true;
                        }
                    }
                    pieces.clear();
                    room = 0;
                    popped = 0;
                    start_avail = queue.next_avail();
                    continue;
                }
            }
            if !st.mergeable {
                break;
            }
        }
        if out_of_budget {
            // The pass is spent with the frame half gathered: its chains go back to the ring
            // and the next pass (which can always finish a frame) starts it over.
            queue.set_next_avail(start_avail);
            break;
        }
        if too_many {
            pass.faults.push(ChainFault::TooManyBuffers { len });
        }
        if room < len && !too_many && (out_of_buffers || st.mergeable) {
            // Not enough buffers: wait for the driver, then give the chains back. The kick is
            // asked for at the driver's index as this attempt left it (`next_avail` is there
            // now): with EVENT_IDX, an avail_event at the rewound index would lie behind the
            // driver, which would then add buffers without ever kicking, and receive on this
            // queue would stop for good.
            let armed = queue.enable_notification(mem);
            queue.set_next_avail(start_avail);
            if let Err(e) = armed {
                pass.faults.push(ChainFault::Queue(e.to_string()));
                break;
            }
            // Go on only if the driver added buffers during this attempt (else a too-small or
            // broken ring spins).
            match queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
                Ok(idx) if Some(idx.0) != avail_before && !followed => {
                    let _ = notify::suppress_kicks(queue, mem);
                    followed = true;
                    continue;
                }
                Ok(_) => break,
                Err(e) => {
                    pass.faults.push(ChainFault::Queue(e.to_string()));
                    break;
                }
            }
        }
        if room < len {
            // Non-mergeable and the one chain is too small: drop the frame.
            for (head, _) in chains.iter() {
                if queue.add_used(mem, *head, 0).is_ok() {
                    pass.used = true;
                }
            }
            Stats::add(&stats.rx_dropped, 1);
            st.pending = 0;
            continue;
        }
        // num_buffers = chains used.
        let n = chains.len() as u16;
        st.buf[NUM_BUFFERS_OFF..NUM_BUFFERS_OFF + 2].copy_from_slice(&n.to_le_bytes());
        let mut off = 0usize;
        for (head, range) in chains.iter() {
            let written = scatter(mem, &pieces[range.clone()], &st.buf[off..len]);
            off += written;
            if queue.add_used(mem, *head, written as u32).is_err() {
                pass.faults
                    .push(ChainFault::Queue("add_used failed".into()));
            }
        }
        pass.used = true;
        Stats::add(&stats.rx_packets, 1);
        Stats::add(&stats.rx_bytes, (len - HDR_LEN) as u64);
        st.pending = 0;
    }
    pass.more = budget.spent();
    pass
}
