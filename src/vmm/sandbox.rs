//! Least privilege for the VMM after setup: drop from root to the `volt` user (keeping only
//! the kvm group for /dev/kvm, no capabilities), then a seccomp filter allowing only the
//! syscalls of the run loop. Both happen after every file, TAP and KVM fd is open and before
//! any VMM thread starts, so all threads inherit them.
//!
//! The allowlist comes from tracing the run phase (KVM_RUN loop, virtio-net workers,
//! virtio-blk I/O threads, signal handling, sd_notify and journald, the console and vsock
//! threads); ioctls are limited to the KVM (0xAE), TUN
//! ('T') and vhost (0xAF) request families.

use std::collections::BTreeMap;
use std::ffi::CString;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
    #[error("cannot drop privileges to {user} ({call})")]
    Drop {
        user: String,
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What to do with a syscall outside the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the VMM (a bug or an exploit: systemd restarts it, the journal says why).
    #[default]
    Kill,
    /// Allow but log to the kernel audit log (to find a missing syscall).
    Log,
    /// No filter.
    Off,
}

/// A user to run as after setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups to keep (kvm, for /dev/kvm).
    pub groups: Vec<u32>,
}

fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer to static storage or null; read immediately.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: g is non-null here and points to a valid group entry.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

impl RunAs {
    /// Look up `name`; `None` if the user does not exist.
    pub fn lookup(name: &str) -> Option<RunAs> {
        let c = CString::new(name).ok()?;
        // SAFETY: getpwnam returns a pointer to static storage or null; read immediately.
        let p = unsafe { libc::getpwnam(c.as_ptr()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p is non-null and points to a valid passwd entry.
        let (uid, gid) = unsafe { ((*p).pw_uid, (*p).pw_gid) };
        let groups = group_id("kvm").into_iter().collect();
        Some(RunAs {
            name: name.into(),
            uid,
            gid,
            groups,
        })
    }

    /// Switch every thread of the process to this user (glibc's set*id broadcast to all
    /// threads); permitted and effective capabilities are cleared by the kernel on the
    /// switch from uid 0, and NO_NEW_PRIVS keeps them from coming back.
    pub fn apply(&self) -> Result<(), SandboxError> {
        let err = |call| SandboxError::Drop {
            user: self.name.clone(),
            call,
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: plain syscalls with valid arguments; results checked.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0 {
                return Err(err("setgroups"));
            }
            if libc::setresgid(self.gid, self.gid, self.gid) != 0 {
                return Err(err("setresgid"));
            }
            if libc::setresuid(self.uid, self.uid, self.uid) != 0 {
                return Err(err("setresuid"));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(err("prctl(PR_SET_NO_NEW_PRIVS)"));
            }
        }
        Ok(())
    }
}

/// Syscalls the run phase makes, unconditionally allowed.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    // virtio-blk I/O threads: data, FLUSH, DISCARD / WRITE_ZEROES.
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_prctl,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    // sd_notify (READY/STATUS/WATCHDOG/STOPPING/FDSTORE) and journald.
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_memfd_create,
    // Console and vsock: clients on sockets bound before the sandbox; vsock half-close.
    libc::SYS_accept4,
    libc::SYS_shutdown,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(SandboxError::Build)
}

/// The filter as BPF. `allow_open`: also allow openat (vhost-net opens its device when the
/// guest driver starts).
pub fn filter(mode: SeccompMode, allow_open: bool) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|s| (*s, Vec::new())).collect();
    if allow_open {
        rules.insert(libc::SYS_openat, Vec::new());
    }
    // ioctl: KVM, TUN and vhost request families only (type byte, bits 8-15).
    let ioctl = [0xAE00u64, 0x5400, 0xAF00]
        .iter()
        .map(|t| {
            SeccompRule::new(vec![cond(1, SeccompCmpOp::MaskedEq(0xFF00), *t)?])
                .map_err(SandboxError::Build)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl);
    // socket: AF_UNIX only (sd_notify opens one per message).
    rules.insert(
        libc::SYS_socket,
        vec![
            SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?])
                .map_err(SandboxError::Build)?,
        ],
    );
    let mismatch = match mode {
        SeccompMode::Kill | SeccompMode::Off => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(SandboxError::Build)?;
    f.try_into().map_err(SandboxError::Compile)
}

/// A filter that makes `openat`/`open` fail with EACCES and allows everything else. It is
/// stacked under the allowlist (the kernel takes the strictest answer of all filters): glibc
/// opens /proc/sys/vm/overcommit_memory the first time a thread arena's heap shrinks (a
/// queue worker ending at shutdown) and copes when that fails, so opening files is refused,
/// not fatal.
pub fn open_denied() -> Result<BpfProgram, SandboxError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        [(libc::SYS_openat, Vec::new()), (libc::SYS_open, Vec::new())]
            .into_iter()
            .collect();
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(SandboxError::Build)?;
    f.try_into().map_err(SandboxError::Compile)
}

/// What [`Sandbox::enter`] does.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    pub run_as: Option<RunAs>,
    pub seccomp: SeccompMode,
    pub allow_open: bool,
}

impl Sandbox {
    /// Drop privileges, then install the filter on every thread. Returns a one-line summary.
    pub fn enter(&self) -> Result<String, SandboxError> {
        let mut said = Vec::new();
        if let Some(user) = &self.run_as {
            user.apply()?;
            said.push(format!(
                "running as {} (uid {}) without capabilities",
                user.name, user.uid
            ));
        }
        if self.seccomp != SeccompMode::Off {
            if !self.allow_open {
                let deny = open_denied()?;
                seccompiler::apply_filter_all_threads(&deny).map_err(SandboxError::Install)?;
            }
            let prog = filter(self.seccomp, true)?;
            seccompiler::apply_filter_all_threads(&prog).map_err(SandboxError::Install)?;
            said.push(format!(
                "seccomp filter ({:?}, {} syscalls)",
                self.seccomp,
                ALLOWED.len() + 2 + usize::from(self.allow_open)
            ));
        }
        Ok(if said.is_empty() {
            "no sandbox".into()
        } else {
            said.join(", ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_for_every_mode() {
        for mode in [SeccompMode::Kill, SeccompMode::Log] {
            for open in [false, true] {
                let p = filter(mode, open).expect("filter");
                assert!(p.len() > ALLOWED.len(), "{} instructions", p.len());
            }
        }
    }

    /// How a child that installed `filters` (in order) and then ran `call` ended.
    #[derive(Debug, PartialEq, Eq)]
    enum End {
        /// `_exit` with this status: `call`'s own verdict (0 = the call behaved as expected).
        Exit(i32),
        /// Killed by this signal.
        Signal(i32),
    }

    /// Forks; the child installs `filters`, makes the one syscall `call` makes and exits with
    /// its result. Each call gets its own child, so a call killed wrongly is seen as such.
    fn in_child(filters: &[&BpfProgram], call: fn() -> i32) -> End {
        // SAFETY: fork in a test; the child only installs filters (prepared before the
        // fork), makes raw syscalls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            for f in filters {
                if seccompiler::apply_filter(f).is_err() {
                    // SAFETY: leaving the child.
                    unsafe { libc::_exit(100) };
                }
            }
            let code = call();
            // SAFETY: leaving the child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFSIGNALED(status) {
            End::Signal(libc::WTERMSIG(status))
        } else {
            End::Exit(libc::WEXITSTATUS(status))
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    // The calls, each returning 0 when it behaved as an allowed call should.
    fn write_zero_bytes() -> i32 {
        // SAFETY: a zero-length write needs no buffer.
        i32::from(unsafe { libc::write(2, std::ptr::null(), 0) } != 0)
    }
    fn getpid() -> i32 {
        // SAFETY: no arguments.
        i32::from(unsafe { libc::syscall(libc::SYS_getpid) } <= 0)
    }
    fn kvm_ioctl_on_a_bad_fd() -> i32 {
        // KVM_GET_API_VERSION (0xAE00) on a closed fd: allowed through, EBADF from the kernel.
        // SAFETY: ioctl on an invalid fd only fails.
        let r = unsafe { libc::ioctl(-1, 0xAE00) };
        i32::from(r != -1 || errno() != libc::EBADF)
    }
    fn unix_socket() -> i32 {
        // SAFETY: plain syscalls; the fd is closed again.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return 1;
            }
            libc::close(fd);
        }
        0
    }
    fn inet_socket() -> i32 {
        // SAFETY: plain syscall; reaching the return means it was not killed.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        0
    }
    fn open_dev_null() -> i32 {
        // SAFETY: a valid NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        i32::from(fd < 0)
    }
    fn open_is_refused_with_eacces() -> i32 {
        // SAFETY: a valid NUL-terminated path.
        let fd = unsafe { libc::open(c"/proc/sys/vm/overcommit_memory".as_ptr(), libc::O_RDONLY) };
        i32::from(fd != -1 || errno() != libc::EACCES)
    }
    fn mkdir() -> i32 {
        // Under a missing directory: it never creates anything, even unfiltered.
        // SAFETY: a valid NUL-terminated path; reaching the return means it was not killed.
        unsafe { libc::mkdir(c"/nonexistent-volt-test/seccomp".as_ptr(), 0o700) };
        0
    }
    fn kill_with_a_bad_ioctl_family() -> i32 {
        // SIOCGIFFLAGS (0x8913): not a KVM, TUN or vhost request.
        // SAFETY: ioctl on an invalid fd only fails; reaching the return means not killed.
        unsafe { libc::ioctl(-1, 0x8913) };
        0
    }

    /// The allowlist alone (open not allowed): every allowed call works, each in its own child;
    /// each forbidden one kills its child with SIGSYS.
    #[test]
    fn forbidden_syscalls_kill_and_allowed_ones_work() {
        let prog = filter(SeccompMode::Kill, false).expect("filter");
        for (name, call) in [
            ("write", write_zero_bytes as fn() -> i32),
            ("getpid", getpid),
            ("ioctl KVM", kvm_ioctl_on_a_bad_fd),
            ("socket AF_UNIX", unix_socket),
        ] {
            assert_eq!(in_child(&[&prog], call), End::Exit(0), "allowed {name}");
        }
        for (name, call) in [
            ("open", open_dev_null as fn() -> i32),
            ("mkdir", mkdir),
            ("socket AF_INET", inet_socket),
            ("ioctl SIOCGIFFLAGS", kill_with_a_bad_ioctl_family),
        ] {
            assert_eq!(
                in_child(&[&prog], call),
                End::Signal(libc::SIGSYS),
                "forbidden {name}"
            );
        }
        // The control: without a filter the forbidden calls run and return.
        assert_eq!(in_child(&[], mkdir), End::Exit(0));
        assert_eq!(in_child(&[], inet_socket), End::Exit(0));
    }

    /// `allow_open` lets open through (vhost-net opens its device).
    #[test]
    fn allow_open_lets_open_through() {
        let prog = filter(SeccompMode::Kill, true).expect("filter");
        assert_eq!(in_child(&[&prog], open_dev_null), End::Exit(0));
        assert_eq!(in_child(&[&prog], mkdir), End::Signal(libc::SIGSYS));
    }

    /// With the open-denying filter under the allowlist (as `Sandbox::enter` stacks them),
    /// opening a file fails with EACCES and the process lives on; a syscall outside the
    /// allowlist still kills it. Each in its own child.
    #[test]
    fn stacked_open_is_refused_not_fatal_and_others_still_kill() {
        let deny = open_denied().expect("deny");
        let allow = filter(SeccompMode::Kill, true).expect("filter");
        assert_eq!(
            in_child(&[&deny, &allow], open_is_refused_with_eacces),
            End::Exit(0),
            "open refused with EACCES, not fatal"
        );
        assert_eq!(in_child(&[&deny, &allow], getpid), End::Exit(0));
        assert_eq!(in_child(&[&deny, &allow], mkdir), End::Signal(libc::SIGSYS));
    }
}
