//! VM files: `/etc/volt/vms/<name>.toml`, one VM per file, name = file stem.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use uuid::Uuid;

use super::derive::{self, check_link_name, check_workload_name, MacAddr};
use super::error::{ConfigError, Location};
use super::network::{check_mtu, parse_ip, Network, NetworkType, DEFAULT_NETWORK};
use super::span::Src;

pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u32 = 16;
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
pub const MAX_NICS: usize = 8;
pub const MAX_QUEUE_PAIRS: u32 = 16;
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// Who creates a NIC's host link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
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
    #[serde(skip)]
    pub(crate) spans: VmSpans,
}

/// Where things were written, for errors found later across files.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct VmSpans {
    pub uuid: Option<Location>,
    pub kernel: Option<Location>,
    pub initrd: Option<Location>,
    pub nics: Vec<NicSpans>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct NicSpans {
    pub at: Option<Location>,
    pub mac: Option<Location>,
    pub ipv4: Option<Location>,
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
                Ok(m) if m.is_file() => continue,
                Ok(_) => "is not a regular file".to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
                Err(e) => format!("cannot be read ({e})"),
            };
            errors.push(ConfigError::Invalid {
                at: at.clone().unwrap_or_else(|| Location::file(&self.path)),
                field: field.into(),
                message: format!("{} {problem}", path.display()),
            });
        }
        errors
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNic {
    id: Option<Spanned<String>>,
    mode: Option<NicMode>,
    bridge: Option<Spanned<String>>,
    zone: Option<Spanned<String>>,
    parent: Option<Spanned<String>>,
    macvtap_mode: Option<MacvtapMode>,
    mac: Option<Spanned<String>>,
    ipv4: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
    vhost: Option<bool>,
    multiqueue: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    uuid: Option<Spanned<String>>,
    vcpus: Option<Spanned<u32>>,
    memory_mib: Option<Spanned<u32>>,
    kernel: Option<Spanned<String>>,
    initrd: Option<Spanned<String>>,
    cmdline: Option<String>,
    autostart: Option<bool>,
    #[serde(default)]
    network: Vec<Spanned<RawNic>>,
}

/// Look-up of networks by name (`zone =`) and by bridge (`bridge =`).
pub trait NetworkLookup {
    fn by_name(&self, name: &str) -> Option<&Network>;
    fn by_bridge(&self, bridge: &str) -> Option<&Network>;
}

/// Parse and check one VM file. `path` is the path as shown in messages and in
/// `SourcePath=`; its stem is the VM name. Returns every error found in the file.
pub fn parse_vm_toml(
    path: &Path,
    text: &str,
    nets: &dyn NetworkLookup,
) -> Result<VmConfig, Vec<ConfigError>> {
    let src = Src::new(path, text);
    let name = super::file_stem(path);
    if let Err(m) = check_workload_name(&name) {
        return Err(vec![src.whole(
            "name",
            format!("the file name gives the VM name, and {m}"),
        )]);
    }
    let raw: RawVm = toml::from_str(text).map_err(|e| vec![src.toml_error(&e)])?;
    let mut errors = Vec::new();
    let mut spans = VmSpans::default();

    let uuid = match &raw.uuid {
        Some(u) => {
            spans.uuid = Some(src.at(u.span().start));
            match Uuid::parse_str(u.get_ref()) {
                Ok(id) if !id.is_nil() => id,
                _ => {
                    errors.push(src.invalid(
                        "uuid",
                        u.span(),
                        format!("{:?} is not a UUID (nil is not allowed)", u.get_ref()),
                    ));
                    derive::vm_uuid(&name)
                }
            }
        }
        None => derive::vm_uuid(&name),
    };
    let vcpus = match &raw.vcpus {
        Some(v) if !(1..=MAX_VCPUS).contains(v.get_ref()) => {
            errors.push(src.invalid(
                "vcpus",
                v.span(),
                format!("{} is outside 1-{MAX_VCPUS}", v.get_ref()),
            ));
            1
        }
        Some(v) => *v.get_ref(),
        None => 1,
    };
    let memory_mib = match &raw.memory_mib {
        Some(m) if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(m.get_ref()) => {
            errors.push(src.invalid(
                "memory_mib",
                m.span(),
                format!(
                    "{} MiB is outside {MIN_MEMORY_MIB}-{MAX_MEMORY_MIB} MiB",
                    m.get_ref()
                ),
            ));
            DEFAULT_MEMORY_MIB
        }
        Some(m) => *m.get_ref(),
        None => DEFAULT_MEMORY_MIB,
    };
    let kernel = match &raw.kernel {
        Some(k) => {
            spans.kernel = Some(src.at(k.span().start));
            abs_path(&src, "kernel", k, &mut errors)
        }
        None => {
            errors.push(src.whole("kernel", "missing: the VM needs a kernel (an absolute path to a vmlinux, bzImage or PVH ELF)".into()));
            PathBuf::new()
        }
    };
    let initrd = raw.initrd.as_ref().map(|i| {
        spans.initrd = Some(src.at(i.span().start));
        abs_path(&src, "initrd", i, &mut errors)
    });

    if raw.network.len() > MAX_NICS {
        let at = raw.network[MAX_NICS].span();
        errors.push(src.invalid("network", at, format!("a VM has at most {MAX_NICS} NICs")));
    }
    let mut nics: Vec<NicConfig> = Vec::new();
    for (index, raw_nic) in raw.network.iter().enumerate().take(MAX_NICS) {
        let (nic, nic_spans) = parse_nic(&src, index, raw_nic, &uuid, &name, nets, &mut errors);
        if let Some(prev) = nics.iter().find(|n| n.id == nic.id) {
            let span = raw_nic
                .get_ref()
                .id
                .as_ref()
                .map_or(raw_nic.span(), |s| s.span());
            errors.push(src.invalid(
                &format!("network[{index}].id"),
                span,
                format!("{:?} is already the id of network[{}]", nic.id, prev.index),
            ));
        }
        nics.push(nic);
        spans.nics.push(nic_spans);
    }
    // Within one file too, two NICs on one bridge with the same MAC would collide.
    for i in 0..nics.len() {
        for j in 0..i {
            if nics[i].mac == nics[j].mac {
                let at = spans.nics[i]
                    .mac
                    .clone()
                    .or_else(|| spans.nics[i].at.clone())
                    .unwrap_or_else(|| Location::file(path));
                errors.push(ConfigError::Invalid {
                    at,
                    field: format!("network[{i}].mac"),
                    message: format!("{} is already the MAC of network[{j}]", nics[i].mac),
                });
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(VmConfig {
        name,
        path: path.to_path_buf(),
        uuid,
        vcpus,
        memory_mib,
        kernel,
        initrd,
        cmdline: raw.cmdline.unwrap_or_default(),
        autostart: raw.autostart.unwrap_or(false),
        nics,
        spans,
    })
}

pub(super) fn abs_path(
    src: &Src,
    field: &str,
    s: &Spanned<String>,
    errors: &mut Vec<ConfigError>,
) -> PathBuf {
    let p = PathBuf::from(s.get_ref());
    if !p.is_absolute() {
        errors.push(src.invalid(
            field,
            s.span(),
            format!("{:?} is not an absolute path", s.get_ref()),
        ));
    }
    p
}

fn parse_nic(
    src: &Src,
    index: usize,
    raw_nic: &Spanned<RawNic>,
    uuid: &Uuid,
    vm_name: &str,
    nets: &dyn NetworkLookup,
    errors: &mut Vec<ConfigError>,
) -> (NicConfig, NicSpans) {
    let raw = raw_nic.get_ref();
    let f = |name: &str| format!("network[{index}].{name}");
    let mut spans = NicSpans {
        at: Some(src.at(raw_nic.span().start)),
        ..NicSpans::default()
    };
    let id = super::nic::nic_id(src, index, raw.id.as_ref(), errors);
    let mode = raw.mode.unwrap_or_default();
    let link = match mode {
        NicMode::Macvtap => {
            let short = derive::short_id(uuid);
            if index == 0 {
                format!("mvt-{short}")
            } else {
                format!("mvt-{short}-{index}")
            }
        }
        _ => derive::tap_name(uuid, index),
    };

    // Which network addresses this NIC, and which bridge its link joins.
    let mut network: Option<&Network> = None;
    let mut bridge = None;
    let mut parent = None;
    if let (Some(b), Some(z)) = (&raw.bridge, &raw.zone) {
        let _ = b;
        errors.push(src.invalid(
            &f("zone"),
            z.span(),
            "give either bridge or zone, not both".into(),
        ));
    }
    if let Some(z) = &raw.zone {
        match nets.by_name(z.get_ref()) {
            Some(n) => network = Some(n),
            None => errors.push(src.invalid(
                &f("zone"),
                z.span(),
                format!("no network or zone named {:?} is defined", z.get_ref()),
            )),
        }
    }
    if mode == NicMode::Macvtap {
        if let Some(b) = &raw.bridge {
            errors.push(src.invalid(
                &f("bridge"),
                b.span(),
                "a macvtap NIC sits on its parent interface, not on a bridge".into(),
            ));
        }
        match &raw.parent {
            Some(p) => match check_link_name(p.get_ref()) {
                Ok(()) => parent = Some(p.get_ref().clone()),
                Err(m) => errors.push(src.invalid(&f("parent"), p.span(), m)),
            },
            None => errors.push(src.invalid(
                &f("parent"),
                raw_nic.span(),
                "a macvtap NIC needs the parent interface it sits on".into(),
            )),
        }
    } else {
        if let Some(p) = &raw.parent {
            errors.push(src.invalid(
                &f("parent"),
                p.span(),
                "only macvtap NICs have a parent interface".into(),
            ));
        }
        if raw.macvtap_mode.is_some() {
            errors.push(src.invalid(
                &f("macvtap_mode"),
                raw_nic.span(),
                "only macvtap NICs have a macvtap_mode".into(),
            ));
        }
        if let Some(b) = &raw.bridge {
            match nets.by_bridge(b.get_ref()) {
                Some(n) => network = Some(n),
                None => errors.push(src.invalid(
                    &f("bridge"),
                    b.span(),
                    format!(
                        "no network uses bridge {:?} (define it in /etc/volt/networks/)",
                        b.get_ref()
                    ),
                )),
            }
        }
        if raw.bridge.is_none() && raw.zone.is_none() {
            network = nets.by_bridge(DEFAULT_NETWORK);
        }
        bridge = network.map(|n| n.bridge.clone());
    }

    let (mac, mac_explicit, mac_at) =
        super::nic::nic_mac(src, index, raw.mac.as_ref(), uuid, &id, errors);
    spans.mac = mac_at;

    let mtu = match &raw.mtu {
        Some(m) => check_mtu(src, &f("mtu"), m).unwrap_or_else(|e| {
            errors.push(e);
            1500
        }),
        None => network.map_or(1500, |n| n.mtu),
    };
    let queues = match &raw.multiqueue {
        Some(q) if !(1..=MAX_QUEUE_PAIRS).contains(q.get_ref()) => {
            errors.push(src.invalid(
                &f("multiqueue"),
                q.span(),
                format!("{} queue pairs is outside 1-{MAX_QUEUE_PAIRS}", q.get_ref()),
            ));
            1
        }
        Some(q) => *q.get_ref(),
        None => 1,
    };

    let reservation = network.and_then(|n| n.reservations.get(&format!("vm-{vm_name}")).copied());
    let mut ipv4 = None;
    match &raw.ipv4 {
        Some(s) => {
            spans.ipv4 = Some(src.at(s.span().start));
            match parse_nic_ip(
                src,
                &f("ipv4"),
                s,
                network,
                &format!("vm-{vm_name}"),
                Pool::Vm,
            ) {
                Ok(Some(addr)) => {
                    if let (Some(r), Some(n)) = (reservation, network) {
                        if r != addr.addr() {
                            errors.push(src.invalid(
                                &f("ipv4"),
                                s.span(),
                                format!(
                                    "{} differs from the reservation vm-{vm_name} = {r} of {}",
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
    let gateway = network
        .filter(|n| n.kind != NetworkType::Isolated)
        .map(|n| n.gateway);

    let nic = NicConfig {
        id,
        index,
        mode,
        network: network.map(|n| n.name.clone()),
        bridge,
        parent,
        macvtap_mode: (mode == NicMode::Macvtap).then(|| raw.macvtap_mode.unwrap_or_default()),
        mac,
        mac_explicit,
        ipv4,
        gateway,
        mtu,
        vhost: raw.vhost.unwrap_or(true),
        queues,
        link,
    };
    (nic, spans)
}

/// Which range of a network a static address must come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pool {
    Vm,
    Container,
}

/// `ipv4 = "10.42.0.10/24"` or `"10.42.0.10"`: the address must be a host address of the
/// network, inside its VM (or container) range unless it is the owner's reservation, and
/// with the network's prefix.
pub(super) fn parse_nic_ip(
    src: &Src,
    field: &str,
    s: &Spanned<String>,
    network: Option<&Network>,
    own_key: &str,
    pool: Pool,
) -> Result<Option<Ipv4Net>, ConfigError> {
    let text = s.get_ref();
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => {
            let prefix: u8 = p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
                src.invalid(
                    field,
                    s.span(),
                    format!("{text:?} has an invalid prefix length"),
                )
            })?;
            (a, Some(prefix))
        }
        None => (text.as_str(), None),
    };
    let ip = parse_ip(src, field, &Spanned::new(s.span(), addr.to_string()))?;
    let Some(net) = network else {
        return Ok(prefix.and_then(|p| Ipv4Net::new(ip, p).ok()));
    };
    if !net.subnet.contains(&ip) {
        return Err(src.invalid(
            field,
            s.span(),
            format!("{ip} is outside {} ({})", net.name, net.subnet),
        ));
    }
    if let Some(p) = prefix {
        if p != net.subnet.prefix_len() {
            return Err(src.invalid(
                field,
                s.span(),
                format!(
                    "/{p} does not match {}'s prefix /{}",
                    net.name,
                    net.subnet.prefix_len()
                ),
            ));
        }
    }
    if ip == net.gateway {
        return Err(src.invalid(
            field,
            s.span(),
            format!("{ip} is the gateway of {}", net.name),
        ));
    }
    if !net.is_host_addr(ip) {
        return Err(src.invalid(
            field,
            s.span(),
            format!("{ip} is not a usable host address of {}", net.subnet),
        ));
    }
    let reserved = net
        .reservations
        .iter()
        .find(|(_, v)| **v == ip)
        .map(|(k, _)| k.as_str());
    if let Some(key) = reserved.filter(|k| *k != own_key) {
        return Err(src.invalid(
            field,
            s.span(),
            format!("{ip} is reserved for {key} in {}", net.name),
        ));
    }
    let (range, what) = match pool {
        Pool::Vm => (net.vm_range, "VM"),
        Pool::Container => (net.container_range, "container"),
    };
    if !range.contains(ip) && reserved.is_none() {
        return Err(src.invalid(
            field,
            s.span(),
            format!("{ip} is outside {}'s {what} range {range}", net.name),
        ));
    }
    Ok(Ipv4Net::new(ip, net.subnet.prefix_len()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Networks;

    fn nets() -> Networks {
        let mut lab = Network::builtin_default();
        lab.name = "lab".into();
        lab.bridge = "lab0".into();
        lab.subnet = "10.50.0.0/24".parse().expect("net");
        lab.gateway = "10.50.0.1".parse().expect("ip");
        lab.vm_range = crate::config::Range {
            start: "10.50.0.2".parse().expect("ip"),
            end: "10.50.0.99".parse().expect("ip"),
        };
        let mut def = Network::builtin_default();
        def.reservations
            .insert("vm-web".into(), "10.42.0.10".parse().expect("ip"));
        def.reservations
            .insert("ct-db".into(), "10.42.0.150".parse().expect("ip"));
        Networks {
            list: vec![lab, def],
        }
    }

    fn parse(name: &str, text: &str) -> Result<VmConfig, Vec<ConfigError>> {
        parse_vm_toml(
            &PathBuf::from(format!("/etc/volt/vms/{name}.toml")),
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

    const KERNEL: &str = "kernel = \"/var/lib/volt/kernels/vmlinux\"\n";

    #[test]
    fn minimal_vm_gets_defaults_and_derived_values() {
        let vm = parse("web", KERNEL).expect("valid");
        assert_eq!(vm.name, "web");
        assert_eq!(vm.uuid, derive::vm_uuid("web"));
        assert_eq!(
            (vm.vcpus, vm.memory_mib, vm.autostart),
            (1, DEFAULT_MEMORY_MIB, false)
        );
        assert!(vm.nics.is_empty());
    }

    #[test]
    fn design_example_parses() {
        let text = "vcpus = 2\nmemory_mib = 512\nkernel = \"/var/lib/volt/kernels/vmlinux\"\n[[network]]\nid = \"eth0\"\nbridge = \"volt0\"\nipv4 = \"10.42.0.10/24\"\n";
        let vm = parse("web", text).expect("valid");
        let nic = &vm.nics[0];
        assert_eq!(nic.mode, NicMode::Networkd);
        assert_eq!(nic.bridge.as_deref(), Some("volt0"));
        assert_eq!(nic.network.as_deref(), Some("volt0"));
        assert_eq!(
            nic.ipv4.map(|i| i.to_string()).as_deref(),
            Some("10.42.0.10/24")
        );
        assert_eq!(
            nic.gateway.map(|g| g.to_string()).as_deref(),
            Some("10.42.0.1")
        );
        assert_eq!(nic.link, derive::tap_name(&vm.uuid, 0));
        assert_eq!(nic.mac, derive::nic_mac(&vm.uuid, "eth0", 0));
        assert!(nic.vhost);
        assert_eq!(nic.queues, 1);
    }

    #[test]
    fn reservation_gives_the_address() {
        let vm = parse("web", &format!("{KERNEL}[[network]]\n")).expect("valid");
        assert_eq!(
            vm.nics[0].ipv4.map(|i| i.to_string()).as_deref(),
            Some("10.42.0.10/24")
        );
        let e = errs(
            "web",
            &format!("{KERNEL}[[network]]\nipv4 = \"10.42.0.11\"\n"),
        );
        assert!(
            e[0].contains("differs from the reservation vm-web = 10.42.0.10"),
            "{e:?}"
        );
        let e = errs(
            "api",
            &format!("{KERNEL}[[network]]\nipv4 = \"10.42.0.150\"\n"),
        );
        assert!(
            e[0].contains("10.42.0.150 is reserved for ct-db in volt0"),
            "{e:?}"
        );
    }

    #[test]
    fn multi_nic_jumbo_multiqueue_zone_and_macvtap() {
        let text = format!(
            "{KERNEL}[[network]]\nzone = \"default\"\nmtu = 9000\nmultiqueue = 4\nvhost = false\n\
             [[network]]\nid = \"lan\"\nbridge = \"lab0\"\nmac = \"52:54:00:aa:bb:cc\"\nmode = \"direct\"\n\
             [[network]]\nid = \"up\"\nmode = \"macvtap\"\nparent = \"eth1\"\nmacvtap_mode = \"passthru\"\n"
        );
        let vm = parse("multi", &text).expect("valid");
        assert_eq!(vm.nics.len(), 3);
        assert_eq!(
            (vm.nics[0].mtu, vm.nics[0].queues, vm.nics[0].vhost),
            (9000, 4, false)
        );
        assert_eq!(vm.nics[1].network.as_deref(), Some("lab"));
        assert_eq!(
            vm.nics[1].link,
            format!("{}-1", derive::tap_name(&vm.uuid, 0))
        );
        assert!(vm.nics[1].mac_explicit);
        assert_eq!(
            vm.nics[2].link,
            format!("mvt-{}-2", derive::short_id(&vm.uuid))
        );
        assert_eq!(vm.nics[2].macvtap_mode, Some(MacvtapMode::Passthru));
        assert_eq!(vm.nics[2].bridge, None);
    }

    #[test]
    fn errors_name_file_line_column_and_field() {
        let text = "vcpus = 2\nmemory_mib = 512\nkernel = \"/k\"\n[[network]]\nid = \"eth0\"\nbridge = \"volt0\"\nipv4 = \"10.43.0.5/24\"\n";
        assert_eq!(errs("db", text), vec!["/etc/volt/vms/db.toml:7:8: network[0].ipv4: 10.43.0.5 is outside volt0 (10.42.0.0/24)"]);
    }

    #[test]
    fn every_semantic_check() {
        let cases: &[(&str, &str)] = &[
            ("vcpus = 0\nkernel = \"/k\"\n", ":1:9: vcpus: 0 is outside 1-64"),
            ("vcpus = 65\nkernel = \"/k\"\n", "vcpus: 65 is outside"),
            ("memory_mib = 8\nkernel = \"/k\"\n", ":1:14: memory_mib: 8 MiB is outside 16-"),
            ("kernel = \"vmlinux\"\n", ":1:10: kernel: \"vmlinux\" is not an absolute path"),
            ("vcpus = 1\n", "db.toml: kernel: missing"),
            ("kernel = \"/k\"\ninitrd = \"i.img\"\n", "initrd: \"i.img\" is not an absolute path"),
            ("kernel = \"/k\"\nuuid = \"nope\"\n", ":2:8: uuid: \"nope\" is not a UUID"),
            ("kernel = \"/k\"\ncolour = \"red\"\n", ":2:1: unknown field `colour`"),
            ("kernel = \"/k\"\nvcpus = \"two\"\n", ":2:9: invalid type: string \"two\", expected u32"),
            ("kernel = \"/k\"\n[[network]]\nmac = \"52:54:00:zz:00:01\"\n", ":3:7: network[0].mac: \"52:54:00:zz:00:01\" is not a MAC"),
            ("kernel = \"/k\"\n[[network]]\nmac = \"01:00:5e:00:00:01\"\n", "network[0].mac: 01:00:5e:00:00:01 is not a unicast address"),
            ("kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.300\"\n", "network[0].ipv4: \"10.42.0.300\" is not an IPv4 address"),
            ("kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.1\"\n", "network[0].ipv4: 10.42.0.1 is the gateway of volt0"),
            ("kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.120\"\n", "10.42.0.120 is outside volt0's VM range 10.42.0.2-10.42.0.99"),
            ("kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.20/16\"\n", "/16 does not match volt0's prefix /24"),
            ("kernel = \"/k\"\n[[network]]\nmtu = 9001\n", "network[0].mtu: 9001 is outside 68-9000"),
            ("kernel = \"/k\"\n[[network]]\nmultiqueue = 0\n", "network[0].multiqueue: 0 queue pairs is outside 1-16"),
            ("kernel = \"/k\"\n[[network]]\nbridge = \"br9\"\n", ":3:10: network[0].bridge: no network uses bridge \"br9\""),
            ("kernel = \"/k\"\n[[network]]\nzone = \"dmz\"\n", "network[0].zone: no network or zone named \"dmz\""),
            ("kernel = \"/k\"\n[[network]]\nbridge = \"volt0\"\nzone = \"lab\"\n", "give either bridge or zone, not both"),
            ("kernel = \"/k\"\n[[network]]\nmode = \"macvtap\"\n", "network[0].parent: a macvtap NIC needs the parent"),
            ("kernel = \"/k\"\n[[network]]\nparent = \"eth0\"\n", "only macvtap NICs have a parent"),
            ("kernel = \"/k\"\n[[network]]\nmode = \"bridgy\"\n", "unknown variant `bridgy`"),
            ("kernel = \"/k\"\n[[network]]\nid = \"x\"\n[[network]]\nid = \"x\"\n", "network[1].id: \"x\" is already the id of network[0]"),
            ("kernel = \"/k\"\n[[network]]\nid = \"a b\"\n", "network[0].id: \"a b\" must be"),
            (
                "kernel = \"/k\"\n[[network]]\nid = \"a\"\nmac = \"52:54:00:00:00:09\"\n[[network]]\nid = \"b\"\nmac = \"52:54:00:00:00:09\"\n",
                "network[1].mac: 52:54:00:00:00:09 is already the MAC of network[0]",
            ),
        ];
        for (text, want) in cases {
            let got = errs("db", text);
            assert!(
                got.iter().any(|e| e.contains(want)),
                "for {text:?} wanted {want:?}, got {got:?}"
            );
            assert!(
                got.iter().all(|e| e.starts_with("/etc/volt/vms/db.toml")),
                "{got:?}"
            );
        }
    }

    #[test]
    fn bad_file_names_are_rejected() {
        for name in ["we b", "-x", "a@b"] {
            let e = errs(name, KERNEL);
            assert!(
                e[0].contains("name: the file name gives the VM name"),
                "{e:?}"
            );
        }
    }

    #[test]
    fn all_errors_of_a_file_are_reported() {
        let e = errs("db", "vcpus = 0\nmemory_mib = 1\nkernel = \"k\"\n");
        assert_eq!(e.len(), 3, "{e:?}");
    }
}
