//! The host end of a vsock connection: a Unix stream (to a host client, or to a listener at
//! `<socket>_<port>`) or the VMM's own sd_notify sink; and the non-blocking connect the muxer
//! uses for guest-initiated connections.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::conn::HostStream;
use super::notify::NotifySink;

/// The host end of a connection.
pub enum Host {
    Unix(UnixStream),
    Notify(NotifySink),
}

impl HostStream for Host {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Host::Unix(s) => HostStream::read(s, buf),
            Host::Notify(n) => n.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Host::Unix(s) => HostStream::write(s, buf),
            Host::Notify(n) => n.write(buf),
        }
    }
    fn shutdown_write(&mut self) {
        match self {
            Host::Unix(s) => s.shutdown_write(),
            Host::Notify(n) => n.shutdown_write(),
        }
    }
    fn close(&mut self) {
        match self {
            Host::Unix(s) => HostStream::close(s),
            Host::Notify(n) => n.close(),
        }
    }
}

impl Host {
    pub fn fd(&self) -> Option<RawFd> {
        match self {
            Host::Unix(s) => Some(s.as_raw_fd()),
            Host::Notify(_) => None,
        }
    }
}

/// `<socket>_<port>`.
pub fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// A non-blocking connect to a Unix stream socket: never waits for a listener that does
/// not accept (a full backlog fails with EAGAIN).
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    let rc = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
