//! Link queries (sysfs) and deletion (rtnetlink `RTM_DELLINK`).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket (socket)")]
    Socket(#[source] std::io::Error),
    #[error("cannot send RTM_DELLINK for {name} (send)")]
    Send {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the netlink answer for {name} (recv)")]
    Recv {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bridge {master} for {name} does not exist")]
    NoMaster { name: String, master: String },
    #[error("the kernel refused to configure link {name} (RTM_NEWLINK)")]
    Configure {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel refused to delete link {name}")]
    Delete {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// The interface index of `name` in the calling thread's network namespace, if it exists.
pub fn index(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: cname is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    (index != 0).then_some(index)
}

/// The bridge (or other master) `name` is enslaved to.
pub fn master(name: &str) -> Option<String> {
    let target = std::fs::read_link(Path::new("/sys/class/net").join(name).join("master")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Delete link `name` if it exists. Returns whether a link was deleted.
pub fn delete(name: &str) -> Result<bool, LinkError> {
    let Some(ifindex) = index(name) else {
        return Ok(false);
    };
    // nlmsghdr (16) + ifinfomsg (16).
    let mut msg = [0u8; 32];
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&libc::RTM_DELLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = libc::AF_UNSPEC as u8;
    msg[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());

    // SAFETY: plain socket(2) call; the result is checked and wrapped in an OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(LinkError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a freshly created, owned descriptor.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: msg is a valid buffer of msg.len() bytes; the kernel address is the default
    // (pid 0) because we do not bind, and send on an unbound netlink socket targets the kernel.
    let sent = unsafe { libc::send(raw, msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(LinkError::Send {
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(LinkError::Recv {
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // NLMSG_ERROR carries the errno (negative) right after the header; 0 is the ACK.
    let n = n as usize;
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if errno != 0 && -errno != libc::ENODEV {
            return Err(LinkError::Delete {
                name: name.into(),
                source: std::io::Error::from_raw_os_error(-errno),
            });
        }
    }
    Ok(true)
}

fn nlattr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = (4 + payload.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Enslave link `name` to `master` (if given), set its MTU (if given) and bring it up, in
/// one RTM_NEWLINK request.
pub fn configure(name: &str, master: Option<&str>, mtu: Option<u32>) -> Result<(), LinkError> {
    let err = |source| LinkError::Delete {
        name: name.into(),
        source,
    };
    let ifindex =
        index(name).ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::ENODEV)))?;
    let mut msg = vec![0u8; 32];
    msg[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg[16] = libc::AF_UNSPEC as u8;
    msg[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    msg[24..28].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_flags
    msg[28..32].copy_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_change
    if let Some(m) = master {
        let mi = index(m).ok_or_else(|| LinkError::NoMaster {
            name: name.into(),
            master: m.into(),
        })?;
        nlattr(&mut msg, libc::IFLA_MASTER, &mi.to_ne_bytes());
    }
    if let Some(mtu) = mtu {
        nlattr(&mut msg, libc::IFLA_MTU, &mtu.to_ne_bytes());
    }
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    request(name, &msg).map_err(|e| match e {
        LinkError::Delete { source, .. } => LinkError::Configure {
            name: name.into(),
            source,
        },
        other => other,
    })
}

/// Send one netlink request and check its ACK.
fn request(name: &str, msg: &[u8]) -> Result<(), LinkError> {
    // SAFETY: plain socket(2) call; the result is checked and wrapped in an OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(LinkError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a freshly created, owned descriptor.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: msg is a valid buffer of msg.len() bytes.
    if unsafe { libc::send(raw, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(LinkError::Send {
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(LinkError::Recv {
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let n = n as usize;
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if errno != 0 {
            return Err(LinkError::Delete {
                name: name.into(),
                source: std::io::Error::from_raw_os_error(-errno),
            });
        }
    }
    Ok(())
}
