//! The VMM's own input: everything `volt-vmm` needs to build and boot one VM.
//!
//! `volt vm run` builds it from the plan and the link owners' records and hands it over as a
//! JSON file (`volt-vmm --spec FILE`); the development CLI fills it from flags. It holds no live
//! resources and does no I/O. Every field a later version adds has a serde default, so a spec
//! written by an older `volt` still loads.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::disk::{CacheMode, DiskLimit, DiskSpec};

/// Default time a guest gets to power off after Ctrl-Alt-Del before the VMM stops it hard.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Description of one microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// VM name (the config file stem); shows in logs, `STATUS=` and journal fields.
    pub name: String,
    /// VM UUID as text; journal field `VOLT_UUID`.
    pub uuid: String,
    /// Number of vCPUs (1..=254).
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Kernel image: ELF `vmlinux` (PVH note or 64-bit entry) or `bzImage`.
    pub kernel: PathBuf,
    /// Optional initrd loaded high in low memory.
    pub initrd: Option<PathBuf>,
    /// Kernel command line given by the user; the VMM appends its device entries.
    pub cmdline: String,
    /// Optional file that receives a copy of the serial console output.
    #[serde(default)]
    pub serial_file: Option<PathBuf>,
    /// virtio-net devices, in guest order (eth0 first).
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// virtio-blk devices, in guest order (`vda` first).
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Unix socket serving the serial console to `volt console` (created at start, mode 0600,
    /// owned by the user that started the VMM); `None`: output only.
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
    /// A virtio-vsock device (hybrid: host side over Unix sockets); `None`: no vsock.
    #[serde(default)]
    pub vsock: Option<VsockSpec>,
    /// Readiness from inside the guest: do not send READY=1 when the VM starts, relay the
    /// guest's own sd_notify READY=1/STATUS= (over vsock, port [`NOTIFY_PORT`]). Needs `vsock`.
    #[serde(default)]
    pub notify_ready: bool,
}

/// The virtio-vsock device: the guest's CID and the host socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    /// The guest's context id (3..=0xfffffffe; 0-2 are reserved, 0xffffffff is "any").
    pub cid: u32,
    /// Host socket: a host client connects here and writes `CONNECT <port>\n`; a guest
    /// connection to host port P goes to `<socket>_P`.
    pub socket: PathBuf,
}

/// vsock port (host side) the VMM serves the guest's sd_notify messages on with
/// `notify_ready`; above 65535 so it never shadows a service mirrored from TCP.
pub const NOTIFY_PORT: u32 = 100_000;

/// One virtio-net device and the host TAP behind it. The TAP exists already (its owner unit
/// brought it up); the VMM only opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// NIC id from the VM file (`eth0`); names its fd store entries `<id>-q<N>`.
    pub id: String,
    /// The TAP's name.
    pub tap: String,
    /// Network namespace the TAP lives in (`/run/netns/volt-iso-<id>` on an isolated network);
    /// `None`: the VMM's own.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Guest MAC address, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// MTU offered to the guest (VIRTIO_NET_F_MTU).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Queue pairs (1 = no multiqueue).
    #[serde(default = "one")]
    pub queues: u16,
    /// Try vhost-net first (falls back to the userspace data path).
    #[serde(default = "yes")]
    pub vhost: bool,
    /// `tap` is a macvtap: opened through its `/dev/tap<ifindex>`, not `/dev/net/tun`.
    #[serde(default)]
    pub macvtap: bool,
}

fn default_mtu() -> u16 {
    1500
}

fn one() -> u16 {
    1
}

fn yes() -> bool {
    true
}

/// Smallest guest the VMM accepts, in MiB (boot structures live below 1 MiB, the kernel above).
pub const MIN_MEMORY_MIB: u32 = 16;
/// Largest guest the VMM accepts, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// Most vCPUs the VMM accepts (APIC ids are 8 bits, 0xff is broadcast).
pub const MAX_VCPUS: u8 = 64;
/// Guest RAM when neither the VM file nor a flag says.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// A spec field that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// `vcpus` out of range.
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u8),
    /// `memory_mib` out of range.
    #[error("memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {0}")]
    Memory(u32),
    /// The kernel file is missing or not a regular file.
    #[error("kernel image {0} does not exist or is not a regular file")]
    Kernel(PathBuf),
    /// The initrd file is missing or not a regular file.
    #[error("initrd {0} does not exist or is not a regular file")]
    Initrd(PathBuf),
    /// The VM name is empty.
    #[error("the VM name must not be empty")]
    Name,
    /// The vsock CID is reserved or out of range.
    #[error("vsock cid must be between 3 and 4294967294, got {0}")]
    VsockCid(u32),
    /// `notify_ready` without a vsock device to carry the guest's messages.
    #[error("notify_ready needs a vsock device (the guest sends READY=1 over vsock)")]
    NotifyWithoutVsock,
    /// More than one disk is marked root.
    #[error("at most one disk may be the root disk, got {0}")]
    RootDisks(usize),
    /// A disk serial is longer than GET_ID can return.
    #[error("disk serial {0:?} is longer than 20 bytes")]
    Serial(String),
}

impl VmSpec {
    /// A spec with defaults for everything but the kernel: 1 vCPU, 256 MiB, name `vm`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmSpec {
            name: "vm".to_string(),
            uuid: String::new(),
            vcpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            serial_file: None,
            nics: Vec::new(),
            console_socket: None,
            vsock: None,
            notify_ready: false,
            disks: Vec::new(),
        }
    }

    /// Checks the values and that the kernel and initrd files exist. Errors here are
    /// configuration errors: retrying cannot fix them.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty() {
            return Err(SpecError::Name);
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(SpecError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::Memory(self.memory_mib));
        }
        if !self.kernel.is_file() {
            return Err(SpecError::Kernel(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(SpecError::Initrd(initrd.clone()));
            }
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid == u32::MAX {
                return Err(SpecError::VsockCid(v.cid));
            }
        }
        if self.notify_ready && self.vsock.is_none() {
            return Err(SpecError::NotifyWithoutVsock);
        }
        let roots = self.disks.iter().filter(|d| d.root).count();
        if roots > 1 {
            return Err(SpecError::RootDisks(roots));
        }
        if let Some(s) = self
            .disks
            .iter()
            .filter_map(|d| d.serial.as_ref())
            .find(|s| s.len() > super::disk::MAX_SERIAL)
        {
            return Err(SpecError::Serial(s.clone()));
        }
        Ok(())
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_values() {
        let mut s = VmSpec::new("/nonexistent/vmlinux");
        assert_eq!(
            s.validate(),
            Err(SpecError::Kernel("/nonexistent/vmlinux".into()))
        );
        s.kernel = std::env::current_exe().unwrap();
        assert_eq!(s.validate(), Ok(()));
        s.vcpus = 0;
        assert_eq!(s.validate(), Err(SpecError::Vcpus(0)));
        s.vcpus = 2;
        s.memory_mib = 1;
        assert_eq!(s.validate(), Err(SpecError::Memory(1)));
        s.memory_mib = 64;
        s.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(s.validate(), Err(SpecError::Initrd(_))));
        s.initrd = None;
        s.notify_ready = true;
        assert_eq!(s.validate(), Err(SpecError::NotifyWithoutVsock));
        for cid in [0, 2, u32::MAX] {
            s.vsock = Some(VsockSpec {
                cid,
                socket: "/run/v.sock".into(),
            });
            assert_eq!(s.validate(), Err(SpecError::VsockCid(cid)));
        }
        s.vsock = Some(VsockSpec {
            cid: 3,
            socket: "/run/v.sock".into(),
        });
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn an_older_spec_without_the_new_fields_still_loads() {
        let json = r#"{"name":"web","uuid":"","vcpus":1,"memory_mib":64,
            "kernel":"/k","initrd":null,"cmdline":""}"#;
        let s: VmSpec = serde_json::from_str(json).unwrap();
        assert_eq!(
            (s.console_socket, s.vsock, s.notify_ready),
            (None, None, false)
        );
    }
}
