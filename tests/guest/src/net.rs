//! virtio-net over modern virtio-mmio (version 2) and a tiny IPv4 responder, all at ring 3.
//!
//! Per NIC: split virtqueues in identity-mapped RAM after the image, one RX buffer per
//! descriptor (2 KiB with `VIRTIO_NET_F_MRG_RXBUF`, else MTU-sized), one TX slot per
//! descriptor. Protocols: ARP (responder + a tiny cache for the generator), ICMP echo, UDP echo
//! (port 7), UDP stats (port 5) and a UDP generator (`volt.udpgen=`). With `VIRTIO_NET_F_MQ`
//! every offered pair (≤ 16) is enabled and a request is answered on the TX queue with the
//! index of the RX queue it came in on.
//!
//! Notifications: the rings are polled while traffic flows, with used-buffer interrupts off
//! (`VIRTQ_AVAIL_F_NO_INTERRUPT`, or with `VIRTIO_F_EVENT_IDX`, which is negotiated when offered
//! as Linux does, a `used_event` left behind; kicks then go by the device's `avail_event`). After `IDLE_US` without a packet the driver acknowledges
//! pending device interrupts, turns RX interrupts on, re-checks the rings and enters the idle
//! gate; the virtio-mmio IRQ (8259 if < 16, else IOAPIC) wakes it. A device is never trusted
//! with guest memory beyond its buffers: used ids are range- and ownership-checked, lengths
//! are checked against the buffer size.

use core::arch::x86_64::{__cpuid, _rdtsc};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use crate::mmio::{
    R_CONFIG, R_CONFIG_GEN, R_DEVICE_ID, R_DEV_FEATURES, R_DEV_FEATURES_SEL, R_DRV_FEATURES,
    R_DRV_FEATURES_SEL, R_INTERRUPT_ACK, R_INTERRUPT_STATUS, R_QUEUE_DESC, R_QUEUE_DEVICE,
    R_QUEUE_DRIVER, R_QUEUE_NOTIFY, R_QUEUE_NUM, R_QUEUE_NUM_MAX, R_QUEUE_READY, R_QUEUE_SEL,
    R_STATUS, R_VERSION,
};
use crate::{
    inb, outb, parse_num, put, put_dec, words, MemmapEntry, StartInfo, PREFIX, VIRTIO_MAGIC,
};

pub const MAX_NICS: usize = 4;
const MAX_PAIRS: usize = 16;
const MAX_QSIZE: u32 = 256;
/// Source port of `volt.udpgen` packets.
const UDPGEN_SRC_PORT: u16 = 5000;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 128;

const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_GUEST_ANNOUNCE: u64 = 1 << 21;
const F_MQ: u64 = 1 << 22;
const F_EVENT_IDX: u64 = 1 << 29;
const F_VERSION_1: u64 = 1 << 32;

/// Config space status bit: the device asks for gratuitous packets.
const NET_S_ANNOUNCE: u16 = 2;
/// InterruptStatus bit: the configuration changed.
const INT_CONFIG: u32 = 2;
const CTRL_CLASS_ANNOUNCE: u8 = 3;
const CTRL_ANNOUNCE_ACK: u8 = 0;
const CTRL_CLASS_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// `virtio_net_hdr_v1` (VERSION_1 makes it 12 bytes, with `num_buffers` at offset 10).
const HDR: usize = 12;

const IOAPIC0: u64 = 0xfec0_0000;
/// QEMU microvm's second IOAPIC (`ioapic2=on`), GSIs 24-47.
const IOAPIC1: u64 = 0xfec1_0000;
const LAPIC_ID: u64 = 0xfee0_0020;
const APIC_VECTOR_BASE: u32 = 0x30;

// ---- raw memory / MMIO ----

#[inline(always)]
pub(crate) fn r8(a: u64) -> u8 {
    unsafe { read_volatile(a as *const u8) }
}
#[inline(always)]
pub(crate) fn r16(a: u64) -> u16 {
    unsafe { read_volatile(a as *const u16) }
}
#[inline(always)]
pub(crate) fn r32(a: u64) -> u32 {
    unsafe { read_volatile(a as *const u32) }
}
#[inline(always)]
pub(crate) fn w16(a: u64, v: u16) {
    unsafe { write_volatile(a as *mut u16, v) }
}
#[inline(always)]
pub(crate) fn w32(a: u64, v: u32) {
    unsafe { write_volatile(a as *mut u32, v) }
}
#[inline(always)]
pub(crate) fn w64(a: u64, v: u64) {
    unsafe { write_volatile(a as *mut u64, v) }
}
pub(crate) fn bytes<'a>(a: u64, n: usize) -> &'a [u8] {
    unsafe { core::slice::from_raw_parts(a as *const u8, n) }
}
pub(crate) fn bytes_mut<'a>(a: u64, n: usize) -> &'a mut [u8] {
    unsafe { core::slice::from_raw_parts_mut(a as *mut u8, n) }
}

pub(crate) fn rdtsc() -> u64 {
    unsafe { _rdtsc() }
}

/// TSC ticks per microsecond: CPUID 0x16 / 0x15 / KVM's 0x40000010, else 2500 (a guess that is
/// only used for the idle spell and ARP retries).
fn tsc_per_us() -> u64 {
    {
        let max = __cpuid(0).eax;
        if max >= 0x15 {
            let l = __cpuid(0x15);
            if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
                return (l.ecx as u64 * l.ebx as u64 / l.eax as u64 / 1_000_000).max(1);
            }
        }
        if max >= 0x16 {
            let mhz = __cpuid(0x16).eax & 0xffff;
            if mhz != 0 {
                return mhz as u64;
            }
        }
        let hv = __cpuid(0x4000_0000).eax;
        if (0x4000_0010..0x4001_0000).contains(&hv) {
            let khz = __cpuid(0x4000_0010).eax;
            if khz != 0 {
                return (khz as u64 / 1000).max(1);
            }
        }
    }
    2500
}

// ---- output helpers ----

fn put_ip(ip: u32) {
    for i in 0..4 {
        put_dec(((ip >> (24 - 8 * i)) & 0xff) as u64);
        if i < 3 {
            put(b".");
        }
    }
}

fn put_mac(mac: &[u8; 6]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, &b) in mac.iter().enumerate() {
        put(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        if i < 5 {
            put(b":");
        }
    }
}

fn net_line(spec: &[u8], what: &[u8]) {
    put(PREFIX);
    put(b"net ");
    put(spec);
    put(b" ");
    put(what);
    put(b"\n");
}

// ---- bump allocator over the RAM after the image ----

extern "C" {
    static volt_image_end: u8;
}

pub struct Alloc {
    next: u64,
    end: u64,
    avoid: [(u64, u64); 3],
}

impl Alloc {
    /// The type-1 memmap region holding the image end, below 4 GiB, minus the boot data.
    pub fn new(si: &StartInfo, cmdline: &[u8]) -> Alloc {
        let start = (unsafe { &volt_image_end } as *const u8 as u64 + 4095) & !4095;
        let mut end = start;
        if si.version >= 1 && si.memmap_paddr != 0 {
            let n = si.memmap_entries.min(128) as usize;
            let map =
                unsafe { core::slice::from_raw_parts(si.memmap_paddr as *const MemmapEntry, n) };
            for e in map.iter().filter(|e| e.kind == 1) {
                let e_end = e.addr.saturating_add(e.size).min(1 << 32);
                if e.addr <= start && start < e_end {
                    end = e_end;
                }
            }
        }
        let si_addr = si as *const StartInfo as u64;
        Alloc {
            next: start,
            end,
            avoid: [
                (si_addr, si_addr + core::mem::size_of::<StartInfo>() as u64),
                (
                    cmdline.as_ptr() as u64,
                    cmdline.as_ptr() as u64 + cmdline.len() as u64 + 1,
                ),
                (
                    si.memmap_paddr,
                    si.memmap_paddr + 24 * si.memmap_entries.min(128) as u64,
                ),
            ],
        }
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }

    /// Page-aligned, zeroed.
    pub(crate) fn alloc(&mut self, size: u64) -> Option<u64> {
        let size = (size.max(1) + 4095) & !4095;
        let mut a = self.next;
        'again: loop {
            let e = a.checked_add(size)?;
            if e > self.end {
                return None;
            }
            for &(s, t) in &self.avoid {
                if s < e && a < t {
                    a = (t + 4095) & !4095;
                    continue 'again;
                }
            }
            self.next = e;
            bytes_mut(a, size as usize).fill(0);
            return Some(a);
        }
    }
}

// ---- split virtqueue ----

#[derive(Clone, Copy, Default)]
struct Vq {
    sel: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: u64,
    avail_idx: u16,
    published: u16,
    last_used: u16,
    /// Buffers: `nbuf` of `buf_size` bytes at `buf`, buffer i always in descriptor i.
    buf: u64,
    buf_size: u32,
    nbuf: u16,
    /// `nbuf` bytes: 1 while the device owns buffer i.
    owned: u64,
    /// TX: stack of free buffer ids (`nbuf` u16s), `nfree` of them.
    free: u64,
    nfree: u16,
    /// VIRTIO_F_EVENT_IDX negotiated: notifications go by `avail_event` / `used_event`, the
    /// flags are not used.
    evidx: bool,
}

impl Vq {
    /// Allocates the rings and `nbuf` buffers of `buf_size` bytes, programs queue `sel`.
    fn setup(
        dev: u64,
        sel: u16,
        size: u16,
        (nbuf, buf_size): (u16, u32),
        evidx: bool,
        a: &mut Alloc,
    ) -> Option<Vq> {
        let desc = a.alloc(16 * size as u64)?;
        let avail = a.alloc(6 + 2 * size as u64)?;
        let used = a.alloc(6 + 8 * size as u64)?;
        let owned = a.alloc(nbuf as u64 * 3)?;
        let buf = a.alloc(nbuf as u64 * buf_size as u64)?;
        let q = Vq {
            sel,
            size,
            desc,
            avail,
            used,
            notify: dev + R_QUEUE_NOTIFY,
            buf,
            buf_size,
            nbuf,
            owned,
            free: owned + nbuf as u64,
            evidx,
            ..Vq::default()
        };
        w32(dev + R_QUEUE_SEL, sel as u32);
        w32(dev + R_QUEUE_NUM, size as u32);
        for (reg, addr) in [
            (R_QUEUE_DESC, desc),
            (R_QUEUE_DRIVER, avail),
            (R_QUEUE_DEVICE, used),
        ] {
            w32(dev + reg, addr as u32);
            w32(dev + reg + 4, (addr >> 32) as u32);
        }
        w32(dev + R_QUEUE_READY, 1);
        Some(q)
    }

    fn buf_addr(&self, id: u16) -> u64 {
        self.buf + id as u64 * self.buf_size as u64
    }

    fn owned(&self, id: u32) -> bool {
        id < self.nbuf as u32 && r8(self.owned + id as u64) != 0
    }

    fn set_owned(&self, id: u16, v: bool) {
        unsafe { write_volatile((self.owned + id as u64) as *mut u8, v as u8) }
    }

    /// Queues descriptor `id` (its own buffer, `len` bytes) in the avail ring (not yet published).
    fn push(&mut self, id: u16, len: u32, flags: u16) {
        let d = self.desc + 16 * id as u64;
        w64(d, self.buf_addr(id));
        w32(d + 8, len);
        w16(d + 12, flags);
        w16(d + 14, 0);
        self.set_owned(id, true);
        w16(
            self.avail + 4 + 2 * (self.avail_idx & (self.size - 1)) as u64,
            id,
        );
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn rx_post(&mut self, id: u16) {
        self.push(id, self.buf_size, VRING_DESC_F_WRITE);
    }

    /// Publishes the avail index; notifies unless the device said it does not need it: with
    /// EVENT_IDX, unless its `avail_event` lies outside the entries this publish adds
    /// (`vring_need_event`, §2.7.10); else by `VIRTQ_USED_F_NO_NOTIFY`.
    fn kick(&mut self) {
        if self.avail_idx == self.published {
            return;
        }
        let old = self.published;
        w16(self.avail + 2, self.avail_idx);
        self.published = self.avail_idx;
        fence(Ordering::SeqCst);
        let notify = if self.evidx {
            let event = r16(self.used + 4 + 8 * self.size as u64);
            let new = self.avail_idx;
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            r16(self.used) & VRING_USED_F_NO_NOTIFY == 0
        };
        if notify {
            w32(self.notify, self.sel as u32);
        }
    }

    /// Used entries not yet consumed (as the device claims them).
    fn used_count(&self) -> u16 {
        r16(self.used + 2).wrapping_sub(self.last_used)
    }

    /// The k-th unconsumed used element (id, len); the caller checks `used_count() > k`.
    fn used_elem(&self, k: u16) -> (u32, u32) {
        fence(Ordering::Acquire);
        let e = self.used + 4 + 8 * (self.last_used.wrapping_add(k) & (self.size - 1)) as u64;
        (r32(e), r32(e + 4))
    }

    /// Used-buffer interrupts on or off. With EVENT_IDX, `used_event` at `last_used` asks for
    /// an interrupt at the device's next used entry; one behind it asks for none until the
    /// index wraps (a spurious interrupt 65536 entries later is harmless: it is acknowledged
    /// like any other).
    fn set_interrupts(&self, on: bool) {
        if self.evidx {
            let event = if on {
                self.last_used
            } else {
                self.last_used.wrapping_sub(1)
            };
            w16(self.avail + 4 + 2 * self.size as u64, event);
        } else {
            w16(self.avail, if on { 0 } else { VRING_AVAIL_F_NO_INTERRUPT });
        }
    }

    // -- TX --

    fn tx_init(&mut self) {
        for i in 0..self.nbuf {
            w16(self.free + 2 * i as u64, self.nbuf - 1 - i);
        }
        self.nfree = self.nbuf;
        self.set_interrupts(false);
    }

    fn tx_reclaim(&mut self) {
        let mut n = self.used_count().min(self.size);
        while n > 0 {
            let (id, _) = self.used_elem(0);
            self.last_used = self.last_used.wrapping_add(1);
            n -= 1;
            if self.owned(id) && self.nfree < self.nbuf {
                self.set_owned(id as u16, false);
                w16(self.free + 2 * self.nfree as u64, id as u16);
                self.nfree += 1;
            }
        }
    }

    /// A free TX buffer (id, address of the frame after the virtio-net header, capacity).
    fn tx_get(&mut self) -> Option<(u16, u64, usize)> {
        if self.nfree == 0 {
            self.tx_reclaim();
            if self.nfree == 0 {
                return None;
            }
        }
        self.nfree -= 1;
        let id = r16(self.free + 2 * self.nfree as u64);
        let a = self.buf_addr(id);
        bytes_mut(a, HDR).fill(0);
        Some((id, a + HDR as u64, self.buf_size as usize - HDR))
    }

    fn tx_put(&mut self, id: u16, frame_len: usize) {
        self.push(id, (HDR + frame_len) as u32, 0);
    }
}

// ---- configuration from the command line ----

#[derive(Clone, Copy, Default)]
pub struct IpCfg {
    ip: u32,
    prefix: u32,
    gw: u32,
}

fn parse_ipv4(s: &[u8]) -> Option<(u32, &[u8])> {
    let mut ip = 0u32;
    let mut rest = s;
    for i in 0..4 {
        if i > 0 {
            rest = rest.strip_prefix(b".")?;
        }
        if !rest.first().is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let (v, r) = parse_num(rest, false)?;
        if v > 255 {
            return None;
        }
        ip = ip << 8 | v as u32;
        rest = r;
    }
    Some((ip, rest))
}

fn ipv4_only(s: &[u8]) -> Option<u32> {
    match parse_ipv4(s)? {
        (ip, []) => Some(ip),
        _ => None,
    }
}

fn mask_of(prefix: u32) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32))
    }
}

/// `ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>` (kernel syntax, only client,
/// gw and netmask used) or `ip=<client>/<prefix>`. Anything else (`ip=off`, `ip=dhcp`) reads as
/// no address.
fn parse_ip_param(v: &[u8]) -> IpCfg {
    if let Some((ip, rest)) = parse_ipv4(v) {
        if let Some(p) = rest.strip_prefix(b"/") {
            if let Some((prefix, [])) = parse_num(p, false) {
                if prefix <= 32 {
                    return IpCfg {
                        ip,
                        prefix: prefix as u32,
                        gw: 0,
                    };
                }
            }
            return IpCfg::default();
        }
    }
    let mut f = v.split(|&c| c == b':');
    let ip = f.next().and_then(ipv4_only).unwrap_or(0);
    let _server = f.next();
    let gw = f.next().and_then(ipv4_only).unwrap_or(0);
    let prefix = match f.next().and_then(ipv4_only) {
        Some(m) if (!m).wrapping_add(1) & !m == 0 => m.count_ones(), // contiguous mask
        _ => match ip >> 24 {
            0..=127 => 8,
            128..=191 => 16,
            _ => 24,
        },
    };
    if ip == 0 {
        return IpCfg::default();
    }
    IpCfg { ip, prefix, gw }
}

// ---- the NIC ----

#[derive(Default)]
pub struct Nic {
    base: u64,
    mac: [u8; 6],
    ip: u32,
    prefix: u32,
    gw: u32,
    mtu: usize,
    mrg: bool,
    pairs: usize,
    rx: [Vq; MAX_PAIRS],
    tx: [Vq; MAX_PAIRS],
    rxc: [u64; MAX_PAIRS],
    txc: [u64; MAX_PAIRS],
    dropped: u64,
    scratch: u64,
    scratch_len: usize,
    ip_id: u16,
    /// The control queue (VIRTIO_NET_F_CTRL_VQ), one command at a time.
    ctrl: Option<Vq>,
    /// VIRTIO_NET_F_GUEST_ANNOUNCE negotiated.
    announce: bool,
}

fn fail(spec: &[u8], base: u64, why: &[u8]) -> Option<Nic> {
    w32(base + R_STATUS, r32(base + R_STATUS) | S_FAILED);
    put(PREFIX);
    put(b"net ");
    put(spec);
    put(b" failed: ");
    put(why);
    put(b"\n");
    None
}

/// Brings up the virtio-net device at `base`; prints the `net` line. `name` is N of `eth<N>`.
fn init_nic(
    spec: &[u8],
    base: u64,
    irq: u64,
    name: u8,
    cfg: IpCfg,
    opts: &Opts,
    a: &mut Alloc,
) -> Option<Nic> {
    if r32(base + R_VERSION) != 2 {
        net_line(spec, b"legacy virtio-mmio not supported");
        return None;
    }
    w32(base + R_STATUS, 0);
    let mut n = 0;
    while r32(base + R_STATUS) != 0 && n < 1000 {
        n += 1;
    }
    w32(base + R_STATUS, S_ACKNOWLEDGE);
    w32(base + R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    w32(base + R_DEV_FEATURES_SEL, 0);
    let mut feat = r32(base + R_DEV_FEATURES) as u64;
    w32(base + R_DEV_FEATURES_SEL, 1);
    feat |= (r32(base + R_DEV_FEATURES) as u64) << 32;
    if feat & F_VERSION_1 == 0 {
        return fail(spec, base, b"no VIRTIO_F_VERSION_1");
    }
    let mut want = F_VERSION_1 | (feat & (F_MAC | F_MTU | F_STATUS | F_MRG_RXBUF | F_CTRL_VQ));
    if feat & (F_MQ | F_CTRL_VQ) == F_MQ | F_CTRL_VQ && !opts.no_mq {
        want |= F_MQ;
    }
    if want & F_CTRL_VQ != 0 {
        want |= feat & F_GUEST_ANNOUNCE;
    }
    if !opts.no_event_idx {
        want |= feat & F_EVENT_IDX;
    }
    let evidx = want & F_EVENT_IDX != 0;
    w32(base + R_DRV_FEATURES_SEL, 0);
    w32(base + R_DRV_FEATURES, want as u32);
    w32(base + R_DRV_FEATURES_SEL, 1);
    w32(base + R_DRV_FEATURES, (want >> 32) as u32);
    w32(base + R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if r32(base + R_STATUS) & S_FEATURES_OK == 0 {
        return fail(spec, base, b"FEATURES_OK not accepted");
    }

    // Config space: mac[6] status u16 max_virtqueue_pairs u16 mtu u16.
    let c = base + R_CONFIG;
    let (mut mac, mut mtu, mut max_pairs);
    loop {
        let gen = r32(base + R_CONFIG_GEN);
        mac = [0x02, 0, 0, 0, 0, name];
        if want & F_MAC != 0 {
            for (i, m) in mac.iter_mut().enumerate() {
                *m = r8(c + i as u64);
            }
        }
        mtu = if want & F_MTU != 0 {
            r16(c + 10) as usize
        } else {
            1500
        };
        max_pairs = if want & F_MQ != 0 {
            r16(c + 8) as usize
        } else {
            1
        };
        if r32(base + R_CONFIG_GEN) == gen {
            break;
        }
    }
    let mtu = mtu.clamp(68, 65535 - 64);
    let max_pairs = max_pairs.max(1);
    let mut pairs = max_pairs.min(MAX_PAIRS);
    let mrg = want & F_MRG_RXBUF != 0;

    // Queue sizes, then buffer counts that fit the RAM left (halved until they do).
    let qsize = |sel: usize| -> u16 {
        w32(base + R_QUEUE_SEL, sel as u32);
        if r32(base + R_QUEUE_READY) != 0 {
            return 0;
        }
        let max = r32(base + R_QUEUE_NUM_MAX).min(MAX_QSIZE);
        if max == 0 {
            0
        } else {
            1 << (31 - max.leading_zeros())
        }
    };
    let frame_max = (HDR + 14 + 4 + mtu + 1023) & !1023;
    let rx_size = if mrg { 2048 } else { frame_max.max(2048) };
    let tx_size = frame_max.max(2048);
    let mut sizes = [(0u16, 0u16); MAX_PAIRS];
    for (p, s) in sizes.iter_mut().enumerate().take(pairs) {
        *s = (qsize(2 * p), qsize(2 * p + 1));
        if s.0 == 0 || s.1 == 0 {
            if p == 0 {
                return fail(spec, base, b"queue 0/1 unavailable");
            }
            pairs = p;
            break;
        }
    }
    // The control queue follows the data queues: 2 x max_virtqueue_pairs with MQ, else 2.
    let ctrl_sel = 2 * max_pairs;
    let ctrl_size = if want & F_CTRL_VQ != 0 {
        qsize(ctrl_sel).min(64)
    } else {
        0
    };
    if want & F_MQ != 0 && ctrl_size == 0 {
        pairs = 1;
    }
    let scratch_len = (mtu + 14 + 4 + 4095) & !4095;
    let mut nbuf = MAX_QSIZE as usize;
    loop {
        let need = pairs as u64 * ((nbuf * (rx_size + tx_size)) as u64 + 16 * 4096)
            + scratch_len as u64
            + 4 * 4096;
        // Leave a quarter of what is left for later NICs.
        if need <= a.remaining() / 4 * 3 || nbuf <= 8 {
            break;
        }
        nbuf /= 2;
    }
    let mut nic = Nic {
        base,
        mac,
        ip: cfg.ip,
        prefix: cfg.prefix,
        gw: cfg.gw,
        mtu,
        mrg,
        pairs,
        rx: [Vq::default(); MAX_PAIRS],
        tx: [Vq::default(); MAX_PAIRS],
        rxc: [0; MAX_PAIRS],
        txc: [0; MAX_PAIRS],
        dropped: 0,
        scratch: 0,
        scratch_len,
        ip_id: 1,
        ctrl: None,
        announce: want & F_GUEST_ANNOUNCE != 0,
    };
    let Some(scratch) = a.alloc(scratch_len as u64) else {
        return fail(spec, base, b"out of memory");
    };
    nic.scratch = scratch;
    for (p, &(rs, ts)) in sizes.iter().enumerate().take(pairs) {
        let rx = Vq::setup(
            base,
            2 * p as u16,
            rs,
            (nbuf.min(rs as usize) as u16, rx_size as u32),
            evidx,
            a,
        );
        let tx = Vq::setup(
            base,
            2 * p as u16 + 1,
            ts,
            (nbuf.min(ts as usize) as u16, tx_size as u32),
            evidx,
            a,
        );
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return fail(spec, base, b"out of memory");
        };
        nic.rx[p] = rx;
        nic.tx[p] = tx;
        nic.rx[p].set_interrupts(false);
        nic.tx[p].tx_init();
        for id in 0..rx.nbuf {
            nic.rx[p].rx_post(id);
        }
    }
    let mut ctrl = if ctrl_size != 0 {
        match Vq::setup(base, ctrl_sel as u16, ctrl_size, (1, 64), evidx, a) {
            Some(q) => Some(q),
            None => return fail(spec, base, b"out of memory"),
        }
    } else {
        None
    };
    w32(
        base + R_STATUS,
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    for p in 0..pairs {
        nic.rx[p].kick();
    }
    if let Some(cq) = ctrl.as_mut() {
        cq.set_interrupts(false);
        if want & F_MQ != 0
            && !ctrl_cmd(
                cq,
                CTRL_CLASS_MQ,
                CTRL_MQ_VQ_PAIRS_SET,
                &(pairs as u16).to_le_bytes(),
            )
        {
            pairs = 1;
        }
    }
    nic.pairs = pairs;
    nic.ctrl = ctrl;

    route_irq(spec, irq, name, opts);
    put(PREFIX);
    put(b"net eth");
    put_dec(name as u64);
    put(b" mac=");
    put_mac(&nic.mac);
    put(b" ip=");
    if nic.ip == 0 {
        put(b"none");
    } else {
        put_ip(nic.ip);
        put(b"/");
        put_dec(nic.prefix as u64);
    }
    put(b" mtu=");
    put_dec(mtu as u64);
    put(b" queues=");
    put_dec(pairs as u64);
    put(if evidx {
        b" event_idx=on\n".as_slice()
    } else {
        b" event_idx=off\n".as_slice()
    });
    // Link up: tell the network where this address is (a gratuitous ARP), as the device asks
    // with VIRTIO_NET_S_ANNOUNCE and as a host that already asked for us needs: its kernel
    // would otherwise retry ARP only once a second.
    nic.link_announce();
    Some(nic)
}

/// One control command over the control queue (one 64-byte buffer: class and command at 0,
/// up to 6 data bytes at 2, the device's ack at 8) with a chain of header, data (if any) and
/// status. Waits up to ~1 s for the device; true if it answered VIRTIO_NET_OK.
fn ctrl_cmd(q: &mut Vq, class: u8, cmd: u8, data: &[u8]) -> bool {
    let data = &data[..data.len().min(6)];
    let b = q.buf_addr(0);
    bytes_mut(b, 64).fill(0);
    bytes_mut(b, 2).copy_from_slice(&[class, cmd]);
    bytes_mut(b + 2, data.len()).copy_from_slice(data);
    unsafe { write_volatile((b + 8) as *mut u8, 0xff) };
    let mut descs = [(0u64, 0u32, 0u16); 3];
    let mut n = 0;
    descs[n] = (b, 2, VRING_DESC_F_NEXT);
    n += 1;
    if !data.is_empty() {
        descs[n] = (b + 2, data.len() as u32, VRING_DESC_F_NEXT);
        n += 1;
    }
    descs[n] = (b + 8, 1, VRING_DESC_F_WRITE);
    n += 1;
    for (i, &(addr, len, flags)) in descs[..n].iter().enumerate() {
        let d = q.desc + 16 * i as u64;
        w64(d, addr);
        w32(d + 8, len);
        w16(d + 12, flags);
        w16(d + 14, i as u16 + 1);
    }
    w16(q.avail + 4 + 2 * (q.avail_idx & (q.size - 1)) as u64, 0);
    q.avail_idx = q.avail_idx.wrapping_add(1);
    q.kick();
    let t0 = rdtsc();
    let limit = 1_000_000 * tsc_per_us_cached();
    while q.used_count() == 0 {
        if rdtsc().wrapping_sub(t0) > limit {
            return false;
        }
        core::hint::spin_loop();
    }
    q.last_used = q.last_used.wrapping_add(1);
    r8(b + 8) == 0
}

static mut TSC_PER_US: u64 = 0;

pub(crate) fn tsc_per_us_cached() -> u64 {
    unsafe {
        if TSC_PER_US == 0 {
            TSC_PER_US = tsc_per_us();
        }
        TSC_PER_US
    }
}

/// Unmasks the device IRQ: 8259 for IRQ < 16 (unless `volt.irq=ioapic`), else an IOAPIC
/// redirection entry (edge, active high, fixed, to this CPU) to vector 0x30 + N.
fn route_irq(spec: &[u8], irq: u64, name: u8, opts: &Opts) {
    // Both 8259s run in auto-EOI mode (entry.rs): with two device IRQs pending on the slave at
    // once, its cascade output stays high and the master never sees another edge on line 2,
    // so slave IRQs would stop for good. Two or more NICs on 8-15 therefore use the IOAPIC.
    let slave_shared = (8..16).contains(&irq) && opts.slave_nics > 1;
    if irq < 16 && !opts.ioapic && !slave_shared {
        let (port, bit) = if irq < 8 {
            (0x21, irq)
        } else {
            (0xa1, irq - 8)
        };
        outb(port, inb(port) & !(1 << bit));
        if irq >= 8 {
            outb(0x21, inb(0x21) & !(1 << 2)); // cascade
        }
        return;
    }
    let (ioapic, pin) = if irq < 24 {
        (IOAPIC0, irq)
    } else {
        (IOAPIC1, irq - 24)
    };
    w32(ioapic, 1);
    let ver = r32(ioapic + 0x10);
    if ver == u32::MAX || pin > ((ver >> 16) & 0xff) as u64 || irq >= 48 {
        net_line(spec, b"irq not routable, polling without sleep");
        unsafe { NO_SLEEP = true };
        return;
    }
    let apic_id = r32(LAPIC_ID) >> 24;
    let vector = APIC_VECTOR_BASE + name as u32;
    w32(ioapic, 0x11 + 2 * pin as u32);
    w32(ioapic + 0x10, apic_id << 24);
    w32(ioapic, 0x10 + 2 * pin as u32);
    w32(ioapic + 0x10, vector); // fixed, physical, active high, edge, unmasked
}

static mut NO_SLEEP: bool = false;

// ---- packets ----

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn set16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_be_bytes());
}
fn set32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

/// One's-complement sum (not folded, not inverted).
fn csum_add(mut sum: u64, b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(4);
    for c in &mut chunks {
        sum += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let r = chunks.remainder();
    let mut i = 0;
    while i + 1 < r.len() {
        sum += (be16(r, i) as u64) << 16;
        i += 2;
    }
    if i < r.len() {
        sum += (r[i] as u64) << 24;
    }
    sum
}

fn csum_fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const ETH_ARP: u16 = 0x0806;
const ETH_IP: u16 = 0x0800;
const BCAST: [u8; 6] = [0xff; 6];

pub struct Arp {
    e: [(u32, [u8; 6]); 8],
    next: usize,
}

impl Arp {
    fn get(&self, ip: u32) -> Option<[u8; 6]> {
        self.e.iter().find(|e| e.0 == ip && ip != 0).map(|e| e.1)
    }
    fn learn(&mut self, ip: u32, mac: [u8; 6]) {
        if ip == 0 {
            return;
        }
        if let Some(e) = self.e.iter_mut().find(|e| e.0 == ip) {
            e.1 = mac;
            return;
        }
        self.e[self.next] = (ip, mac);
        self.next = (self.next + 1) % self.e.len();
    }
}

impl Nic {
    /// Writes Ethernet + IPv4 headers (20 bytes, no options) into `f`; returns the L4 offset.
    fn ip_hdr(
        &mut self,
        f: &mut [u8],
        dst_mac: &[u8; 6],
        dst: u32,
        proto: u8,
        l4_len: usize,
    ) -> usize {
        f[0..6].copy_from_slice(dst_mac);
        f[6..12].copy_from_slice(&self.mac);
        set16(f, 12, ETH_IP);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[1] = 0;
        set16(ip, 2, (20 + l4_len) as u16);
        set16(ip, 4, self.ip_id);
        self.ip_id = self.ip_id.wrapping_add(1);
        set16(ip, 6, 0x4000); // DF
        ip[8] = 64;
        ip[9] = proto;
        set16(ip, 10, 0);
        set32(ip, 12, self.ip);
        set32(ip, 16, dst);
        let c = csum_fold(csum_add(0, ip));
        set16(ip, 10, c);
        34
    }

    /// A gratuitous ARP (a broadcast request for our own address) on TX queue 0, and the
    /// acknowledgement of VIRTIO_NET_S_ANNOUNCE if the device set it.
    fn link_announce(&mut self) {
        if self.ip != 0 {
            self.send_arp(0, 1, &[0; 6], self.ip, &BCAST);
            self.tx[0].kick();
        }
        if self.announce && r16(self.base + R_CONFIG + 6) & NET_S_ANNOUNCE != 0 {
            if let Some(cq) = self.ctrl.as_mut() {
                ctrl_cmd(cq, CTRL_CLASS_ANNOUNCE, CTRL_ANNOUNCE_ACK, &[]);
            }
        }
    }

    /// Reads and acknowledges InterruptStatus; on a configuration change, announces the link
    /// again if the device asks for it.
    fn ack_interrupts(&mut self) {
        let isr = r32(self.base + R_INTERRUPT_STATUS);
        if isr != 0 {
            w32(self.base + R_INTERRUPT_ACK, isr);
        }
        if isr & INT_CONFIG != 0
            && self.announce
            && r16(self.base + R_CONFIG + 6) & NET_S_ANNOUNCE != 0
        {
            self.link_announce();
        }
    }

    fn send_arp(&mut self, q: usize, op: u16, tha: &[u8; 6], tpa: u32, dst_mac: &[u8; 6]) {
        let Some((id, a, _)) = self.tx[q].tx_get() else {
            self.dropped += 1;
            return;
        };
        let f = bytes_mut(a, 60);
        f.fill(0);
        f[0..6].copy_from_slice(dst_mac);
        f[6..12].copy_from_slice(&self.mac);
        set16(f, 12, ETH_ARP);
        set16(f, 14, 1);
        set16(f, 16, ETH_IP);
        f[18] = 6;
        f[19] = 4;
        set16(f, 20, op);
        f[22..28].copy_from_slice(&self.mac);
        set32(f, 28, self.ip);
        f[32..38].copy_from_slice(tha);
        set32(f, 38, tpa);
        self.tx[q].tx_put(id, 60);
        self.txc[q] += 1;
    }

    fn on_link(&self, ip: u32) -> bool {
        let m = mask_of(self.prefix);
        ip & m == self.ip & m
    }

    /// Handles one received Ethernet frame (RX queue `q`); replies go to TX queue `q`.
    fn frame(&mut self, q: usize, f: &[u8], arp: &mut Arp) {
        if f.len() < 14 || (f[0..6] != self.mac && f[0..6] != BCAST) || self.ip == 0 {
            return;
        }
        match be16(f, 12) {
            ETH_ARP if f.len() >= 42 => {
                let a = &f[14..];
                if be16(a, 0) != 1 || be16(a, 2) != ETH_IP || a[4] != 6 || a[5] != 4 {
                    return;
                }
                let mut sha = [0u8; 6];
                sha.copy_from_slice(&a[8..14]);
                let spa = be32(a, 14);
                let tpa = be32(a, 24);
                if tpa == self.ip || arp.get(spa).is_some() {
                    arp.learn(spa, sha);
                }
                if be16(a, 6) == 1 && tpa == self.ip {
                    self.send_arp(q, 2, &sha, spa, &sha);
                }
            }
            ETH_IP if f.len() >= 34 => {
                let ip = &f[14..];
                let ihl = (ip[0] & 15) as usize * 4;
                let tot = be16(ip, 2) as usize;
                if ip[0] >> 4 != 4 || ihl < 20 || tot < ihl || tot > ip.len() {
                    return;
                }
                if csum_fold(csum_add(0, &ip[..ihl])) != 0 {
                    self.dropped += 1;
                    return;
                }
                if be32(ip, 16) != self.ip || be16(ip, 6) & 0x3fff != 0 {
                    return; // not ours, or a fragment (no reassembly)
                }
                let mut src_mac = [0u8; 6];
                src_mac.copy_from_slice(&f[6..12]);
                let src = be32(ip, 12);
                let l4 = &ip[ihl..tot];
                match ip[9] {
                    1 if l4.len() >= 8 && l4[0] == 8 && l4[1] == 0 => {
                        self.icmp_echo(q, &src_mac, src, l4)
                    }
                    17 if l4.len() >= 8
                        && (be16(l4, 4) as usize) <= l4.len()
                        && be16(l4, 4) >= 8 =>
                    {
                        let l4 = &l4[..be16(l4, 4) as usize];
                        match be16(l4, 2) {
                            7 => self.udp_reply(q, &src_mac, src, l4, &l4[8..], Some(be16(l4, 6))),
                            5 => {
                                let mut line = [0u8; 800];
                                let n = self.stats_line(&mut line);
                                self.udp_reply(q, &src_mac, src, l4, &line[..n], None)
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn icmp_echo(&mut self, q: usize, mac: &[u8; 6], dst: u32, req: &[u8]) {
        let Some((id, a, cap)) = self.tx[q].tx_get() else {
            self.dropped += 1;
            return;
        };
        if 34 + req.len() > cap {
            self.tx[q].nfree += 1; // give the buffer back (it is the top of the stack)
            self.dropped += 1;
            return;
        }
        let f = bytes_mut(a, 34 + req.len());
        let o = self.ip_hdr(f, mac, dst, 1, req.len());
        let icmp = &mut f[o..];
        icmp.copy_from_slice(req);
        icmp[0] = 0;
        set16(icmp, 2, 0);
        let c = csum_fold(csum_add(0, icmp));
        set16(icmp, 2, c);
        self.tx[q].tx_put(id, f.len());
        self.txc[q] += 1;
    }

    /// UDP reply to the request `req` (its UDP header + payload) with `payload`. `csum`: the
    /// request's checksum, still right for an echo (swapping addresses and ports keeps the
    /// one's-complement sum); None to compute it.
    fn udp_reply(
        &mut self,
        q: usize,
        mac: &[u8; 6],
        dst: u32,
        req: &[u8],
        payload: &[u8],
        csum: Option<u16>,
    ) {
        let Some((id, a, cap)) = self.tx[q].tx_get() else {
            self.dropped += 1;
            return;
        };
        let len = 8 + payload.len();
        if 34 + len > cap || 20 + len > self.mtu {
            self.tx[q].nfree += 1;
            self.dropped += 1;
            return;
        }
        let f = bytes_mut(a, 34 + len);
        let o = self.ip_hdr(f, mac, dst, 17, len);
        let u = &mut f[o..];
        set16(u, 0, be16(req, 2));
        set16(u, 2, be16(req, 0));
        set16(u, 4, len as u16);
        u[8..].copy_from_slice(payload);
        let c = match csum {
            Some(c) => c,
            None => {
                set16(u, 6, 0);
                udp_csum(self.ip, dst, u)
            }
        };
        set16(u, 6, c);
        self.tx[q].tx_put(id, f.len());
        self.txc[q] += 1;
    }

    fn stats_line(&self, out: &mut [u8; 800]) -> usize {
        let mut n = 0;
        let mut w = |s: &[u8]| {
            let k = s.len().min(out.len() - n);
            out[n..n + k].copy_from_slice(&s[..k]);
            n += k;
        };
        let dec = |v: u64, w: &mut dyn FnMut(&[u8])| {
            let mut b = [0u8; 20];
            let mut i = b.len();
            let mut v = v;
            loop {
                i -= 1;
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            w(&b[i..]);
        };
        for (k, counts) in [(&b"rxq="[..], &self.rxc), (&b" txq="[..], &self.txc)] {
            w(k);
            for (i, &c) in counts.iter().enumerate().take(self.pairs) {
                if i > 0 {
                    w(b",");
                }
                dec(c, &mut w);
            }
        }
        w(b" dropped=");
        dec(self.dropped, &mut w);
        w(b"\n");
        n
    }

    /// Consumes up to `budget` packets from RX queue `q`; returns how many.
    fn poll_rx(&mut self, q: usize, budget: usize, arp: &mut Arp) -> usize {
        let mut done = 0;
        while done < budget {
            let vq = &self.rx[q];
            let n = vq.used_count();
            if n == 0 {
                break;
            }
            let (id, len) = vq.used_elem(0);
            if !vq.owned(id) {
                // Not a buffer the device holds: skip the entry.
                self.rx[q].last_used = vq.last_used.wrapping_add(1);
                self.dropped += 1;
                done += 1;
                continue;
            }
            let id = id as u16;
            let bs = vq.buf_size as usize;
            let a = vq.buf_addr(id);
            let mut nb = if self.mrg && len as usize >= HDR {
                r16(a + 10).max(1)
            } else {
                1
            };
            if nb > vq.nbuf {
                nb = 1; // more buffers than we ever posted: a broken header, drop below
            } else if nb > 1 && n < nb {
                break; // the rest of the packet is not there yet
            }
            done += 1;
            self.rxc[q] += 1;
            if len as usize > bs || (len as usize) < HDR || (self.mrg && r16(a + 10) > vq.nbuf) {
                self.dropped += 1;
                self.rx_recycle(q, nb);
                continue;
            }
            if nb == 1 {
                let f = bytes(a + HDR as u64, len as usize - HDR);
                self.frame(q, f, arp);
                self.rx_recycle(q, 1);
                continue;
            }
            // Mergeable buffers: gather into the scratch buffer.
            let mut total = 0usize;
            let mut ok = true;
            for k in 0..nb {
                let (kid, klen) = self.rx[q].used_elem(k);
                let (klen, skip) = (klen as usize, if k == 0 { HDR } else { 0 });
                if !self.rx[q].owned(kid)
                    || klen > bs
                    || klen < skip
                    || total + klen - skip > self.scratch_len
                {
                    ok = false;
                    break;
                }
                let src = bytes(self.rx[q].buf_addr(kid as u16) + skip as u64, klen - skip);
                bytes_mut(self.scratch + total as u64, klen - skip).copy_from_slice(src);
                total += klen - skip;
            }
            self.rx_recycle(q, nb);
            if ok {
                let f = bytes(self.scratch, total);
                self.frame(q, f, arp);
            } else {
                self.dropped += 1;
            }
        }
        done
    }

    /// Gives the next `nb` used buffers of RX queue `q` back to the device.
    fn rx_recycle(&mut self, q: usize, nb: u16) {
        // Ownership is cleared first, so that an id the device returned twice is posted once.
        let vq = &mut self.rx[q];
        let mut ids = [0u16; MAX_QSIZE as usize];
        let mut k = 0;
        for _ in 0..nb {
            let (id, _) = vq.used_elem(0);
            vq.last_used = vq.last_used.wrapping_add(1);
            if vq.owned(id) && k < ids.len() {
                vq.set_owned(id as u16, false);
                ids[k] = id as u16;
                k += 1;
            }
        }
        for &id in &ids[..k] {
            vq.rx_post(id);
        }
    }

    fn kick_all(&mut self) {
        for p in 0..self.pairs {
            self.rx[p].kick();
            self.tx[p].kick();
        }
    }

    fn rx_pending(&self) -> bool {
        (0..self.pairs).any(|p| self.rx[p].used_count() != 0)
    }

    fn set_rx_interrupts(&self, on: bool) {
        for p in 0..self.pairs {
            self.rx[p].set_interrupts(on);
        }
    }
}

fn udp_csum(src: u32, dst: u32, udp: &[u8]) -> u16 {
    let mut s = csum_add(0, &src.to_be_bytes());
    s = csum_add(s, &dst.to_be_bytes());
    s += 17 + udp.len() as u64;
    let c = csum_fold(csum_add(s, udp));
    if c == 0 {
        0xffff
    } else {
        c
    }
}

// ---- UDP generator ----

struct Gen {
    nic: usize,
    dst: u32,
    port: u16,
    payload: usize,
    count: u64,
    sent: u64,
    hop: u32,
    mac: Option<[u8; 6]>,
    arp_tries: u32,
    arp_at: u64,
    /// The payload with a zero sequence number.
    template: u64,
    /// Sum over the pseudo header, UDP header and template.
    base_sum: u64,
    done: bool,
}

/// `volt.udpgen=<dst-ip>:<dst-port>:<payload-bytes>:<count>`
fn parse_udpgen(v: &[u8]) -> Option<(u32, u16, usize, u64)> {
    let (ip, rest) = parse_ipv4(v)?;
    let (port, rest) = parse_num(rest.strip_prefix(b":")?, false)?;
    let (len, rest) = parse_num(rest.strip_prefix(b":")?, false)?;
    let (count, rest) = parse_num(rest.strip_prefix(b":")?, false)?;
    if !rest.is_empty() || port > 65535 || len > 65507 {
        return None;
    }
    Some((ip, port as u16, len as usize, count))
}

impl Gen {
    fn new(
        nic: &Nic,
        pick: usize,
        dst: u32,
        port: u16,
        payload: usize,
        count: u64,
        a: &mut Alloc,
    ) -> Option<Gen> {
        let hop = if nic.on_link(dst) || nic.gw == 0 {
            dst
        } else {
            nic.gw
        };
        let payload = payload.min(nic.mtu - 28);
        let template = a.alloc(payload as u64)?;
        // Payload: 8-byte big-endian sequence number (truncated if shorter), then a pattern.
        for (i, b) in bytes_mut(template, payload).iter_mut().enumerate().skip(8) {
            *b = (i as u8).wrapping_mul(7).wrapping_add(0x20);
        }
        let len = 8 + payload;
        let mut s = csum_add(0, &nic.ip.to_be_bytes());
        s = csum_add(s, &dst.to_be_bytes());
        s += 17 + len as u64;
        s = csum_add(s, &UDPGEN_SRC_PORT.to_be_bytes());
        s = csum_add(s, &port.to_be_bytes());
        s = csum_add(s, &(len as u16).to_be_bytes());
        s = csum_add(s, bytes(template, payload));
        Some(Gen {
            nic: pick,
            dst,
            port,
            payload,
            count,
            sent: 0,
            hop,
            mac: None,
            arp_tries: 0,
            arp_at: 0,
            template,
            base_sum: s,
            done: false,
        })
    }

    /// Fills TX queue 0 of its NIC (one notification per call); ARP first.
    fn step(&mut self, nic: &mut Nic, arp: &Arp, tpu: u64) {
        if self.mac.is_none() {
            self.mac = arp.get(self.hop);
            if self.mac.is_none() {
                let now = rdtsc();
                if self.arp_tries == 0 || now.wrapping_sub(self.arp_at) > 200_000 * tpu {
                    if self.arp_tries == 10 {
                        put(PREFIX);
                        put(b"udpgen no ARP reply from ");
                        put_ip(self.hop);
                        put(b"\n");
                        self.done = true;
                        return;
                    }
                    self.arp_tries += 1;
                    self.arp_at = now;
                    nic.send_arp(0, 1, &[0; 6], self.hop, &BCAST);
                    nic.tx[0].kick();
                }
                return;
            }
        }
        let mac = self.mac.unwrap_or(BCAST);
        let len = 8 + self.payload;
        while self.sent < self.count {
            let Some((id, a, cap)) = nic.tx[0].tx_get() else {
                break;
            };
            if 34 + len > cap {
                nic.tx[0].nfree += 1;
                self.count = self.sent;
                break;
            }
            let f = bytes_mut(a, 34 + len);
            let o = nic.ip_hdr(f, &mac, self.dst, 17, len);
            let u = &mut f[o..];
            set16(u, 0, UDPGEN_SRC_PORT);
            set16(u, 2, self.port);
            set16(u, 4, len as u16);
            let p = &mut u[8..];
            p.copy_from_slice(bytes(self.template, self.payload));
            let k = p.len().min(8);
            p[..k].copy_from_slice(&self.sent.to_be_bytes()[..k]);
            let c = csum_fold(csum_add(self.base_sum, &p[..k]));
            set16(u, 6, if c == 0 { 0xffff } else { c });
            nic.tx[0].tx_put(id, f.len());
            nic.txc[0] += 1;
            self.sent += 1;
        }
        nic.tx[0].kick();
        if self.sent >= self.count {
            nic.tx[0].tx_reclaim();
            if nic.tx[0].nfree == nic.tx[0].nbuf {
                put(PREFIX);
                put(b"udpgen done sent=");
                put_dec(self.sent);
                put(b"\n");
                self.done = true;
            }
        }
    }
}

// ---- options, setup and the main loop ----

#[derive(Default)]
pub struct Opts {
    /// `volt.irq=ioapic`: route IRQs < 16 through the IOAPIC instead of the 8259 (tests that
    /// path under QEMU, whose virtio-mmio IRQs are all < 16).
    ioapic: bool,
    /// `volt.net.mq=off`: do not negotiate VIRTIO_NET_F_MQ.
    no_mq: bool,
    /// `volt.net.event_idx=off`: do not negotiate VIRTIO_F_EVENT_IDX (notify by the flags).
    no_event_idx: bool,
    /// virtio-net devices with an IRQ on the slave 8259 (8-15).
    slave_nics: usize,
}

/// The virtio-net devices named by `virtio_mmio.device=` (device id 1), in order:
/// (spec, base, irq).
fn net_devices(cmdline: &[u8]) -> impl Iterator<Item = (&[u8], u64, u64)> {
    words(cmdline).filter_map(|w| {
        let spec = w.strip_prefix(b"virtio_mmio.device=")?;
        let (size, base, irq) = crate::parse_virtio(spec)?;
        if size < 0x200 || base.checked_add(0x200).is_none_or(|e| e > 1 << 32) {
            return None;
        }
        (r32(base) == VIRTIO_MAGIC && r32(base + R_DEVICE_ID) == 1).then_some((spec, base, irq))
    })
}

pub struct Net {
    nics: [Nic; MAX_NICS],
    n: usize,
    gen: Option<Gen>,
    arp: Arp,
    /// IRQ count when the NICs' interrupts were last acknowledged.
    acked: u32,
}

/// Brings up every virtio-net device (device id 1) named by `virtio_mmio.device=`, in order,
/// printing one `net` line each.
pub fn setup(cmdline: &[u8], alloc: &mut Option<Alloc>, si: &StartInfo) -> Net {
    let mut net = Net {
        nics: Default::default(),
        n: 0,
        gen: None,
        arp: Arp {
            e: [(0, [0; 6]); 8],
            next: 0,
        },
        acked: 0,
    };
    let mut opts = Opts::default();
    let mut ips = [IpCfg::default(); MAX_NICS];
    let mut nip = 0;
    let mut udpgen = None;
    for w in words(cmdline) {
        if let Some(v) = w.strip_prefix(b"ip=") {
            if nip < MAX_NICS {
                ips[nip] = parse_ip_param(v);
                nip += 1;
            }
        } else if w == b"volt.irq=ioapic" {
            opts.ioapic = true;
        } else if w == b"volt.net.mq=off" {
            opts.no_mq = true;
        } else if w == b"volt.net.event_idx=off" {
            opts.no_event_idx = true;
        } else if let Some(v) = w.strip_prefix(b"volt.udpgen=") {
            udpgen.get_or_insert(v);
        }
    }
    opts.slave_nics = net_devices(cmdline)
        .take(MAX_NICS)
        .filter(|d| (8..16).contains(&d.2))
        .count();
    for (name, (spec, base, irq)) in net_devices(cmdline).enumerate() {
        if name >= MAX_NICS {
            net_line(spec, b"failed: too many NICs");
            continue;
        }
        let a = alloc.get_or_insert_with(|| Alloc::new(si, cmdline));
        if let Some(nic) = init_nic(spec, base, irq, name as u8, ips[name], &opts, a) {
            net.nics[net.n] = nic;
            net.n += 1;
        }
    }
    let Some(v) = udpgen else { return net };
    let Some((dst, port, payload, count)) = parse_udpgen(v) else {
        put(PREFIX);
        put(b"udpgen unparsable: ");
        put(v);
        put(b"\n");
        return net;
    };
    if net.n == 0 {
        return net;
    }
    let nics = &net.nics[..net.n];
    let pick = nics
        .iter()
        .position(|n| n.ip != 0 && n.on_link(dst))
        .or_else(|| nics.iter().position(|n| n.ip != 0 && n.gw != 0))
        .unwrap_or(0);
    if let Some(a) = alloc.as_mut() {
        net.gen = Gen::new(&net.nics[pick], pick, dst, port, payload, count, a);
    }
    net
}

impl crate::Poll for Net {
    /// One pass over every RX queue (replies and refills published once per NIC), then a step
    /// of the UDP generator.
    fn poll(&mut self) -> usize {
        let mut work = 0;
        let nics = &mut self.nics[..self.n];
        for nic in nics.iter_mut() {
            for q in 0..nic.pairs {
                work += nic.poll_rx(q, 64, &mut self.arp);
            }
            nic.kick_all();
        }
        if let Some(g) = self.gen.as_mut().filter(|g| !g.done) {
            g.step(&mut nics[g.nic], &self.arp, tsc_per_us_cached());
            work += 1;
        }
        work
    }

    fn busy(&self) -> bool {
        let no_sleep = unsafe { NO_SLEEP };
        no_sleep || self.gen.as_ref().is_some_and(|g| !g.done)
    }

    /// Going idle: acknowledge what interrupted us, turn RX interrupts on, re-check.
    fn arm(&mut self, seen: u32) -> bool {
        let nics = &mut self.nics[..self.n];
        if seen != self.acked {
            // Acknowledge through the NIC: a configuration change (the device's announce
            // request) is answered there.
            for nic in nics.iter_mut() {
                nic.ack_interrupts();
            }
            self.acked = seen;
        }
        for nic in nics.iter() {
            nic.set_rx_interrupts(true);
        }
        fence(Ordering::SeqCst);
        nics.iter().any(|n| n.rx_pending())
    }

    fn disarm(&mut self) {
        for nic in &self.nics[..self.n] {
            nic.set_rx_interrupts(false);
        }
    }
}
