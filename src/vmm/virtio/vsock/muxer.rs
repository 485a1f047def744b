//! The host side of the hybrid vsock (as Firecracker's and Cloud Hypervisor's): maps
//! connections between guest ports and Unix sockets.
//!
//! - Host-initiated: a client connects to the device's socket (`vsock.sock`) and writes
//!   `CONNECT <port>\n`; the guest gets a REQUEST to that port from a fresh host port, and on
//!   its RESPONSE the client reads `OK <host port>\n`, then the stream is the connection.
//! - Guest-initiated: a REQUEST to host port P connects to `vsock.sock_P`; nothing listening
//!   there (or a full backlog: the connect never blocks) is answered with RST. Port
//!   [`NOTIFY_PORT`] is the VMM's own sd_notify service when that is on.
//!
//! Every packet that breaks the rules (wrong type or CIDs, unknown connection, an operation
//! out of turn) is answered with RST (never an RST with an RST). Memory is bounded: at most
//! [`MAX_CONNS`] connections of [`CONN_BUF`] bytes each, [`MAX_PENDING`] clients in the
//! handshake and [`MAX_RST`] queued RSTs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{Connection, Verdict};
pub use super::host::{connect_nonblocking, port_path, Host};
use super::notify::NotifySink;
use super::packet::{op, Header, TYPE_STREAM};
use super::HOST_CID;
use crate::log_limited;
use crate::vmm::event::{EventSender, VmEvent};
use crate::vmm::ratelimit::SharedLimiter;
use crate::vmm::spec::NOTIFY_PORT;

/// Most connections at once.
pub const MAX_CONNS: usize = 128;
/// Most host clients between accept and their `CONNECT` line.
pub const MAX_PENDING: usize = 32;
/// Most RSTs waiting for RX buffers (answers to bad packets); more are dropped.
pub const MAX_RST: usize = 256;
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// Time a host client has to send its `CONNECT` line.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// First host port handed to host-initiated connections.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// epoll token of the listening socket; host streams use their fd as token.
pub const TOKEN_LISTENER: u64 = 1 << 40;

/// (host port, guest port).
type Key = (u32, u32);

struct Pending {
    stream: UnixStream,
    deadline: Instant,
}

/// The connection table and the sockets behind it.
pub struct Muxer {
    cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Connection<Host>>,
    by_fd: HashMap<RawFd, Key>,
    registered: HashMap<RawFd, (bool, bool)>,
    pending: HashMap<RawFd, Pending>,
    rx_list: VecDeque<Key>,
    rx_set: HashSet<Key>,
    rsts: VecDeque<Header>,
    local_ports: HashSet<u32>,
    next_port: u32,
    notify: Option<EventSender>,
    throttled: Option<Key>,
    log: SharedLimiter,
    /// Warnings (RST replies dropped, accept failed): a limiter of their own, so that a
    /// flood of per-packet debug lines cannot use up their window.
    warn_log: SharedLimiter,
}

fn ctl_err(what: &str, e: std::io::Error) {
    log::warn!("virtio-vsock: epoll_ctl ({what}) failed: {e}");
}

impl Muxer {
    /// A muxer for the guest `cid` serving `listener` (bound at `socket`), registered with
    /// `epoll`; `notify`: the sd_notify service is on and reports there.
    pub fn new(
        cid: u64,
        socket: PathBuf,
        listener: UnixListener,
        epoll: Epoll,
        notify: Option<EventSender>,
    ) -> std::io::Result<Muxer> {
        listener.set_nonblocking(true)?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(Muxer {
            cid,
            socket,
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            registered: HashMap::new(),
            pending: HashMap::new(),
            rx_list: VecDeque::new(),
            rx_set: HashSet::new(),
            rsts: VecDeque::new(),
            local_ports: HashSet::new(),
            next_port: FIRST_LOCAL_PORT,
            notify,
            throttled: None,
            log: SharedLimiter::new(),
            warn_log: SharedLimiter::new(),
        })
    }

    /// Log through the device's limiters (`log`, `warn_log`), which outlive this muxer: a
    /// guest resetting the device in a loop gets no fresh burst of lines each time.
    pub fn with_logs(mut self, log: SharedLimiter, warn_log: SharedLimiter) -> Muxer {
        self.log = log;
        self.warn_log = warn_log;
        self
    }

    /// The epoll set (the worker adds its queue and stop eventfds).
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Hands back the listening socket (device reset: a new worker takes it over).
    pub fn into_listener(self) -> UnixListener {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            self.listener.as_raw_fd(),
            EpollEvent::default(),
        );
        self.listener
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held for host streams, all connections together.
    pub fn buffered(&self) -> usize {
        self.conns.values().map(|c| c.buffered()).sum()
    }

    /// Answers the guest packet `hdr` with RST (unless it is an RST).
    pub fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op == op::RST {
            return;
        }
        if self.rsts.len() >= MAX_RST {
            log_limited!(
                self.warn_log,
                log::Level::Warn,
                "virtio-vsock: guest floods bad packets; dropping RST replies"
            );
            return;
        }
        self.rsts.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    /// A packet the guest sent, with its payload. [`Verdict::Throttle`]: the connection's
    /// buffer is full; offer the packet again once [`Muxer::tx_blocked`] is false.
    pub fn send_pkt(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        let bad = if hdr.type_ != TYPE_STREAM {
            Some("socket type")
        } else if hdr.src_cid != self.cid {
            Some("source CID")
        } else if hdr.dst_cid != HOST_CID {
            Some("destination CID")
        } else {
            None
        };
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(what) = bad {
            log_limited!(
                self.log,
                log::Level::Debug,
                "virtio-vsock: guest packet with bad {what} ({hdr:?}); RST"
            );
            self.rst_and_abort(hdr, key);
            return Verdict::Done;
        }
        if hdr.op == op::REQUEST {
            self.request(hdr, key);
            return Verdict::Done;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.reply_rst(hdr);
            return Verdict::Done;
        };
        let v = conn.on_packet(hdr, payload);
        if v == Verdict::Throttle {
            self.throttled = Some(key);
        }
        self.update(key);
        v
    }

    /// Whether guest TX must wait: the connection that refused a packet still has bytes
    /// for its host stream.
    pub fn tx_blocked(&mut self) -> bool {
        let Some(key) = self.throttled else {
            return false;
        };
        if self.conns.get(&key).is_some_and(|c| c.buffered() > 0) {
            return true;
        }
        self.throttled = None;
        false
    }

    /// A broken packet on `key`: RST for the guest, and a live connection on those ports
    /// ends too (the guest drops its socket on that RST; the host end must not stay open,
    /// holding a connection slot, with nothing left to talk to).
    fn rst_and_abort(&mut self, hdr: &Header, key: Key) {
        match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.abort();
                self.update(key);
            }
            None => self.reply_rst(hdr),
        }
    }

    fn request(&mut self, hdr: &Header, key: Key) {
        if self.conns.contains_key(&key) {
            // A second REQUEST on live ports.
            self.rst_and_abort(hdr, key);
            return;
        }
        if self.conns.len() >= MAX_CONNS {
            self.reply_rst(hdr);
            return;
        }
        let host = if hdr.dst_port == NOTIFY_PORT && self.notify.is_some() {
            Host::Notify(NotifySink::default())
        } else {
            match connect_nonblocking(&port_path(&self.socket, hdr.dst_port)) {
                Ok(s) => Host::Unix(s),
                Err(e) => {
                    log_limited!(
                        self.log,
                        log::Level::Debug,
                        "virtio-vsock: guest port {} -> host port {}: {e}; RST",
                        hdr.src_port,
                        hdr.dst_port
                    );
                    self.reply_rst(hdr);
                    return;
                }
            }
        };
        if let Some(fd) = host.fd() {
            self.by_fd.insert(fd, key);
        }
        self.conns
            .insert(key, Connection::guest_initiated(host, hdr));
        self.update(key);
    }

    /// After anything happened to `key`: drop it when closed, else fix its epoll interest
    /// and schedule it for RX.
    fn update(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let closed = conn.is_closed();
        if let Host::Notify(n) = &mut conn.stream {
            if let Some(msg) = n.take(closed) {
                if let Some(tx) = &self.notify {
                    tx.send(VmEvent::GuestNotify {
                        ready: msg.ready,
                        status: msg.status,
                    });
                }
            }
        }
        let fd = conn.stream.fd();
        if closed {
            if let Some(fd) = fd {
                self.set_interest(fd, (false, false));
                self.by_fd.remove(&fd);
            }
            self.local_ports.remove(&key.0);
            self.conns.remove(&key);
            return;
        }
        let has_rx = conn.has_rx();
        let want = conn.interest();
        if let Some(fd) = fd {
            self.set_interest(fd, want);
        }
        if has_rx && self.rx_set.insert(key) {
            self.rx_list.push_back(key);
        }
    }

    fn set_interest(&mut self, fd: RawFd, want: (bool, bool)) {
        let have = self.registered.get(&fd).copied().unwrap_or((false, false));
        if have == want {
            return;
        }
        let mut ev = EventSet::empty();
        if want.0 {
            ev |= EventSet::IN;
        }
        if want.1 {
            ev |= EventSet::OUT;
        }
        let (operation, what) = match (have == (false, false), want == (false, false)) {
            (true, _) => (ControlOperation::Add, "add"),
            (false, true) => (ControlOperation::Delete, "delete"),
            (false, false) => (ControlOperation::Modify, "modify"),
        };
        if let Err(e) = self
            .epoll
            .ctl(operation, fd, EpollEvent::new(ev, fd as u64))
        {
            ctl_err(what, e);
        }
        if want == (false, false) {
            self.registered.remove(&fd);
        } else {
            self.registered.insert(fd, want);
        }
    }

    /// Whether [`Muxer::recv_pkt`] may have a packet for the guest.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_list.is_empty()
    }

    /// The next packet for the guest, its payload (≤ `buf.len()` bytes) read into `buf`.
    /// `None` may leave packets waiting that need a larger buffer.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(h) = self.rsts.pop_front() {
            return Some(h);
        }
        // Each scheduled connection gets one turn: one that has nothing for a buffer this size
        // (a header-only buffer and data waiting) is queued again for a later buffer, not
        // asked again now.
        for _ in 0..self.rx_list.len() {
            let Some(key) = self.rx_list.pop_front() else {
                break;
            };
            self.rx_set.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let rx = conn.next_rx(buf);
            let hdr = rx.map(|rx| conn.fill(&rx, self.cid));
            self.update(key);
            if hdr.is_some() {
                return hdr;
            }
        }
        None
    }

    /// An epoll event for `token`.
    pub fn handle_event(&mut self, token: u64, events: EventSet) {
        if token == TOKEN_LISTENER {
            self.accept();
            return;
        }
        let fd = token as RawFd;
        if self.pending.contains_key(&fd) {
            self.handshake(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            // A half-close (READ_HANG_UP: the host shut its writing side) is something to
            // read (EOF), not a hang-up: the guest may still send.
            conn.on_host_event(
                events.intersects(EventSet::IN | EventSet::READ_HANG_UP),
                events.contains(EventSet::OUT),
                events.intersects(EventSet::HANG_UP | EventSet::ERROR),
            );
            if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                // Reported whatever the interest: stop watching, the connection ends on
                // its own (reads see EOF, writes fail).
                self.set_interest(fd, (false, false));
            }
        }
        self.update(key);
    }

    fn accept(&mut self) {
        for _ in 0..MAX_PENDING {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log_limited!(
                        self.warn_log,
                        log::Level::Warn,
                        "virtio-vsock: accept failed: {e}"
                    );
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING || stream.set_nonblocking(true).is_err() {
                continue; // dropped: the client sees the connection closed
            }
            let fd = stream.as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, fd as u64);
            if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
                ctl_err("add", e);
                continue;
            }
            self.pending.insert(
                fd,
                Pending {
                    stream,
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                },
            );
            self.handshake(fd);
        }
    }

    /// Reads a host client's `CONNECT <port>\n` (peeked first, so that bytes after the line
    /// stay in the socket for the guest).
    fn handshake(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get(&fd) else {
            return;
        };
        let mut line = [0u8; MAX_LINE];
        // SAFETY: fd is the open socket owned by `p`; the buffer is valid for its length.
        let n = unsafe {
            libc::recv(
                fd,
                line.as_mut_ptr().cast(),
                line.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted {
                return;
            }
            self.drop_pending(fd);
            return;
        }
        let n = n as usize;
        let Some(end) = line[..n].iter().position(|&b| b == b'\n') else {
            if n == 0 || n == MAX_LINE {
                self.drop_pending(fd); // EOF, or no line within the limit
            }
            return;
        };
        let port = std::str::from_utf8(&line[..end])
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let mut consumed = vec![0u8; end + 1];
        let read_ok = std::io::Read::read_exact(&mut &p.stream, &mut consumed).is_ok();
        let (Some(port), true) = (port, read_ok) else {
            self.drop_pending(fd);
            return;
        };
        if self.conns.len() >= MAX_CONNS {
            self.drop_pending(fd);
            return;
        }
        let Some(p) = self.take_pending(fd) else {
            return;
        };
        let local = self.alloc_port();
        let key = (local, port);
        self.local_ports.insert(local);
        self.by_fd.insert(fd, key);
        self.conns.insert(
            key,
            Connection::host_initiated(Host::Unix(p.stream), local, port, Instant::now()),
        );
        self.update(key);
    }

    fn take_pending(&mut self, fd: RawFd) -> Option<Pending> {
        let p = self.pending.remove(&fd)?;
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            ctl_err("delete", e);
        }
        Some(p)
    }

    fn drop_pending(&mut self, fd: RawFd) {
        drop(self.take_pending(fd));
    }

    fn alloc_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.local_ports.contains(&p) && !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// The earliest deadline (handshakes, connects, shutdowns).
    pub fn next_deadline(&self) -> Option<Instant> {
        let c = self.conns.values().filter_map(|c| c.deadline());
        let p = self.pending.values().map(|p| p.deadline);
        c.chain(p).min()
    }

    /// Acts on every deadline that passed.
    pub fn on_timers(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            self.drop_pending(fd);
        }
        let keys: Vec<Key> = self
            .conns
            .iter_mut()
            .filter_map(|(k, c)| c.on_timeout(now).then_some(*k))
            .collect();
        for k in keys {
            self.update(k);
        }
    }
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
