//! Volt's virtio-vsock device under a driver nobody here wrote: the conformance guest
//! (tests/conformance-guest) drives it with virtio-drivers' `VsockConnectionManager`, and
//! this test plays the host through the hybrid Unix socket, checking every byte.
//!
//! - guest → host: the guest connects to CID 2 port 5000 (`<socket>_5000`) and streams
//!   1 MiB of the pattern; the host reads nothing until the guest says the host's credit ran
//!   out, then checks every byte and echoes it; the guest checks the echo.
//! - host → guest: `CONNECT 1234` to the guest's echo server, 1 MiB out; the host first reads
//!   nothing for 2 s (the guest must hold its echo: credit both ways runs out, and the VMM
//!   must idle meanwhile), then checks every byte of the echo.
//! - `CONNECT` to a port the guest does not listen on is closed without `OK`.
//!
//! Not compared with QEMU: QEMU 7.2's virtio-vsock is `vhost-vsock-device` (needs
//! /dev/vhost-vsock, absent from this kernel: built without CONFIG_VHOST) or
//! `vhost-user-vsock-device` (needs an external vhost-user backend), so the reference here
//! is the spec (virtio 1.2 §5.10) and virtio-drivers' reading of it. Our own test guest
//! (tests/vmm_vsock.rs) never sends CREDIT_REQUEST (it announces credit with CREDIT_UPDATE
//! on its own), uses 64 KiB RX buffers and answers a zero-credit CREDIT_REQUEST only when
//! asked; virtio-drivers asks for credit on a refused send, counts only a CREDIT_UPDATE as
//! the answer and answers every CREDIT_REQUEST at once. That found two device bugs, both
//! fixed in `src/vmm/virtio/vsock/conn.rs`: a guest's CREDIT_REQUEST was answered by folding
//! the credit into waiting data (virtio-drivers then never asked again), and a zero-credit
//! answer made the device ask again at once (a request/update ping-pong for as long as the
//! guest held its buffer).
//!
//! Timeouts are failure bounds, not performance claims.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::conformance;
use common::vmm::Vmm;

const VMM: &str = env!("CARGO_BIN_EXE_volt-vmm");
const BOUND: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;
/// What the device announces as `buf_alloc` (src/vmm/virtio/vsock/conn.rs `CONN_BUF`).
const DEVICE_BUF: u64 = 256 * 1024;

/// Byte `i` of the guest's streams (tests/conformance-guest/README.md).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// `key=<value>` out of a guest line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// CPU time (user + system, all threads) of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// `CONNECT port`; the answer line (empty when the connection was closed without one).
fn connect(sock: &Path, port: u32) -> (UnixStream, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the vsock socket");
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("CONNECT");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

/// Reads `total` bytes from `r`, checking each against the pattern; `echo`: writes each
/// piece back to `r`.
fn read_checked(r: &mut UnixStream, total: usize, echo: bool, what: &str) {
    r.set_read_timeout(Some(BOUND)).unwrap();
    let mut w = r.try_clone().unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while got < total {
        let n = r
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        assert!(n > 0, "{what}: EOF after {got} of {total} bytes");
        for (k, &b) in buf[..n].iter().enumerate() {
            let i = (got + k) as u64;
            assert_eq!(b, pattern(i), "{what}: byte {i} differs");
        }
        if echo {
            w.write_all(&buf[..n]).expect("echo to the guest");
        }
        got += n;
    }
}

#[test]
fn vsock_under_virtio_drivers_both_directions_every_byte_checked() {
    if common::skip(None, true) {
        return;
    }
    let guest = conformance::elf();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(dir.path().join("vsock.sock_5000")).unwrap();
    let cmdline = format!("console=ttyS0 conf.vsock.client=5000:{MIB} conf.vsock.echo=1234");
    let mut vm = Vmm::start(
        VMM,
        &guest,
        &[
            "--memory-mib",
            "64",
            "--vsock-cid",
            "9",
            "--vsock-socket",
            sock.to_str().expect("utf-8 path"),
            "--cmdline",
            &cmdline,
        ],
    );
    vm.wait_line("conformance: vsock cid=9", BOUND);

    // Guest → host, the host not reading at first: the guest must be stopped by credit.
    let (mut s, _) = listener.accept().expect("the guest connects to port 5000");
    vm.wait_line("conformance: vsock client port=5000 connected", BOUND);
    let wait = vm.wait_line("conformance: vsock client port=5000 credit-wait", BOUND);
    let held: u64 = field(&wait, "sent").parse().expect("sent=");
    assert!(
        (DEVICE_BUF..MIB as u64).contains(&held),
        "the guest stopped for credit after {held} bytes (the device announces {DEVICE_BUF})"
    );
    read_checked(&mut s, MIB, true, "guest stream");
    let done = vm.wait_line("conformance: vsock client port=5000 sent=", BOUND);
    let want = format!(
        "conformance: vsock client port=5000 sent={MIB} received={MIB} check=ok first-difference=-1"
    );
    assert!(done.starts_with(&want), "{done}");
    assert_eq!(
        field(&done, "end"),
        "reset",
        "the device ends a shutdown with RST: {done}"
    );
    let waits: u64 = field(&done, "credit-waits").parse().expect("credit-waits");
    let updates: u64 = field(&done, "credit-updates")
        .parse()
        .expect("credit-updates");
    assert!(waits >= 1 && updates >= 1, "{done}");
    // The guest shut down: the host reads end-of-file.
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).expect("EOF"), 0);

    // Host → guest, the echo held back for 2 s.
    vm.wait_line("conformance: vsock echo port=1234 listening", BOUND);
    vm.wait_line("conformance: serving", BOUND);
    let (mut s, ok) = connect(&sock, 1234);
    assert!(ok.starts_with("OK "), "answer {ok:?}");
    let host_port: u32 = ok[3..].parse().expect("host port");
    vm.wait_line(
        &format!("conformance: vsock echo port=1234 peer=2:{host_port} connected"),
        BOUND,
    );
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..MIB as u64).map(pattern).collect();
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).expect("write to the guest");
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let (t0, c0) = (Instant::now(), cpu_time(vm.child.id()));
    std::thread::sleep(Duration::from_secs(2));
    let (stall, cpu) = (t0.elapsed(), cpu_time(vm.child.id()) - c0);
    common::report::figure(
        "volt-vmm CPU time while the host holds back the echo",
        format!("{cpu:?} in {stall:?}"),
    );
    assert!(
        cpu < Duration::from_millis(300),
        "volt-vmm (vCPU and vsock worker) used {cpu:?} of CPU in {stall:?} while nothing \
         could move: guest and device keep asking each other for credit"
    );
    read_checked(&mut s, MIB, false, "echo");
    writer.join().unwrap();
    drop(s);
    let end = vm.wait_line(
        &format!("conformance: vsock echo port=1234 peer=2:{host_port} bytes="),
        BOUND,
    );
    assert_eq!(
        end,
        format!("conformance: vsock echo port=1234 peer=2:{host_port} bytes={MIB} end=shutdown"),
        "the host's close reaches the guest as SHUTDOWN"
    );

    // A port nobody listens on: virtio-drivers resets the request, the host sees no OK.
    let (_s, answer) = connect(&sock, 4321);
    assert_eq!(answer, "", "closed without OK");
    assert!(
        !vm.drain().iter().any(|l| l.contains("vsock error")),
        "{:#?}",
        vm.seen
    );
    assert!(vm.running(), "volt-vmm is still serving");
}
