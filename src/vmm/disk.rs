//! What a VM's disks are, as plain data: [`DiskSpec`] (a field of the VMM's spec), the
//! `volt-vmm --disk` flag syntax, and the pure rules the config side shares with the VMM: the
//! guest's name for disk N (`vda`, `vdb`, ...), the `root=` command line fragment and the
//! default serial that GET_ID returns.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bytes in a virtio-blk sector (the unit of `sector` and `capacity`, whatever the block size).
pub const SECTOR_SIZE: u64 = 512;
/// Longest serial GET_ID can return (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL: usize = 20;

/// How the VMM opens the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Through the host page cache; FLUSH makes writes durable (fdatasync).
    #[default]
    Writeback,
    /// `O_DIRECT`: no host page cache; FLUSH still syncs the device. What the device
    /// refuses (buffers, or sectors not on its block size: a 4Kn disk) goes through an
    /// aligned buffer, padded to whole blocks.
    None,
}

/// Token-bucket limits; 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskLimit {
    /// Bytes read or written per second (burst: one second's worth).
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// Requests per second (burst: one second's worth).
    #[serde(default)]
    pub ops_per_sec: u64,
}

impl DiskLimit {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.bytes_per_sec > 0 || self.ops_per_sec > 0
    }
}

/// One virtio-blk device on a raw image file or a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Offer `VIRTIO_BLK_F_RO`, open read-only, refuse writes, take a shared lock.
    #[serde(default)]
    pub readonly: bool,
    /// The guest's root file system: the VMM appends `root=/dev/vdX ro|rw` to the command
    /// line unless it has a `root=` already (see [`with_root`]).
    #[serde(default)]
    pub root: bool,
    /// Page cache use.
    #[serde(default)]
    pub cache: CacheMode,
    /// What GET_ID returns (at most 20 bytes); `None`: [`default_serial`].
    #[serde(default)]
    pub serial: Option<String>,
    /// Rate limits.
    #[serde(default)]
    pub limit: DiskLimit,
}

impl DiskSpec {
    /// A read-write, writeback, unlimited disk on `path`.
    pub fn new(path: impl Into<PathBuf>) -> DiskSpec {
        DiskSpec {
            path: path.into(),
            readonly: false,
            root: false,
            cache: CacheMode::Writeback,
            serial: None,
            limit: DiskLimit::default(),
        }
    }
}

/// A `--disk` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskArgError {
    #[error("--disk needs path=FILE")]
    NoPath,
    #[error("--disk: unknown option {0:?} (path=, readonly, root, cache=, serial=, bps=, iops=)")]
    Unknown(String),
    #[error("--disk: cache must be none or writeback, got {0:?}")]
    Cache(String),
    #[error("--disk: {key} must be a non-negative integer, got {value:?}")]
    Number { key: &'static str, value: String },
    #[error("--disk: serial {0:?} is longer than 20 bytes")]
    Serial(String),
}

/// Parses `path=FILE[,readonly][,root][,cache=none|writeback][,serial=S][,bps=N][,iops=N]`.
pub fn parse_disk_arg(s: &str) -> Result<DiskSpec, DiskArgError> {
    let mut path = None;
    let mut d = DiskSpec::new("");
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        let number = |key: &'static str, v: Option<&str>| {
            v.and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| DiskArgError::Number {
                    key,
                    value: v.unwrap_or("").to_string(),
                })
        };
        match (key, value) {
            ("path", Some(v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
            ("readonly" | "ro", None) => d.readonly = true,
            ("root", None) => d.root = true,
            ("cache", Some("none")) => d.cache = CacheMode::None,
            ("cache", Some("writeback")) => d.cache = CacheMode::Writeback,
            ("cache", Some(v)) => return Err(DiskArgError::Cache(v.to_string())),
            ("serial", Some(v)) => {
                if v.len() > MAX_SERIAL {
                    return Err(DiskArgError::Serial(v.to_string()));
                }
                d.serial = Some(v.to_string());
            }
            ("bps", v) => d.limit.bytes_per_sec = number("bps", v)?,
            ("iops", v) => d.limit.ops_per_sec = number("iops", v)?,
            _ => return Err(DiskArgError::Unknown(part.to_string())),
        }
    }
    d.path = path.ok_or(DiskArgError::NoPath)?;
    Ok(d)
}

/// The guest's name for the `index`-th virtio-blk device (0 → `vda`, 25 → `vdz`, 26 →
/// `vdaa`), as Linux's virtio_blk names disks in probe order, which is the order of the
/// `virtio_mmio.device=` entries the VMM adds.
pub fn disk_name(index: usize) -> String {
    // Bijective base 26, as virtblk_name_format.
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("vd{}", String::from_utf8_lossy(&letters))
}

/// The command line fragment for the root disk: `root=/dev/vdX ro` (read-only) or `root=/dev/vdX
/// rw`; `None` without a root disk. The config side rejects more than one root disk; here the
/// first wins.
pub fn root_cmdline(disks: &[DiskSpec]) -> Option<String> {
    let (i, d) = disks.iter().enumerate().find(|(_, d)| d.root)?;
    let mode = if d.readonly { "ro" } else { "rw" };
    Some(format!("root=/dev/{} {mode}", disk_name(i)))
}

/// `cmdline` with the root disk's fragment appended, unless it names a root already (a
/// `root=` word) or no disk is the root.
pub fn with_root(cmdline: &str, disks: &[DiskSpec]) -> String {
    let has_root = cmdline.split_whitespace().any(|w| w.starts_with("root="));
    match root_cmdline(disks) {
        Some(root) if !has_root => {
            if cmdline.trim().is_empty() {
                root
            } else {
                format!("{} {root}", cmdline.trim_end())
            }
        }
        _ => cmdline.to_string(),
    }
}

/// The serial GET_ID returns when none is configured: `volt-<8 hex of the VM UUID>-<index>`
/// (the VM name stands in for an empty UUID), at most 20 bytes, stable across restarts.
pub fn default_serial(vm_uuid: &str, vm_name: &str, index: usize) -> String {
    let id: String = if vm_uuid.is_empty() {
        vm_name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(8)
            .collect()
    } else {
        vm_uuid.chars().filter(|c| *c != '-').take(8).collect()
    };
    let mut s = format!("volt-{id}-{index}");
    s.truncate(MAX_SERIAL);
    s
}

/// The serial of disk `index`: its own, else [`default_serial`]; cut to 20 bytes.
pub fn serial_of(disk: &DiskSpec, vm_uuid: &str, vm_name: &str, index: usize) -> String {
    let mut s = disk
        .serial
        .clone()
        .unwrap_or_else(|| default_serial(vm_uuid, vm_name, index));
    while s.len() > MAX_SERIAL {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_args_parse() {
        let d =
            parse_disk_arg("path=/img,readonly,root,cache=none,serial=abc,bps=100,iops=7").unwrap();
        assert_eq!(d.path, PathBuf::from("/img"));
        assert!(d.readonly && d.root);
        assert_eq!(d.cache, CacheMode::None);
        assert_eq!(d.serial.as_deref(), Some("abc"));
        assert_eq!(
            d.limit,
            DiskLimit {
                bytes_per_sec: 100,
                ops_per_sec: 7
            }
        );
        assert_eq!(parse_disk_arg("path=/a").unwrap(), DiskSpec::new("/a"));
        assert_eq!(parse_disk_arg("readonly"), Err(DiskArgError::NoPath));
        assert!(matches!(
            parse_disk_arg("path=/a,cache=yes"),
            Err(DiskArgError::Cache(_))
        ));
        assert!(matches!(
            parse_disk_arg("path=/a,bps=-1"),
            Err(DiskArgError::Number { key: "bps", .. })
        ));
        assert!(matches!(
            parse_disk_arg("path=/a,serial=123456789012345678901"),
            Err(DiskArgError::Serial(_))
        ));
        assert!(matches!(
            parse_disk_arg("path=/a,bogus"),
            Err(DiskArgError::Unknown(_))
        ));
    }

    #[test]
    fn names_follow_linux() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
        assert_eq!(disk_name(27), "vdab");
        assert_eq!(disk_name(701), "vdzz");
        assert_eq!(disk_name(702), "vdaaa");
    }

    #[test]
    fn root_fragment() {
        let mut a = DiskSpec::new("/a");
        let mut b = DiskSpec::new("/b");
        assert_eq!(root_cmdline(&[a.clone(), b.clone()]), None);
        b.root = true;
        assert_eq!(
            root_cmdline(&[a.clone(), b.clone()]).as_deref(),
            Some("root=/dev/vdb rw")
        );
        a.root = true;
        a.readonly = true;
        assert_eq!(root_cmdline(&[a, b]).as_deref(), Some("root=/dev/vda ro"));
    }

    #[test]
    fn root_is_appended_once() {
        let mut d = DiskSpec::new("/a");
        assert_eq!(with_root("console=ttyS0", &[d.clone()]), "console=ttyS0");
        d.root = true;
        assert_eq!(
            with_root("console=ttyS0 ", &[d.clone()]),
            "console=ttyS0 root=/dev/vda rw"
        );
        assert_eq!(with_root("", &[d.clone()]), "root=/dev/vda rw");
        assert_eq!(
            with_root("root=/dev/vdb console=ttyS0", &[d.clone()]),
            "root=/dev/vdb console=ttyS0"
        );
        // `rootwait` is not a root= word.
        assert_eq!(with_root("rootwait", &[d]), "rootwait root=/dev/vda rw");
    }

    #[test]
    fn serials_are_stable_and_short() {
        let s = default_serial("710533bb-1111-2222-3333-444455556666", "web", 3);
        assert_eq!(s, "volt-710533bb-3");
        assert_eq!(default_serial("", "a very long name", 0), "volt-averylon-0");
        assert!(default_serial("", "x", 123_456_789_012).len() <= MAX_SERIAL);
        let mut d = DiskSpec::new("/a");
        d.serial = Some("mine".into());
        assert_eq!(serial_of(&d, "", "vm", 0), "mine");
    }

    #[test]
    fn spec_serde_defaults() {
        let d: DiskSpec = serde_json::from_str(r#"{"path":"/x"}"#).unwrap();
        assert_eq!(d, DiskSpec::new("/x"));
        let d: DiskSpec = serde_json::from_str(
            r#"{"path":"/x","cache":"none","limit":{"ops_per_sec":5},"readonly":true}"#,
        )
        .unwrap();
        assert_eq!(d.cache, CacheMode::None);
        assert_eq!(d.limit.ops_per_sec, 5);
        assert!(serde_json::from_str::<DiskSpec>(r#"{"path":"/x","bogus":1}"#).is_err());
    }
}
