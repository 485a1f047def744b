//! `[[disk]]` entries of a VM file: raw images or block devices for virtio-blk.
//!
//! ```toml
//! [[disk]]
//! path = "/var/lib/volt/disks/web.img"   # a raw image file or a block device
//! root = true                            # root=/dev/vdX on the kernel command line
//! readonly = false
//! cache = "writeback"                    # or "none" (O_DIRECT)
//! serial = "web-root"                    # what the guest reads as the disk's id
//! [disk.limit]
//! bytes_per_sec = 104857600
//! ops_per_sec = 2000
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{ConfigError, Location};
use super::nic::unit_path;
use super::reader::{Errors, Table};
use super::span::Src;

/// Most disks a VM may have (virtio-mmio slots are few; `vda`..`vdp`).
pub const MAX_DISKS: usize = 16;
/// Longest serial the device can return (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL: usize = 20;

/// Host page cache use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskCache {
    #[default]
    Writeback,
    /// O_DIRECT.
    None,
}

/// A validated disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskConfig {
    pub index: usize,
    pub path: PathBuf,
    pub readonly: bool,
    pub root: bool,
    pub cache: DiskCache,
    pub serial: Option<String>,
    /// 0 = unlimited.
    pub bytes_per_sec: u64,
    pub ops_per_sec: u64,
    /// Where `path` is written.
    #[serde(skip)]
    pub(crate) at: Option<Location>,
    /// Where `root` is written.
    #[serde(skip)]
    pub(crate) root_at: Option<Location>,
    /// The image itself, when it can be looked at (device and inode; a block device's
    /// number): two paths to one image are one image. See [`identify`].
    #[serde(skip)]
    pub(crate) identity: Option<String>,
    /// Where under `/dev` the symlinks from `path` lead, when `path` is outside `/dev` (the
    /// unit's DeviceAllow= takes paths under `/dev` only).
    #[serde(skip)]
    pub device_node: Option<PathBuf>,
    /// The paths the symlinks from `path` lead through, in order (empty when `path` is no
    /// link): the unit must be given the one under a directory its sandbox hides.
    #[serde(skip)]
    pub link_hops: Vec<PathBuf>,
}

const CACHE: [(&str, DiskCache); 2] = [
    ("writeback", DiskCache::Writeback),
    ("none", DiskCache::None),
];

/// Read one `[[disk]]` table.
pub(crate) fn parse_disk(src: &Src, index: usize, t: &Table, e: &mut Errors) -> DiskConfig {
    let path_s = t.string(src, e, "path");
    let at = path_s.as_ref().map(|p| src.at(p.span().start));
    let path = match &path_s {
        Some(p) => unit_path(src, &t.field("path"), p, e),
        None => {
            if !t.has("path") {
                e.push(src.invalid(
                    &t.field("path"),
                    t.span(),
                    "missing: the disk's raw image file or block device".into(),
                ));
            }
            PathBuf::new()
        }
    };
    let serial = t.string(src, e, "serial").and_then(|s| {
        let ok =
            s.get_ref().len() <= MAX_SERIAL && s.get_ref().chars().all(|c| c.is_ascii_graphic());
        if !ok {
            e.push(src.invalid(
                &t.field("serial"),
                s.span(),
                format!(
                    "{:?} must be at most {MAX_SERIAL} printable ASCII characters without spaces",
                    s.get_ref()
                ),
            ));
        }
        ok.then(|| s.into_inner())
    });
    let root_s = t.boolean(src, e, "root");
    let mut d = DiskConfig {
        index,
        path,
        readonly: t
            .boolean(src, e, "readonly")
            .is_some_and(|b| b.into_inner()),
        root: root_s.as_ref().is_some_and(|b| *b.get_ref()),
        cache: t.choice(src, e, "cache", &CACHE).unwrap_or_default(),
        serial,
        bytes_per_sec: 0,
        ops_per_sec: 0,
        at,
        root_at: root_s.map(|b| src.at(b.span().start)),
        identity: None,
        device_node: None,
        link_hops: Vec::new(),
    };
    if let Some(l) = t.table(src, e, "limit") {
        d.bytes_per_sec = l
            .integer(src, e, "bytes_per_sec", 0..=u64::MAX >> 1, " bytes/s")
            .map_or(0, |v| v.into_inner());
        d.ops_per_sec = l
            .integer(src, e, "ops_per_sec", 0..=u64::MAX >> 1, " requests/s")
            .map_or(0, |v| v.into_inner());
        l.finish(src, e, &[]);
    }
    d
}

impl DiskConfig {
    /// Whether the image under `root` starts like a qcow2 image. A warning, not an error:
    /// a guest may write those bytes to its raw disk itself.
    pub fn looks_like_qcow2(&self, root: &Path) -> bool {
        is_qcow2(&root.join(self.path.strip_prefix("/").unwrap_or(&self.path)))
    }
}

/// Whether the file at `path` starts with qcow2's magic.
fn is_qcow2(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"QFI\xfb")
}

/// The checks of a VM's disks together: at most one root disk, serials told apart.
pub(crate) fn check_disks(src: &Src, disks: &[DiskConfig], e: &mut Errors) {
    for (i, d) in disks.iter().enumerate() {
        let Some(serial) = &d.serial else { continue };
        if let Some(first) = disks[..i]
            .iter()
            .find(|o| o.serial.as_ref() == Some(serial))
        {
            e.push(ConfigError::Invalid {
                at: d.at.clone().unwrap_or_else(|| Location::file(src.path)),
                field: format!("disk[{}].serial", d.index),
                message: format!(
                    "{serial:?} is the serial of disk[{}] already (the guest tells disks apart by it: /dev/disk/by-id/virtio-{serial})",
                    first.index
                ),
            });
        }
    }
    let mut roots = disks.iter().filter(|d| d.root);
    if let (Some(first), Some(second)) = (roots.next(), roots.next()) {
        e.push(ConfigError::Invalid {
            at: second
                .root_at
                .clone()
                .unwrap_or_else(|| Location::file(src.path)),
            field: format!("disk[{}].root", second.index),
            message: format!(
                "disk[{}] is the root disk already (one root disk per VM)",
                first.index
            ),
        });
    }
}

/// Look at each VM disk's image under `root` (see [`DiskConfig::identity`]), so the checks
/// across files see one image behind two paths (`/d/a.img`, a symlink to it, `/d/../d/a.img`).
/// An image that cannot be looked at now (the generator runs before every file system is
/// mounted) is known by its path.
pub(crate) fn identify(vms: &mut [super::VmConfig], root: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for v in vms.iter_mut() {
        let boot = std::iter::once(&v.kernel).chain(v.initrd.as_ref());
        v.boot_link_hops = boot.flat_map(|p| link_hops(root, p)).collect();
    }
    for d in vms.iter_mut().flat_map(|v| v.disks.iter_mut()) {
        d.link_hops = link_hops(root, &d.path);
        if !d.path.starts_with("/dev") {
            d.device_node = d.link_hops.iter().find(|h| h.starts_with("/dev")).cloned();
        }
        let real = root.join(d.path.strip_prefix("/").unwrap_or(&d.path));
        let Ok(m) = std::fs::metadata(&real) else {
            continue;
        };
        d.identity = Some(if m.file_type().is_block_device() {
            format!("blk:{}", m.rdev())
        } else {
            format!("file:{}:{}", m.dev(), m.ino())
        });
    }
}

/// The paths the symlinks from `path` (under `root`) lead through, read from the links
/// alone: known before what they lead to exists (the generator runs before udev and LVM make
/// `/dev/<vg>/<lv>`, and before a separate `/home` is mounted, at boot). A hop under `/dev`
/// is what the unit's DeviceAllow= names (systemd finds the device behind it when the unit
/// starts); one under a home is what it binds in.
fn link_hops(root: &Path, path: &Path) -> Vec<PathBuf> {
    let mut hops = Vec::new();
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        let Some(next) = next_hop(root, &p) else {
            break;
        };
        hops.push(next.clone());
        if next.starts_with("/dev") {
            break;
        }
        p = next;
    }
    hops
}

/// Where the link at `p` (under `root`) points, as the host names it; `None` when `p` is no
/// link (or cannot be read).
fn next_hop(root: &Path, p: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(root.join(p.strip_prefix("/").ok()?)).ok()?;
    // Relative to where the link really is (its directory may be a link itself).
    let parent = p.parent()?;
    let real_parent = root
        .join(parent.strip_prefix("/").ok()?)
        .canonicalize()
        .ok()
        .and_then(|d| {
            let root = root.canonicalize().ok()?;
            Some(Path::new("/").join(d.strip_prefix(&root).ok()?))
        })
        .unwrap_or_else(|| parent.to_path_buf());
    let next = real_parent.join(target);
    // `..` taken lexically past that point: the rest may not exist yet.
    let mut clean = PathBuf::from("/");
    for c in next.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::Normal(n) => clean.push(n),
            _ => {}
        }
    }
    Some(clean)
}

impl DiskConfig {
    /// What the checks across files know the image by: its identity, else its path.
    pub(crate) fn image_key(&self) -> String {
        self.identity
            .clone()
            .unwrap_or_else(|| format!("path:{}", self.path.display()))
    }

    /// That the image exists under `root` as a regular file or a block device whose size is a
    /// multiple of 512 bytes. Not part of parsing: the generator runs before every file
    /// system is mounted.
    pub fn check_image(&self, root: &Path, file: &Path) -> Option<ConfigError> {
        use std::os::unix::fs::FileTypeExt;
        let real = root.join(self.path.strip_prefix("/").unwrap_or(&self.path));
        let problem = match std::fs::metadata(&real) {
            Ok(m) if m.file_type().is_block_device() => return None,
            Ok(m) if m.is_file() && m.len() % 512 == 0 && m.len() > 0 => return None,
            Ok(m) if m.is_file() && m.len() == 0 => "is empty".to_string(),
            Ok(m) if m.is_file() => format!(
                "is {} bytes, not a multiple of 512 (truncate -s to a whole number of sectors)",
                m.len()
            ),
            Ok(_) => "is neither a regular file nor a block device".to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
            Err(source) => {
                return Some(ConfigError::Unreadable {
                    at: self.at.clone().unwrap_or_else(|| Location::file(file)),
                    field: format!("disk[{}].path", self.index),
                    path: self.path.clone(),
                    checked: None,
                    source,
                })
            }
        };
        Some(ConfigError::Invalid {
            at: self.at.clone().unwrap_or_else(|| Location::file(file)),
            field: format!("disk[{}].path", self.index),
            message: format!("{} {problem}", self.path.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_block_device_is_known_by_its_dev_path_before_it_exists() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        let disks = root.join("var/lib/volt/disks");
        std::fs::create_dir_all(&disks).expect("mkdir");
        // Relative and absolute links; neither target exists (no udev yet).
        std::os::unix::fs::symlink("../../../../dev/vg/lv", disks.join("lv")).expect("link");
        std::os::unix::fs::symlink("/dev/mapper/data", disks.join("abs")).expect("link");
        // A chain through another link outside /dev.
        std::os::unix::fs::symlink("lv", disks.join("chain")).expect("link");
        // A link in a directory that is itself a link: `..` from where it really is.
        std::fs::create_dir_all(root.join("srv/real")).expect("mkdir");
        std::os::unix::fs::symlink("../../dev/sdb", root.join("srv/real/wwn")).expect("link");
        std::os::unix::fs::symlink("real", root.join("srv/byid")).expect("link");
        std::fs::write(disks.join("a.img"), "").expect("file");
        let at = |p: &str| {
            link_hops(root, Path::new(p))
                .into_iter()
                .find(|h| h.starts_with("/dev"))
        };
        assert_eq!(at("/var/lib/volt/disks/lv"), Some("/dev/vg/lv".into()));
        assert_eq!(
            at("/var/lib/volt/disks/abs"),
            Some("/dev/mapper/data".into())
        );
        assert_eq!(at("/var/lib/volt/disks/chain"), Some("/dev/vg/lv".into()));
        assert_eq!(at("/srv/byid/wwn"), Some("/dev/sdb".into()));
        assert_eq!(at("/var/lib/volt/disks/a.img"), None);
        assert_eq!(at("/var/lib/volt/disks/missing"), None);
    }
}
