//! virtio-vsock end to end: the built `volt-vmm` (seccomp on) runs the test guest with a
//! vsock device; host programs talk to it over the hybrid Unix sockets.
//!
//! - host → guest echo: `CONNECT 1234`, 10 MiB out and back, every byte checked;
//! - guest → host: the guest connects to `vsock.sock_P`, sends 10 MiB of the pattern (checked
//!   here) and checks the 10 MiB echoed back (its `ok` line);
//! - a guest ignoring credit (`volt.vsock.flood`) while the host does not read is throttled:
//!   the VMM's anonymous memory stays bounded, nothing is lost once the host reads;
//! - a host connection to a guest port nobody listens on is closed without `OK`.
//!
//! Timeouts are failure bounds, not performance claims.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::vmm::{guest, Vmm};

const VMM: &str = env!("CARGO_BIN_EXE_volt-vmm");
const BOUND: Duration = Duration::from_secs(180);
const TEN_MIB: usize = 10 << 20;

/// The guest's stream: byte i (tests/guest/src/vsock.rs `pattern`).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

fn start(dir: &Path, extra_cmdline: &str) -> Vmm {
    let g = guest().expect("guest");
    let sock = dir.join("vsock.sock");
    let cmdline = format!("console=ttyS0 {extra_cmdline}");
    let mut vm = Vmm::start(
        VMM,
        &g,
        &[
            "--memory-mib",
            "64",
            "--vsock-cid",
            "7",
            "--vsock-socket",
            sock.to_str().expect("utf-8 path"),
            "--cmdline",
            &cmdline,
        ],
    );
    vm.wait_line("volt-test-guest: vsock cid=7 echo=1234", BOUND);
    vm.wait_line("volt-test-guest: ready", BOUND);
    vm
}

fn connect(dir: &Path, port: u32) -> (UnixStream, String) {
    let mut s = UnixStream::connect(dir.join("vsock.sock")).expect("connect vsock.sock");
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

#[test]
fn host_to_guest_echo_of_10_mib_every_byte_checked() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _vm = start(dir.path(), "");
    let (s, ok) = connect(dir.path(), 1234);
    assert!(ok.starts_with("OK "), "answer {ok:?}");
    let port: u32 = ok[3..].parse().expect("host port");
    assert!(port >= 1 << 30, "{port}");
    let mut w = s.try_clone().unwrap();
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..TEN_MIB as u64).map(pattern).collect();
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).expect("write to the guest");
        }
    });
    let mut r = s;
    r.set_read_timeout(Some(BOUND)).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while got < TEN_MIB {
        let n = r.read(&mut buf).expect("read the echo");
        assert!(n > 0, "EOF after {got} bytes");
        for (k, &b) in buf[..n].iter().enumerate() {
            let i = (got + k) as u64;
            assert_eq!(b, pattern(i), "echoed byte {i} differs");
        }
        got += n;
        assert!(
            t.elapsed() < BOUND,
            "echo too slow: {got} bytes in {BOUND:?}"
        );
    }
    writer.join().unwrap();
    common::report::figure(
        "10 MiB vsock echo (debug build)",
        format!("{:?}", t.elapsed()),
    );
}

#[test]
fn guest_to_host_10_mib_both_directions_checked() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("vsock.sock_5000")).unwrap();
    let mut vm = start(dir.path(), &format!("volt.vsock.client=5000:{TEN_MIB}"));
    let (s, _) = listener.accept().expect("the guest connects");
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = s;
    // Check what the guest sends and echo it back (the guest checks the echo).
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while got < TEN_MIB {
        let n = r.read(&mut buf).expect("read from the guest");
        assert!(n > 0, "EOF after {got} bytes");
        for (k, &b) in buf[..n].iter().enumerate() {
            let i = (got + k) as u64;
            assert_eq!(b, pattern(i), "byte {i} from the guest differs");
        }
        w.write_all(&buf[..n]).expect("echo to the guest");
        got += n;
    }
    let ok = vm.wait_line("volt-test-guest: vsock client port=5000", BOUND);
    assert_eq!(
        ok,
        format!("volt-test-guest: vsock client port=5000 bytes={TEN_MIB} ok")
    );
    // The guest shut down: the host reads end-of-file.
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).expect("EOF"), 0);
}

#[test]
fn a_guest_ignoring_credit_is_throttled_with_bounded_memory() {
    if guest().is_none() {
        return;
    }
    const TOTAL: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("vsock.sock_5001")).unwrap();
    let mut vm = start(dir.path(), &format!("volt.vsock.flood=5001:{TOTAL}"));
    let (s, _) = listener.accept().expect("the guest connects");
    let before = vm.status_kb("RssAnon");
    // Not reading: the guest pushes on regardless of its credit for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let during = vm.status_kb("RssAnon");
    assert!(
        !vm.drain().iter().any(|l| l.contains("vsock flood")),
        "the flood cannot have finished while the host reads nothing"
    );
    common::report::figure(
        "VMM RssAnon at connect / after 3 s of credit-ignoring flood",
        format!("{before} kB / {during} kB"),
    );
    assert!(
        during < before + 4 * 1024,
        "VMM anonymous memory grew by {} kB while the host did not read",
        during.saturating_sub(before)
    );
    // Now read everything: all 32 MiB arrive, in order.
    let mut r = BufReader::with_capacity(1 << 16, s);
    r.get_ref().set_read_timeout(Some(BOUND)).unwrap();
    let mut got = 0usize;
    while got < TOTAL {
        let buf = r.fill_buf().expect("read the flood");
        assert!(!buf.is_empty(), "EOF after {got} bytes");
        for (k, &b) in buf.iter().enumerate() {
            let i = (got + k) as u64;
            assert_eq!(b, pattern(i), "flood byte {i} differs");
        }
        let n = buf.len();
        r.consume(n);
        got += n;
    }
    let done = vm.wait_line("volt-test-guest: vsock flood port=5001", BOUND);
    assert_eq!(
        done,
        format!("volt-test-guest: vsock flood port=5001 sent={TOTAL}")
    );
    assert!(vm.running(), "the VMM survived the flood");
}

#[test]
fn connecting_to_a_guest_port_nobody_listens_on_is_refused() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = start(dir.path(), "");
    let (_s, answer) = connect(dir.path(), 4321);
    assert_eq!(answer, "", "closed without OK");
    // A bad handshake line is closed too, and the device goes on serving.
    let mut bad = UnixStream::connect(dir.path().join("vsock.sock")).unwrap();
    bad.write_all(b"HELLO 1234\n").unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(bad.read(&mut b).unwrap_or(0), 0);
    let (_ok, answer) = connect(dir.path(), 1234);
    assert!(answer.starts_with("OK "), "{answer:?}");
    vm.term();
    let (status, err) = vm.wait(BOUND);
    assert_eq!(status.code(), Some(0), "{err}");
}
