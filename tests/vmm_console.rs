//! The serial console socket end to end: the built `volt-vmm` (seccomp on) runs the test
//! guest, whose COM1 shell answers what is typed.
//!
//! - the socket protocol: attach, a second client refused (`busy`), takeover;
//! - `volt console` in a pseudo-terminal: raw mode, a command answered, Ctrl-] leaves and the
//!   terminal's attributes are restored;
//! - `volt console` with piped stdin (scripts);
//! - a client that does not read does not stall the guest, and gets everything later;
//! - a client that hangs up while its input waits for the guest leaves the console free.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::console::{leave, openpty};
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
    common::handshake(sock, hello, BOUND)
}

/// A client attached to the console at `sock`.
fn attached(sock: &Path) -> UnixStream {
    let (s, reply) = attach(sock, "volt-console 1 attach\n");
    assert_eq!(reply, "ok");
    s
}

/// Reads until `want` appeared (within [`BOUND`]); returns everything read.
fn read_until(s: &mut impl Read, want: &str) -> String {
    common::console::read_until(s, want, BOUND)
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
    let mut a = attached(&sock);
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

/// A client that pastes while the guest neither reads nor prints, and hangs up while its
/// input waits (the VMM then wants nothing of its socket), is seen leaving: the next client
/// attaches while the guest still pauses. Were the socket taken out of the VMM's watch while
/// nothing is wanted of it, the hang-up would be seen only once the guest printed again, and
/// with a guest that never does, every later client would get `busy`.
#[test]
fn a_client_that_hangs_up_while_its_input_waits_leaves_the_console_free() {
    if guest().is_none() {
        return;
    }
    // The guest pauses for a minute; an attach within half of it is one the hang-up allowed,
    // not the guest's output after the pause.
    const PAUSED: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    let (_vm, sock) = start(dir.path());
    let mut a = attached(&sock);
    a.write_all(b"pause 60000\r").unwrap();
    read_until(&mut a, "pause 60000\r\n");
    let paused_at = Instant::now();
    // The paste fills the UART's FIFO, the VMM's chunk and the socket's buffer; the rest is
    // not written.
    a.set_nonblocking(true).unwrap();
    let paste = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent < paste.len() {
        match a.write(&paste[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        sent < paste.len(),
        "the VMM read the whole paste ahead of the guest"
    );
    drop(a);
    loop {
        let (_b, reply) = attach(&sock, "volt-console 1 attach\n");
        if reply == "ok" {
            break;
        }
        assert_eq!(reply, "busy", "{reply:?}");
        assert!(
            paused_at.elapsed() < PAUSED,
            "the console stayed busy after its client hung up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let (status, err) = leave(&mut m, &mut child, BOUND);
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
    // A socket nobody answers at (with --socket, what is known is the socket, not the VM).
    let gone = Command::new(VOLT)
        .args(["console", "nope", "--socket"])
        .arg(dir.path().join("nope.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no console answers at ")
            && String::from_utf8_lossy(&gone.stderr).contains("nope.sock"),
        "{gone:?}"
    );
    // SIGTERM still reaches the VMM's signal thread (the console thread blocks it): the
    // guest powers off cleanly.
    vm.term();
    vm.wait_line("volt-test-guest: ctrl-alt-del, powering off", BOUND);
    let (status, err) = vm.wait(BOUND);
    assert_eq!(status.code(), Some(0), "{err}");
}
