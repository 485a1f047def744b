//! Unix sockets the VMM serves (console, vsock): bound during setup, while the VMM may still
//! create files. They stay owned by the user that bound them (root under systemd), mode
//! 0600: the VMM's own user after the switch, shared by every VM, cannot connect to them.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds a listening socket at `path` with mode 0600. A stale socket left at the path (a
/// VMM that was killed) is replaced; one that a process still listens on (another VMM of
/// the same VM, started by hand beside its unit) or any other file there is an error
/// (`AddrInUse`): taking it over would cut the running VM off its console or vsock.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
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
