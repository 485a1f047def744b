//! `volt console NAME`: a VM's serial console in this terminal.
//!
//! Connects to the VMM's console socket, says hello (`--force` takes the console over from
//! another client), then copies both ways. With a terminal on stdin: raw mode (restored on
//! every way out: Ctrl-], the VM going away, an error, SIGTERM/SIGHUP/SIGINT, a panic),
//! and Ctrl-] leaves. Without one (scripts, tests): stdin is sent as it comes, a Ctrl-] byte
//! in it still leaves, and at its end the client keeps printing output until the console
//! has been quiet for `--linger`.
//!
//! [`session`] works on any connected stream, so other consoles (containers) can reuse it.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Outcome;
use crate::vmm::console::{HELLO_ATTACH, HELLO_TAKEOVER, REPLY_BUSY, REPLY_OK};

/// The byte that leaves the console (Ctrl-], as `telnet`, `virsh console`, `machinectl`).
pub const ESCAPE: u8 = 0x1d;

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// The VM's (or container's) name.
    #[arg(value_name = "NAME", add = clap_complete::ArgValueCandidates::new(super::complete::workloads))]
    pub name: String,
    /// Take the console over from a client attached elsewhere (it is disconnected).
    #[arg(long)]
    pub force: bool,
    /// Console socket (default: /run/volt/vm/NAME/console.sock, under --root).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Without a terminal on stdin: after stdin ends, how long output must pause before
    /// the client leaves (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "1s",
          value_parser = crate::vmm::cli::parse_duration)]
    pub linger: Duration,
}

pub fn exec(root: &std::path::Path, args: ConsoleArgs) -> Result<Outcome> {
    let path = args.socket.clone().unwrap_or_else(|| {
        crate::plan::names::Paths::new(root)
            .vm_dir(&args.name)
            .join("console.sock")
    });
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if args.socket.is_some() => {
            log::error!("no console answers at {}: {e}", path.display());
            return Ok(Outcome::Failed);
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            if let Err(m) = crate::config::check_workload_name(&args.name) {
                log::error!("not a valid VM name: {m}");
                return Ok(Outcome::Failed);
            }
            let file = std::path::Path::new("/")
                .join(crate::config::VMS_DIR)
                .join(format!("{}.toml", args.name));
            if !root.join(file.strip_prefix("/").unwrap_or(&file)).exists() {
                let container = root
                    .join(crate::config::CONTAINERS_DIR)
                    .join(format!("{}.toml", args.name));
                let hint = if container.exists() {
                    format!(
                        " ({0} is a container: volt container console {0})",
                        args.name
                    )
                } else {
                    String::new()
                };
                log::error!(
                    "no VM {}: {} does not exist{hint}",
                    args.name,
                    file.display()
                );
                return Ok(Outcome::Failed);
            }
            log::error!(
                "VM {} is not running (no console at {}: {e})",
                args.name,
                path.display()
            );
            return Ok(Outcome::Failed);
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    let hello = if args.force {
        HELLO_TAKEOVER
    } else {
        HELLO_ATTACH
    };
    stream.write_all(format!("{hello}\n").as_bytes())?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let reply = read_line(&mut stream).context("reading the console's answer")?;
    stream.set_read_timeout(None)?;
    match reply.as_str() {
        REPLY_OK => {}
        REPLY_BUSY => {
            log::error!(
                "the console of {} is in use by another client; use --force to take it over",
                args.name
            );
            return Ok(Outcome::Failed);
        }
        other => bail!("the console of {} refused: {other}", args.name),
    }
    let tty = is_tty(0);
    if tty {
        eprintln!(
            "Connected to the console of {}. Press Ctrl-] to leave.",
            args.name
        );
    }
    let end = session(stream, args.linger)?;
    if tty {
        match end {
            End::Escape => eprintln!("\nLeft the console of {}.", args.name),
            End::Closed => eprintln!("\nThe console of {} closed.", args.name),
            _ => {}
        }
    }
    Ok(Outcome::Ok)
}

/// One `\n`-terminated line of at most 256 bytes (byte by byte: nothing after it is taken
/// from the stream).
fn read_line(s: &mut UnixStream) -> Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 256 {
        if s.read(&mut b)? == 0 {
            bail!("the console closed the connection");
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(b[0]);
    }
    bail!("the console's answer is too long")
}

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Ctrl-] (from a terminal or in piped input).
    Escape,
    /// The other side closed (VM stopped, console taken over).
    Closed,
    /// stdin ended and the output went quiet.
    InputDone,
    /// SIGTERM, SIGHUP or SIGINT.
    Signal,
}

/// The terminal in raw mode until dropped.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> Result<Option<RawMode>> {
        if !is_tty(fd) {
            return Ok(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal, `saved` a valid output buffer.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error()).context("tcgetattr");
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: fd is a terminal, `raw` a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error()).context("tcsetattr");
        }
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from the same terminal.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// SIGTERM, SIGHUP and SIGINT blocked and readable from a signalfd until dropped.
struct Signals {
    fd: OwnedFd,
    old: libc::sigset_t,
}

impl Signals {
    fn block() -> Result<Signals> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset/sigaddset; the mask
        // change affects this thread only; signalfd returns a new descriptor or -1.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
                libc::sigaddset(&mut set, s);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                return Err(std::io::Error::last_os_error()).context("signalfd");
            }
            Ok(Signals {
                fd: OwnedFd::from_raw_fd(fd),
                old,
            })
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        // SAFETY: restores this thread's previous mask.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// Copies stdin to `stream` and `stream` to stdout until Ctrl-], the other side closing,
/// a signal, or (without a terminal) the end of stdin plus `linger` of quiet.
pub fn session(mut stream: UnixStream, linger: Duration) -> Result<End> {
    stream.set_nonblocking(true)?;
    let signals = Signals::block()?;
    let _raw = RawMode::enter(0)?;
    let mut stdout = std::io::stdout().lock();
    let mut pending: Vec<u8> = Vec::new(); // typed, not yet taken by the socket
    let mut stdin_open = true;
    let mut last_output = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: if stdin_open && pending.is_empty() {
                    0
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN | if pending.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
            libc::pollfd {
                fd: signals.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if stdin_open {
            -1
        } else {
            let left = linger.saturating_sub(last_output.elapsed());
            if left.is_zero() {
                return Ok(End::InputDone);
            }
            i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
        };
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if fds[2].revents != 0 {
            return Ok(End::Signal);
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(End::Closed),
                Ok(k) => {
                    stdout.write_all(&buf[..k])?;
                    stdout.flush()?;
                    last_output = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(End::Closed),
                Err(e) => return Err(e).context("reading the console"),
            }
        }
        if fds[0].revents != 0 {
            // SAFETY: reading stdin into our buffer.
            let k = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if k < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted && e.kind() != ErrorKind::WouldBlock {
                    return Err(e).context("reading stdin");
                }
            } else if k == 0 {
                stdin_open = false;
                last_output = Instant::now();
            } else {
                let input = &buf[..k as usize];
                let (keep, escape) = match input.iter().position(|&b| b == ESCAPE) {
                    Some(i) => (&input[..i], true),
                    None => (input, false),
                };
                pending.extend_from_slice(keep);
                if escape {
                    flush_blocking(&mut stream, &pending);
                    return Ok(End::Escape);
                }
            }
        }
        if !pending.is_empty() {
            match stream.write(&pending) {
                Ok(k) => {
                    pending.drain(..k);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(End::Closed),
            }
        }
    }
}

/// Best effort: what was typed before Ctrl-] still goes out (bounded wait).
fn flush_blocking(stream: &mut UnixStream, data: &[u8]) {
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut rest = data;
    while !rest.is_empty() && Instant::now() < deadline {
        match stream.write(rest) {
            Ok(k) => rest = &rest[k..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => return,
        }
    }
}
