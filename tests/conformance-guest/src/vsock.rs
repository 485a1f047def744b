//! The socket check, through virtio-drivers' `VsockConnectionManager` (over `VirtIOSocket`):
//! a client that connects to the host (CID 2) and checks the echo of a pattern stream
//! (`conf.vsock.client=<port>:<bytes>`), and an echo server for connections from the host
//! (`conf.vsock.echo=<port>`). Each step prints one line (README.md).
//!
//! The driver's choices are kept as they are: 8 RX buffers of [`RX_BUF`] bytes, no credit
//! update unless the device asks (`CREDIT_REQUEST`, answered inside the manager's `poll`) or
//! a data packet carries it, a `CREDIT_REQUEST` whenever a send finds too little credit and
//! none is outstanding. The guest's receive buffer per connection is [`CAPACITY`] bytes (the
//! `buf_alloc` it announces), far below the transfers, so credit runs out and comes back
//! many times. A refused send is retried only once the host granted more ([`Credit`]).

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use virtio_drivers::device::socket::{
    DisconnectReason, SocketError, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEvent,
    VsockEventType, VMADDR_CID_HOST,
};
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::Error;

use crate::hal::IdHal;
use crate::{param, parse_num, say, unmask_irq, wait_irq, VOLT_IRQ_COUNT};

/// Bytes per RX buffer (header included): the driver's default is 512.
const RX_BUF: usize = 4096;
/// Receive buffer per connection, the credit the guest gives the host.
const CAPACITY: u32 = 64 * 1024;
/// Largest payload per send (Linux and volt-vmm take at most 64 KiB per packet).
const CHUNK: usize = 16 * 1024;
/// Local port of the client connection.
const CLIENT_PORT: u32 = 50_000;
/// Most echo connections at once; more are reset.
const MAX_ECHO: usize = 4;
/// virtio-mmio InterruptStatus / InterruptACK.
const R_INTERRUPT_STATUS: u64 = 0x60;
const R_INTERRUPT_ACK: u64 = 0x64;

type Mgr = VsockConnectionManager<IdHal, MmioTransport<'static>, RX_BUF>;

/// Byte `i` of every test stream (the tests compute the same): the top byte of
/// `i * 0x9e3779b97f4a7c15`.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

fn host(port: u32) -> VsockAddr {
    VsockAddr {
        cid: VMADDR_CID_HOST,
        port,
    }
}

fn is_no_credit(e: &Error) -> bool {
    matches!(
        e,
        Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)
    )
}

fn reason(r: DisconnectReason) -> &'static str {
    match r {
        DisconnectReason::Reset => "reset",
        DisconnectReason::Shutdown => "shutdown",
    }
}

/// What the guest last heard of the host's credit on one connection (every event carries
/// the host's `buf_alloc` and `fwd_cnt`). virtio-drivers sends a CREDIT_REQUEST for each
/// refused send (when none is outstanding): retrying on every event would turn each
/// zero-credit answer into the next request for as long as the host does not read. So a
/// refused send waits until the host's limit (`fwd_cnt + buf_alloc`, a stream offset) moves.
#[derive(Default)]
struct Credit {
    limit: u32,
    refused_at: Option<u32>,
}

impl Credit {
    fn heard(&mut self, ev: &VsockEvent) {
        let b = &ev.buffer_status;
        self.limit = b.forward_count.wrapping_add(b.buffer_allocation);
    }
    fn may_try(&self) -> bool {
        self.refused_at != Some(self.limit)
    }
    fn refused(&mut self) {
        self.refused_at = Some(self.limit);
    }
}

/// One connection the host opened to the echo port.
struct Echo {
    peer: VsockAddr,
    port: u32,
    /// Bytes received and not yet sent back: `buf[off..len]`.
    buf: Vec<u8>,
    off: usize,
    len: usize,
    echoed: u64,
    credit: Credit,
    end: Option<&'static str>,
}

/// The device and its services.
pub struct Vsock {
    mgr: Mgr,
    mmio: u64,
    /// The interrupt count at the last acknowledgement.
    acked: u32,
    echo_port: Option<u32>,
    echoes: Vec<Echo>,
}

/// `<port>:<bytes>`.
fn port_len(v: &[u8]) -> Option<(u32, u64)> {
    let (port, rest) = parse_num(v, false)?;
    let (len, rest) = parse_num(rest.strip_prefix(b":")?, false)?;
    (rest.is_empty() && port <= u64::from(u32::MAX)).then_some((port as u32, len))
}

impl Vsock {
    /// Brings the device at `mmio` (interrupts on `irq`) up; prints `vsock cid=<n>`.
    pub fn new(transport: MmioTransport<'static>, mmio: u64, irq: u64) -> Option<Vsock> {
        let dev = match VirtIOSocket::<IdHal, _, RX_BUF>::new(transport) {
            Ok(d) => d,
            Err(e) => {
                say!("vsock init failed: {e}");
                return None;
            }
        };
        let mgr = VsockConnectionManager::new_with_capacity(dev, CAPACITY);
        say!("vsock cid={}", mgr.guest_cid());
        unmask_irq(irq);
        Some(Vsock {
            mgr,
            mmio,
            acked: VOLT_IRQ_COUNT.load(Ordering::Acquire),
            echo_port: None,
            echoes: Vec::new(),
        })
    }

    /// VirtIOSocket has no `ack_interrupt`: acknowledge at the transport, as the driver's
    /// MmioTransport::ack_interrupt does, once per interrupt that came (each register access
    /// is a VM exit). Called before looking for work, so nothing acknowledged goes unseen.
    fn ack(&mut self) {
        let n = VOLT_IRQ_COUNT.load(Ordering::Acquire);
        if n == self.acked {
            return;
        }
        self.acked = n;
        let status = (self.mmio + R_INTERRUPT_STATUS) as *const u32;
        let ack = (self.mmio + R_INTERRUPT_ACK) as *mut u32;
        // SAFETY: the device's MMIO window (identity-mapped), registers of the virtio-mmio
        // layout; the driver never touches these two.
        unsafe {
            let s = status.read_volatile();
            if s != 0 {
                ack.write_volatile(s);
            }
        }
    }

    fn error(&self, what: &str, e: Error) {
        say!("vsock error {what}: {e}");
    }

    /// `conf.vsock.client=<port>:<bytes>`, run to its end before the guest goes on.
    pub fn client_check(&mut self, cmdline: &[u8]) {
        let Some((port, total)) = param(cmdline, b"conf.vsock.client").and_then(port_len) else {
            return;
        };
        let peer = host(port);
        if let Err(e) = self.mgr.connect(peer, CLIENT_PORT) {
            return self.error("connect", e);
        }
        let mut credit = Credit::default();
        // Until the host accepts or refuses.
        loop {
            let seen = VOLT_IRQ_COUNT.load(Ordering::Acquire);
            self.ack();
            match self.mgr.poll() {
                Ok(Some(ev)) if ev.source == peer => match ev.event_type {
                    VsockEventType::Connected => {
                        credit.heard(&ev);
                        break;
                    }
                    VsockEventType::Disconnected { .. } => {
                        say!("vsock client port={port} refused");
                        return;
                    }
                    _ => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => wait_irq(seen),
                Err(e) => return self.error("poll", e),
            }
        }
        say!("vsock client port={port} connected");
        let mut out = vec![0u8; CHUNK];
        let mut inb_buf = vec![0u8; CHUNK];
        let (mut sent, mut received) = (0u64, 0u64);
        let mut differs: Option<u64> = None;
        let mut waits = 0u64;
        let mut updates = 0u64;
        let mut end: Option<&'static str> = None;
        let mut shut = false;
        while end.is_none() {
            let seen = VOLT_IRQ_COUNT.load(Ordering::Acquire);
            self.ack();
            let mut busy = false;
            if sent < total && credit.may_try() {
                let n = (total - sent).min(CHUNK as u64) as usize;
                for (k, b) in out[..n].iter_mut().enumerate() {
                    *b = pattern(sent + k as u64);
                }
                match self.mgr.send(peer, CLIENT_PORT, &out[..n]) {
                    Ok(()) => {
                        sent += n as u64;
                        busy = true;
                    }
                    Err(e) if is_no_credit(&e) => {
                        if waits == 0 {
                            say!("vsock client port={port} credit-wait sent={sent}");
                        }
                        waits += 1;
                        credit.refused();
                    }
                    Err(e) => {
                        self.error("send", e);
                        end = Some("error");
                    }
                }
            }
            match self.mgr.poll() {
                Ok(Some(ev)) if ev.source == peer && ev.destination.port == CLIENT_PORT => {
                    busy = true;
                    credit.heard(&ev);
                    match ev.event_type {
                        VsockEventType::CreditUpdate => updates += 1,
                        VsockEventType::Disconnected { reason: r } => end = Some(reason(r)),
                        _ => {}
                    }
                }
                Ok(Some(_)) => busy = true,
                Ok(None) => {}
                Err(e) => {
                    self.error("poll", e);
                    end = Some("error");
                }
            }
            // Data is drained at once, so the manager's buffer is empty when it answers the
            // device's CREDIT_REQUEST.
            loop {
                match self.mgr.recv(peer, CLIENT_PORT, &mut inb_buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for (k, &b) in inb_buf[..n].iter().enumerate() {
                            let i = received + k as u64;
                            if differs.is_none() && (i >= total || b != pattern(i)) {
                                differs = Some(i);
                            }
                        }
                        received += n as u64;
                        busy = true;
                    }
                    Err(_) => break, // the connection is gone (reported by poll)
                }
            }
            if sent == total && received >= total && !shut && end.is_none() {
                shut = true;
                if let Err(e) = self.mgr.shutdown(peer, CLIENT_PORT) {
                    self.error("shutdown", e);
                    end = Some("error");
                }
            }
            if !busy && end.is_none() {
                wait_irq(seen);
            }
        }
        let check = match differs {
            None if received == total => "ok",
            None => "short",
            Some(_) => "differs",
        };
        say!(
            "vsock client port={port} sent={sent} received={received} check={check} first-difference={} credit-waits={waits} credit-updates={updates} end={}",
            differs.map_or(-1, |d| d as i64),
            end.unwrap_or("none")
        );
    }

    /// `conf.vsock.echo=<port>`: start listening (prints `vsock echo port=<p> listening`).
    pub fn listen(&mut self, cmdline: &[u8]) {
        let Some((port, _)) = param(cmdline, b"conf.vsock.echo").and_then(|v| parse_num(v, false))
        else {
            return;
        };
        let port = port as u32;
        self.mgr.listen(port);
        self.echo_port = Some(port);
        say!("vsock echo port={port} listening");
    }

    /// One round of the echo server; whether anything happened.
    pub fn poll(&mut self) -> bool {
        self.ack();
        let mut busy = false;
        match self.mgr.poll() {
            Ok(Some(ev)) => {
                busy = true;
                let at = self
                    .echoes
                    .iter()
                    .position(|c| c.peer == ev.source && c.port == ev.destination.port);
                if let Some(i) = at {
                    self.echoes[i].credit.heard(&ev);
                }
                match (&ev.event_type, at) {
                    (&VsockEventType::ConnectionRequest, None)
                        if Some(ev.destination.port) == self.echo_port =>
                    {
                        if self.echoes.len() >= MAX_ECHO {
                            let _ = self.mgr.force_close(ev.source, ev.destination.port);
                        } else {
                            say!(
                                "vsock echo port={} peer={}:{} connected",
                                ev.destination.port,
                                ev.source.cid,
                                ev.source.port
                            );
                            let mut credit = Credit::default();
                            credit.heard(&ev);
                            self.echoes.push(Echo {
                                peer: ev.source,
                                port: ev.destination.port,
                                buf: vec![0u8; CHUNK],
                                off: 0,
                                len: 0,
                                echoed: 0,
                                credit,
                                end: None,
                            });
                        }
                    }
                    (&VsockEventType::Disconnected { reason: r }, Some(i)) => {
                        // The host is gone: what was not sent back yet is dropped.
                        let c = &mut self.echoes[i];
                        c.end = Some(reason(r));
                        c.off = c.len;
                    }
                    _ => {}
                }
            }
            Ok(None) => {}
            Err(e) => self.error("poll", e),
        }
        for i in 0..self.echoes.len() {
            busy |= self.echo(i);
        }
        // Report and forget the connections that ended.
        let mut i = 0;
        while i < self.echoes.len() {
            let c = &self.echoes[i];
            if c.end.is_some() && c.off == c.len {
                say!(
                    "vsock echo port={} peer={}:{} bytes={} end={}",
                    c.port,
                    c.peer.cid,
                    c.peer.port,
                    c.echoed,
                    c.end.unwrap_or("none")
                );
                self.echoes.swap_remove(i);
            } else {
                i += 1;
            }
        }
        busy
    }

    /// Moves what connection `i` received back to the host; whether anything moved.
    fn echo(&mut self, i: usize) -> bool {
        let mut busy = false;
        loop {
            let c = &mut self.echoes[i];
            if c.end.is_some() || !c.credit.may_try() {
                return busy;
            }
            if c.off == c.len {
                match self.mgr.recv(c.peer, c.port, &mut c.buf) {
                    Ok(0) | Err(_) => return busy,
                    Ok(n) => (c.off, c.len) = (0, n),
                }
            }
            match self.mgr.send(c.peer, c.port, &c.buf[c.off..c.len]) {
                Ok(()) => {
                    c.echoed += (c.len - c.off) as u64;
                    c.off = c.len;
                    busy = true;
                }
                Err(e) if is_no_credit(&e) => {
                    c.credit.refused();
                    return busy;
                }
                Err(e) => {
                    c.off = c.len;
                    c.end = Some("error");
                    self.error("echo send", e);
                    return true;
                }
            }
        }
    }
}
