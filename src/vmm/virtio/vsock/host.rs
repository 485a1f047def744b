//! The host end of a vsock connection: a Unix stream (to a host client, or to a listener at
//! `<socket>_<port>`) or the VMM's own sd_notify sink; and the non-blocking connect the muxer
//! uses for guest-initiated connections.

use std::os::fd::{AsRawFd, RawFd};
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

pub use crate::vmm::unixsock::connect_nonblocking;
