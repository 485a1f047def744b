//! Image locks: an open file description (OFD) lock on the whole image, shared for a
//! read-only disk, exclusive for a read-write one. It belongs to the open file, so it lives
//! exactly as long as the VMM's fd (a `kill -9` releases it, a restart takes it again), and
//! QEMU's own image locks (also OFD locks, on other byte ranges) do not see it.
//!
//! When the lock is taken, the holder is named by its PID: OFD locks have no owner PID, so
//! `/proc/*/fdinfo/*` is searched for the `lock:` line of the image's inode.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why the image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another open file holds a conflicting lock.
    #[error("{path} is in use by {holder} (it holds {kind} lock on the image)", kind = if *.exclusive_held { "an exclusive" } else { "a shared" })]
    Conflict {
        path: PathBuf,
        /// "PID 1234 (volt-vmm)" or "another process (PID not visible here)".
        holder: String,
        /// Whether the holder's lock is exclusive.
        exclusive_held: bool,
        /// Whether the holder is this process (the VM was given the image twice).
        ours: bool,
    },
    /// fcntl failed otherwise.
    #[error("fcntl(F_OFD_SETLK) on {path} failed")]
    Fcntl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn flock(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain old data; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // to the end, however the file grows
    fl
}

/// Takes a shared (`exclusive = false`) or exclusive OFD lock on all of `file`, without
/// waiting.
pub fn lock_image(file: &File, path: &Path, exclusive: bool) -> Result<(), LockError> {
    let kind = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    let fl = flock(kind as libc::c_short);
    // SAFETY: F_OFD_SETLK reads the flock we pass; the fd is open for the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => {
            // Which lock is in the way (GETLK fills in the first conflicting one).
            let mut probe = flock(kind as libc::c_short);
            // SAFETY: F_OFD_GETLK writes into the flock we pass; the fd is open.
            let got = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) };
            let exclusive_held = got != 0 || probe.l_type == libc::F_WRLCK as libc::c_short;
            let holder = holder_of(file);
            Err(LockError::Conflict {
                path: path.to_path_buf(),
                ours: matches!(holder, Some(Holder::Us)),
                holder: match holder {
                    Some(Holder::Pid(p)) => p,
                    Some(Holder::Us) => "another disk of this VM (one image given twice)".into(),
                    None => "another process (PID not visible here)".into(),
                },
                exclusive_held,
            })
        }
        _ => Err(LockError::Fcntl {
            path: path.to_path_buf(),
            source: err,
        }),
    }
}

/// `PID n (comm)` of a process with an fd whose OFD lock is on `file`'s inode (another
/// process first; ourselves, when the VM was given the image twice).
fn holder_of(file: &File) -> Option<Holder> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    // /proc/locks style: major:minor:inode, major and minor in 2-digit hex.
    let tag = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let me = std::process::id();
    // Held by one of our own files: the same image on two disks.
    let mut ours = false;
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = proc_entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };

        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            let held = info
                .lines()
                .any(|l| l.starts_with("lock:") && l.contains("OFDLCK") && l.contains(&tag));
            if held && pid == me {
                ours = true;
            } else if held {
                let comm = std::fs::read_to_string(proc_entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                return Some(Holder::Pid(format!("PID {pid} ({comm})")));
            }
        }
    }
    ours.then_some(Holder::Us)
}

/// Who holds a lock on an image.
enum Holder {
    /// `PID n (comm)` of another process.
    Pid(String),
    /// This process.
    Us,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn exclusive_conflicts_shared_share_and_close_releases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let a = open(&p);
        lock_image(&a, &p, true).unwrap();
        // Same process, another open file: OFD locks conflict (unlike POSIX locks).
        let b = open(&p);
        let e = lock_image(&b, &p, false).unwrap_err();
        assert!(
            matches!(
                &e,
                LockError::Conflict {
                    exclusive_held: true,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("in use by another disk of this VM (one image given twice)"),
            "{e}"
        );
        drop(a);
        lock_image(&b, &p, false).unwrap();
        let c = open(&p);
        lock_image(&c, &p, false).unwrap();
        let d = open(&p);
        let e = lock_image(&d, &p, true).unwrap_err();
        assert!(
            matches!(
                e,
                LockError::Conflict {
                    exclusive_held: false,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn holder_is_named_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        // A child process takes the lock, then waits for us to close its stdin.
        let script = format!(
            "import fcntl,struct,sys\nf=open({:?},'rb+')\nfcntl.fcntl(f,fcntl.F_OFD_SETLK,struct.pack('hhqqi',fcntl.F_WRLCK,0,0,0,0))\nprint('locked',flush=True)\nsys.stdin.read()\n",
            p.display().to_string()
        );
        let Ok(mut child) = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("SKIP: python3 is missing");
            return;
        };
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 7];
        std::io::Read::read_exact(&mut out, &mut buf).unwrap();
        let f = open(&p);
        let e = lock_image(&f, &p, true).unwrap_err();
        let want = format!("PID {}", child.id());
        drop(child.stdin.take());
        let _ = child.wait();
        assert!(e.to_string().contains(&want), "{e}");
    }
}
