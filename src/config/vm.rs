//! VM files: `/etc/volt/vms/<name>.toml`, one VM per file, name = file stem.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;
use toml::Spanned;
use uuid::Uuid;

use super::derive::{self, check_link_name, check_workload_name, MacAddr};
use super::disk::{self, DiskConfig, MAX_DISKS};
use super::error::{ConfigError, Location};
use super::network::{Network, NetworkType};
use super::nic::{self, unit_path, NicSpans, Pool};
use super::reader::{self, Errors, Table};
use super::span::Src;

pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u32 = 16;
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
pub const MAX_NICS: usize = 8;
/// The most virtio devices (NICs, disks, vsock) a VM may have: the VMM has this many
/// interrupt lines for them (`vmm::virtio::manager::VIRTIO_IRQS`; a test holds the two equal).
pub const MAX_DEVICES: usize = 18;
pub const MAX_QUEUE_PAIRS: u32 = 16;
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// The x86 boot protocol's command line limit (`COMMAND_LINE_SIZE` of Linux: 2048 bytes,
/// with its terminating NUL).
pub const MAX_CMDLINE: usize = 2047;
/// Smallest and largest guest vsock CID (0-2 are reserved, 0xffffffff is "any").
pub const MIN_CID: u32 = 3;
pub const MAX_CID: u32 = 0xffff_fffe;

/// The CID a VM gets when its file names none: stable, from its UUID, below 2^31.
pub fn default_cid(uuid: &Uuid) -> u32 {
    let b = uuid.as_bytes();
    MIN_CID + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) % (0x7fff_ffff - MIN_CID)
}

/// What Volt may append per device (`virtio_mmio.device=4K@0x...:N`, `ip=...`).
pub const CMDLINE_PER_DEVICE: usize = 64;

/// Who creates a NIC's host link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NicMode {
    /// systemd-networkd creates the TAP from runtime `.netdev`/`.network` files and
    /// enslaves it to the bridge; the VMM opens it.
    #[default]
    Networkd,
    /// The VMM creates the TAP itself (TUNSETIFF + netlink).
    Direct,
    /// A macvtap on a physical parent interface; the VMM opens `/dev/tapN`.
    Macvtap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MacvtapMode {
    #[default]
    Bridge,
    Vepa,
    Private,
    Passthru,
}

/// A validated NIC.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NicConfig {
    pub id: String,
    pub index: usize,
    pub mode: NicMode,
    /// The network this NIC is addressed from (`None`: a macvtap without a zone).
    pub network: Option<String>,
    /// The bridge the host link joins (not for macvtap).
    pub bridge: Option<String>,
    /// macvtap parent interface and mode.
    pub parent: Option<String>,
    pub macvtap_mode: Option<MacvtapMode>,
    pub mac: MacAddr,
    /// Whether the MAC was written in the file (a derived MAC may be regenerated on conflict).
    pub mac_explicit: bool,
    /// Static address with the network's prefix; `None`: from the network's pool at start.
    pub ipv4: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
    pub vhost: bool,
    /// Queue pairs (1 = no multiqueue).
    pub queues: u32,
    /// Host link name: the TAP (networkd/direct) or the macvtap.
    pub link: String,
}

/// A validated VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmConfig {
    pub name: String,
    /// The file as systemd sees it (`/etc/volt/vms/<name>.toml`).
    pub path: PathBuf,
    pub uuid: Uuid,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub autostart: bool,
    pub nics: Vec<NicConfig>,
    pub disks: Vec<DiskConfig>,
    /// The guest's vsock context id when it has a virtio-vsock device.
    pub vsock_cid: Option<u32>,
    /// The unit becomes active only when the guest says READY=1 (over vsock).
    pub notify_ready: bool,
    /// The paths the kernel's and the initrd's symlinks lead through (see
    /// [`super::disk::DiskConfig::link_hops`]): a hop into a home is bound into the unit.
    #[serde(skip)]
    pub boot_link_hops: Vec<PathBuf>,
    #[serde(skip)]
    pub(crate) spans: VmSpans,
}

/// Where things were written, for errors found later across files.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct VmSpans {
    pub uuid: Option<Location>,
    pub vsock: Option<Location>,
    /// Whether `[vsock] cid` is written (else the CID is derived from the UUID).
    pub cid_given: bool,
    pub kernel: Option<Location>,
    pub initrd: Option<Location>,
    pub nics: Vec<NicSpans>,
}

impl VmConfig {
    /// Check that the kernel and initrd exist as regular files under `root`. Not part of
    /// parsing: the generator runs before every file system is mounted.
    pub fn check_boot_files(&self, root: &Path) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let files = [
            ("kernel", Some(&self.kernel), &self.spans.kernel),
            ("initrd", self.initrd.as_ref(), &self.spans.initrd),
        ];
        for (field, path, at) in files {
            let Some(path) = path else { continue };
            let real = root.join(path.strip_prefix("/").unwrap_or(path));
            let problem = match std::fs::metadata(&real) {
                Ok(m) if m.is_file() && m.len() > 0 => continue,
                Ok(m) if m.is_file() => "is empty".to_string(),
                Ok(_) => "is not a regular file".to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
                Err(source) => {
                    errors.push(ConfigError::Unreadable {
                        at: at.clone().unwrap_or_else(|| Location::file(&self.path)),
                        field: field.into(),
                        path: path.clone(),
                        checked: None,
                        source,
                    });
                    continue;
                }
            };
            errors.push(ConfigError::Invalid {
                at: at.clone().unwrap_or_else(|| Location::file(&self.path)),
                field: field.into(),
                message: format!("{} {problem}", path.display()),
            });
        }
        errors.extend(
            self.disks
                .iter()
                .filter_map(|d| d.check_image(root, &self.path)),
        );
        errors
    }
}

/// Look-up of networks by name (`zone =`) and by bridge (`bridge =`).
pub trait NetworkLookup {
    fn by_name(&self, name: &str) -> Option<&Network>;
    fn by_bridge(&self, bridge: &str) -> Option<&Network>;
    /// The file of a network that has errors and is named `name` or uses `bridge`, if any.
    fn broken(&self, _bridge: Option<&str>, _name: Option<&str>) -> Option<&std::path::Path> {
        None
    }
}

const NIC_MODES: [(&str, NicMode); 3] = [
    ("networkd", NicMode::Networkd),
    ("direct", NicMode::Direct),
    ("macvtap", NicMode::Macvtap),
];
const MACVTAP_MODES: [(&str, MacvtapMode); 4] = [
    ("bridge", MacvtapMode::Bridge),
    ("vepa", MacvtapMode::Vepa),
    ("private", MacvtapMode::Private),
    ("passthru", MacvtapMode::Passthru),
];

/// Parse and check one VM file. `path` is the path as shown in messages and in
/// `SourcePath=`; its stem is the VM name. Returns every error found in the file, in line
/// order.
pub fn parse_vm_toml(
    path: &Path,
    text: &str,
    nets: &dyn NetworkLookup,
) -> Result<VmConfig, Vec<ConfigError>> {
    let check = |n: &str| {
        check_workload_name(n).map_err(|m| format!("the file name gives the VM name, and {m}"))
    };
    reader::read(path, text, check, |src, name, t, e| {
        vm_from(src, name, t, e, nets)
    })
}

fn vm_from(
    src: &Src,
    name: String,
    t: &Table,
    e: &mut Errors,
    nets: &dyn NetworkLookup,
) -> VmConfig {
    let path = src.path;
    let mut spans = VmSpans::default();

    let uuid = match t.string(src, e, "uuid") {
        Some(u) => {
            spans.uuid = Some(src.at(u.span().start));
            match Uuid::parse_str(u.get_ref()) {
                Ok(id) if !id.is_nil() => id,
                _ => {
                    e.push(src.invalid(
                        "uuid",
                        u.span(),
                        format!(
                            "{:?} is not a UUID like \"6c1e9d40-5b0a-4f43-8f5e-0c9a3e2b7d11\" (nor may it be the nil UUID); leave it out for one derived from the name",
                            u.get_ref()
                        ),
                    ));
                    derive::vm_uuid(&name)
                }
            }
        }
        None => derive::vm_uuid(&name),
    };
    let vcpus = t
        .integer(src, e, "vcpus", 1..=MAX_VCPUS, "")
        .map_or(1, |v| *v.get_ref());
    let memory_mib = t
        .integer(
            src,
            e,
            "memory_mib",
            MIN_MEMORY_MIB..=MAX_MEMORY_MIB,
            " MiB",
        )
        .map_or(DEFAULT_MEMORY_MIB, |v| *v.get_ref());
    let kernel = match t.string(src, e, "kernel") {
        Some(k) => {
            spans.kernel = Some(src.at(k.span().start));
            unit_path(src, "kernel", &k, e)
        }
        None => {
            if !t.has("kernel") {
                e.push(src.whole("kernel", "missing: the VM needs a kernel (an absolute path to a vmlinux, bzImage or PVH ELF)".into()));
            }
            PathBuf::new()
        }
    };
    let initrd = t.string(src, e, "initrd").map(|i| {
        spans.initrd = Some(src.at(i.span().start));
        unit_path(src, "initrd", &i, e)
    });
    let cmdline_s = t.string(src, e, "cmdline");
    let autostart = t
        .boolean(src, e, "autostart")
        .is_some_and(Spanned::into_inner);
    let notify_ready = t
        .boolean(src, e, "notify_ready")
        .is_some_and(Spanned::into_inner);
    // `vsock = true`, or `[vsock]` with `cid = N`; notify_ready needs one (it carries the
    // guest's READY=1).
    let vsock_cid = if t.is_table("vsock") {
        t.table(src, e, "vsock").map(|v| {
            spans.vsock = Some(src.at(v.span().start));
            let cid = v.integer(src, e, "cid", MIN_CID..=MAX_CID, "");
            spans.cid_given = cid.is_some();
            let cid = cid.map_or_else(|| default_cid(&uuid), Spanned::into_inner);
            v.finish(src, e, &[]);
            cid
        })
    } else {
        let on = t.boolean(src, e, "vsock").map(|b| {
            spans.vsock = Some(src.at(b.span().start));
            if !*b.get_ref() && notify_ready {
                e.push(src.invalid(
                    "vsock",
                    b.span(),
                    "false, but notify_ready = true needs vsock (the guest's READY=1 comes over it): drop one of them".into(),
                ));
            }
            b.into_inner()
        });
        (on.unwrap_or(false) || notify_ready).then(|| default_cid(&uuid))
    };
    let nic_tables = t.tables(src, e, "network");
    let disk_tables = t.tables(src, e, "disk");
    let top = t.asked();
    t.finish(src, e, &[]);

    let limit = format!("a VM has at most {MAX_NICS} NICs");
    let mut nics: Vec<NicConfig> = Vec::new();
    let owner = nic::Owner {
        uuid: &uuid,
        key: format!("vm-{name}"),
        pool: Pool::Vm,
        nets,
    };
    for (index, nt) in reader::at_most(src, e, &nic_tables, "network", MAX_NICS, limit)
        .iter()
        .enumerate()
    {
        let (nic, nic_spans) = parse_nic(src, index, nt, &owner, e);
        nt.finish(src, e, &top);
        if let Some(prev) = nics.iter().find(|n| n.id == nic.id) {
            e.push(ConfigError::Invalid {
                at: nic_spans.at.clone().unwrap_or_else(|| Location::file(path)),
                field: format!("network[{index}].id"),
                message: format!("{:?} is already the id of network[{}]", nic.id, prev.index),
            });
        }
        nics.push(nic);
        spans.nics.push(nic_spans);
    }
    let limit = format!("a VM has at most {MAX_DISKS} disks");
    let disks: Vec<DiskConfig> = reader::at_most(src, e, &disk_tables, "disk", MAX_DISKS, limit)
        .iter()
        .enumerate()
        .map(|(i, dt)| {
            let d = disk::parse_disk(src, i, dt, e);
            dt.finish(src, e, &top);
            d
        })
        .collect();
    disk::check_disks(src, &disks, e);
    // Within one file too, two NICs on one bridge with the same MAC would collide.
    for i in 0..nics.len() {
        if let Some(j) = (0..i).find(|j| nics[*j].mac == nics[i].mac) {
            let at = spans.nics[i]
                .mac
                .clone()
                .or_else(|| spans.nics[i].at.clone())
                .unwrap_or_else(|| Location::file(path));
            e.push(ConfigError::Invalid {
                at,
                field: format!("network[{i}].mac"),
                message: format!("{} is already the MAC of network[{j}]", nics[i].mac),
            });
        }
    }

    let devices = nics.len() + disks.len() + usize::from(vsock_cid.is_some());
    if devices > MAX_DEVICES {
        e.push(ConfigError::Invalid {
            at: Location::file(path),
            field: "disk".into(),
            message: format!(
                "{} NIC(s), {} disk(s){}: {devices} virtio devices, and a VM has at most {MAX_DEVICES} (one interrupt line each)",
                nics.len(),
                disks.len(),
                if vsock_cid.is_some() { " and vsock" } else { "" }
            ),
        });
    }
    let cmdline = cmdline_s.map(|c| {
        // Room for what Volt appends: one entry per virtio device and per addressed NIC.
        let reserve = CMDLINE_PER_DEVICE * (2 * nics.len() + disks.len() + 4);
        if c.get_ref().len() + reserve > MAX_CMDLINE {
            e.push(src.invalid(
                "cmdline",
                c.span(),
                format!(
                    "{} bytes: with the {reserve} bytes Volt appends (virtio_mmio.device=, ip=) it passes the kernel's {MAX_CMDLINE}-byte limit",
                    c.get_ref().len()
                ),
            ));
        }
        c.into_inner()
    });
    let cmdline = cmdline.unwrap_or_default();
    VmConfig {
        name,
        path: path.to_path_buf(),
        uuid,
        vcpus,
        memory_mib,
        kernel,
        initrd,
        cmdline,
        autostart,
        nics,
        disks,
        vsock_cid,
        notify_ready,
        boot_link_hops: Vec::new(),
        spans,
    }
}

fn parse_nic(
    src: &Src,
    index: usize,
    t: &Table,
    owner: &nic::Owner,
    e: &mut Errors,
) -> (NicConfig, NicSpans) {
    let mode = t.choice(src, e, "mode", &NIC_MODES).unwrap_or_default();
    let link = match mode {
        NicMode::Macvtap => {
            let short = derive::short_id(owner.uuid);
            if index == 0 {
                format!("mvt-{short}")
            } else {
                format!("mvt-{short}-{index}")
            }
        }
        _ => derive::tap_name(owner.uuid, index),
    };

    // Which network addresses this NIC, and which bridge its link joins.
    let macvtap = mode == NicMode::Macvtap;
    let c = nic::common(src, t, index, owner, !macvtap, e);
    let network = c.network;
    let parent_s = t.string(src, e, "parent");
    let macvtap_mode = t.choice(src, e, "macvtap_mode", &MACVTAP_MODES);
    let mut parent = None;
    if macvtap {
        if let Some(b) = t.string(src, e, "bridge") {
            e.push(src.invalid(
                &t.field("bridge"),
                b.span(),
                "a macvtap NIC sits on its parent interface, not on a bridge".into(),
            ));
        }
        match &parent_s {
            Some(p) => match check_link_name(p.get_ref()) {
                Ok(()) => parent = Some(p.get_ref().clone()),
                Err(m) => e.push(src.invalid(&t.field("parent"), p.span(), m)),
            },
            None => e.push(src.invalid(
                &t.field("parent"),
                t.span(),
                "a macvtap NIC needs the parent interface it sits on".into(),
            )),
        }
    } else {
        if let Some(p) = &parent_s {
            e.push(src.invalid(
                &t.field("parent"),
                p.span(),
                "only macvtap NICs have a parent interface".into(),
            ));
        }
        if macvtap_mode.is_some() {
            e.push(src.invalid(
                &t.field("macvtap_mode"),
                t.span(),
                "only macvtap NICs have a macvtap_mode".into(),
            ));
        }
    }
    let bridge = (!macvtap)
        .then(|| network.map(|n| n.bridge.clone()))
        .flatten();
    let mtu_s = t.integer(src, e, "mtu", 68..=9000, "");
    let mtu_at = mtu_s.as_ref().map(|m| src.at(m.span().start));
    let mtu = mtu_s.map_or_else(|| network.map_or(1500, |n| n.mtu), Spanned::into_inner);
    let queues = t
        .integer(src, e, "multiqueue", 1..=MAX_QUEUE_PAIRS, " queue pairs")
        .map_or(1, Spanned::into_inner);
    let vhost = t.boolean(src, e, "vhost").is_none_or(Spanned::into_inner);
    let gateway = network
        .filter(|n| n.kind != NetworkType::Isolated)
        .map(|n| n.gateway);

    let nic = NicConfig {
        id: c.id,
        index,
        mode,
        network: network.map(|n| n.name.clone()),
        bridge,
        parent,
        macvtap_mode: macvtap.then(|| macvtap_mode.unwrap_or_default()),
        mac: c.mac,
        mac_explicit: c.mac_explicit,
        ipv4: c.ipv4,
        gateway,
        mtu,
        vhost,
        queues,
        link,
    };
    let mut spans = c.spans;
    spans.mtu = mtu_at;
    (nic, spans)
}

#[cfg(test)]
#[path = "vm_tests.rs"]
mod tests;
