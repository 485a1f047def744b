//! Volt's configuration: VM files, network definitions and Voltainer zones, parsed once and
//! validated with errors that name file, line, column and field.
//!
//! Pure: reads files under a root directory and nothing else.

mod cluster;
mod container;
mod derive;
mod disk;
mod endpoint;
pub use endpoint::{BadEndpoint, Endpoint};
mod error;
#[cfg(test)]
pub(crate) mod fixtures;
mod network;
mod nic;
mod reader;
mod span;
mod validate;
pub use validate::collisions_with_installed;
mod vm;
mod zone;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use cluster::{
    apply_to_networks, check_files as check_cluster_files, default_host_name, parse_cluster_toml,
    ClusterConfig, ClusterNetwork, EtcdConfig, CLUSTER_FILE, VXLAN_OVERHEAD,
};
pub use container::{
    parse_container_toml, ContainerConfig, ContainerNic, RootKind, Volatile, MAX_CONTAINER_NICS,
};
pub use derive::{
    altname, check_link_name, check_workload_name, nic_mac, short_id, tap_name, veth_names,
    vm_uuid, workload_of, MacAddr, IFNAMSIZ_MAX, RESERVED_LINK_PREFIXES, VOLT_NAMESPACE,
};
pub use disk::{DiskCache, DiskConfig};
pub use error::{ConfigError, Location};
pub use network::{
    parse_network_toml, Network, NetworkType, PortMap, Proto, Range, BROADCAST_LIMITS,
    DEFAULT_BROADCAST_LIMIT, DEFAULT_NETWORK, DEFAULT_ZONE,
};
/// The limits a VM file's values must respect.
pub mod vm_limits {
    pub use super::vm::{
        default_cid, DEFAULT_MEMORY_MIB, MAX_CMDLINE, MAX_DEVICES, MAX_MEMORY_MIB, MAX_NICS,
        MAX_VCPUS, MIN_MEMORY_MIB,
    };
}
pub use vm::{parse_vm_toml, MacvtapMode, NetworkLookup, NicConfig, NicMode, VmConfig};
pub use zone::parse_zone_yaml;

/// Where Volt's files live, relative to the root.
pub const VMS_DIR: &str = "etc/volt/vms";
pub const CONTAINERS_DIR: &str = "etc/volt/containers";
pub const NETWORKS_DIR: &str = "etc/volt/networks";
pub const ZONES_DIR: &str = "etc/voltainer/network";

/// Environment variable naming the root for tests and `volt generate` (default `/`).
pub const ROOT_ENV: &str = "VOLT_ROOT";
/// The generator's record of the units it made last time, keyed `vm/<name>` and
/// `container/<name>`: the workloads that keep their addresses and names when a new file
/// collides with them (read only on a collision).
pub const GENERATOR_RECORD: &str = "run/volt/generator/kept.json";
/// The keys of the generator's last record, kept across reboots: where the incumbents are
/// read from when [`GENERATOR_RECORD`] is gone (the first run after boot), so a workload that
/// ran before a reboot keeps its claims against a file added beside it.
pub const CLAIMS_RECORD: &str = "var/lib/volt/generator/claims.json";

/// The root to read from: `$VOLT_ROOT` or `/`.
pub fn root_from_env() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The workload name a file gives: its stem.
pub fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every network known: user networks, zones, and the built-in `volt0` unless a user
/// definition takes its bridge.
#[derive(Debug, Clone, Default)]
pub struct Networks {
    pub list: Vec<Network>,
    /// Network files that exist but have errors: a NIC that names one is told to fix it,
    /// not that no such network exists.
    pub broken: Vec<BrokenNetwork>,
}

/// A network file with errors: its name, the bridge it names when that much can be read.
#[derive(Debug, Clone, Default)]
pub struct BrokenNetwork {
    pub name: String,
    pub bridge: Option<String>,
    pub path: PathBuf,
}

impl Networks {
    /// These networks, none broken.
    pub fn new(list: Vec<Network>) -> Networks {
        Networks {
            list,
            broken: Vec::new(),
        }
    }
}

impl NetworkLookup for Networks {
    fn by_name(&self, name: &str) -> Option<&Network> {
        self.list.iter().find(|n| n.name == name).or_else(|| {
            // `zone = "default"` means the default network when no zone file names it.
            (name == DEFAULT_ZONE)
                .then(|| self.by_bridge(DEFAULT_NETWORK))
                .flatten()
        })
    }

    fn by_bridge(&self, bridge: &str) -> Option<&Network> {
        self.list.iter().find(|n| n.bridge == bridge)
    }

    fn broken(&self, bridge: Option<&str>, name: Option<&str>) -> Option<&Path> {
        self.broken
            .iter()
            .find(|b| {
                name.is_some_and(|n| n == b.name)
                    || bridge.is_some_and(|x| b.bridge.as_deref() == Some(x))
            })
            .map(|b| b.path.as_path())
    }
}

/// Everything under a root, parsed and checked. Files with errors are left out of `vms`
/// and `networks`; their errors are in `errors`, in file order.
#[derive(Debug, Default)]
pub struct ConfigSet {
    pub networks: Networks,
    pub vms: Vec<VmConfig>,
    pub containers: Vec<ContainerConfig>,
    /// `/etc/volt/cluster.toml` when it exists and is valid (absent: one host).
    pub cluster: Option<ClusterConfig>,
    /// `cluster.toml` exists but cannot be read or is invalid (its errors are in `errors`).
    /// This host is meant to be in a cluster, so what needs the cluster fails closed: a VM
    /// does not start without its name claim.
    pub cluster_broken: bool,
    pub errors: Vec<ConfigError>,
    /// Files in the config directories that are not read (a wrong suffix, a directory).
    pub warnings: Vec<String>,
}

/// The `*.<ext>` files of `root/rel`, sorted by name, as (path shown to users, path read).
/// Hidden files and editor leftovers are skipped. A missing directory is empty.
fn list_dir(
    root: &Path,
    rel: &str,
    exts: &[&str],
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Vec<(PathBuf, PathBuf)> {
    let dir = root.join(rel);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(source) => {
            errors.push(ConfigError::ReadDir {
                path: Path::new("/").join(rel),
                source,
            });
            return Vec::new();
        }
    };
    let wanted = |n: &str| {
        exts.iter().any(|x| {
            n.strip_suffix(x)
                .is_some_and(|stem| stem.ends_with('.') && stem.len() > 1)
        })
    };
    let mut files: Vec<String> = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        // Hidden files and editor leftovers (`.web.toml.swp`, `web.toml~`) say nothing.
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let shown = Path::new("/").join(rel).join(&name);
        if e.file_name().to_str().is_none() {
            // Read by its lossy name it would be "not found"; a workload's name is UTF-8.
            warnings.push(format!(
                "{} is not read: its name is not UTF-8",
                shown.display()
            ));
            continue;
        }
        // A symlink counts as what it points to (a link to a directory is a directory).
        let is_file = match e.file_type() {
            Ok(t) if t.is_symlink() => std::fs::metadata(e.path()).map_or(true, |m| m.is_file()),
            Ok(t) => t.is_file(),
            Err(_) => false,
        };
        match (wanted(&name), is_file) {
            (true, true) => files.push(name),
            (true, false) => warnings.push(format!(
                "{} is not a regular file; skipped",
                shown.display()
            )),
            (false, _) => warnings.push(format!(
                "{} is not read: only files ending in .{} are",
                shown.display(),
                exts.join(" or .")
            )),
        }
    }
    files.sort();
    // A file's path goes into generated files (`SourcePath=`, `# Source:` lines): a control
    // character (newline, CR, ...) would end the line there and inject the rest.
    files.retain(|n| {
        let bad = n.chars().find(|c| c.is_control());
        if let Some(c) = bad {
            errors.push(ConfigError::Invalid {
                at: Location::file(&Path::new("/").join(rel).join(n.escape_debug().to_string())),
                field: "file name".into(),
                message: format!(
                    "the file name {n:?} contains the control character {c:?}; rename the file"
                ),
            });
        }
        bad.is_none()
    });
    files
        .into_iter()
        .map(|n| (Path::new("/").join(rel).join(&n), dir.join(&n)))
        .collect()
}

/// Read a config file as UTF-8 text; bytes that are not UTF-8 are an error at their line and
/// column.
/// Largest config file read (a VM file is a few hundred bytes; a generator reading a runaway
/// file would hold up the boot).
const MAX_FILE: u64 = 1 << 20;

pub(crate) fn read(shown: &Path, real: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: shown.to_path_buf(),
        source,
    };
    // Read into room for a typical file, through `take` so that nothing stats the file for
    // its size first (std::fs::read and File's read_to_end do): two syscalls per file less
    // when the generator reads a thousand of them.
    let file = std::fs::File::open(real).map_err(read_err)?;
    let mut bytes = Vec::with_capacity(4096);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE + 1), &mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(ConfigError::Invalid {
            at: Location::file(shown),
            field: "file".into(),
            message: format!("larger than {} KiB: not a Volt config file", MAX_FILE >> 10),
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let good = e.utf8_error().valid_up_to();
        let before = String::from_utf8_lossy(&bytes[..good]);
        ConfigError::Syntax {
            at: Location::at_offset(shown, &before, before.len()),
            message: format!(
                "byte 0x{:02x} is not UTF-8 (Volt's files are UTF-8 text)",
                bytes[good]
            ),
        }
    })
}

impl ConfigSet {
    /// Only the networks (with zones) and the cluster file: no workload file is read. What a
    /// workload's cluster name claim and release need, on every start and stop.
    pub fn load_cluster(root: &Path) -> ConfigSet {
        let mut set = ConfigSet::default();
        let mut errors = Vec::new();
        let mut warnings = reader::near_misses(root);
        set.networks = Self::load_networks(root, &mut errors, &mut warnings);
        let before = errors.len();
        set.cluster = load_cluster(root, &mut set.networks, &mut errors);
        set.cluster_broken = set.cluster.is_none() && errors.len() > before;
        set.errors = errors;
        set.warnings = warnings;
        set
    }

    /// Read and check every network, zone and VM file under `root`.
    pub fn load(root: &Path) -> ConfigSet {
        let mut set = Self::load_cluster(root);
        let mut errors = std::mem::take(&mut set.errors);
        let mut warnings = std::mem::take(&mut set.warnings);
        let mut vms = Vec::new();
        for (shown, real) in list_dir(root, VMS_DIR, &["toml"], &mut errors, &mut warnings) {
            match read(&shown, &real) {
                Ok(text) => match parse_vm_toml(&shown, &text, &set.networks) {
                    Ok(vm) => vms.push(vm),
                    Err(errs) => errors.extend(errs),
                },
                Err(e) => errors.push(e),
            }
        }
        let mut containers = Vec::new();
        for (shown, real) in list_dir(root, CONTAINERS_DIR, &["toml"], &mut errors, &mut warnings) {
            match read(&shown, &real) {
                Ok(text) => match parse_container_toml(&shown, &text, &set.networks) {
                    Ok(c) => containers.push(c),
                    Err(errs) => errors.extend(errs),
                },
                Err(e) => errors.push(e),
            }
        }
        disk::identify(&mut vms, root);
        container::identify(&mut containers, root);
        let (mut vms, containers, cross) =
            validate::check_across(vms, containers, || validate::incumbents(root));
        errors.extend(cross);
        let maps = validate::check_port_maps(&set.networks, &vms, &containers, &errors);
        errors.extend(maps);
        if let Some(c) = &set.cluster {
            vms.retain(|vm| match check_vm_mtu(c, vm) {
                Some(e) => {
                    errors.push(e);
                    false
                }
                None => true,
            });
        }
        set.vms = vms;
        set.containers = containers;
        set.errors = errors;
        set.warnings = warnings;
        set
    }

    fn load_networks(
        root: &Path,
        errors: &mut Vec<ConfigError>,
        warnings: &mut Vec<String>,
    ) -> Networks {
        let mut list: Vec<Network> = Vec::new();
        let mut candidates = Vec::new();
        let mut broken = Vec::new();
        for (shown, real) in list_dir(root, NETWORKS_DIR, &["toml"], errors, warnings) {
            match read(&shown, &real) {
                Ok(t) => match parse_network_toml(&shown, &t) {
                    Ok(n) => candidates.push(n),
                    Err(errs) => {
                        errors.extend(errs);
                        // What it would be, if it can be told: for the NICs that use it. A
                        // file that is not even TOML is read line by line; one that names no
                        // bridge would take its own name.
                        let bridge = match toml::from_str::<toml::Table>(&t) {
                            Ok(v) => v.get("bridge").and_then(|b| b.as_str()).map(str::to_owned),
                            Err(_) => reader::line_value(&t, "bridge", '='),
                        }
                        .or_else(|| Some(file_stem(&shown)));
                        broken.push(BrokenNetwork {
                            name: file_stem(&shown),
                            bridge,
                            path: shown,
                        });
                    }
                },
                Err(e) => errors.push(e),
            }
        }
        // The zone directory is Voltainer's: other files there are not Volt's business.
        for (shown, real) in list_dir(root, ZONES_DIR, &["yaml", "yml"], errors, &mut Vec::new()) {
            let text = match read(&shown, &real) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match parse_zone_yaml(&shown, &text) {
                Ok(Some(n)) => candidates.push(n),
                Ok(None) => {}
                Err(e) => {
                    errors.push(e);
                    // For the NICs that name it: its name and bridge, as far as its lines
                    // tell (a zone without a bridge takes its name).
                    let name =
                        reader::line_value(&text, "name", ':').unwrap_or_else(|| file_stem(&shown));
                    broken.push(BrokenNetwork {
                        bridge: reader::line_value(&text, "bridge", ':')
                            .or_else(|| Some(name.clone())),
                        name,
                        path: shown,
                    });
                }
            }
        }
        // The built-in volt0 stays unless a file redefines it (its name or its bridge).
        let redefined = candidates
            .iter()
            .any(|n| n.name == DEFAULT_NETWORK || n.bridge == DEFAULT_NETWORK);
        if !redefined {
            list.push(Network::builtin_default());
        }
        let overlap = |a: &ipnet::Ipv4Net, b: &ipnet::Ipv4Net| {
            a.contains(&b.network()) || b.contains(&a.network())
        };
        for n in candidates {
            let clash = list.iter().find(|o| {
                o.name == n.name || o.bridge == n.bridge || overlap(&o.subnet, &n.subnet)
            });
            if let Some(o) = clash {
                let (field, what, at, theirs) = if o.name == n.name {
                    (
                        "name",
                        format!("the name {:?}", n.name),
                        &n.at.name,
                        &o.at.name,
                    )
                } else if o.bridge == n.bridge {
                    (
                        "bridge",
                        format!("bridge {:?}", n.bridge),
                        &n.at.bridge,
                        &o.at.bridge,
                    )
                } else {
                    (
                        "subnet",
                        format!("subnet {} overlaps {}", n.subnet, o.subnet),
                        &n.at.subnet,
                        &o.at.subnet,
                    )
                };
                let message = match &o.source {
                    Some(p) => format!(
                        "{what}: already defined by {}",
                        theirs.clone().unwrap_or_else(|| Location::file(p))
                    ),
                    None => format!(
                        "{what}: that is the built-in network {DEFAULT_NETWORK}; use another, or redefine {DEFAULT_NETWORK} with bridge = \"{DEFAULT_NETWORK}\""
                    ),
                };
                let file = || Location::file(n.source.as_deref().unwrap_or(Path::new("?")));
                errors.push(ConfigError::Invalid {
                    at: at.clone().unwrap_or_else(file),
                    field: field.into(),
                    message,
                });
                continue;
            }
            list.push(n);
        }
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Networks { list, broken }
    }

    /// The VM named `name`, or the errors that keep it from being valid.
    pub fn vm(&self, name: &str) -> Result<&VmConfig, Vec<&ConfigError>> {
        if let Some(vm) = self.vms.iter().find(|v| v.name == name) {
            return Ok(vm);
        }
        let file = Path::new("/").join(VMS_DIR).join(format!("{name}.toml"));
        Err(self.errors.iter().filter(|e| e.file() == file).collect())
    }

    /// The container named `name`, or the errors that keep it from being valid.
    pub fn container(&self, name: &str) -> Result<&ContainerConfig, Vec<&ConfigError>> {
        if let Some(c) = self.containers.iter().find(|c| c.name == name) {
            return Ok(c);
        }
        let file = Path::new("/")
            .join(CONTAINERS_DIR)
            .join(format!("{name}.toml"));
        Err(self.errors.iter().filter(|e| e.file() == file).collect())
    }

    /// Files that had errors (VMs, containers, networks), by file.
    pub fn errors_by_file(&self) -> BTreeMap<&Path, Vec<&ConfigError>> {
        let mut m: BTreeMap<&Path, Vec<&ConfigError>> = BTreeMap::new();
        for e in &self.errors {
            m.entry(e.file()).or_default().push(e);
        }
        m
    }
}

/// `cluster.toml` under `root`, checked against `networks` (whose MTUs it derives), or
/// `None` when absent or invalid (its errors go to `errors`).
fn load_cluster(
    root: &Path,
    networks: &mut Networks,
    errors: &mut Vec<ConfigError>,
) -> Option<ClusterConfig> {
    let real = root.join(CLUSTER_FILE);
    let shown = Path::new("/").join(CLUSTER_FILE);
    // Absent: no cluster. A symlink to nothing is meant to be there: it fails closed.
    if real
        .symlink_metadata()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    {
        return None;
    }
    if let (Ok(target), false) = (std::fs::read_link(&real), real.exists()) {
        errors.push(ConfigError::Invalid {
            at: Location::file(&shown),
            field: "file".into(),
            message: format!(
                "a symlink to {}, which does not exist: this host is meant to be in a cluster, so nothing is claimed until it is fixed",
                target.display()
            ),
        });
        return None;
    }
    // Read as every config file is (size limit, UTF-8 errors at their line and column).
    let text = match read(&shown, &real) {
        Ok(t) => t,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    match parse_cluster_toml(&shown, &text, &default_host_name(root), &networks.list) {
        Ok(c) => {
            errors.extend(apply_to_networks(&c, &mut networks.list));
            Some(c)
        }
        Err(e) => {
            errors.extend(e);
            None
        }
    }
}

/// A VM NIC on a clustered network whose MTU is larger than the overlay's.
fn check_vm_mtu(c: &ClusterConfig, vm: &VmConfig) -> Option<ConfigError> {
    vm.nics.iter().enumerate().find_map(|(i, n)| {
        let clustered = n.network.as_deref().is_some_and(|x| c.network(x).is_some());
        (clustered && n.mtu > c.overlay_mtu()).then(|| ConfigError::Invalid {
            at: vm
                .spans
                .nics
                .get(i)
                .and_then(|s| s.mtu.clone().or_else(|| s.at.clone()))
                .unwrap_or_else(|| Location::file(&vm.path)),
            field: format!("network[{i}].mtu"),
            message: format!(
                "{} is larger than the cluster overlay's MTU {} (underlay_mtu = {} in {}, minus {VXLAN_OVERHEAD} bytes of VXLAN): set it to at most {} or leave it out",
                n.mtu,
                c.overlay_mtu(),
                c.underlay_mtu,
                c.path.display(),
                c.overlay_mtu()
            ),
        })
    })
}

/// Load the VM file `path` for the VMM. A file in `<root>/etc/volt/vms/` is checked together
/// with every other VM file (so a VM the generator skipped does not start either); a file
/// elsewhere (development) is checked on its own against the root's networks.
pub fn load_vm_file(root: &Path, path: &Path) -> Result<VmConfig, Vec<ConfigError>> {
    let vms_dir = root.join(VMS_DIR);
    let in_root = path.parent().is_some_and(|p| {
        p == vms_dir || p == Path::new("/").join(VMS_DIR) && root == Path::new("/")
    });
    if in_root && path.extension().is_some_and(|e| e == "toml") {
        let set = ConfigSet::load(root);
        let name = file_stem(path);
        return match set.vm(&name) {
            Ok(vm) => Ok(vm.clone()),
            Err(errs) if errs.is_empty() => Err(vec![ConfigError::Read {
                path: path.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }]),
            Err(_) => {
                let file = Path::new("/").join(VMS_DIR).join(format!("{name}.toml"));
                Err(set
                    .errors
                    .into_iter()
                    .filter(|e| e.file() == file)
                    .collect())
            }
        };
    }
    let mut errors = Vec::new();
    let networks = ConfigSet::load_networks(root, &mut errors, &mut Vec::new());
    let text = read(path, path).map_err(|e| vec![e])?;
    parse_vm_toml(path, &text, &networks)
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod load_tests;
