//! The virtio-net data path a VMM reports (`backend=vhost-net`, or `backend=userspace
//! (<why>)` in its log and STATUS=), checked against the machine instead of assumed: tests
//! accept either backend and check the one reported.

/// The backend named by the last `backend=` in `text`.
#[derive(Debug, PartialEq, Eq)]
pub enum Backend {
    Vhost,
    Userspace { reason: String },
}

/// Panics when `text` names no backend.
pub fn reported(text: &str) -> Backend {
    let at = text
        .rfind("backend=")
        .unwrap_or_else(|| panic!("no backend= in:\n{text}"));
    let rest = &text[at + "backend=".len()..];
    if rest.starts_with("vhost-net") {
        return Backend::Vhost;
    }
    let reason = rest
        .strip_prefix("userspace (")
        .and_then(|r| r.lines().next())
        .and_then(|r| r.rfind(')').map(|end| r[..end].to_string()))
        .unwrap_or_else(|| panic!("unknown backend in {:?}", rest.lines().next()));
    Backend::Userspace { reason }
}

/// Checks the backend `text` reports. `vhost_opens`: whether `/dev/vhost-net` opens where
/// the VMM runs; `vmm_fds`: the targets of the VMM's open fds (`ls -l /proc/<pid>/fd`).
/// vhost-net: the device opens and the VMM holds it. Userspace: the VMM holds no vhost-net
/// fd and says why, and "cannot open /dev/vhost-net" only where it indeed does not open.
pub fn check(text: &str, vhost_opens: bool, vmm_fds: &str) -> Backend {
    let b = reported(text);
    let holds = vmm_fds.contains("/dev/vhost-net");
    match &b {
        Backend::Vhost => {
            assert!(
                vhost_opens,
                "vhost-net reported, but /dev/vhost-net does not open here"
            );
            assert!(
                holds,
                "vhost-net reported, but the VMM holds no /dev/vhost-net fd:\n{vmm_fds}"
            );
        }
        Backend::Userspace { reason } => {
            assert!(
                !holds,
                "userspace reported, but the VMM holds /dev/vhost-net:\n{vmm_fds}"
            );
            assert!(
                !reason.trim().is_empty(),
                "userspace without a reason: {text}"
            );
            if !vhost_opens {
                assert!(
                    reason.contains("cannot open /dev/vhost-net"),
                    "without a usable /dev/vhost-net the reason must say so: {reason}"
                );
            }
        }
    }
    eprintln!("virtio-net backend: {b:?}");
    b
}

/// Whether `/dev/vhost-net` opens read-write from this process.
pub fn vhost_opens_here() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-net")
        .is_ok()
}

/// The targets of `pid`'s open fds, one per line.
pub fn fds_of(pid: u32) -> String {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| format!("{}\n", t.display()))
                .collect()
        })
        .unwrap_or_default()
}
