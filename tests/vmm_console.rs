//! The serial console socket end to end: the built `volt-vmm` (seccomp on) runs the test
//! guest, whose COM1 shell answers what is typed.
//!
//! - the socket protocol: attach, a second client refused (`busy`), takeover;
//! - `volt console` in a pseudo-terminal: raw mode, a command answered, Ctrl-] leaves and the
//!   terminal's attributes are restored;
//! - `volt console` with piped stdin (scripts);
//! - a client that does not read does not stall the guest, and gets everything later.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::vmm::{guest, Vmm};

const VMM: &str = env!("CARGO_BIN_EXE_volt-vmm");
const VOLT: &str = env!("CARGO_BIN_EXE_volt");
const BOUND: Duration = Duration::from_secs(60);

fn start(dir: &Path) -> (Vmm, PathBuf) {
    let g = guest().expect("guest");
    let sock = dir.join("console.sock");
    let mut vm = Vmm::start(
        VMM,
        &g,
        &[
            "--memory-mib",
            "32",
            "--console-socket",
            sock.to_str().expect("utf-8 path"),
        ],
    );
    vm.wait_line("volt-test-guest: ready", BOUND);
    (vm, sock)
}

fn attach(sock: &Path, hello: &str) -> (UnixStream, String) {
    let mut s = UnixStream::connect(sock).expect("connect console.sock");
    s.write_all(hello.as_bytes()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

/// Reads until `want` appeared (bounded); returns everything read.
fn read_until(s: &mut impl Read, want: &str) -> String {
    let deadline = Instant::now() + BOUND;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} within {BOUND:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "EOF before {want:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn one_client_at_a_time_and_takeover() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, sock) = start(dir.path());
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "console socket mode");

    let (mut a, reply) = attach(&sock, "volt-console 1 attach\n");
    assert_eq!(reply, "ok");
    a.write_all(b"echo first client\r").unwrap();
    read_until(&mut a, "first client\r\nvolt-test-guest$ ");
    // The guest's answer is in the VMM's log too (stdout outside systemd).
    vm.wait_line("first client", BOUND);

    let (_b, reply) = attach(&sock, "volt-console 1 attach\n");
    assert_eq!(reply, "busy", "a second client is refused");
    let (_c, reply) = attach(&sock, "hello\n");
    assert!(reply.starts_with("error"), "{reply:?}");

    let (mut d, reply) = attach(&sock, "volt-console 1 takeover\n");
    assert_eq!(reply, "ok");
    let rest = read_until(&mut a, "taken over");
    assert!(rest.contains("[volt: console taken over by another client]"));
    let mut tail = Vec::new();
    assert_eq!(
        a.read_to_end(&mut tail).unwrap_or(0),
        0,
        "old client closed"
    );
    d.write_all(b"hello\r").unwrap();
    read_until(&mut d, "hello from volt-test-guest");
    d.write_all(b"poweroff\r").unwrap();
    let (status, err) = vm.wait(BOUND);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("console: client attached"), "{err}");
}

#[test]
fn a_client_that_does_not_read_stalls_nothing_and_loses_nothing() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, sock) = start(dir.path());
    let (mut a, reply) = attach(&sock, "volt-console 1 attach\n");
    assert_eq!(reply, "ok");
    a.write_all(b"count 3000\r").unwrap();
    // The guest prints on while the client reads nothing.
    vm.wait_line("line 2999", BOUND);
    let all = read_until(&mut a, "line 2999");
    for i in [0, 1, 1500, 2998] {
        assert!(all.contains(&format!("line {i}\r\n")), "line {i} missing");
    }
    assert!(
        !all.contains("dropped"),
        "nothing dropped below the buffer size"
    );
}

fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors; no name, termios or window size is passed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are ours.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: termios is plain data; tcgetattr fills it from a terminal we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
        t
    }
}

fn same(a: &libc::termios, b: &libc::termios) -> bool {
    a.c_iflag == b.c_iflag
        && a.c_oflag == b.c_oflag
        && a.c_cflag == b.c_cflag
        && a.c_lflag == b.c_lflag
        && a.c_cc == b.c_cc
}

#[test]
fn volt_console_in_a_terminal_answers_and_leaves_on_ctrl_bracket() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_vm, sock) = start(dir.path());
    let (master, slave) = openpty();
    let before = termios(&slave);
    let mut child = Command::new(VOLT)
        .args(["console", "web", "--socket"])
        .arg(&sock)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volt console");
    let mut m = std::fs::File::from(master);
    // Raw mode: no local echo by the terminal, so what comes back is the guest's.
    let deadline = Instant::now() + BOUND;
    while same(&termios(&slave), &before) {
        assert!(Instant::now() < deadline, "never switched to raw mode");
        std::thread::sleep(Duration::from_millis(20));
    }
    m.write_all(b"hello\r").unwrap();
    read_until(&mut m, "hello from volt-test-guest");
    m.write_all(&[0x1d]).unwrap();
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "volt console did not leave on Ctrl-]"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?} {err}");
    assert!(err.contains("Press Ctrl-] to leave"), "{err}");
    assert!(err.contains("Left the console of web"), "{err}");
    assert!(same(&termios(&slave), &before), "terminal restored");
    // The console is free again.
    let (_s, reply) = attach(&sock, "volt-console 1 attach\n");
    assert_eq!(reply, "ok");
}

#[test]
fn volt_console_with_piped_input_for_scripts() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, sock) = start(dir.path());
    let mut child = Command::new(VOLT)
        .args(["console", "web", "--linger", "2s", "--socket"])
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volt console");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from a script\r")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}", out);
    assert!(stdout.contains("from a script\r\n"), "{stdout:?}");

    // Busy: exit 1 with a message naming --force.
    let (_hold, reply) = attach(&sock, "volt-console 1 attach\n");
    assert_eq!(reply, "ok");
    let busy = Command::new(VOLT)
        .args(["console", "web", "--socket"])
        .arg(&sock)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("--force"),
        "{busy:?}"
    );
    // A VM that is not running.
    let gone = Command::new(VOLT)
        .args(["console", "nope", "--socket"])
        .arg(dir.path().join("nope.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("VM nope is not running"),
        "{gone:?}"
    );
    // SIGTERM still reaches the VMM's signal thread (the console thread blocks it): the
    // guest powers off cleanly.
    vm.term();
    vm.wait_line("volt-test-guest: ctrl-alt-del, powering off", BOUND);
    let (status, err) = vm.wait(BOUND);
    assert_eq!(status.code(), Some(0), "{err}");
}
