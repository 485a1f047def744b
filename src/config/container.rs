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
use serde::{Deserialize, Serialize};
use toml::Spanned;
use uuid::Uuid;

use super::derive::{self, check_workload_name, MacAddr};
use super::error::{ConfigError, Location};
use super::network::{Network, NetworkType, DEFAULT_NETWORK};
use super::span::Src;
use super::vm::{abs_path, parse_nic_ip, NetworkLookup, NicSpans, Pool};

/// A container has one veth pair (its link names leave no room for a NIC number).
pub const MAX_CONTAINER_NICS: usize = 1;

/// nspawn's `--volatile=` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
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
        let problem = match std::fs::metadata(&real) {
            Ok(m) if m.is_dir() => {
                if real.join("usr").is_dir() {
                    return Vec::new();
                }
                "has no /usr directory (systemd-nspawn needs one)".to_string()
            }
            Ok(_) if self.root_kind == RootKind::Image => {
                "is not a directory (disk images are not supported yet: give an unpacked tree)"
                    .to_string()
            }
            Ok(_) => "is not a directory".to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
            Err(e) => format!("cannot be read ({e})"),
        };
        vec![ConfigError::Invalid {
            at: self
                .spans
                .root
                .clone()
                .unwrap_or_else(|| Location::file(&self.path)),
            field: field.into(),
            message: format!("{} {problem}", self.root.display()),
        }]
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNic {
    id: Option<Spanned<String>>,
    bridge: Option<Spanned<String>>,
    zone: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
    ipv4: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    directory: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    boot: Option<Spanned<bool>>,
    command: Option<Spanned<Vec<String>>>,
    init_args: Option<Spanned<Vec<String>>>,
    volatile: Option<Volatile>,
    autostart: Option<bool>,
    #[serde(default)]
    network: Vec<Spanned<RawNic>>,
}

/// A container name is also its nspawn machine name and host name: a valid workload name
/// without `_`, not ending in `.`, without `..`.
fn check_container_name(name: &str) -> Result<(), String> {
    check_workload_name(name)?;
    if name.contains('_') || name.ends_with('.') || name.contains("..") {
        return Err(format!(
            "{name:?} is not a valid machine (host) name: use letters, digits, '-' and single inner '.'"
        ));
    }
    Ok(())
}

/// Parse and check one container file. `path` is the path as shown in messages and in
/// `SourcePath=`; its stem is the container name. Returns every error found in the file.
pub fn parse_container_toml(
    path: &Path,
    text: &str,
    nets: &dyn NetworkLookup,
) -> Result<ContainerConfig, Vec<ConfigError>> {
    let src = Src::new(path, text);
    let name = super::file_stem(path);
    if let Err(m) = check_container_name(&name) {
        return Err(vec![src.whole(
            "name",
            format!("the file name gives the container name, and {m}"),
        )]);
    }
    let raw: RawContainer = toml::from_str(text).map_err(|e| vec![src.toml_error(&e)])?;
    let mut errors = Vec::new();
    let mut spans = ContainerSpans::default();
    let uuid = derive::vm_uuid(&name);

    let (root, root_kind) = match (&raw.directory, &raw.image) {
        (Some(_), Some(i)) => {
            errors.push(src.invalid(
                "image",
                i.span(),
                "give either directory or image, not both".into(),
            ));
            (PathBuf::new(), RootKind::Directory)
        }
        (Some(d), None) => {
            spans.root = Some(src.at(d.span().start));
            (
                abs_path(&src, "directory", d, &mut errors),
                RootKind::Directory,
            )
        }
        (None, Some(i)) => {
            spans.root = Some(src.at(i.span().start));
            (abs_path(&src, "image", i, &mut errors), RootKind::Image)
        }
        (None, None) => {
            errors.push(src.whole(
                "directory",
                "missing: the container needs a root file system (directory = \"/path\" or image = \"/path\")".into(),
            ));
            (PathBuf::new(), RootKind::Directory)
        }
    };
    let volatile = raw.volatile.unwrap_or(match root_kind {
        RootKind::Directory => Volatile::No,
        RootKind::Image => Volatile::Overlay,
    });
    if root_kind == RootKind::Image && volatile == Volatile::No {
        errors.push(src.whole(
            "volatile",
            "an image is never written: use volatile = \"overlay\", \"state\" or \"yes\" (or directory = for a writable tree)".into(),
        ));
    }

    let boot = raw.boot.as_ref().is_some_and(|b| *b.get_ref());
    let mut command = Vec::new();
    match (&raw.command, boot) {
        (Some(c), true) => errors.push(src.invalid(
            "command",
            c.span(),
            "give either boot = true or a command, not both".into(),
        )),
        (Some(c), false) => {
            if c.get_ref().first().is_none_or(|p| p.is_empty()) {
                errors.push(src.invalid(
                    "command",
                    c.span(),
                    "the command must not be empty (its first element is the program)".into(),
                ));
            } else if c.get_ref().iter().any(|a| a.contains('\0')) {
                errors.push(src.invalid(
                    "command",
                    c.span(),
                    "an argument contains a NUL byte".into(),
                ));
            }
            command = c.get_ref().clone();
        }
        (None, true) => {}
        (None, false) => errors.push(src.whole(
            "command",
            "missing: give the command to run (command = [\"/bin/sh\", ...]) or boot = true to run the tree's init".into(),
        )),
    }

    let mut init_args = Vec::new();
    if let Some(i) = &raw.init_args {
        if !boot {
            errors.push(src.invalid(
                "init_args",
                i.span(),
                "init_args are for boot = true (a command takes its arguments in command)".into(),
            ));
        } else if i.get_ref().iter().any(|a| a.is_empty() || a.contains('\0')) {
            errors.push(src.invalid(
                "init_args",
                i.span(),
                "an argument is empty or contains a NUL byte".into(),
            ));
        }
        init_args = i.get_ref().clone();
    }

    if raw.network.len() > MAX_CONTAINER_NICS {
        let at = raw.network[MAX_CONTAINER_NICS].span();
        errors.push(src.invalid(
            "network",
            at,
            format!("a container has at most {MAX_CONTAINER_NICS} network entry (one veth pair)"),
        ));
    }
    let mut nics = Vec::new();
    for (index, raw_nic) in raw.network.iter().enumerate().take(MAX_CONTAINER_NICS) {
        let (nic, nic_spans) = parse_nic(&src, index, raw_nic, &uuid, &name, nets, &mut errors);
        nics.push(nic);
        spans.nics.push(nic_spans);
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ContainerConfig {
        name,
        path: path.to_path_buf(),
        uuid,
        root,
        root_kind,
        boot,
        command,
        init_args,
        volatile,
        autostart: raw.autostart.unwrap_or(false),
        nics,
        spans,
    })
}

fn parse_nic(
    src: &Src,
    index: usize,
    raw_nic: &Spanned<RawNic>,
    uuid: &Uuid,
    name: &str,
    nets: &dyn NetworkLookup,
    errors: &mut Vec<ConfigError>,
) -> (ContainerNic, NicSpans) {
    let raw = raw_nic.get_ref();
    let f = |field: &str| format!("network[{index}].{field}");
    let mut spans = NicSpans {
        at: Some(src.at(raw_nic.span().start)),
        ..NicSpans::default()
    };
    let id = super::nic::nic_id(src, index, raw.id.as_ref(), errors);
    let (host_link, container_link) = derive::veth_names(name);

    let mut network: Option<&Network> = None;
    match (&raw.bridge, &raw.zone) {
        (Some(_), Some(z)) => errors.push(src.invalid(
            &f("zone"),
            z.span(),
            "give either bridge or zone, not both".into(),
        )),
        (Some(b), None) => match nets.by_bridge(b.get_ref()) {
            Some(n) => network = Some(n),
            None => errors.push(src.invalid(
                &f("bridge"),
                b.span(),
                format!(
                    "no network uses bridge {:?} (define it in /etc/volt/networks/)",
                    b.get_ref()
                ),
            )),
        },
        (None, Some(z)) => match nets.by_name(z.get_ref()) {
            Some(n) => network = Some(n),
            None => errors.push(src.invalid(
                &f("zone"),
                z.span(),
                format!("no network or zone named {:?} is defined", z.get_ref()),
            )),
        },
        (None, None) => network = nets.by_bridge(DEFAULT_NETWORK),
    }

    let (mac, mac_explicit, mac_at) =
        super::nic::nic_mac(src, index, raw.mac.as_ref(), uuid, &id, errors);
    spans.mac = mac_at;

    let key = format!("ct-{name}");
    let reservation = network.and_then(|n| n.reservations.get(&key).copied());
    let mut ipv4 = None;
    match &raw.ipv4 {
        Some(s) => {
            spans.ipv4 = Some(src.at(s.span().start));
            match parse_nic_ip(src, &f("ipv4"), s, network, &key, Pool::Container) {
                Ok(Some(addr)) => {
                    if let (Some(r), Some(n)) = (reservation, network) {
                        if r != addr.addr() {
                            errors.push(src.invalid(
                                &f("ipv4"),
                                s.span(),
                                format!(
                                    "{} differs from the reservation {key} = {r} of {}",
                                    addr.addr(),
                                    n.name
                                ),
                            ));
                        }
                    }
                    ipv4 = Some(addr);
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        None => {
            if let (Some(r), Some(n)) = (reservation, network) {
                ipv4 = Ipv4Net::new(r, n.subnet.prefix_len()).ok();
            }
        }
    }
    let isolated = network.is_some_and(|n| n.kind == NetworkType::Isolated);
    let mut dhcp = false;
    if ipv4.is_none() {
        match network {
            Some(n) if n.dhcp && !isolated => dhcp = true,
            Some(n) => errors.push(src.invalid(
                &f("ipv4"),
                raw_nic.span(),
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
        id,
        index,
        network: network.map(|n| n.name.clone()),
        bridge: network.map(|n| n.bridge.clone()),
        isolated,
        mac,
        mac_explicit,
        ipv4,
        gateway,
        dhcp,
        host_link,
        container_link,
    };
    (nic, spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Networks;

    fn nets() -> Networks {
        let mut def = Network::builtin_default();
        def.reservations
            .insert("ct-db".into(), "10.42.0.150".parse().expect("ip"));
        def.reservations
            .insert("vm-web".into(), "10.42.0.10".parse().expect("ip"));
        let mut iso = Network::builtin_default();
        iso.name = "iso".into();
        iso.bridge = "iso0".into();
        iso.subnet = "10.60.0.0/24".parse().expect("net");
        iso.gateway = "10.60.0.1".parse().expect("ip");
        iso.kind = NetworkType::Isolated;
        iso.container_range = crate::config::Range {
            start: "10.60.0.100".parse().expect("ip"),
            end: "10.60.0.254".parse().expect("ip"),
        };
        Networks {
            list: vec![def, iso],
        }
    }

    fn parse(name: &str, text: &str) -> Result<ContainerConfig, Vec<ConfigError>> {
        parse_container_toml(
            &PathBuf::from(format!("/etc/volt/containers/{name}.toml")),
            text,
            &nets(),
        )
    }

    fn errs(name: &str, text: &str) -> Vec<String> {
        parse(name, text)
            .expect_err("should be invalid")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const DIR: &str = "directory = \"/var/lib/volt/containers/app\"\n";

    #[test]
    fn static_container_from_the_container_range() {
        let text = format!(
            "{DIR}command = [\"/bin/sh\", \"-c\", \"sleep 1000\"]\n[[network]]\nbridge = \"volt0\"\nipv4 = \"10.42.0.120/24\"\n"
        );
        let c = parse("app", &text).expect("valid");
        assert_eq!(c.uuid, derive::vm_uuid("app"));
        let nic = &c.nics[0];
        assert_eq!(nic.id, "eth0");
        assert_eq!(
            nic.ipv4.map(|i| i.to_string()).as_deref(),
            Some("10.42.0.120/24")
        );
        assert!(!nic.dhcp);
        assert_eq!(nic.gateway, Some("10.42.0.1".parse().expect("ip")));
        assert_eq!(nic.mac, derive::nic_mac(&c.uuid, "eth0", 0));
        let (h, ce) = derive::veth_names("app");
        assert_eq!((nic.host_link.clone(), nic.container_link.clone()), (h, ce));
    }

    #[test]
    fn dhcp_reservation_boot_and_image() {
        let c = parse("app", &format!("{DIR}boot = true\n[[network]]\n")).expect("valid");
        assert!(c.nics[0].dhcp && c.nics[0].ipv4.is_none());
        assert_eq!(c.nics[0].network.as_deref(), Some("volt0"));
        // ct-db is reserved: db gets it as a static address.
        let c = parse(
            "db",
            &format!("{DIR}boot = true\n[[network]]\nzone = \"default\"\n"),
        )
        .expect("valid");
        assert_eq!(
            c.nics[0].ipv4.map(|i| i.to_string()).as_deref(),
            Some("10.42.0.150/24")
        );
        assert!(!c.nics[0].dhcp);
        let c = parse("img", "image = \"/\"\nboot = true\n").expect("valid");
        assert_eq!(c.root_kind, RootKind::Image);
        assert_eq!(c.volatile, Volatile::Overlay);
    }

    #[test]
    fn every_check_names_file_line_column_and_field() {
        let cmd = "command = [\"/bin/true\"]\n";
        let cases: Vec<(String, &str)> = vec![
            (cmd.to_string(), "app.toml: directory: missing"),
            (DIR.to_string(), "app.toml: command: missing"),
            (format!("{DIR}{cmd}boot = true\n"), ":2:11: command: give either boot = true or a command"),
            (format!("{DIR}command = []\n"), ":2:11: command: the command must not be empty"),
            (format!("{DIR}image = \"/x\"\n{cmd}"), ":2:9: image: give either directory or image"),
            ("directory = \"rel\"\ncommand = [\"/x\"]\n".into(), ":1:13: directory: \"rel\" is not an absolute path"),
            (format!("image = \"/x\"\nvolatile = \"no\"\n{cmd}"), "volatile: an image is never written"),
            (format!("{DIR}{cmd}colour = 1\n"), ":3:1: unknown field `colour`"),
            (format!("{DIR}{cmd}init_args = [\"x\"]\n"), ":3:13: init_args: init_args are for boot = true"),
            (format!("{DIR}{cmd}[[network]]\nmtu = 9000\n"), ":4:1: unknown field `mtu`"),
            (format!("{DIR}{cmd}[[network]]\nipv4 = \"10.42.0.20\"\n"), ":4:8: network[0].ipv4: 10.42.0.20 is outside volt0's container range 10.42.0.100-10.42.0.254"),
            (format!("{DIR}{cmd}[[network]]\nipv4 = \"10.42.0.10\"\n"), "network[0].ipv4: 10.42.0.10 is reserved for vm-web in volt0"),
            (format!("{DIR}{cmd}[[network]]\nipv4 = \"10.43.0.120\"\n"), "network[0].ipv4: 10.43.0.120 is outside volt0 (10.42.0.0/24)"),
            (format!("{DIR}{cmd}[[network]]\nbridge = \"br9\"\n"), ":4:10: network[0].bridge: no network uses bridge \"br9\""),
            (format!("{DIR}{cmd}[[network]]\nzone = \"dmz\"\n"), "network[0].zone: no network or zone named \"dmz\""),
            (format!("{DIR}{cmd}[[network]]\nmac = \"01:00:5e:00:00:01\"\n"), "network[0].mac: 01:00:5e:00:00:01 is not a unicast address"),
            (format!("{DIR}{cmd}[[network]]\n[[network]]\n"), ":4:1: network: a container has at most 1 network entry"),
            (format!("{DIR}{cmd}[[network]]\nzone = \"iso\"\n"), "network[0].ipv4: network iso has no DHCP server (isolated)"),
        ];
        for (text, want) in &cases {
            let got = errs("app", text);
            assert!(
                got.iter().any(|e| e.contains(want)),
                "for {text:?} wanted {want:?}, got {got:?}"
            );
            assert!(
                got.iter()
                    .all(|e| e.starts_with("/etc/volt/containers/app.toml")),
                "{got:?}"
            );
        }
    }

    #[test]
    fn names_must_be_machine_names() {
        for bad in ["a_b", "a..b", "a.", "-a", "a b"] {
            let e = errs(bad, "directory = \"/x\"\nboot = true\n");
            assert!(
                e[0].contains("name: the file name gives the container name"),
                "{bad}: {e:?}"
            );
        }
        assert!(parse("db-1.lab", "directory = \"/x\"\nboot = true\n").is_ok());
    }

    #[test]
    fn root_check() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("srv/ct/usr")).expect("mkdir");
        std::fs::create_dir_all(tmp.path().join("srv/nousr")).expect("mkdir");
        std::fs::write(tmp.path().join("srv/file"), "x").expect("write");
        let check = |dir: &str, kind: &str| {
            let c = parse("app", &format!("{kind} = \"{dir}\"\nboot = true\n")).expect("valid");
            c.check_root(tmp.path())
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        };
        assert!(check("/srv/ct", "directory").is_empty());
        assert!(check("/srv/nousr", "directory")[0]
            .contains(":1:13: directory: /srv/nousr has no /usr"));
        assert!(check("/srv/missing", "directory")[0].contains("does not exist"));
        assert!(check("/srv/file", "image")[0]
            .contains("image: /srv/file is not a directory (disk images are not supported yet"));
    }
}
