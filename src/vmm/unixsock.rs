//! Unix sockets the VMM serves (console, vsock): bound during setup, while the VMM may still
//! create files. They stay owned by the user that bound them (root under systemd), mode
//! 0600: the VMM's own user after the switch, shared by every VM, cannot connect to them.

use std::io::ErrorKind;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds a listening socket at `path` with mode 0600. A stale socket left at the path (a
/// VMM that was killed) is replaced; one that a process still listens on (another VMM of
/// the same VM, started by hand beside its unit) or any other file there is an error
/// (`AddrInUse`): taking it over would cut the running VM off its console or vsock.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if listened_on(path)? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "a running process listens on it (is the VM running already?)",
                ));
            }
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "a file that is not a socket is in the way",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // Connecting needs write permission on the socket: with 0600 only its owner (and root).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Whether a process listens on the socket at `path`: a connect that does not wait (a full
/// backlog, a stopped listener answer EAGAIN: in use); refused means stale. Any other
/// answer (EACCES: a socket we may not even probe) is an error, not a licence to replace it.
fn listened_on(path: &Path) -> std::io::Result<bool> {
    match connect_nonblocking(path) {
        Ok(_) => Ok(true),
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINPROGRESS) => Ok(true),
            Some(libc::ECONNREFUSED | libc::ENOENT) => Ok(false),
            _ => Err(e),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_0600_replaces_a_stale_socket_and_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let first = bind_private(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let live = bind_private(&p).unwrap_err();
        assert_eq!(live.kind(), std::io::ErrorKind::AddrInUse, "{live}");
        assert!(live.to_string().contains("running process"), "{live}");
        drop(first);
        let _second = bind_private(&p).expect("stale socket replaced");
        let f = dir.path().join("file");
        std::fs::write(&f, "x").unwrap();
        let e = bind_private(&f).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "x");
    }
}
