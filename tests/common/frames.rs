//! Raw Ethernet frames for attack tests, built by hand (checksums included), and AF_PACKET
//! sockets to send and watch them. Every frame carries a marker so a listener can tell it
//! from other traffic: as an Ethernet trailer (kept for ARP and unknown ethertypes; the
//! bridge trims IP packets to their length), so IP frames also carry it inside: the
//! ICMP/UDP data, or an ND option of an experimental type (RFC 4727), which receivers
//! ignore.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const ETH_IP: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IP6: u16 = 0x86dd;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub fn mac(s: &str) -> [u8; 6] {
    s.parse::<volt::config::MacAddr>().expect("mac").0
}

/// The Ethernet multicast address of an IPv6 multicast group (33:33 + low 32 bits).
pub fn mcast6(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// dst, src, then each (TPID, VLAN id) tag outermost first, the ethertype, the payload and
/// the marker.
pub fn ether(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    ethertype: u16,
    payload: &[u8],
    marker: &str,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.extend_from_slice(marker.as_bytes());
    while f.len() < 60 {
        f.push(0);
    }
    f
}

/// An ARP request "who has `tpa`? tell `spa` at `sha`".
pub fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&tpa.octets());
    p
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// An IPv4 packet carrying an ICMP echo request with `data`.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, data: &str) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(data.as_bytes());
    let c = fold(sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &icmp)
}

/// An IPv4 packet of protocol `proto` carrying `l4` (a UDP checksum of 0 is "none" in IPv4).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

/// One fragment of an IPv4 packet of protocol `proto` (ident 0x5678): `part` of its
/// payload at byte `offset` (a multiple of 8), more to come when `more`.
pub fn ipv4_fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    part: &[u8],
    offset: usize,
    more: bool,
) -> Vec<u8> {
    let mut ip = ipv4(src, dst, proto, part);
    let flags = (u16::from(more) << 13) | (offset / 8) as u16;
    ip[4..6].copy_from_slice(&0x5678u16.to_be_bytes());
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = fold(sum16(&ip[..20]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// An IPv6 packet; for ICMPv6 (`next` 58) the checksum at bytes 2..4 of `l4` is filled in.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, l4: &[u8]) -> Vec<u8> {
    let mut l4 = l4.to_vec();
    let len = l4.len() as u16;
    if next == 58 || next == 17 {
        let at = if next == 58 { 2 } else { 6 };
        l4[at..at + 2].copy_from_slice(&[0, 0]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, next]);
        let c = fold(sum16(&pseudo) + sum16(&l4));
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.push(next);
    p.push(hop_limit);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&l4);
    p
}

/// ICMPv6 echo request with `data`.
pub fn icmp6_echo(data: &str) -> Vec<u8> {
    let mut m = vec![128, 0, 0, 0, 0x12, 0x34, 0, 1];
    m.extend_from_slice(data.as_bytes());
    m
}

/// An ND option of the experimental type 253 carrying `data`, padded to 8-byte units.
pub fn nd_option(data: &str) -> Vec<u8> {
    let mut m = vec![253, 0];
    m.extend_from_slice(data.as_bytes());
    while m.len() % 8 != 0 {
        m.push(0);
    }
    m[1] = (m.len() / 8) as u8;
    m
}

/// A router advertisement: default router for 1800 s, source link-layer option `lladdr`.
pub fn router_advert(lladdr: [u8; 6]) -> Vec<u8> {
    let mut m = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&[1, 1]);
    m.extend_from_slice(&lladdr);
    m
}

/// A neighbour advertisement for `target` at `lladdr` with the override flag.
pub fn neighbour_advert(target: Ipv6Addr, lladdr: [u8; 6]) -> Vec<u8> {
    let mut m = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&lladdr);
    m
}

/// A neighbour solicitation for `target` (from `::`: duplicate address detection).
pub fn neighbour_solicit(target: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m
}

/// A redirect: "reach `dest` through `target`".
pub fn redirect(target: Ipv6Addr, dest: Ipv6Addr) -> Vec<u8> {
    let mut m = vec![137, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&dest.octets());
    m
}

/// A UDP datagram (checksum filled in by [`ipv6`]).
pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&sport.to_be_bytes());
    m.extend_from_slice(&dport.to_be_bytes());
    m.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(data);
    m
}

/// A BOOTP request (a DHCP client's) from client hardware address `chaddr`, `data` after
/// the magic cookie.
pub fn bootp_request(chaddr: [u8; 6], data: &str) -> Vec<u8> {
    let mut b = vec![1, 1, 6, 0, 0x12, 0x34, 0x56, 0x78];
    b.resize(28, 0);
    b.extend_from_slice(&chaddr);
    b.resize(236, 0);
    b.extend_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(data.as_bytes());
    b
}

/// The first fragment of an IPv6 packet whose payload is `l4` of protocol `next` (more
/// fragments follow): a fragment header, then `l4`.
pub fn ipv6_fragment(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![next, 0, 0, 1, 0, 0, 0x56, 0x78];
    f.extend_from_slice(l4);
    ipv6(src, dst, 44, 255, &f)
}

/// An AF_PACKET socket bound to `link` in the calling thread's namespace, seeing every
/// frame, with a 100 ms receive timeout.
pub fn packet_socket(link: &str) -> OwnedFd {
    packet_socket_timeout(link, Duration::from_millis(100))
}

/// [`packet_socket`] with a receive timeout of `timeout`.
pub fn packet_socket_timeout(link: &str, timeout: Duration) -> OwnedFd {
    let index = volt::net::link::index(link).expect("ifindex");
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket syscalls; the fd is owned right away; addr and tv are valid for
    // the lengths passed.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        );
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        let owned = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        assert_eq!(
            libc::bind(
                fd,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32
            ),
            0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        assert_eq!(
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32
            ),
            0
        );
        owned
    }
}

/// Send one frame on a bound packet socket.
pub fn send(sock: &OwnedFd, frame: &[u8]) {
    // SAFETY: frame is valid for its length.
    let n = unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

/// The markers of frames arriving on `sock` until `until` arrives or `wait` passes (`until`
/// itself included when it came).
pub fn markers_until(sock: &OwnedFd, until: &str, wait: Duration) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < wait {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let frame = &buf[..n as usize];
        if let Some(m) = find_marker(frame) {
            let done = m == until;
            seen.push(m);
            if done {
                break;
            }
        }
    }
    seen
}

/// Markers are `@@<name>@@`.
pub fn marker(name: &str) -> String {
    format!("@@{name}@@")
}

fn find_marker(frame: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(frame);
    let start = text.find("@@")?;
    let end = text[start + 2..].find("@@")? + start + 4;
    Some(text[start..end].to_string())
}
