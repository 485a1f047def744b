//! The manager's macvtaps (a VM NIC directly on a physical parent) and their character
//! devices, and the SR-IOV answer.

use std::path::{Path, PathBuf};

use super::{io, LinkParams, Macvtap, Manager, ManagerError};
use crate::config::MacvtapMode;
use crate::net::netlink::Netlink;

impl Manager {
    /// A macvtap on `parent` in `mode` with the link's MAC and MTU, up, and its character
    /// device (made from sysfs when udev did not), owned by `owner` when given.
    pub fn create_macvtap(
        &self,
        parent: &str,
        link: &LinkParams,
        mode: MacvtapMode,
        owner: Option<(u32, Option<u32>)>,
    ) -> Result<Macvtap, ManagerError> {
        let nl = Netlink::new()?;
        if nl.link(parent)?.is_none() {
            return Err(ManagerError::MissingLink {
                what: "macvtap parent",
                name: parent.into(),
            });
        }
        if nl.delete(&link.name)? {
            log::info!("replaced a stale {}", link.name);
        }
        let index = nl.create_macvtap(&link.name, parent, mode, Some(link.mac), Some(link.mtu))?;
        let r = (|| -> Result<PathBuf, ManagerError> {
            Self::altname(&nl, &link.name, &link.altname);
            nl.set_up(&link.name)?;
            let dev = macvtap_device(&self.dev_dir, &link.name, index)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dev, Some(uid), gid)
                    .map_err(io(format!("chown {}", dev.display())))?;
            }
            Ok(dev)
        })();
        match r {
            Ok(device) => {
                log::info!(
                    "created macvtap {} ({mode:?}) on {parent} for {}: {}",
                    link.name,
                    link.altname,
                    device.display()
                );
                Ok(Macvtap {
                    name: link.name.clone(),
                    index,
                    device,
                })
            }
            Err(e) => {
                let _ = nl.delete(&link.name);
                Err(e)
            }
        }
    }

    /// SR-IOV VF passthrough: designed, not implemented (ARCHITECTURE.md "SR-IOV"). Says why
    /// this host cannot do it.
    pub fn sriov_vf(&self, parent: &str) -> Result<PathBuf, ManagerError> {
        let p = Path::new("/sys/class/net")
            .join(parent)
            .join("device/sriov_numvfs");
        let reason = match std::fs::read_to_string(&p) {
            Ok(n) if n.trim() != "0" => format!(
                "{parent} has {} VF(s), but Volt does not implement VF assignment (VFIO) yet",
                n.trim()
            ),
            Ok(_) => format!("{parent} has no virtual functions enabled (sriov_numvfs is 0)"),
            Err(_) => format!(
                "{parent} has no SR-IOV capability ({} is missing)",
                p.display()
            ),
        };
        Err(ManagerError::SriovUnsupported { reason })
    }
}

/// The character device of macvtap `name` (ifindex `index`): `<dev_dir>/tap<index>`,
/// created from sysfs (`/sys/class/net/<name>/macvtap/tap<index>/dev`) when udev did not.
/// sysfs shows the namespace it was mounted in: call this where it matches.
pub fn macvtap_device(dev_dir: &Path, name: &str, index: u32) -> Result<PathBuf, ManagerError> {
    let dev = dev_dir.join(format!("tap{index}"));
    let sys = Path::new("/sys/class/net")
        .join(name)
        .join(format!("macvtap/tap{index}/dev"));
    let err = |source| ManagerError::MacvtapDevice {
        name: name.into(),
        path: sys.clone(),
        source,
    };
    let text = match std::fs::read_to_string(&sys) {
        Ok(t) => t,
        Err(_) if dev.exists() => return Ok(dev),
        Err(e) => return Err(err(e)),
    };
    let (maj, min) = text
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| err(std::io::Error::other(format!("bad dev {text:?}"))))?;
    let want = libc::makedev(maj, min);
    if let Ok(m) = std::fs::metadata(&dev) {
        use std::os::unix::fs::MetadataExt;
        if m.rdev() == want {
            return Ok(dev);
        }
        std::fs::remove_file(&dev).map_err(io(format!("remove stale {}", dev.display())))?;
    }
    let c = std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: c is a valid path; mknod creates a device node and touches nothing else.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, want) } != 0 {
        return Err(ManagerError::Io {
            what: format!("create {} ({maj}:{min})", dev.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(dev)
}
