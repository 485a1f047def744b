//! One vsock stream connection between a guest port and a host stream, with the virtio
//! credit accounting (virtio 1.2 §5.10.6.3), apart from the sockets that feed it.
//!
//! Guest → host: payload goes to the host stream at once where it can, the rest waits in a
//! buffer of [`CONN_BUF`] bytes, the `buf_alloc` we announce. `fwd_cnt` counts the bytes
//! handed to the host stream, so a guest that respects its credit can never overflow the
//! buffer. A guest that ignores it is throttled: the packet that does not fit is refused
//! ([`Verdict::Throttle`]) and the device leaves it in the ring until the host reads.
//!
//! Host → guest: the host stream is read only while the guest has credit (`peer_buf_alloc -
//! (rx_cnt - peer_fwd_cnt)`), so nothing is buffered on this side at all. Out of credit, the
//! device asks once (`CREDIT_REQUEST`); an answer that grants nothing (the guest still holds
//! its buffer) is not asked again at once but after [`CREDIT_RETRY_MIN`], doubling up to
//! [`CREDIT_RETRY_MAX`], so a guest that answers every request honestly cannot be drawn into a
//! request/update ping-pong. Any guest packet that grants credit ends the wait.
//!
//! A guest's `CREDIT_REQUEST` is answered with a `CREDIT_UPDATE` packet of its own (virtio 1.2
//! §5.10.6.3: "The reply to this query is a VIRTIO_VSOCK_OP_CREDIT_UPDATE packet"), not
//! folded into data that happens to be waiting: drivers such as virtio-drivers' only count a
//! `CREDIT_UPDATE` as the answer and ask no more until they see one.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::packet::{op, Header, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Receive buffer per connection (guest → host), announced to the guest as `buf_alloc`.
pub const CONN_BUF: u32 = 256 * 1024;
/// Forwarded bytes after which the guest is told its new credit without waiting for a
/// packet to carry it.
const CREDIT_UPDATE_AFTER: u32 = CONN_BUF / 4;
/// How long a host-initiated connection waits for the guest's RESPONSE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection the guest shut down in both directions may take to flush.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait before asking a guest for credit again after an answer that granted none.
pub const CREDIT_RETRY_MIN: Duration = Duration::from_millis(10);
/// Longest such wait.
pub const CREDIT_RETRY_MAX: Duration = Duration::from_secs(1);

/// The host end: a Unix stream, or a sink inside the VMM (the sd_notify service).
pub trait HostStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// The guest will send no more: the host reader sees end-of-file.
    fn shutdown_write(&mut self);
    /// The connection is reset: the host end sees end-of-file and its writes fail at once,
    /// even while the RST still waits for a guest RX buffer.
    fn close(&mut self);
}

impl HostStream for UnixStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Read::read(self, buf)
    }
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Write::write(self, buf)
    }
    fn shutdown_write(&mut self) {
        let _ = UnixStream::shutdown(self, std::net::Shutdown::Write);
    }
    fn close(&mut self) {
        let _ = UnixStream::shutdown(self, std::net::Shutdown::Both);
    }
}

/// What the device does with a guest packet after the connection saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Consumed.
    Done,
    /// The payload does not fit (the guest ignored its credit): leave the packet in the
    /// ring and retry once the host stream has drained.
    Throttle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent (or pending), waiting for the guest's RESPONSE.
    Requesting,
    Established,
    /// RST queued or sent/received: the connection ends once nothing is pending.
    Reset,
}

/// Control packets waiting for an RX buffer.
mod pend {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RST: u8 = 4;
    pub const CREDIT_REQUEST: u8 = 8;
    pub const CREDIT_UPDATE: u8 = 16;
    /// The answer to the guest's CREDIT_REQUEST: a CREDIT_UPDATE packet, never folded.
    pub const CREDIT_REPLY: u8 = 32;
}

/// A packet for the guest: operation, flags and payload length (addresses and credit are
/// filled in by [`Connection::fill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxOp {
    pub op: u16,
    pub flags: u32,
    pub len: u32,
}

/// One connection.
pub struct Connection<S: HostStream> {
    pub stream: S,
    /// Host-side port (the guest's peer port).
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    state: State,
    pending: u8,
    /// Bytes for the host before any guest payload (`OK <port>\n`).
    host_prefix: Vec<u8>,
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    peer_shutdown: u32,
    host_readable: bool,
    host_eof: bool,
    host_hup: bool,
    shut_host_write: bool,
    /// A CREDIT_REQUEST went out and no credit came since: ask no more until `credit_retry`.
    credit_requested: bool,
    credit_retry: Option<Instant>,
    credit_backoff: Duration,
    deadline: Option<Instant>,
}

impl<S: HostStream> Connection<S> {
    fn new(stream: S, local_port: u32, peer_port: u32, state: State, pending: u8) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            pending,
            host_prefix: Vec::new(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            peer_shutdown: 0,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            shut_host_write: false,
            credit_requested: false,
            credit_retry: None,
            credit_backoff: CREDIT_RETRY_MIN,
            deadline: None,
        }
    }

    /// A host client asked for guest port `peer_port`: REQUEST pending; on the guest's
    /// RESPONSE the host gets `OK <local_port>\n`.
    pub fn host_initiated(stream: S, local_port: u32, peer_port: u32, now: Instant) -> Self {
        let mut c = Self::new(
            stream,
            local_port,
            peer_port,
            State::Requesting,
            pend::REQUEST,
        );
        c.deadline = Some(now + CONNECT_TIMEOUT);
        c
    }

    /// The guest's REQUEST (header `hdr`) reached a host listener: RESPONSE pending.
    pub fn guest_initiated(stream: S, hdr: &Header) -> Self {
        let mut c = Self::new(
            stream,
            hdr.dst_port,
            hdr.src_port,
            State::Established,
            pend::RESPONSE,
        );
        c.peer_credit(hdr);
        c
    }

    fn peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Bytes the guest can still take: its buffer minus what is in flight. A guest whose
    /// fwd_cnt runs ahead of what it was sent gets no more than its buffer.
    pub fn peer_credit_left(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn reset(&mut self) {
        self.state = State::Reset;
        self.pending = pend::RST;
        self.deadline = None;
        self.tx_buf = VecDeque::new();
        self.stream.close();
    }

    /// Resets the connection (the guest broke its protocol on these ports): the guest gets
    /// its RST, the host end its end-of-file now.
    pub fn abort(&mut self) {
        if self.state != State::Reset {
            self.reset();
        }
    }

    /// The connection is over (RST sent or received) and can be dropped.
    pub fn is_closed(&self) -> bool {
        self.state == State::Reset && self.pending == 0
    }

    /// Whether the guest accepted (or asked for) this connection and it is not being reset.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// A packet from the guest for this connection.
    pub fn on_packet(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        if self.state == State::Reset {
            return Verdict::Done;
        }
        self.peer_credit(hdr);
        if self.peer_credit_left() > 0 {
            self.credit_requested = false;
            self.credit_retry = None;
            self.credit_backoff = CREDIT_RETRY_MIN;
        }
        match hdr.op {
            op::RESPONSE if self.pending & pend::REQUEST != 0 => {
                // An answer to a REQUEST the guest has not been given yet: a broken guest.
                self.reset();
            }
            op::RESPONSE if self.state == State::Requesting => {
                self.state = State::Established;
                self.deadline = None;
                self.host_prefix = format!("OK {}\n", self.local_port).into_bytes();
                self.flush();
            }
            op::RST => {
                self.state = State::Reset;
                self.pending = 0;
            }
            op::SHUTDOWN if self.state == State::Established => {
                self.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.flush();
                if self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND && self.deadline.is_none() {
                    self.deadline = Some(Instant::now() + SHUTDOWN_TIMEOUT);
                }
                self.maybe_finish();
            }
            op::RW
                if self.state == State::Established && self.peer_shutdown & SHUTDOWN_SEND == 0 =>
            {
                return self.take_payload(payload);
            }
            // Its credit was taken above; one granting none leaves the request standing.
            op::CREDIT_UPDATE if self.state == State::Established => {}
            op::CREDIT_REQUEST if self.state == State::Established => {
                self.pending |= pend::CREDIT_REPLY;
            }
            _ => self.reset(),
        }
        Verdict::Done
    }

    fn take_payload(&mut self, payload: &[u8]) -> Verdict {
        self.flush();
        if self.state == State::Reset {
            return Verdict::Done;
        }
        let mut rest = payload;
        if self.tx_buf.is_empty() && self.host_prefix.is_empty() {
            match self.write_host(payload) {
                Some(n) => rest = &payload[n..],
                None => return Verdict::Done,
            }
        }
        if rest.is_empty() {
            return Verdict::Done;
        }
        if self.tx_buf.len() + rest.len() > CONN_BUF as usize {
            return Verdict::Throttle;
        }
        self.tx_buf.extend(rest);
        Verdict::Done
    }

    /// Writes guest payload to the host; counts it as forwarded. None after a fatal error.
    fn write_host(&mut self, data: &[u8]) -> Option<usize> {
        match self.stream.write(data) {
            Ok(n) => {
                self.forwarded(n);
                Some(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Some(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => Some(0),
            Err(_) => {
                self.reset();
                None
            }
        }
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_AFTER {
            self.pending |= pend::CREDIT_UPDATE;
        }
    }

    /// Writes what waits for the host (prefix, then buffered payload) as far as it goes.
    pub fn flush(&mut self) {
        while !self.host_prefix.is_empty() && self.state != State::Reset {
            match self.stream.write(&self.host_prefix) {
                Ok(n) => {
                    self.host_prefix.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => self.reset(),
            }
        }
        let mut buf = std::mem::take(&mut self.tx_buf);
        while !buf.is_empty() && self.state != State::Reset {
            let (a, _) = buf.as_slices();
            match self.write_host(a) {
                Some(0) | None => break,
                Some(n) => {
                    buf.drain(..n);
                }
            }
        }
        // Keep the memory only while it holds bytes (reset() already dropped them).
        if self.state != State::Reset && !buf.is_empty() {
            self.tx_buf = buf;
        }
        self.maybe_finish();
    }

    /// After the guest's shutdown: pass end-of-file on once the buffer is out, and end the
    /// connection once the guest shut both directions.
    fn maybe_finish(&mut self) {
        if self.state != State::Established || !self.tx_buf.is_empty() {
            return;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.shut_host_write {
            self.shut_host_write = true;
            self.stream.shutdown_write();
        }
        if self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            self.reset();
        }
    }

    /// Bytes waiting for the host stream.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len() + self.host_prefix.len()
    }

    /// epoll told us about the host stream.
    pub fn on_host_event(&mut self, readable: bool, writable: bool, hangup: bool) {
        if readable || hangup {
            self.host_readable = true;
        }
        if hangup {
            self.host_hup = true;
        }
        if writable {
            self.flush();
        }
    }

    /// Interest in the host stream: (readable, writable); (false, false) after a hang-up
    /// (epoll would report it forever).
    pub fn interest(&self) -> (bool, bool) {
        if self.host_hup || self.state == State::Reset {
            return (false, false);
        }
        let read = self.state == State::Established
            && !self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0;
        (read, self.buffered() > 0)
    }

    /// Whether [`Connection::next_rx`] may have something for the guest.
    pub fn has_rx(&self) -> bool {
        self.pending != 0
            || (self.state == State::Established
                && self.host_readable
                && !self.host_eof
                && self.peer_shutdown & SHUTDOWN_RCV == 0
                && (self.peer_credit_left() > 0 || !self.credit_requested))
            || self.host_gone()
    }

    /// The host end hung up and nothing more of it can reach the guest: read to its end, or
    /// the guest shut its receive side (so what is left unread is not wanted). The
    /// connection is over: the guest gets a reset.
    fn host_gone(&self) -> bool {
        self.host_hup
            && self.state == State::Established
            && (self.host_eof || self.peer_shutdown & SHUTDOWN_RCV != 0)
    }

    /// The next packet for the guest; payload (at most `buf.len()` bytes) read into `buf`.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<RxOp> {
        let ctl = |op, flags| Some(RxOp { op, flags, len: 0 });
        if self.pending & pend::RST != 0 {
            self.pending = 0;
            return ctl(op::RST, 0);
        }
        for (bit, op) in [
            (pend::REQUEST, op::REQUEST),
            (pend::RESPONSE, op::RESPONSE),
            (pend::CREDIT_REQUEST, op::CREDIT_REQUEST),
            (pend::CREDIT_REPLY, op::CREDIT_UPDATE),
        ] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                return ctl(op, 0);
            }
        }
        if let Some(rx) = self.read_host(buf) {
            return Some(rx);
        }
        if self.pending & pend::CREDIT_UPDATE != 0 {
            self.pending &= !pend::CREDIT_UPDATE;
            return ctl(op::CREDIT_UPDATE, 0);
        }
        None
    }

    fn read_host(&mut self, buf: &mut [u8]) -> Option<RxOp> {
        // The host closed both ways: nothing more can flow.
        if self.host_gone() {
            self.reset();
            self.pending = 0;
            return Some(RxOp {
                op: op::RST,
                flags: 0,
                len: 0,
            });
        }
        if self.state != State::Established
            || self.peer_shutdown & SHUTDOWN_RCV != 0
            || self.host_eof
        {
            return None;
        }
        if !self.host_readable {
            return None;
        }
        let credit = self.peer_credit_left() as usize;
        if credit == 0 {
            if !self.credit_requested {
                self.credit_requested = true;
                self.credit_retry = Some(Instant::now() + self.credit_backoff);
                self.credit_backoff = (self.credit_backoff * 2).min(CREDIT_RETRY_MAX);
                return Some(RxOp {
                    op: op::CREDIT_REQUEST,
                    flags: 0,
                    len: 0,
                });
            }
            return None;
        }
        let n = credit.min(buf.len());
        if n == 0 {
            return None;
        }
        match self.stream.read(&mut buf[..n]) {
            Ok(0) => {
                self.host_eof = true;
                Some(RxOp {
                    op: op::SHUTDOWN,
                    flags: SHUTDOWN_SEND,
                    len: 0,
                })
            }
            Ok(k) => {
                self.rx_cnt += Wrapping(k as u32);
                Some(RxOp {
                    op: op::RW,
                    flags: 0,
                    len: k as u32,
                })
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                self.host_readable = false;
                None
            }
            Err(_) => {
                self.reset();
                self.pending = 0;
                Some(RxOp {
                    op: op::RST,
                    flags: 0,
                    len: 0,
                })
            }
        }
    }

    /// Completes `rx` into a header for the guest (credit fields included, which also
    /// counts as the credit update).
    pub fn fill(&mut self, rx: &RxOp, guest_cid: u64) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !pend::CREDIT_UPDATE;
        Header {
            src_cid: super::HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: rx.len,
            type_: super::packet::TYPE_STREAM,
            op: rx.op,
            flags: rx.flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// When this connection must be looked at again without any event.
    pub fn deadline(&self) -> Option<Instant> {
        let retry = self.credit_retry.filter(|_| self.credit_requested);
        match (self.deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Deadlines that passed: the guest never answered or never let us finish (RST); the
    /// wait before asking for credit again is over. Whether anything changed.
    pub fn on_timeout(&mut self, now: Instant) -> bool {
        let mut changed = false;
        if self.credit_retry.is_some_and(|t| now >= t) {
            self.credit_retry = None;
            changed = self.credit_requested;
            self.credit_requested = false;
        }
        match self.deadline {
            Some(t) if now >= t => {
                self.reset();
                true
            }
            _ => changed,
        }
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
