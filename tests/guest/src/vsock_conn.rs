//! The test guest's vsock connections: the services a command line starts, packets from the
//! host by operation, and what each connection sends (echo replies, the checked client
//! stream, the credit-ignoring flood, sd_notify). The device plumbing is in `vsock.rs`.

use super::*;

/// `<port>:<bytes>`.
fn port_len(v: &[u8]) -> Option<(u32, u64)> {
    let (port, rest) = parse_num(v, false)?;
    let (len, rest) = parse_num(rest.strip_prefix(b":")?, false)?;
    (rest.is_empty() && port <= u32::MAX as u64).then_some((port as u32, len))
}

impl Vsock {
    pub(super) fn start_services(&mut self, cmdline: &[u8]) {
        let mut notify_off = false;
        let mut notify = None;
        let mut delay_ms = 0;
        for w in words(cmdline) {
            if w == b"volt.notify=off" {
                notify_off = true;
            } else if let Some(v) = w.strip_prefix(b"volt.notify.delay=") {
                delay_ms = parse_num(v, false).map_or(0, |(n, _)| n.min(600_000));
            } else if let Some(v) =
                w.strip_prefix(b"systemd.set_credential=vmm.notify_socket:vsock-stream:2:")
            {
                notify = parse_num(v, false).map(|(p, _)| p as u32);
            } else if let Some(v) = w.strip_prefix(b"volt.vsock.client=") {
                if let Some((p, n)) = port_len(v) {
                    self.connect(Role::Client, p, n);
                }
            } else if let Some(v) = w.strip_prefix(b"volt.vsock.flood=") {
                if let Some((p, n)) = port_len(v) {
                    self.connect(Role::Flood, p, n);
                }
            }
        }
        if let (Some(p), false) = (notify, notify_off) {
            let at = crate::net::rdtsc() + delay_ms * 1000 * crate::net::tsc_per_us_cached();
            self.notify_at = Some((p, at));
        }
    }

    pub(super) fn packet(&mut self, buf: u64, used: usize) {
        let h = bytes(buf, HDR);
        let le32 = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let src_cid = le32(0) as u64 | (le32(4) as u64) << 32;
        let dst_cid = le32(8) as u64 | (le32(12) as u64) << 32;
        let (sport, dport, len) = (le32(16), le32(20), le32(24) as usize);
        let op = u16::from_le_bytes([h[30], h[31]]);
        if src_cid != HOST_CID || dst_cid != self.cid || len > used - HDR {
            self.dropped += 1;
            return;
        }
        let found = self
            .conns
            .iter()
            .position(|c| c.role != Role::Free && c.lport == dport && c.pport == sport);
        let i = match (found, op) {
            (Some(i), _) => i,
            (None, OP_REQUEST) if dport == self.echo_port => {
                let Some(i) = self.conns.iter().position(|c| c.role == Role::Free) else {
                    return self.rst_to(sport, dport);
                };
                self.conns[i] = Conn {
                    role: Role::Echo,
                    state: State::Open,
                    lport: dport,
                    pport: sport,
                    buf_alloc: ECHO_RING,
                    ring: self.rings[i],
                    ..Conn::default()
                };
                self.credit_from(i, h);
                self.send(i, OP_RESPONSE, 0, None);
                return;
            }
            (None, OP_RST) => return,
            (None, _) => return self.rst_to(sport, dport),
        };
        self.credit_from(i, h);
        let c = self.conns[i];
        match op {
            OP_RESPONSE if c.state == State::Connecting => {
                self.conns[i].state = State::Open;
                if c.role == Role::Notify {
                    let msg = b"READY=1\nSTATUS=volt-test-guest ready\n";
                    let Some(a) = self.slot_data() else { return };
                    bytes_mut(a, msg.len()).copy_from_slice(msg);
                    self.send(i, OP_RW, 0, Some((a, msg.len())));
                    self.send(i, OP_SHUTDOWN, 3, None);
                    self.conns[i].state = State::Closing;
                    line(b"notify sent READY=1 to port=");
                    put_dec(c.pport as u64);
                    put(b"\n");
                }
            }
            OP_RW if c.state == State::Open => self.data(i, buf + HDR as u64, len),
            OP_CREDIT_REQUEST => {
                self.send(i, OP_CREDIT_UPDATE, 0, None);
            }
            OP_CREDIT_UPDATE => {}
            OP_SHUTDOWN => self.conns[i].peer_shut = true,
            OP_RST => {
                if c.state == State::Connecting {
                    line(b"port=");
                    put_dec(c.pport as u64);
                    put(b" refused\n");
                } else if c.state == State::Open && matches!(c.role, Role::Client | Role::Flood) {
                    line(b"port=");
                    put_dec(c.pport as u64);
                    put(b" reset after sent=");
                    put_dec(c.sent);
                    put(b" received=");
                    put_dec(c.got);
                    put(b"\n");
                }
                self.conns[i] = Conn::default();
            }
            _ => {
                self.send(i, OP_RST, 0, None);
                self.conns[i] = Conn::default();
            }
        }
    }

    pub(super) fn credit_from(&mut self, i: usize, h: &[u8]) {
        let le32 = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        self.conns[i].peer_alloc = le32(36);
        self.conns[i].peer_fwd = le32(40);
    }

    pub(super) fn rst_to(&mut self, sport: u32, dport: u32) {
        // A temporary connection record in a free slot (or the last one) to reuse send().
        let i = self
            .conns
            .iter()
            .position(|c| c.role == Role::Free)
            .unwrap_or(MAX_CONNS - 1);
        let saved = self.conns[i];
        self.conns[i] = Conn {
            lport: dport,
            pport: sport,
            ..Conn::default()
        };
        self.send(i, OP_RST, 0, None);
        self.conns[i] = saved;
    }

    pub(super) fn data(&mut self, i: usize, addr: u64, len: usize) {
        let c = self.conns[i];
        match c.role {
            Role::Echo => {
                if c.got - c.sent + len as u64 > ECHO_RING as u64 {
                    // The host sent more than its credit: a device bug for this test.
                    self.dropped += 1;
                    self.send(i, OP_RST, 0, None);
                    self.conns[i] = Conn::default();
                    return;
                }
                for (k, &b) in bytes(addr, len).iter().enumerate() {
                    let pos = (c.got + k as u64) % ECHO_RING as u64;
                    unsafe { core::ptr::write((c.ring + pos) as *mut u8, b) };
                }
                self.conns[i].got += len as u64;
            }
            Role::Client => {
                let mut bad_at = c.bad_at;
                if bad_at.is_none() {
                    for (k, &b) in bytes(addr, len).iter().enumerate() {
                        if b != pattern(c.got + k as u64) {
                            bad_at = Some(c.got + k as u64);
                            break;
                        }
                    }
                }
                let m = &mut self.conns[i];
                m.bad_at = bad_at;
                m.got += len as u64;
                m.fwd_cnt = m.fwd_cnt.wrapping_add(len as u32);
            }
            _ => {
                let m = &mut self.conns[i];
                m.got += len as u64;
                m.fwd_cnt = m.fwd_cnt.wrapping_add(len as u32);
            }
        }
    }

    /// Sends what each connection can: echo replies, client/flood stream, credit updates.
    pub(super) fn progress(&mut self) -> usize {
        let mut work = 0;
        for i in 0..MAX_CONNS {
            let c = self.conns[i];
            if c.state != State::Open {
                continue;
            }
            let (avail, ignore_credit) = match c.role {
                Role::Echo => ((c.got - c.sent) as usize, false),
                Role::Client => ((c.total - c.sent) as usize, false),
                Role::Flood => ((c.total - c.sent) as usize, true),
                _ => (0, false),
            };
            let credit = if ignore_credit {
                usize::MAX
            } else {
                c.credit() as usize
            };
            let n = avail.min(credit).min(MAX_PAYLOAD);
            if n > 0 {
                let Some(a) = self.slot_data() else { break };
                let dst = bytes_mut(a, n);
                if c.role == Role::Echo {
                    for (k, d) in dst.iter_mut().enumerate() {
                        let pos = (c.sent + k as u64) % ECHO_RING as u64;
                        *d = unsafe { core::ptr::read((c.ring + pos) as *const u8) };
                    }
                } else {
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d = pattern(c.sent + k as u64);
                    }
                }
                if self.send(i, OP_RW, 0, Some((a, n))) {
                    let m = &mut self.conns[i];
                    m.sent += n as u64;
                    if m.role == Role::Echo {
                        // Ring bytes sent back are consumed: that is the credit we return.
                        m.fwd_cnt = m.fwd_cnt.wrapping_add(n as u32);
                    }
                    work += 1;
                }
            }
            let c = self.conns[i];
            if c.fwd_cnt.wrapping_sub(c.fwd_sent) >= c.buf_alloc / 4 {
                self.send(i, OP_CREDIT_UPDATE, 0, None);
            }
            self.finish(i);
        }
        work
    }

    pub(super) fn finish(&mut self, i: usize) {
        let c = self.conns[i];
        let done = match c.role {
            Role::Client => c.sent == c.total && (c.got >= c.total || c.bad_at.is_some()),
            Role::Flood => c.sent == c.total && self.nfree == self.ntx,
            Role::Echo => c.peer_shut && c.got == c.sent,
            _ => false,
        };
        if !done {
            return;
        }
        match c.role {
            Role::Client => {
                line(b"client port=");
                put_dec(c.pport as u64);
                match c.bad_at {
                    None => {
                        put(b" bytes=");
                        put_dec(c.total);
                        put(b" ok\n");
                    }
                    Some(at) => {
                        put(b" mismatch at ");
                        put_dec(at);
                        put(b"\n");
                    }
                }
            }
            Role::Flood => {
                line(b"flood port=");
                put_dec(c.pport as u64);
                put(b" sent=");
                put_dec(c.sent);
                put(b"\n");
            }
            _ => {}
        }
        if self.send(i, OP_SHUTDOWN, 3, None) {
            self.conns[i].state = State::Closing;
        }
    }
}
