//! TAP devices through `/dev/net/tun`: open one networkd created, create one directly, or
//! adopt fds handed back by systemd's fd store after verifying what they are.
//!
//! Every queue is one fd; a TAP with `IFF_MULTI_QUEUE` has one fd per queue pair. The flags
//! asked for must match the TAP's own (networkd's `VNetHeader=`/`MultiQueue=`), else the
//! kernel answers EINVAL.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

pub const IFF_TAP: u16 = 0x0002;
pub const IFF_NO_PI: u16 = 0x1000;
pub const IFF_VNET_HDR: u16 = 0x4000;
pub const IFF_MULTI_QUEUE: u16 = 0x0100;
pub const IFF_TUN_EXCL: u16 = 0x8000;
/// TUNSETQUEUE flags.
const IFF_ATTACH_QUEUE: u16 = 0x0200;
const IFF_DETACH_QUEUE: u16 = 0x0400;

/// Offload flags for TUNSETOFFLOAD.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_UFO: u32 = 0x10;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;

/// Size of `struct virtio_net_hdr_v1` (with num_buffers), what virtio 1.x guests use.
pub const VNET_HDR_LEN: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("TAP {name} does not exist")]
    Missing { name: String },
    #[error("{name} exists but is not a TAP")]
    NotTap { name: String },
    #[error("TAP {name} already exists")]
    Exists { name: String },
    #[error("cannot attach to TAP {name} queue {queue} (TUNSETIFF)")]
    SetIff {
        name: String,
        queue: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {path}, the device of macvtap {name}")]
    OpenDevice {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot query a TAP fd (TUNGETIFF)")]
    GetIff(#[source] std::io::Error),
    #[error("fd store fd is TAP {found:?} with flags {flags:#06x}, expected {expected} with {wanted:#06x}")]
    Mismatch {
        found: String,
        flags: u16,
        expected: String,
        wanted: u16,
    },
    #[error("cannot set the vnet header size of {name} (TUNSETVNETHDRSZ)")]
    VnetHdr {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set offloads {flags:#x} on {name} (TUNSETOFFLOAD)")]
    Offload {
        name: String,
        flags: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {name} persistent (TUNSETPERSIST)")]
    Persist {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot give {name} to {what} {id} ({ioctl})")]
    Owner {
        name: String,
        what: &'static str,
        id: u32,
        ioctl: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what} queue of {name} (TUNSETQUEUE)")]
    SetQueue {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a TAP fd non-blocking")]
    NonBlock(#[source] std::io::Error),
}

/// `struct ifreq` as the tun ioctls use it: name, then flags.
#[repr(C)]
#[derive(Default)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: u16) -> IfReq {
        let mut r = IfReq {
            flags,
            ..IfReq::default()
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn ioctl_ptr<T>(fd: &impl AsRawFd, req: libc::c_ulong, arg: *mut T) -> std::io::Result<()> {
    // SAFETY: callers pass a request whose argument is `*mut T` of the right size (ifreq or
    // int); the pointer is valid for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ioctl_val(fd: &impl AsRawFd, req: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: the requests used with this helper take their argument by value.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_tun() -> Result<File, TapError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)
}

fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(TapError::BadName(name.into()));
    }
    Ok(())
}

/// The flags Volt uses for a TAP with `queues` queue pairs.
pub fn flags_for(queues: usize) -> u16 {
    IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | if queues > 1 { IFF_MULTI_QUEUE } else { 0 }
}

/// Whether `name` currently exists in this thread's network namespace, and whether it is a
/// TAP (driver "tun"). Uses ioctls on a socket, not sysfs, so it is right in any network
/// namespace the calling thread is in.
pub fn link_kind(name: &str) -> Option<bool> {
    check_name(name).ok()?;
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: cname is a valid NUL-terminated string.
    if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
        return None;
    }
    Some(driver(name).is_some_and(|d| d == "tun"))
}

/// The driver name of link `name` (SIOCETHTOOL / ETHTOOL_GDRVINFO).
pub fn driver(name: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReqData {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReqData {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    ioctl_ptr(&sock, SIOCETHTOOL, &mut req).ok()?;
    CStr::from_bytes_until_nul(&info.driver)
        .ok()
        .map(|c| c.to_string_lossy().into_owned())
}

/// An open TAP: its name and one fd per queue.
#[derive(Debug)]
pub struct Tap {
    pub name: String,
    pub queues: Vec<File>,
    pub flags: u16,
    /// Which queues are attached (TUNSETQUEUE answers EINVAL to a no-op change).
    attached: std::sync::Mutex<Vec<bool>>,
    /// The vnet header length and offloads set last: the same again costs no ioctl (each
    /// takes the kernel's RTNL lock, and a guest resetting its NIC in a loop asks again).
    applied: std::sync::Mutex<(Option<i32>, Option<u32>)>,
}

impl Tap {
    fn with_queues(name: &str, queues: Vec<File>, flags: u16) -> Tap {
        let attached = std::sync::Mutex::new(vec![true; queues.len()]);
        Tap {
            name: name.into(),
            queues,
            flags,
            attached,
            applied: std::sync::Mutex::new((None, None)),
        }
    }

    fn attach(name: &str, flags: u16, queues: usize) -> Result<Vec<File>, TapError> {
        let mut fds = Vec::with_capacity(queues);
        for q in 0..queues {
            let f = open_tun()?;
            let mut req = IfReq::new(name, flags);
            ioctl_ptr(&f, TUNSETIFF, &mut req).map_err(|source| match source.raw_os_error() {
                Some(libc::EBUSY) if q == 0 && flags & IFF_TUN_EXCL != 0 => {
                    TapError::Exists { name: name.into() }
                }
                _ => TapError::SetIff {
                    name: name.into(),
                    queue: q,
                    source,
                },
            })?;
            fds.push(f);
        }
        Ok(fds)
    }

    /// Open the TAP `name` that exists already (networkd made it): never creates one.
    pub fn open(name: &str, queues: usize) -> Result<Tap, TapError> {
        check_name(name)?;
        match link_kind(name) {
            None => return Err(TapError::Missing { name: name.into() }),
            Some(false) => return Err(TapError::NotTap { name: name.into() }),
            Some(true) => {}
        }
        let flags = flags_for(queues);
        let queues = Self::attach(name, flags, queues.max(1))?;
        Ok(Tap::with_queues(name, queues, flags))
    }

    /// Open macvtap `name` through its character device `/dev/tap<ifindex>` (its owner made
    /// the node): one open per queue, each set to `flags_for(queues)` with TUNSETIFF (a
    /// macvtap takes the flags, not the name). The same ioctls as a TAP's work on the fds.
    pub fn open_macvtap(name: &str, queues: usize) -> Result<Tap, TapError> {
        check_name(name)?;
        let cname = std::ffi::CString::new(name).map_err(|_| TapError::BadName(name.into()))?;
        // SAFETY: cname is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(TapError::Missing { name: name.into() });
        }
        let dev = format!("/dev/tap{index}");
        let flags = flags_for(queues);
        let mut fds = Vec::with_capacity(queues.max(1));
        for q in 0..queues.max(1) {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(&dev)
                .map_err(|source| TapError::OpenDevice {
                    name: name.into(),
                    path: dev.clone(),
                    source,
                })?;
            let mut req = IfReq::default();
            ioctl_ptr(&f, TUNGETIFF, &mut req).map_err(TapError::GetIff)?;
            if req.name() != name {
                return Err(TapError::Mismatch {
                    found: req.name(),
                    flags: req.flags,
                    expected: name.into(),
                    wanted: flags,
                });
            }
            let mut req = IfReq::new(name, flags);
            ioctl_ptr(&f, TUNSETIFF, &mut req).map_err(|source| TapError::SetIff {
                name: name.into(),
                queue: q,
                source,
            })?;
            fds.push(f);
        }
        Ok(Tap::with_queues(name, fds, flags))
    }

    /// Create the TAP `name` (fails if it exists). It is not persistent: it goes away with
    /// the last fd, unless [`Tap::set_persist`] is called.
    pub fn create(name: &str, queues: usize) -> Result<Tap, TapError> {
        check_name(name)?;
        if link_kind(name).is_some() {
            return Err(TapError::Exists { name: name.into() });
        }
        let flags = flags_for(queues);
        let first = Self::attach(name, flags | IFF_TUN_EXCL, 1)?;
        let mut all = first;
        if queues > 1 {
            all.extend(Self::attach(name, flags, queues - 1)?);
        }
        Ok(Tap::with_queues(name, all, flags))
    }

    /// Adopt fds (from systemd's fd store) after checking with TUNGETIFF that each is a
    /// queue of TAP `name` with the expected flags.
    pub fn from_fds(name: &str, queues: usize, fds: Vec<OwnedFd>) -> Result<Tap, TapError> {
        let wanted = flags_for(queues);
        let mut files = Vec::with_capacity(fds.len());
        for fd in fds {
            let f = File::from(fd);
            let mut req = IfReq::default();
            ioctl_ptr(&f, TUNGETIFF, &mut req).map_err(TapError::GetIff)?;
            // TUNGETIFF reports IFF_* flags; compare the ones we set.
            let mask = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
            if req.name() != name || req.flags & mask != wanted & mask {
                return Err(TapError::Mismatch {
                    found: req.name(),
                    flags: req.flags,
                    expected: name.into(),
                    wanted,
                });
            }
            files.push(f);
        }
        Ok(Tap::with_queues(name, files, wanted))
    }

    /// Set the vnet header size on every queue (12 for virtio 1.x).
    pub fn set_vnet_hdr_len(&self, len: i32) -> Result<(), TapError> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.0 == Some(len) {
            return Ok(());
        }
        applied.0 = None;
        for q in &self.queues {
            let mut v = len;
            ioctl_ptr(q, TUNSETVNETHDRSZ, &mut v).map_err(|source| TapError::VnetHdr {
                name: self.name.clone(),
                source,
            })?;
        }
        applied.0 = Some(len);
        Ok(())
    }

    /// Tell the kernel which offloads the guest accepts (TUN_F_*).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.1 == Some(flags) {
            return Ok(());
        }
        applied.1 = None;
        for q in &self.queues {
            ioctl_val(q, TUNSETOFFLOAD, flags as libc::c_ulong).map_err(|source| {
                TapError::Offload {
                    name: self.name.clone(),
                    flags,
                    source,
                }
            })?;
        }
        applied.1 = Some(flags);
        Ok(())
    }

    /// Keep the TAP after the last fd closes (or not).
    pub fn set_persist(&self, persist: bool) -> Result<(), TapError> {
        if let Some(q) = self.queues.first() {
            ioctl_val(q, TUNSETPERSIST, persist as libc::c_ulong).map_err(|source| {
                TapError::Persist {
                    name: self.name.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Let user `uid` (and, if given, group `gid`) attach to the TAP without privileges
    /// (TUNSETOWNER / TUNSETGROUP), as networkd's `User=`/`Group=` do.
    pub fn set_owner(&self, uid: u32, gid: Option<u32>) -> Result<(), TapError> {
        let Some(q) = self.queues.first() else {
            return Ok(());
        };
        ioctl_val(q, TUNSETOWNER, uid as libc::c_ulong).map_err(|source| TapError::Owner {
            name: self.name.clone(),
            what: "user",
            id: uid,
            ioctl: "TUNSETOWNER",
            source,
        })?;
        if let Some(gid) = gid {
            ioctl_val(q, TUNSETGROUP, gid as libc::c_ulong).map_err(|source| TapError::Owner {
                name: self.name.clone(),
                what: "group",
                id: gid,
                ioctl: "TUNSETGROUP",
                source,
            })?;
        }
        Ok(())
    }

    /// Enable or disable one queue of a multi-queue TAP (TUNSETQUEUE).
    pub fn set_queue_enabled(&self, queue: usize, enabled: bool) -> Result<(), TapError> {
        let Some(q) = self.queues.get(queue) else {
            return Ok(());
        };
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        if attached.get(queue) == Some(&enabled) {
            return Ok(());
        }
        let mut req = IfReq::new(
            "",
            if enabled {
                IFF_ATTACH_QUEUE
            } else {
                IFF_DETACH_QUEUE
            },
        );
        ioctl_ptr(q, TUNSETQUEUE, &mut req).map_err(|source| TapError::SetQueue {
            name: self.name.clone(),
            what: if enabled { "attach" } else { "detach" },
            source,
        })?;
        if let Some(a) = attached.get_mut(queue) {
            *a = enabled;
        }
        Ok(())
    }

    /// Duplicate the queue fds (for the fd store).
    pub fn dup_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.queues
            .iter()
            .map(|f| f.try_clone().map(OwnedFd::from))
            .collect()
    }
}

/// Wrap a raw fd received from systemd (LISTEN_FDS) as an owned fd.
///
/// # Safety
/// `fd` must be an open descriptor that nothing else owns.
pub unsafe fn owned_fd(fd: i32) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let r = IfReq::new("tap-12345678", IFF_TAP | IFF_NO_PI);
        assert_eq!(r.name(), "tap-12345678");
        assert_eq!(r.flags, 0x1002);
    }

    #[test]
    fn flags_follow_queue_count() {
        assert_eq!(flags_for(1), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        assert_eq!(flags_for(4) & IFF_MULTI_QUEUE, IFF_MULTI_QUEUE);
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        assert!(matches!(Tap::open("", 1), Err(TapError::BadName(_))));
        assert!(matches!(
            Tap::create("a-name-that-is-too-long", 1),
            Err(TapError::BadName(_))
        ));
    }
}
