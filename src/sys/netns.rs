//! Named network namespaces (`/run/netns/<name>`, as `ip netns` keeps them) and running
//! code inside one.
//!
//! Namespaces are per thread: [`run_in`] runs a closure on a fresh thread that `setns`
//! into the namespace, so the caller's thread never changes namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where named network namespaces are bind-mounted (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {} (setns)", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create network namespace {name} ({step})")]
    Create {
        name: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot delete network namespace {name} ({step})")]
    Delete {
        name: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread running in network namespace {} panicked", path.display())]
    Panicked { path: PathBuf },
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn cstr(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

/// `statfs` magic of nsfs: what a mounted namespace file is on.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// Whether the named namespace exists: its file is a mounted namespace (not the empty
/// placeholder a [`create`] in progress, or one that died half-way, leaves).
pub fn exists(name: &str) -> bool {
    let c = cstr(&path_of(name));
    // SAFETY: statfs(2) writes into the zeroed struct we own; c is a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64;
    r == 0 && magic == NSFS_MAGIC
}

fn create_error(name: &str, step: &'static str, source: std::io::Error) -> NetnsError {
    NetnsError::Create {
        name: name.into(),
        step,
        source,
    }
}

/// The named namespace, created unless it exists. Creations are serialised across processes
/// (a lock on `/run/netns`), so two owners bringing up NICs of one workload at once both get
/// the namespace, and neither opens the other's placeholder file half-way through its
/// creation. A placeholder a crashed creation left is replaced.
pub fn ensure(name: &str) -> Result<PathBuf, NetnsError> {
    let err = |step, source| create_error(name, step, source);
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| err("mkdir /run/netns", e))?;
    let lock = File::open(dir).map_err(|e| err("open /run/netns to lock it", e))?;
    // SAFETY: flock(2) on an fd we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(err("lock /run/netns", std::io::Error::last_os_error()));
    }
    let path = path_of(name);
    if exists(name) {
        return Ok(path);
    }
    if path.exists() {
        std::fs::remove_file(&path).map_err(|e| err("remove a leftover placeholder", e))?;
    }
    create(name)
}

/// Open the namespace file at `path` (`/run/netns/<name>`, `/proc/<pid>/ns/net`).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Run `f` on a new thread inside the network namespace at `path`, and return its result.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let ns = open(path)?;
    let p = path.to_path_buf();
    let h = std::thread::spawn(move || {
        // SAFETY: setns on an open namespace fd; it affects only this new thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    });
    match h.join() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(NetnsError::Enter { path: p, source }),
        Err(_) => Err(NetnsError::Panicked { path: p }),
    }
}

fn mount(src: &Path, target: &Path, fstype: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    let (s, t) = (cstr(src), cstr(target));
    let fstype = std::ffi::CString::new(fstype).unwrap_or_default();
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes `cmd` enter the network namespace `ns` between fork and exec. `ns` must stay open
/// until the child has been spawned.
pub fn command_in(cmd: &mut std::process::Command, ns: &File) {
    use std::os::unix::process::CommandExt;
    let fd = ns.as_raw_fd();
    // SAFETY: between fork and exec the child only calls setns(2), which is
    // async-signal-safe, on an fd the caller keeps open until the child is spawned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// Create the named network namespace `/run/netns/<name>` (like `ip netns add`): an empty
/// namespace with only a down `lo`. Fails if it exists.
pub fn create(name: &str) -> Result<PathBuf, NetnsError> {
    let err = |step, source| create_error(name, step, source);
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| err("mkdir /run/netns", e))?;
    // Make /run/netns a shared mount point so namespaces mounted later propagate to other
    // mount namespaces, as iproute2 does.
    if mount(
        Path::new("none"),
        dir,
        "none",
        libc::MS_SHARED | libc::MS_REC,
    )
    .is_err()
    {
        mount(dir, dir, "none", libc::MS_BIND | libc::MS_REC)
            .map_err(|e| err("bind-mount /run/netns", e))?;
        mount(
            Path::new("none"),
            dir,
            "none",
            libc::MS_SHARED | libc::MS_REC,
        )
        .map_err(|e| err("make /run/netns shared", e))?;
    }
    let path = path_of(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| err("create the mount point", e))?;
    let target = path.clone();
    let r = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare affects only this thread, which ends right after the mount.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        mount(
            Path::new("/proc/thread-self/ns/net"),
            &target,
            "none",
            libc::MS_BIND,
        )
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&path);
        return Err(err("unshare and bind-mount", e));
    }
    Ok(path)
}

/// Delete the named namespace (like `ip netns delete`). A missing one is not an error.
/// The namespace itself lives on while a process or an open fd still uses it.
pub fn delete(name: &str) -> Result<bool, NetnsError> {
    let path = path_of(name);
    if !path.exists() {
        return Ok(false);
    }
    let c = cstr(&path);
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetnsError::Delete {
                name: name.into(),
                step: "umount",
                source: e,
            });
        }
    }
    std::fs::remove_file(&path).map_err(|source| NetnsError::Delete {
        name: name.into(),
        step: "unlink",
        source,
    })?;
    Ok(true)
}
