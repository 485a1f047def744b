//! Container ("Voltainer") files: `/etc/volt/containers/<name>.toml`, one systemd-nspawn
//! container per file, name = file stem.
//!
//! ```toml
//! directory = "/var/lib/volt/containers/db"   # or image = "<a directory tree>"
//! command = ["/bin/sh", "-c", "exec httpd -f"] # or boot = true (its own init)
//! autostart = false
//! [[network]]
//! id = "eth0"
//! bridge = "volt0"          # or zone = "default"
//! ipv4 = "10.42.0.150/24"   # omitted: DHCP from networkd's DHCPServer on the bridge
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;
use toml::Spanned;
use uuid::Uuid;

use super::derive::{self, check_workload_name, MacAddr};
use super::error::{ConfigError, Location};
use super::network::NetworkType;
use super::nic::{self, abs_path, NicSpans, Pool};
use super::reader::{self, Errors, Table};
use super::span::Src;
use super::vm::NetworkLookup;

/// A container has one veth pair (its link names leave no room for a NIC number).
pub const MAX_CONTAINER_NICS: usize = 1;

/// nspawn's `--volatile=` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Volatile {
    /// The tree is used as it is, writable.
    #[default]
    No,
    /// Only `/usr` of the tree, everything else a fresh tmpfs.
    Yes,
    /// The tree read-only, `/var` a fresh tmpfs.
    State,
    /// The tree read-only under a tmpfs overlay: writes are lost at stop.
    Overlay,
}

impl Volatile {
    /// Whether nspawn runs a container on the host's own `/` with it: `yes` and `state` give
    /// the container a `/var` of its own (a tmpfs), so the host's is not shared.
    pub fn allows_host_root(self) -> bool {
        matches!(self, Volatile::Yes | Volatile::State)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Volatile::No => "no",
            Volatile::Yes => "yes",
            Volatile::State => "state",
            Volatile::Overlay => "overlay",
        }
    }
}

/// Where the container's root file system came from in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKind {
    /// `directory =`: a root file system the container owns (writable).
    Directory,
    /// `image =`: for now a directory tree too, used read-only under a volatile overlay
    /// unless `volatile` says otherwise.
    Image,
}

/// A validated container NIC: one veth pair, the host end on the network's bridge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerNic {
    pub id: String,
    pub index: usize,
    pub network: Option<String>,
    /// The bridge the host end joins.
    pub bridge: Option<String>,
    /// On an isolated network: the host end lives alone in the container's own namespace.
    pub isolated: bool,
    /// The MAC of the container end (the container's address on the wire).
    pub mac: MacAddr,
    pub mac_explicit: bool,
    /// Static address (configured inside the container at start); `None`: DHCP.
    pub ipv4: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    /// Whether the address comes from the network's DHCP server.
    pub dhcp: bool,
    /// `veth-<id>-h`, on the bridge.
    pub host_link: String,
    /// `veth-<id>-c`, handed to nspawn with `--network-interface=`; the interface's name
    /// inside the container.
    pub container_link: String,
}

/// A validated container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerConfig {
    pub name: String,
    /// The file as systemd sees it (`/etc/volt/containers/<name>.toml`).
    pub path: PathBuf,
    /// UUID v5 of the name in Volt's namespace (link names and MACs derive from it).
    pub uuid: Uuid,
    /// The root file system (a directory tree).
    pub root: PathBuf,
    pub root_kind: RootKind,
    /// Boot mode: run the tree's own init (`-b`).
    pub boot: bool,
    /// Single-command mode: this command as PID 2 under nspawn's stub init (`--as-pid2`).
    pub command: Vec<String>,
    /// Boot mode: arguments for the container's init (e.g. `systemd.unit=...`).
    pub init_args: Vec<String>,
    pub volatile: Volatile,
    pub autostart: bool,
    pub nics: Vec<ContainerNic>,
    #[serde(skip)]
    pub(crate) spans: ContainerSpans,
    /// The tree itself, when it can be looked at (device and inode): two paths to one tree
    /// are one tree. See [`identify`].
    #[serde(skip)]
    pub(crate) tree_identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ContainerSpans {
    pub root: Option<Location>,
    pub nics: Vec<NicSpans>,
}

impl ContainerConfig {
    /// Check that the root file system is a directory with a `/usr` (nspawn needs one) under
    /// `root`. Not part of parsing: the generator runs before every file system is mounted.
    pub fn check_root(&self, root: &Path) -> Vec<ConfigError> {
        let field = match self.root_kind {
            RootKind::Directory => "directory",
            RootKind::Image => "image",
        };
        let real = root.join(self.root.strip_prefix("/").unwrap_or(&self.root));
        let is_host_root = real
            .canonicalize()
            .ok()
            .zip(root.canonicalize().ok())
            .is_some_and(|(r, h)| r == h);
        // Present, a link included (nspawn resolves one inside the tree).
        let os_release = ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .any(|f| std::fs::symlink_metadata(real.join(f)).is_ok());
        let at = self
            .spans
            .root
            .clone()
            .unwrap_or_else(|| Location::file(&self.path));
        let problem = match std::fs::metadata(&real) {
            _ if is_host_root && !self.volatile.allows_host_root() => {
                format!("is {HOST_ROOT}")
            }
            Ok(m) if m.is_dir() => {
                if !real.join("usr").is_dir() {
                    "has no /usr directory (systemd-nspawn needs one)".to_string()
                } else if self.boot && !os_release {
                    "has no /etc/os-release or /usr/lib/os-release, which systemd-nspawn needs to boot it (boot = true)".to_string()
                } else {
                    return Vec::new();
                }
            }
            Ok(_) if self.root_kind == RootKind::Image => {
                "is not a directory (disk images are not supported yet: give an unpacked tree)"
                    .to_string()
            }
            Ok(_) => "is not a directory".to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
            Err(source) => {
                return vec![ConfigError::Unreadable {
                    at,
                    field: field.into(),
                    path: self.root.clone(),
                    checked: None,
                    source,
                }]
            }
        };
        vec![ConfigError::Invalid {
            at,
            field: field.into(),
            message: format!("{} {problem}", self.root.display()),
        }]
    }
}

/// A container name is also its nspawn machine name and host name: a valid workload name
/// without `_`, not ending in `.`, without `..`.
fn check_container_name(name: &str) -> Result<(), String> {
    // systemd's hostname rules, which nspawn's --machine= applies: letters, digits and '-'
    // in labels between single dots, none starting or ending with '-'.
    let bad_label = name.split('.').any(|l| {
        l.is_empty()
            || l.starts_with('-')
            || l.ends_with('-')
            || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !name.is_empty() && bad_label {
        return Err(format!(
            "{name:?} is not a valid machine (host) name: use letters, digits and '-' in labels between single dots, no label starting or ending with '-' (and no '_')"
        ));
    }
    check_workload_name(name)
}

/// Why the host's own `/` is refused as a container's root (nspawn's own rule).
const HOST_ROOT: &str = "the host's own root file system: only with volatile = \"yes\" or \"state\" (the container then gets a /var of its own), else give a tree of its own";

const VOLATILE: [(&str, Volatile); 4] = [
    ("no", Volatile::No),
    ("yes", Volatile::Yes),
    ("state", Volatile::State),
    ("overlay", Volatile::Overlay),
];

/// Parse and check one container file. `path` is the path as shown in messages and in
/// `SourcePath=`; its stem is the container name. Returns every error found in the file, in
/// line order.
pub fn parse_container_toml(
    path: &Path,
    text: &str,
    nets: &dyn NetworkLookup,
) -> Result<ContainerConfig, Vec<ConfigError>> {
    let check = |n: &str| {
        check_container_name(n)
            .map_err(|m| format!("the file name gives the container name, and {m}"))
    };
    reader::read(path, text, check, |src, name, t, e| {
        container_from(src, name, t, e, nets)
    })
}

fn container_from(
    src: &Src,
    name: String,
    t: &Table,
    e: &mut Errors,
    nets: &dyn NetworkLookup,
) -> ContainerConfig {
    let path = src.path;
    let mut spans = ContainerSpans::default();
    let uuid = derive::vm_uuid(&name);

    let directory = t.string(src, e, "directory");
    let image = t.string(src, e, "image");
    let (root, root_kind) = match (&directory, &image) {
        (Some(_), Some(i)) => {
            e.push(src.invalid(
                "image",
                i.span(),
                "give either directory or image, not both".into(),
            ));
            (PathBuf::new(), RootKind::Directory)
        }
        (Some(d), None) => {
            spans.root = Some(src.at(d.span().start));
            (abs_path(src, "directory", d, e), RootKind::Directory)
        }
        (None, Some(i)) => {
            spans.root = Some(src.at(i.span().start));
            (abs_path(src, "image", i, e), RootKind::Image)
        }
        (None, None) => {
            if !t.has("directory") && !t.has("image") {
                e.push(src.whole(
                    "directory",
                    "missing: the container needs a root file system (directory = \"/path\" or image = \"/path\")".into(),
                ));
            }
            (PathBuf::new(), RootKind::Directory)
        }
    };
    let volatile = t.choice(src, e, "volatile", &VOLATILE);
    let volatile = volatile.unwrap_or(match root_kind {
        RootKind::Directory => Volatile::No,
        RootKind::Image => Volatile::Overlay,
    });
    if let Some(s) = directory.as_ref().or(image.as_ref()) {
        let field = if directory.is_some() {
            "directory"
        } else {
            "image"
        };
        if root
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            e.push(src.invalid(
                field,
                s.span(),
                format!(
                    "{:?} holds '..': give the tree's own path (it could lead to the host's root)",
                    s.get_ref()
                ),
            ));
        } else if root == Path::new("/") && !volatile.allows_host_root() {
            e.push(src.invalid(field, s.span(), format!("\"/\" is {HOST_ROOT}")));
        }
    }
    if root_kind == RootKind::Image && volatile == Volatile::No {
        e.push(src.whole(
            "volatile",
            "an image is never written: use volatile = \"overlay\", \"state\" or \"yes\" (or directory = for a writable tree)".into(),
        ));
    }

    let boot = t.boolean(src, e, "boot").is_some_and(Spanned::into_inner);
    let command_s = t.strings(src, e, "command");
    let mut command = Vec::new();
    match (&command_s, boot) {
        (Some(c), true) => e.push(src.invalid(
            "command",
            c.span(),
            "give either boot = true or a command, not both".into(),
        )),
        (Some(c), false) => {
            if c.get_ref().first().is_none_or(|p| p.is_empty()) {
                e.push(src.invalid(
                    "command",
                    c.span(),
                    "the command must not be empty (its first element is the program)".into(),
                ));
            } else if c.get_ref().iter().any(|a| a.contains('\0')) {
                e.push(src.invalid(
                    "command",
                    c.span(),
                    "an argument contains a NUL byte".into(),
                ));
            }
            command = c.get_ref().clone();
        }
        (None, true) => {}
        (None, false) => {
            if !t.has("command") {
                e.push(src.whole(
                    "command",
                    "missing: give the command to run (command = [\"/bin/sh\", ...]) or boot = true to run the tree's init".into(),
                ));
            }
        }
    }

    let mut init_args = Vec::new();
    if let Some(i) = t.strings(src, e, "init_args") {
        if !boot {
            e.push(src.invalid(
                "init_args",
                i.span(),
                "init_args are for boot = true (a command takes its arguments in command)".into(),
            ));
        } else if i.get_ref().iter().any(|a| a.is_empty() || a.contains('\0')) {
            e.push(src.invalid(
                "init_args",
                i.span(),
                "an argument is empty or contains a NUL byte".into(),
            ));
        }
        init_args = i.into_inner();
    }
    let autostart = t
        .boolean(src, e, "autostart")
        .is_some_and(Spanned::into_inner);
    let nic_tables = t.tables(src, e, "network");
    let top = t.asked();
    t.finish(src, e, &[]);

    let limit =
        format!("a container has at most {MAX_CONTAINER_NICS} network entry (one veth pair)");
    let mut nics = Vec::new();
    let owner = nic::Owner {
        uuid: &uuid,
        key: format!("ct-{name}"),
        pool: Pool::Container,
        nets,
    };
    let nic_tables = reader::at_most(src, e, &nic_tables, "network", MAX_CONTAINER_NICS, limit);
    for (index, nt) in nic_tables.iter().enumerate() {
        let (nic, nic_spans) = parse_nic(src, index, nt, &name, &owner, e);
        nt.finish(src, e, &top);
        nics.push(nic);
        spans.nics.push(nic_spans);
    }
    // Its host end carries the container's name as an altname, among the interface names
    // (in the host's namespace unless the network is isolated).
    if nics.first().is_some_and(|n: &ContainerNic| !n.isolated) {
        if let Some(net) = nets.by_bridge(&name) {
            e.push(src.whole(
                "name",
                format!(
                    "the container's host link carries its name, {name}, and network {}'s bridge has that name: rename the file",
                    net.name
                ),
            ));
        }
    }

    ContainerConfig {
        name,
        path: path.to_path_buf(),
        uuid,
        root,
        root_kind,
        boot,
        command,
        init_args,
        volatile,
        autostart,
        nics,
        spans,
        tree_identity: None,
    }
}

fn parse_nic(
    src: &Src,
    index: usize,
    t: &Table,
    name: &str,
    owner: &nic::Owner,
    e: &mut Errors,
) -> (ContainerNic, NicSpans) {
    let (host_link, container_link) = derive::veth_names(name);
    let c = nic::common(src, t, index, owner, true, e);
    // What a VM's NIC has and a container's veth does not.
    t.refuse(
        src,
        e,
        "mtu",
        "a container's veth takes its network's MTU: set mtu in the network file",
    );
    for key in ["mode", "multiqueue", "vhost", "parent", "macvtap_mode"] {
        t.refuse(
            src,
            e,
            key,
            "only VM NICs have it: a container has one veth pair on a bridge",
        );
    }
    let (network, ipv4) = (c.network, c.ipv4);
    let isolated = network.is_some_and(|n| n.kind == NetworkType::Isolated);
    let mut dhcp = false;
    if ipv4.is_none() && !t.has("ipv4") {
        match network {
            Some(n) if n.offers_dhcp() => dhcp = true,
            Some(n) => e.push(src.invalid(
                &t.field("ipv4"),
                t.span(),
                format!(
                    "network {} has no DHCP server ({}): give a static ipv4 from its container range {}",
                    n.name,
                    if isolated { "isolated" } else { "dhcp = false" },
                    n.container_range
                ),
            )),
            None => {}
        }
    }
    let gateway = network.filter(|_| !isolated).map(|n| n.gateway);
    let nic = ContainerNic {
        id: c.id,
        index,
        network: network.map(|n| n.name.clone()),
        bridge: network.map(|n| n.bridge.clone()),
        isolated,
        mac: c.mac,
        mac_explicit: c.mac_explicit,
        ipv4,
        gateway,
        dhcp,
        host_link,
        container_link,
    };
    (nic, c.spans)
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;

/// Look at each container's tree under `root` (see [`ContainerConfig::tree_identity`]), as
/// nspawn's lock does: by device and inode.
pub(crate) fn identify(containers: &mut [ContainerConfig], root: &Path) {
    use std::os::unix::fs::MetadataExt;
    for c in containers {
        let real = root.join(c.root.strip_prefix("/").unwrap_or(&c.root));
        c.tree_identity = std::fs::metadata(real)
            .ok()
            .map(|m| format!("inode:{}:{}", m.dev(), m.ino()));
    }
}
