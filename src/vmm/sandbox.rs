//! Least privilege for the VMM after setup: drop from root to the `volt` user (keeping only
//! the kvm group for /dev/kvm, no capabilities), then a seccomp filter allowing only the
//! syscalls of the run loop. Both happen after every file, TAP and KVM fd is open and before
//! any VMM thread starts, so all threads inherit them.
//!
//! The allowlist comes from tracing the run phase (KVM_RUN loop, virtio-net workers,
//! signal handling, sd_notify and journald, the console and vsock threads); ioctls are limited to the KVM (0xAE), TUN
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

    /// A forked child installs the filter and tries a syscall outside it (open of a file):
    /// the kernel kills it with SIGSYS; an allowed call keeps working.
    #[test]
    fn forbidden_syscall_kills_and_allowed_ones_work() {
        let prog = filter(SeccompMode::Kill, false).expect("filter");
        // SAFETY: fork in a test; the child only makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&prog).is_err() {
                // SAFETY: leaving the child.
                unsafe { libc::_exit(3) };
            }
            // Allowed: write to stderr (0 bytes), getpid.
            // SAFETY: raw syscalls with valid arguments.
            unsafe {
                libc::write(2, std::ptr::null(), 0);
                libc::getpid();
                libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}

#[cfg(test)]
mod stacked_tests {
    use super::*;

    /// With the open-denying filter under the allowlist (as `Sandbox::enter` stacks them),
    /// opening a file fails with EACCES and the process lives on; a syscall outside the
    /// allowlist still kills it.
    #[test]
    fn open_is_refused_not_fatal_and_others_still_kill() {
        let deny = open_denied().expect("deny");
        let allow = filter(SeccompMode::Kill, true).expect("filter");
        // SAFETY: fork in a test; the child makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&deny).is_err()
                || seccompiler::apply_filter(&allow).is_err()
            {
                // SAFETY: leaving the child.
                unsafe { libc::_exit(3) };
            }
            // SAFETY: raw syscalls with valid arguments.
            unsafe {
                let fd = libc::open(c"/proc/sys/vm/overcommit_memory".as_ptr(), libc::O_RDONLY);
                let errno = *libc::__errno_location();
                if fd != -1 || errno != libc::EACCES {
                    libc::_exit(4);
                }
                // Not allowed at all: mkdir.
                libc::mkdir(c"/tmp/volt-seccomp-test".as_ptr(), 0o700);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status:#x}"
        );
    }
}
