//! Watch a link until it is deleted or the process is asked to stop: an rtnetlink socket
//! subscribed to link events (RTMGRP_LINK) and a signalfd, in one poll(2). No polling loop,
//! no udev: works in containers, where `sys-subsystem-net-devices-*.device` never appears.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot open a netlink socket for link events")]
    Socket(#[source] std::io::Error),
    #[error("cannot subscribe to link events (bind)")]
    Bind(#[source] std::io::Error),
    #[error("cannot set up signal handling (signalfd)")]
    Signal(#[source] std::io::Error),
    #[error("waiting for link events failed")]
    Wait(#[source] std::io::Error),
}

/// Why the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The link is gone.
    Deleted,
    /// SIGTERM or SIGINT arrived.
    Signal(i32),
}

const RTMGRP_LINK: u32 = 1;

fn events_socket() -> Result<OwnedFd, MonitorError> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(MonitorError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; fields set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = RTMGRP_LINK;
    // SAFETY: addr is a valid sockaddr_nl of the size passed.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(MonitorError::Bind(std::io::Error::last_os_error()));
    }
    Ok(sock)
}

/// Block SIGTERM and SIGINT and return a signalfd for them.
fn signal_fd() -> Result<OwnedFd, MonitorError> {
    // SAFETY: sigset operations on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(MonitorError::Signal(std::io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(MonitorError::Signal(std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Whether a netlink buffer holds an RTM_DELLINK for `ifindex`.
pub fn has_dellink(buf: &[u8], ifindex: u32) -> bool {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > buf.len() {
            break;
        }
        // ifinfomsg: family u8, pad u8, type u16, index i32, ...
        if kind == libc::RTM_DELLINK && len >= 16 + 8 {
            let i = off + 16 + 4;
            let index = i32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
            if index as u32 == ifindex {
                return true;
            }
        }
        off += (len + 3) & !3;
    }
    false
}

/// Wait until link `ifindex` (named `name`) is deleted or SIGTERM/SIGINT arrives. Checks
/// that the link still exists after subscribing, so a deletion just before is not missed.
pub fn wait(name: &str, ifindex: u32) -> Result<Ended, MonitorError> {
    let sock = events_socket()?;
    let sig = signal_fd()?;
    if super::link::index(name) != Some(ifindex) {
        return Ok(Ended::Deleted);
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sig.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(MonitorError::Wait(e));
        }
        if fds[1].revents & libc::POLLIN != 0 {
            // SAFETY: an all-zero signalfd_siginfo is valid; read fills it.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: info is a valid buffer of its size.
            let r = unsafe {
                libc::read(
                    sig.as_raw_fd(),
                    std::ptr::addr_of_mut!(info).cast(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            if r > 0 {
                return Ok(Ended::Signal(info.ssi_signo as i32));
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                // ENOBUFS: events were lost; look at the link itself.
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    if super::link::index(name) != Some(ifindex) {
                        return Ok(Ended::Deleted);
                    }
                    continue;
                }
                return Err(MonitorError::Wait(e));
            }
            if has_dellink(&buf[..r as usize], ifindex) {
                return Ok(Ended::Deleted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, index: i32) -> Vec<u8> {
        let mut m = vec![0u8; 32];
        m[0..4].copy_from_slice(&32u32.to_ne_bytes());
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        m[20..24].copy_from_slice(&index.to_ne_bytes());
        m
    }

    #[test]
    fn finds_dellink_for_the_index_only() {
        let mut buf = msg(libc::RTM_NEWLINK, 7);
        buf.extend(msg(libc::RTM_DELLINK, 8));
        assert!(!has_dellink(&buf, 7));
        assert!(has_dellink(&buf, 8));
        assert!(
            !has_dellink(&buf[..20], 8),
            "truncated messages are ignored"
        );
        assert!(!has_dellink(&[], 8));
    }
}
