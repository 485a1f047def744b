//! Host-side traffic tools for `scripts/bench` (not a product binary): fast enough that the
//! measuring end is never what limits a VM's or a veth pair's figures (recvmmsg/sendmmsg,
//! one thread). Run inside a network namespace (`nsenter --net=...`). Every command prints
//! one JSON object on stdout.
//!
//!   volt_netperf sink <bind-ip> <port> [--wait-ms N] [--idle-ms N] [--count N]
//!       Count datagrams until `count` arrived or none for idle-ms after the first.
//!       Prints "ready" on stderr once bound. JSON: packets, bytes, secs (first to last).
//!   volt_netperf blast <dst-ip> <port> <payload> <count>
//!       Send `count` datagrams as fast as sendmmsg takes them. JSON: sent, secs.
//!   volt_netperf rr <dst-ip> <port> <payload> <secs>
//!       UDP request/response, one in flight (netperf UDP_RR): JSON: transactions, secs,
//!       per_sec, lost, rtt_p50_us, rtt_p99_us.
//!   volt_netperf echo-server <bind-ip> <port>
//!       Echo every datagram back (the veth ceiling's stand-in for the guest's port 7).
//!   volt_netperf ask <dst-ip> <port> <text>
//!       Send `text` as one datagram and print the reply (up to 5 tries, 500 ms apart):
//!       JSON: reply (the test guest's stats line on port 5).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const BUF: usize = 9216;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage(&format!("bad or missing {what}")))
}

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn usage(why: &str) -> ! {
    eprintln!("volt_netperf: {why}\nusage: volt_netperf sink|blast|rr|echo-server|ask ...");
    std::process::exit(2);
}

fn big_buffers(s: &UdpSocket) {
    let size: libc::c_int = 64 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt with a valid int option value of the right size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

struct Batch {
    bufs: Vec<Vec<u8>>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(len: usize) -> Box<Batch> {
        let mut b = Box::new(Batch {
            bufs: (0..BATCH).map(|_| vec![0u8; len.max(1)]).collect(),
            iov: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        });
        for i in 0..BATCH {
            let p = b.bufs[i].as_mut_ptr();
            b.iov.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: len,
            });
        }
        for i in 0..BATCH {
            // SAFETY: mmsghdr is plain old data; zero is a valid empty header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut b.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            b.hdrs.push(h);
        }
        b
    }
}

fn sink(args: &[String]) {
    let ip: Ipv4Addr = arg(args, 0, "bind ip");
    let port: u16 = arg(args, 1, "port");
    let wait = Duration::from_millis(flag(args, "--wait-ms", 30_000));
    let idle = Duration::from_millis(flag(args, "--idle-ms", 1000));
    let count = flag(args, "--count", 0);
    let s = UdpSocket::bind(SocketAddrV4::new(ip, port)).unwrap_or_else(|e| usage(&e.to_string()));
    big_buffers(&s);
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    eprintln!("ready");
    let mut b = Batch::new(BUF);
    let (mut packets, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let (mut first, mut last) = (None::<Instant>, start);
    loop {
        // SAFETY: hdrs points at BATCH valid headers with iovecs into live buffers.
        let n = unsafe {
            libc::recvmmsg(
                s.as_raw_fd(),
                b.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let now = Instant::now();
        if n > 0 {
            first.get_or_insert(now);
            last = now;
            packets += n as u64;
            bytes += b.hdrs[..n as usize]
                .iter()
                .map(|h| u64::from(h.msg_len))
                .sum::<u64>();
            if count > 0 && packets >= count {
                break;
            }
        } else if match first {
            Some(_) => now - last > idle,
            None => now - start > wait,
        } {
            break;
        }
    }
    let secs = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
    println!("{{\"packets\": {packets}, \"bytes\": {bytes}, \"secs\": {secs:.6}}}");
}

fn blast(args: &[String]) {
    let ip: Ipv4Addr = arg(args, 0, "destination ip");
    let port: u16 = arg(args, 1, "port");
    let size: usize = arg(args, 2, "payload");
    let count: u64 = arg(args, 3, "count");
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
    big_buffers(&s);
    s.connect(SocketAddrV4::new(ip, port)).expect("connect");
    let mut b = Batch::new(size);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        let n = (count - sent).min(BATCH as u64) as usize;
        for (i, buf) in b.bufs[..n].iter_mut().enumerate() {
            let seq = (sent + i as u64).to_be_bytes();
            let k = buf.len().min(8);
            buf[..k].copy_from_slice(&seq[..k]);
        }
        // SAFETY: as in sink; the socket is connected, so no addresses are needed.
        let r = unsafe { libc::sendmmsg(s.as_raw_fd(), b.hdrs.as_mut_ptr(), n as u32, 0) };
        if r > 0 {
            sent += r as u64;
        } else if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOBUFS) {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{{\"sent\": {sent}, \"secs\": {secs:.6}}}");
}

fn rr(args: &[String]) {
    let ip: Ipv4Addr = arg(args, 0, "destination ip");
    let port: u16 = arg(args, 1, "port");
    let size: usize = arg::<usize>(args, 2, "payload").max(8);
    let secs: f64 = arg(args, 3, "seconds");
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
    s.connect(SocketAddrV4::new(ip, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut out = vec![0u8; size];
    let mut inb = vec![0u8; BUF];
    let mut rtts: Vec<f64> = Vec::new();
    let (mut seq, mut lost) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        out[..8].copy_from_slice(&seq.to_be_bytes());
        let t = Instant::now();
        if s.send(&out).is_err() {
            lost += 1;
            continue;
        }
        loop {
            match s.recv(&mut inb) {
                Ok(n) if n >= 8 && inb[..8] == out[..8] => {
                    rtts.push(t.elapsed().as_secs_f64() * 1e6);
                    break;
                }
                Ok(_) => continue, // a late echo of an earlier, lost-looking one
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
        seq += 1;
    }
    let total = start.elapsed().as_secs_f64();
    let n = rtts.len();
    rtts.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if n == 0 {
            0.0
        } else {
            rtts[((n as f64 * p) as usize).min(n - 1)]
        }
    };
    println!(
        "{{\"transactions\": {n}, \"secs\": {total:.6}, \"per_sec\": {:.1}, \"lost\": {lost}, \"rtt_p50_us\": {:.1}, \"rtt_p99_us\": {:.1}}}",
        n as f64 / total,
        pct(0.5),
        pct(0.99)
    );
}

fn echo_server(args: &[String]) {
    let ip: Ipv4Addr = arg(args, 0, "bind ip");
    let port: u16 = arg(args, 1, "port");
    let s = UdpSocket::bind(SocketAddrV4::new(ip, port)).unwrap_or_else(|e| usage(&e.to_string()));
    big_buffers(&s);
    eprintln!("ready");
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        let _ = s.send_to(&buf[..n], from);
    }
}

fn ask(args: &[String]) {
    let ip: Ipv4Addr = arg(args, 0, "destination ip");
    let port: u16 = arg(args, 1, "port");
    let text: String = arg(args, 2, "text");
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
    s.connect(SocketAddrV4::new(ip, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = vec![0u8; BUF];
    for _ in 0..5 {
        if s.send(text.as_bytes()).is_err() {
            continue;
        }
        if let Ok(n) = s.recv(&mut buf) {
            let reply = String::from_utf8_lossy(&buf[..n]);
            let escaped: String = reply
                .trim_end()
                .chars()
                .filter(|c| !c.is_control())
                .map(|c| if c == '"' || c == '\\' { '_' } else { c })
                .collect();
            println!("{{\"reply\": \"{escaped}\"}}");
            return;
        }
    }
    eprintln!("volt_netperf: no reply from {ip}:{port}");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    match args.first().map(String::as_str) {
        Some("sink") => sink(rest),
        Some("blast") => blast(rest),
        Some("rr") => rr(rest),
        Some("echo-server") => echo_server(rest),
        Some("ask") => ask(rest),
        _ => usage("no command"),
    }
}
