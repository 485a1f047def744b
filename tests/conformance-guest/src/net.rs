//! The network check, through virtio-drivers' `VirtIONetRaw`: a tiny IPv4 host on the first
//! NIC (`conf.ip=<a.b.c.d>`) that answers ARP, ICMP echo and UDP echo (port 7), and UDP port
//! 5 with its counters. Interrupt-driven: between packets the vCPU sleeps in the idle gate.

use alloc::vec;
use alloc::vec::Vec;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::MmioTransport;

use crate::hal::IdHal;
use crate::{param, say, unmask_irq};

const QUEUE: usize = 16;
const BUF: usize = 2048;
type Dev = VirtIONetRaw<IdHal, MmioTransport<'static>, QUEUE>;

struct Nic {
    dev: Dev,
    mac: [u8; 6],
    /// RX buffers, and which buffer each outstanding token (descriptor head) holds.
    bufs: Vec<Vec<u8>>,
    slot: [usize; QUEUE],
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    arp: u64,
    icmp: u64,
    udp: u64,
    other: u64,
    errors: u64,
}

/// The NICs found, served after the other checks.
pub struct Nics {
    nics: Vec<Nic>,
    ip: Option<[u8; 4]>,
}

fn parse_ip(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&c| c == b'.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        let (v, rest) = crate::parse_num(p, false)?;
        if !rest.is_empty() || v > 255 {
            return None;
        }
        *o = v as u8;
    }
    parts.next().is_none().then_some(out)
}

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Nics {
    pub fn new(cmdline: &[u8]) -> Nics {
        Nics {
            nics: Vec::new(),
            ip: param(cmdline, b"conf.ip").and_then(parse_ip),
        }
    }

    pub fn count(&self) -> usize {
        self.nics.len()
    }

    /// Brings up a NIC (interrupts on `irq`) and posts its receive buffers.
    pub fn add(&mut self, transport: MmioTransport<'static>, irq: u64) {
        let n = self.nics.len();
        let mut dev = match Dev::new(transport) {
            Ok(d) => d,
            Err(e) => {
                say!("net eth{n} init failed: {e}");
                return;
            }
        };
        let mac = dev.mac_address();
        let mut bufs: Vec<Vec<u8>> = (0..QUEUE).map(|_| vec![0u8; BUF]).collect();
        let mut slot = [0usize; QUEUE];
        for (i, b) in bufs.iter_mut().enumerate() {
            // SAFETY: the buffer is not touched again until receive_complete for its token.
            match unsafe { dev.receive_begin(b) } {
                Ok(t) => slot[usize::from(t) % QUEUE] = i,
                Err(e) => {
                    say!("net eth{n} posting rx buffers failed: {e}");
                    return;
                }
            }
        }
        unmask_irq(irq);
        dev.enable_interrupts();
        let ip = if n == 0 { self.ip } else { None };
        match ip {
            Some(a) => say!(
                "net eth{n} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} ip={}.{}.{}.{}",
                mac[0],
                mac[1],
                mac[2],
                mac[3],
                mac[4],
                mac[5],
                a[0],
                a[1],
                a[2],
                a[3]
            ),
            None => say!(
                "net eth{n} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} ip=none",
                mac[0],
                mac[1],
                mac[2],
                mac[3],
                mac[4],
                mac[5]
            ),
        }
        self.nics.push(Nic {
            dev,
            mac,
            bufs,
            slot,
            counts: Counts::default(),
        });
    }

    /// Handles every frame the NICs hold; whether there was any.
    pub fn poll(&mut self) -> bool {
        let ip = self.ip;
        let mut busy = false;
        for nic in &mut self.nics {
            let _ = nic.dev.ack_interrupt();
            while let Some(token) = nic.dev.poll_receive() {
                busy = true;
                nic.receive(token, ip);
            }
        }
        busy
    }
}

impl Nic {
    fn receive(&mut self, token: u16, ip: Option<[u8; 4]>) {
        let i = self.slot[usize::from(token) % QUEUE];
        let mut buf = core::mem::take(&mut self.bufs[i]);
        // SAFETY: `buf` is the buffer posted with this token.
        match unsafe { self.dev.receive_complete(token, &mut buf) } {
            Ok((hdr, len)) if hdr + len <= buf.len() => {
                if let Some(reply) = ip.and_then(|a| self.answer(&buf[hdr..hdr + len], a)) {
                    if self.dev.send(&reply).is_err() {
                        self.counts.errors += 1;
                    }
                }
            }
            _ => self.counts.errors += 1,
        }
        // SAFETY: as in `Nics::add`.
        match unsafe { self.dev.receive_begin(&mut buf) } {
            Ok(t) => self.slot[usize::from(t) % QUEUE] = i,
            Err(_) => self.counts.errors += 1,
        }
        self.bufs[i] = buf;
    }

    /// The reply to frame `f` for a host at `ip`, if it wants one.
    fn answer(&mut self, f: &[u8], ip: [u8; 4]) -> Option<Vec<u8>> {
        if f.len() < 14 {
            return None;
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        let mut r = Vec::with_capacity(f.len());
        r.extend_from_slice(&f[6..12]);
        r.extend_from_slice(&self.mac);
        r.extend_from_slice(&f[12..14]);
        match ethertype {
            0x0806 if f.len() >= 42 && f[20..22] == [0, 1] && f[38..42] == ip => {
                self.counts.arp += 1;
                r.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
                r.extend_from_slice(&self.mac);
                r.extend_from_slice(&ip);
                r.extend_from_slice(&f[22..32]); // requester's MAC and IP
                Some(r)
            }
            0x0800 if f.len() >= 34 => {
                let ihl = usize::from(f[14] & 0xf) * 4;
                let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
                if f[14] >> 4 != 4
                    || ihl != 20
                    || total < ihl
                    || 14 + total > f.len()
                    || f[30..34] != ip
                {
                    return None;
                }
                let l4 = &f[34..14 + total];
                let mut payload = Vec::with_capacity(l4.len());
                match f[23] {
                    1 if l4.len() >= 8 && l4[0] == 8 => {
                        self.counts.icmp += 1;
                        payload.extend_from_slice(l4);
                        payload[0] = 0;
                        payload[2..4].copy_from_slice(&[0, 0]);
                        let c = csum(&payload);
                        payload[2..4].copy_from_slice(&c.to_be_bytes());
                    }
                    17 if l4.len() >= 8 => {
                        let dport = u16::from_be_bytes([l4[2], l4[3]]);
                        self.counts.udp += 1;
                        payload.extend_from_slice(&l4[2..4]);
                        payload.extend_from_slice(&l4[0..2]);
                        match dport {
                            7 => {
                                // Same length and checksum: swapping addresses and ports does not
                                // change the ones' complement sum.
                                payload.extend_from_slice(&l4[4..]);
                            }
                            5 => {
                                let mut text = alloc::string::String::new();
                                let c = &self.counts;
                                let _ = core::fmt::Write::write_fmt(
                                    &mut text,
                                    format_args!(
                                        "arp={} icmp={} udp={} other={} errors={}\n",
                                        c.arp, c.icmp, c.udp, c.other, c.errors
                                    ),
                                );
                                payload.extend_from_slice(&((8 + text.len()) as u16).to_be_bytes());
                                payload.extend_from_slice(&[0, 0]); // no UDP checksum
                                payload.extend_from_slice(text.as_bytes());
                            }
                            _ => return None,
                        }
                    }
                    _ => {
                        self.counts.other += 1;
                        return None;
                    }
                }
                let mut iph = [0u8; 20];
                iph[0] = 0x45;
                iph[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
                iph[8] = 64;
                iph[9] = f[23];
                iph[12..16].copy_from_slice(&ip);
                iph[16..20].copy_from_slice(&f[26..30]);
                let c = csum(&iph);
                iph[10..12].copy_from_slice(&c.to_be_bytes());
                r.extend_from_slice(&iph);
                r.extend_from_slice(&payload);
                Some(r)
            }
            _ => {
                self.counts.other += 1;
                None
            }
        }
    }
}
