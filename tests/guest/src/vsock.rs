//! virtio-vsock over modern virtio-mmio (device id 19), stream sockets, all at ring 3.
//!
//! One device (the first on the command line). RX: `NRX` buffers of a header plus 64 KiB,
//! one descriptor each. TX: `NTX` slots of two descriptors (header, then payload; control
//! packets use the header descriptor alone), so the device sees both layouts. At most
//! `MAX_CONNS` connections. Services (see README.md for the serial lines):
//! - echo server on port `volt.vsock.echo=` (default 1234): every byte back, through a
//!   128 KiB ring that is also the credit it announces;
//! - `volt.vsock.client=<port>:<bytes>`: connects to host port P, sends `bytes` of the
//!   pattern while the host's credit allows, checks every byte that comes back against it;
//! - `volt.vsock.flood=<port>:<bytes>`: the same stream, ignoring the host's credit (limited
//!   only by free TX slots), reads nothing;
//! - sd_notify: with `systemd.set_credential=vmm.notify_socket:vsock-stream:2:<port>` (and
//!   no `volt.notify=off`) sends `READY=1` and a `STATUS=` line on one connection, after
//!   `volt.notify.delay=<ms>` if given (the guest spins meanwhile: no timer interrupt).
//!
//! The device is not trusted: used ids are range- and ownership-checked, lengths bounded by
//! the buffer, a header's `len` by the used length.

use core::sync::atomic::{fence, Ordering};

use crate::net::{bytes, bytes_mut, r16, r32, w16, w32, w64, Alloc};
use crate::{inb, outb, parse_num, put, put_dec, words, PREFIX, VIRTIO_MAGIC};

#[path = "vsock_conn.rs"]
mod conn;

const R_VERSION: u64 = 0x004;
const R_DEVICE_ID: u64 = 0x008;
const R_DEV_FEATURES: u64 = 0x010;
const R_DEV_FEATURES_SEL: u64 = 0x014;
const R_DRV_FEATURES: u64 = 0x020;
const R_DRV_FEATURES_SEL: u64 = 0x024;
const R_QUEUE_SEL: u64 = 0x030;
const R_QUEUE_NUM_MAX: u64 = 0x034;
const R_QUEUE_NUM: u64 = 0x038;
const R_QUEUE_READY: u64 = 0x044;
const R_QUEUE_NOTIFY: u64 = 0x050;
const R_INTERRUPT_ACK: u64 = 0x064;
const R_STATUS: u64 = 0x070;
const R_QUEUE_DESC: u64 = 0x080;
const R_QUEUE_DRIVER: u64 = 0x090;
const R_QUEUE_DEVICE: u64 = 0x0a0;
const R_CONFIG: u64 = 0x100;
const F_VERSION_1_HI: u32 = 1; // bit 32

const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const AVAIL_NO_INTERRUPT: u16 = 1;
const USED_NO_NOTIFY: u16 = 1;

const HDR: usize = 44;
const MAX_PAYLOAD: usize = 64 * 1024;
const NRX: u16 = 16;
const NTX: u16 = 16;
const MAX_CONNS: usize = 4;
const ECHO_RING: u32 = 128 * 1024;
/// Credit we announce for client/flood connections (bytes are checked on arrival).
const CLIENT_BUF: u32 = 256 * 1024;
const HOST_CID: u64 = 2;
const FIRST_PORT: u32 = 49152;

const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;

/// The stream both sides can check: byte i of every test stream.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

#[derive(Clone, Copy, Default)]
struct Ring {
    sel: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    published: u16,
    last_used: u16,
}

impl Ring {
    fn setup(base: u64, sel: u16, max: u16, a: &mut Alloc) -> Option<Ring> {
        w32(base + R_QUEUE_SEL, sel as u32);
        let m = r32(base + R_QUEUE_NUM_MAX).min(max as u32);
        if m == 0 || r32(base + R_QUEUE_READY) != 0 {
            return None;
        }
        let size = 1u16 << (31 - m.leading_zeros());
        let q = Ring {
            sel,
            size,
            desc: a.alloc(16 * size as u64)?,
            avail: a.alloc(6 + 2 * size as u64)?,
            used: a.alloc(6 + 8 * size as u64)?,
            ..Ring::default()
        };
        w32(base + R_QUEUE_NUM, size as u32);
        for (reg, addr) in [
            (R_QUEUE_DESC, q.desc),
            (R_QUEUE_DRIVER, q.avail),
            (R_QUEUE_DEVICE, q.used),
        ] {
            w32(base + reg, addr as u32);
            w32(base + reg + 4, (addr >> 32) as u32);
        }
        w32(base + R_QUEUE_READY, 1);
        Some(q)
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * i as u64;
        w64(d, addr);
        w32(d + 8, len);
        w16(d + 12, flags);
        w16(d + 14, next);
    }

    fn push(&mut self, head: u16) {
        w16(
            self.avail + 4 + 2 * (self.avail_idx & (self.size - 1)) as u64,
            head,
        );
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn kick(&mut self, base: u64) {
        if self.avail_idx == self.published {
            return;
        }
        fence(Ordering::SeqCst);
        w16(self.avail + 2, self.avail_idx);
        self.published = self.avail_idx;
        fence(Ordering::SeqCst);
        if r16(self.used) & USED_NO_NOTIFY == 0 {
            w32(base + R_QUEUE_NOTIFY, self.sel as u32);
        }
    }

    /// The next used element (id, len), if any.
    fn pop_used(&mut self) -> Option<(u32, u32)> {
        if r16(self.used + 2) == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let e = self.used + 4 + 8 * (self.last_used & (self.size - 1)) as u64;
        self.last_used = self.last_used.wrapping_add(1);
        Some((r32(e), r32(e + 4)))
    }

    fn pending(&self) -> bool {
        r16(self.used + 2) != self.last_used
    }

    fn interrupts(&self, on: bool) {
        w16(self.avail, if on { 0 } else { AVAIL_NO_INTERRUPT });
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Role {
    #[default]
    Free,
    Echo,
    Client,
    Flood,
    Notify,
}

#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Connecting,
    Open,
    /// We sent SHUTDOWN; waiting for the RST.
    Closing,
}

#[derive(Clone, Copy, Default)]
struct Conn {
    role: Role,
    state: State,
    lport: u32,
    pport: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    fwd_sent: u32,
    peer_alloc: u32,
    peer_fwd: u32,
    tx_cnt: u32,
    /// Echo: ring, bytes received into it, bytes sent back out of it.
    ring: u64,
    got: u64,
    /// Client/flood: stream length, bytes sent, bytes received (checked).
    total: u64,
    sent: u64,
    bad_at: Option<u64>,
    peer_shut: bool,
}

impl Conn {
    fn credit(&self) -> u32 {
        self.peer_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd))
    }
}

pub struct Vsock {
    base: u64,
    cid: u64,
    rx: Ring,
    tx: Ring,
    ev: Ring,
    rx_buf: u64,
    rx_owned: u32,
    tx_hdr: u64,
    tx_data: u64,
    tx_free: [u16; NTX as usize],
    nfree: usize,
    ntx: usize,
    conns: [Conn; MAX_CONNS],
    rings: [u64; MAX_CONNS],
    echo_port: u32,
    next_port: u32,
    acked: u32,
    dropped: u64,
    /// sd_notify still to connect: (port, TSC deadline).
    notify_at: Option<(u32, u64)>,
}

fn line(what: &[u8]) {
    put(PREFIX);
    put(b"vsock ");
    put(what);
}

/// Brings up the first virtio-vsock device named on the command line; `None` without one.
pub fn setup(cmdline: &[u8], alloc: &mut Alloc) -> Option<Vsock> {
    let (spec, base, irq) = words(cmdline).find_map(|w| {
        let spec = w.strip_prefix(b"virtio_mmio.device=")?;
        let (size, base, irq) = crate::parse_virtio(spec)?;
        let ok = size >= 0x200 && base.checked_add(0x200).is_some_and(|e| e <= 1 << 32);
        (ok && r32(base) == VIRTIO_MAGIC && r32(base + R_DEVICE_ID) == 19)
            .then_some((spec, base, irq))
    })?;
    let fail = |why: &[u8]| {
        w32(base + R_STATUS, r32(base + R_STATUS) | 0x80);
        line(spec);
        put(b" failed: ");
        put(why);
        put(b"\n");
        None
    };
    if r32(base + R_VERSION) != 2 {
        return fail(b"legacy virtio-mmio not supported");
    }
    w32(base + R_STATUS, 0);
    w32(base + R_STATUS, 1);
    w32(base + R_STATUS, 3);
    w32(base + R_DEV_FEATURES_SEL, 1);
    if r32(base + R_DEV_FEATURES) & F_VERSION_1_HI == 0 {
        return fail(b"no VIRTIO_F_VERSION_1");
    }
    w32(base + R_DRV_FEATURES_SEL, 0);
    w32(base + R_DRV_FEATURES, 0);
    w32(base + R_DRV_FEATURES_SEL, 1);
    w32(base + R_DRV_FEATURES, F_VERSION_1_HI);
    w32(base + R_STATUS, 11);
    if r32(base + R_STATUS) & 8 == 0 {
        return fail(b"FEATURES_OK not accepted");
    }
    let cid = r32(base + R_CONFIG) as u64 | (r32(base + R_CONFIG + 4) as u64) << 32;
    let (Some(rx), Some(tx), Some(ev)) = (
        Ring::setup(base, 0, NRX, alloc),
        Ring::setup(base, 1, 2 * NTX, alloc),
        Ring::setup(base, 2, 4, alloc),
    ) else {
        return fail(b"queues unavailable or out of memory");
    };
    let nrx = NRX.min(rx.size);
    let ntx = NTX.min(tx.size / 2);
    let rx_stride = (HDR + MAX_PAYLOAD) as u64;
    let (Some(rx_buf), Some(tx_hdr), Some(tx_data), Some(ev_buf)) = (
        alloc.alloc(nrx as u64 * rx_stride),
        alloc.alloc(ntx as u64 * 64),
        alloc.alloc(ntx as u64 * MAX_PAYLOAD as u64),
        alloc.alloc(64),
    ) else {
        return fail(b"out of memory");
    };
    let mut rings = [0u64; MAX_CONNS];
    for r in rings.iter_mut() {
        match alloc.alloc(ECHO_RING as u64) {
            Some(a) => *r = a,
            None => return fail(b"out of memory"),
        }
    }
    let mut v = Vsock {
        base,
        cid,
        rx,
        tx,
        ev,
        rx_buf,
        rx_owned: 0,
        tx_hdr,
        tx_data,
        tx_free: [0; NTX as usize],
        nfree: 0,
        ntx: ntx as usize,
        conns: [Conn::default(); MAX_CONNS],
        rings,
        echo_port: 1234,
        next_port: FIRST_PORT,
        acked: 0,
        dropped: 0,
        notify_at: None,
    };
    for i in 0..ntx {
        v.tx_free[v.nfree] = ntx - 1 - i;
        v.nfree += 1;
    }
    for i in 0..nrx {
        v.rx.set_desc(
            i,
            rx_buf + i as u64 * rx_stride,
            rx_stride as u32,
            DESC_WRITE,
            0,
        );
        v.rx.push(i);
        v.rx_owned |= 1 << i;
    }
    for i in 0..v.ev.size.min(4) {
        v.ev.set_desc(i, ev_buf + 8 * i as u64, 8, DESC_WRITE, 0);
        v.ev.push(i);
    }
    v.tx.interrupts(false);
    v.rx.interrupts(false);
    w32(base + R_STATUS, 15);
    v.rx.kick(base);
    v.ev.kick(base);
    route_irq(irq);
    for w in words(cmdline) {
        if let Some(p) = w.strip_prefix(b"volt.vsock.echo=") {
            if let Some((p, [])) = parse_num(p, false) {
                v.echo_port = p as u32;
            }
        }
    }
    line(b"cid=");
    put_dec(cid);
    put(b" echo=");
    put_dec(v.echo_port as u64);
    put(b"\n");
    v.start_services(cmdline);
    Some(v)
}

/// IRQ < 8: the master 8259. Otherwise the IOAPIC (vector 0x3d), which avoids sharing the
/// slave 8259 with NICs (see net.rs on auto-EOI and the cascade).
fn route_irq(irq: u64) {
    if irq < 8 {
        outb(0x21, inb(0x21) & !(1 << irq));
        return;
    }
    let (ioapic, pin) = if irq < 24 {
        (0xfec0_0000u64, irq)
    } else {
        (0xfec1_0000, irq - 24)
    };
    let apic_id = r32(0xfee0_0020) >> 24;
    w32(ioapic, 0x11 + 2 * pin as u32);
    w32(ioapic + 0x10, apic_id << 24);
    w32(ioapic, 0x10 + 2 * pin as u32);
    w32(ioapic + 0x10, 0x3d);
}

impl Vsock {
    fn connect(&mut self, role: Role, port: u32, total: u64) {
        let Some(i) = self.conns.iter().position(|c| c.role == Role::Free) else {
            line(b"no free connection\n");
            return;
        };
        let lport = self.next_port;
        self.next_port += 1;
        self.conns[i] = Conn {
            role,
            lport,
            pport: port,
            buf_alloc: CLIENT_BUF,
            total,
            ..Conn::default()
        };
        self.send(i, OP_REQUEST, 0, None);
    }

    /// Queues one packet (payload from `data`: (address, len)); false when no TX slot is free.
    fn send(&mut self, i: usize, op: u16, flags: u32, data: Option<(u64, usize)>) -> bool {
        if self.nfree == 0 {
            self.reclaim();
            if self.nfree == 0 {
                return false;
            }
        }
        self.nfree -= 1;
        let slot = self.tx_free[self.nfree];
        let c = &mut self.conns[i];
        let len = data.map_or(0, |d| d.1);
        let h = self.tx_hdr + 64 * slot as u64;
        let hb = bytes_mut(h, HDR);
        hb[0..8].copy_from_slice(&self.cid.to_le_bytes());
        hb[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
        hb[16..20].copy_from_slice(&c.lport.to_le_bytes());
        hb[20..24].copy_from_slice(&c.pport.to_le_bytes());
        hb[24..28].copy_from_slice(&(len as u32).to_le_bytes());
        hb[28..30].copy_from_slice(&1u16.to_le_bytes());
        hb[30..32].copy_from_slice(&op.to_le_bytes());
        hb[32..36].copy_from_slice(&flags.to_le_bytes());
        hb[36..40].copy_from_slice(&c.buf_alloc.to_le_bytes());
        hb[40..44].copy_from_slice(&c.fwd_cnt.to_le_bytes());
        c.fwd_sent = c.fwd_cnt;
        c.tx_cnt = c.tx_cnt.wrapping_add(len as u32);
        let d = 2 * slot;
        if let Some((addr, n)) = data.filter(|d| d.1 > 0) {
            self.tx.set_desc(d, h, HDR as u32, DESC_NEXT, d + 1);
            self.tx.set_desc(d + 1, addr, n as u32, 0, 0);
        } else {
            self.tx.set_desc(d, h, HDR as u32, 0, 0);
        }
        self.tx.push(d);
        true
    }

    fn reclaim(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            let slot = id / 2;
            let ok = id % 2 == 0
                && (slot as usize) < self.ntx
                && !self.tx_free[..self.nfree].contains(&(slot as u16))
                && self.nfree < self.ntx;
            if ok {
                self.tx_free[self.nfree] = slot as u16;
                self.nfree += 1;
            } else {
                self.dropped += 1;
            }
        }
    }

    fn slot_data(&self) -> Option<u64> {
        (self.nfree > 0)
            .then(|| self.tx_data + self.tx_free[self.nfree - 1] as u64 * MAX_PAYLOAD as u64)
    }

    fn receive(&mut self) -> usize {
        let mut n = 0;
        while let Some((id, len)) = self.rx.pop_used() {
            n += 1;
            if id >= NRX as u32
                || self.rx_owned & (1 << id) == 0
                || (len as usize) < HDR
                || len as usize > HDR + MAX_PAYLOAD
            {
                self.dropped += 1;
                continue;
            }
            let buf = self.rx_buf + id as u64 * (HDR + MAX_PAYLOAD) as u64;
            self.packet(buf, len as usize);
            self.rx.push(id as u16);
        }
        n
    }
}

impl crate::Poll for Vsock {
    fn poll(&mut self) -> usize {
        if let Some((port, at)) = self.notify_at {
            if crate::net::rdtsc() >= at {
                self.notify_at = None;
                self.connect(Role::Notify, port, 0);
            }
        }
        let mut work = self.receive();
        self.reclaim();
        work += self.progress();
        self.rx.kick(self.base);
        self.tx.kick(self.base);
        work
    }

    fn busy(&self) -> bool {
        // A notification waiting for its time, or data to send and the means to send it:
        // keep going without sleeping.
        self.notify_at.is_some()
            || self.nfree > 0
                && self.conns.iter().any(|c| {
                    c.state == State::Open
                        && match c.role {
                            Role::Echo => c.got > c.sent && c.credit() > 0,
                            Role::Client => c.sent < c.total && c.credit() > 0,
                            Role::Flood => c.sent < c.total,
                            _ => false,
                        }
                })
    }

    fn arm(&mut self, seen: u32) -> bool {
        if seen != self.acked {
            w32(self.base + R_INTERRUPT_ACK, 3);
            self.acked = seen;
        }
        self.rx.interrupts(true);
        self.tx.interrupts(true);
        fence(Ordering::SeqCst);
        self.rx.pending() || self.tx.pending()
    }

    fn disarm(&mut self) {
        self.rx.interrupts(false);
        self.tx.interrupts(false);
    }
}
