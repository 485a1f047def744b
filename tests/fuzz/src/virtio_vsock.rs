//! `virtio_vsock`: the vsock device's packet parsing, connection state machine and muxer
//! against a hostile guest and a hostile host side, with real Unix sockets in a temporary
//! directory (listeners at `vsock.sock_1..3`, clients of `vsock.sock`) and the muxer's own
//! epoll. The program: guest TX chains (fuzzed descriptors: addresses in and out of memory,
//! writable or not, any lengths; fuzzed headers, biased towards valid ones so connections
//! get far, both those the guest opens and those a host client opened: a header with bit 7
//! of its selector talks from a guest port a client asked for to one of the first host
//! ports the muxer hands out, so host-initiated connections get answered and carry data),
//! guest RX buffers (any size), host clients with fuzzed `CONNECT` lines, host
//! writes, reads, half-closes and closes, epoll dispatch and timers running ahead.
//!
//! Checked: no panic, no hang; every packet for the guest is a stream packet from CID 2 to
//! the guest's CID with a known operation and a payload that fits its buffer and 64 KiB;
//! at most `MAX_CONNS` connections and `MAX_CONNS × CONN_BUF` bytes held for host streams.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent};

use volt::vmm::spec::NOTIFY_PORT;
use volt::vmm::virtio::vsock::conn::{Verdict, CONN_BUF};
use volt::vmm::virtio::vsock::muxer::{Muxer, FIRST_LOCAL_PORT, MAX_CONNS};
use volt::vmm::virtio::vsock::packet::{op, Header, Segments, TxPacket, HDR_LEN, MAX_PKT_LEN};

use super::cursor::Cursor;

const CID: u64 = 3;
/// Guest RAM: 256 KiB at 0 (rings at 0, buffers above 0x1000) and 4 KiB at 1 MiB.
const RAM: [(u64, usize); 2] = [(0, 0x4_0000), (0x10_0000, 0x1000)];
const QSIZE: u16 = 16;
/// Ring offsets from a queue's base (TX at 0, RX at 0x800).
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const MAX_OPS: usize = 128;
const PORTS: [u32; 5] = [1, 2, 3, 1234, NOTIFY_PORT];

struct Ring {
    q: Queue,
    base: u64,
    avail_idx: u16,
}

impl Ring {
    fn new(mem: &GuestMemoryMmap, base: u64) -> Ring {
        let mut q = Queue::new(QSIZE).expect("queue");
        q.set_size(QSIZE);
        q.try_set_desc_table_address(GuestAddress(base + DESC))
            .expect("desc");
        q.try_set_avail_ring_address(GuestAddress(base + AVAIL))
            .expect("avail");
        q.try_set_used_ring_address(GuestAddress(base + USED))
            .expect("used");
        q.set_ready(true);
        let _ = mem.write_obj(0u16, GuestAddress(base + AVAIL + 2));
        Ring {
            q,
            base,
            avail_idx: 0,
        }
    }

    /// Writes up to 3 descriptors from the fuzzer (the first at `head`), publishes `head`.
    fn chain(&mut self, mem: &GuestMemoryMmap, c: &mut Cursor, data_at: u64, writable: bool) {
        let n = 1 + usize::from(c.u8() % 3);
        let head = u16::from(c.u8()) % QSIZE;
        let mut at = data_at;
        for k in 0..n {
            let i = (head + k as u16) % QSIZE;
            let mode = c.u8();
            let len = match mode & 3 {
                0 => HDR_LEN as u32,
                1 => u32::from(c.u16()) % 0x2000,
                2 => u32::from(c.u8()),
                _ => c.u32(),
            };
            let addr = match (mode >> 2) & 3 {
                3 => c.u64(),
                2 => 0x10_0000 + u64::from(c.u16() % 0x1100),
                _ => at,
            };
            // Bit 4 flips the direction the device expects.
            let mut flags: u16 = if writable ^ (mode & 0x10 != 0) { 2 } else { 0 };
            if k + 1 < n {
                flags |= 1;
            }
            let next = (i + 1) % QSIZE;
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = mem.write_slice(&raw, GuestAddress(self.base + DESC + 16 * u64::from(i)));
            at = at.saturating_add(u64::from(len.min(0x1_0000)));
        }
        let slot = self.base + AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        let _ = mem.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.base + AVAIL + 2));
    }
}

fn header(c: &mut Cursor) -> Header {
    let sel = c.u8();
    let pick = |c: &mut Cursor| PORTS[usize::from(c.u8()) % PORTS.len()];
    // Bit 7: the guest's side of a connection a host client opened (guest port from PORTS,
    // host port one of the first the muxer hands out); else one the guest opens. The
    // biased choices read one byte either way.
    let host_opened = sel & 128 != 0;
    Header {
        src_cid: if sel & 1 == 0 { CID } else { c.u64() },
        dst_cid: if sel & 2 == 0 { 2 } else { c.u64() },
        src_port: match (sel & 4 == 0, host_opened) {
            (true, false) => 1000 + u32::from(c.u8() % 4),
            (true, true) => pick(c),
            (false, _) => c.u32(),
        },
        dst_port: match (sel & 8 == 0, host_opened) {
            (true, false) => pick(c),
            (true, true) => FIRST_LOCAL_PORT + u32::from(c.u8() % 4),
            (false, _) => c.u32(),
        },
        len: 0,
        type_: if sel & 16 == 0 { 1 } else { c.u16() },
        op: if sel & 32 == 0 {
            1 + u16::from(c.u8() % 7)
        } else {
            c.u16()
        },
        flags: u32::from(c.u8() % 4),
        buf_alloc: if sel & 64 == 0 { 1 << 16 } else { c.u32() },
        fwd_cnt: c.u32(),
    }
}

fn check(h: &Header, cap: usize) {
    assert_eq!((h.src_cid, h.dst_cid, h.type_), (2, CID, 1), "{h:?}");
    assert!((op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op), "{h:?}");
    assert!(
        h.len as usize <= cap && h.len <= MAX_PKT_LEN,
        "{h:?} cap {cap}"
    );
    assert!(h.len == 0 || h.op == op::RW, "{h:?}");
}

pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let mem = GuestMemoryMmap::from_ranges(
        &RAM.iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect::<Vec<_>>(),
    )
    .expect("guest memory");
    let Ok(dir) = tempfile_dir() else { return };
    let sock = dir.join("vsock.sock");
    let Ok(listener) = UnixListener::bind(&sock) else {
        return;
    };
    let listeners: Vec<UnixListener> = (1..=3)
        .filter_map(|p| UnixListener::bind(dir.join(format!("vsock.sock_{p}"))).ok())
        .collect();
    for l in &listeners {
        let _ = l.set_nonblocking(true);
    }
    let (tx, _events) = volt::vmm::event::event_channel();
    let Ok(epoll) = Epoll::new() else { return };
    let Ok(mut mux) = Muxer::new(CID, sock.clone(), listener, epoll, Some(tx)) else {
        return;
    };
    let mut txq = Ring::new(&mem, 0);
    let mut rxq = Ring::new(&mem, 0x800);
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut scratch = vec![0u8; MAX_PKT_LEN as usize];
    let mut now = Instant::now();
    for _ in 0..MAX_OPS {
        if c.is_empty() {
            break;
        }
        match c.u8() % 8 {
            0 => {
                // A guest packet: header + payload written where the chain's first
                // descriptor points (mostly), then the chain.
                let mut h = header(&mut c);
                let plen = usize::from(c.u16() % 2048);
                let payload = c.bytes(plen).to_vec();
                h.len = if c.bool() {
                    payload.len() as u32
                } else {
                    c.u32()
                };
                let at = 0x1000 + u64::from(c.u16());
                let _ = mem.write_slice(&h.to_bytes(), GuestAddress(at));
                let _ = mem.write_slice(&payload, GuestAddress(at + HDR_LEN as u64));
                txq.chain(&mem, &mut c, at, false);
            }
            1 => {
                let at = 0x2_8000 + u64::from(c.u16());
                rxq.chain(&mem, &mut c, at, true);
            }
            2 => {
                // Device TX pass (as the worker does).
                for _ in 0..QSIZE {
                    if mux.tx_blocked() {
                        break;
                    }
                    let Some(chain) = txq.q.pop_descriptor_chain(&mem) else {
                        break;
                    };
                    let head = chain.head_index();
                    match TxPacket::parse(chain, &mem) {
                        Err((Some(h), _)) => mux.reply_rst(&h),
                        Err((None, _)) => {}
                        Ok(p) => {
                            let n = p.hdr.len as usize;
                            if !p.read_payload(&mem, &mut scratch) {
                                mux.reply_rst(&p.hdr);
                            } else if mux.send_pkt(&p.hdr, &scratch[..n]) == Verdict::Throttle {
                                txq.q.go_to_previous_position();
                                break;
                            }
                        }
                    }
                    let _ = txq.q.add_used(&mem, head, 0);
                }
            }
            3 => {
                // Device RX pass.
                for _ in 0..QSIZE {
                    if !mux.has_rx() {
                        break;
                    }
                    let Some(chain) = rxq.q.pop_descriptor_chain(&mem) else {
                        break;
                    };
                    let head = chain.head_index();
                    match Segments::collect(chain, &mem, true) {
                        Ok(s) if s.len() >= HDR_LEN as u64 => {
                            let cap = (s.len() - HDR_LEN as u64).min(u64::from(MAX_PKT_LEN));
                            let cap = cap as usize;
                            match mux.recv_pkt(&mut scratch[..cap]) {
                                Some(h) => {
                                    check(&h, cap);
                                    assert!(s.write_at(&mem, 0, &h.to_bytes()));
                                    let n = h.len as usize;
                                    assert!(s.write_at(&mem, HDR_LEN as u64, &scratch[..n]));
                                    let _ = rxq.q.add_used(&mem, head, (HDR_LEN + n) as u32);
                                }
                                None => {
                                    rxq.q.go_to_previous_position();
                                    break;
                                }
                            }
                        }
                        _ => {
                            let _ = rxq.q.add_used(&mem, head, 0);
                        }
                    }
                }
            }
            4 => {
                // A host client: mostly a good CONNECT line.
                if let Ok(mut s) = UnixStream::connect(&sock) {
                    let line = match c.u8() % 4 {
                        0 => c.bytes(40).to_vec(),
                        _ => {
                            let p = PORTS[usize::from(c.u8()) % PORTS.len()];
                            format!("CONNECT {p}\n").into_bytes()
                        }
                    };
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(&line);
                    hosts.push(s);
                }
                for l in &listeners {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        hosts.push(s);
                    }
                }
            }
            5 => {
                // A host stream writes, reads, half-closes or closes.
                if hosts.is_empty() {
                    continue;
                }
                let i = usize::from(c.u8()) % hosts.len();
                match c.u8() % 4 {
                    0 => {
                        let n = usize::from(c.u16()) % 70_000;
                        let fill = c.u8();
                        let _ = hosts[i].write(&vec![fill; n]);
                    }
                    1 => {
                        let mut b = vec![0u8; 1 << 16];
                        let _ = hosts[i].read(&mut b);
                    }
                    2 => {
                        let _ = hosts[i].shutdown(std::net::Shutdown::Write);
                    }
                    _ => {
                        hosts.swap_remove(i);
                    }
                }
            }
            6 => {
                let mut events = [EpollEvent::default(); 32];
                if let Ok(n) = mux.epoll().wait(0, &mut events) {
                    for ev in &events[..n] {
                        mux.handle_event(ev.data(), ev.event_set());
                    }
                }
            }
            _ => {
                now += Duration::from_millis(u64::from(c.u16()) * 20);
                mux.on_timers(now);
            }
        }
        assert!(mux.connections() <= MAX_CONNS);
        assert!(mux.buffered() <= MAX_CONNS * CONN_BUF as usize);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system temp dir (no tempfile crate in the fuzz build).
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "volt-fuzz-vsock-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
