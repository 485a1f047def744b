//! Network definitions: `/etc/volt/networks/<name>.toml`, Voltainer zones
//! `/etc/voltainer/network/*.yaml` (`kind: NetworkZone`), and the built-in `volt0`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::derive::{check_link_name, check_workload_name};
use super::error::{ConfigError, Location};
use super::span::Src;

/// The built-in network's name and bridge.
pub const DEFAULT_NETWORK: &str = "volt0";
/// The zone name that refers to the default network when no zone file defines it.
pub const DEFAULT_ZONE: &str = "default";

/// How workloads on a network reach each other and the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkType {
    /// TAPs and veths on one L2 bridge: full VM/container reachability.
    #[default]
    Bridged,
    /// Each workload in its own network namespace, no route out.
    Isolated,
    /// NAT to the host's uplink, no inbound except declared port maps.
    HostOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// An inclusive address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Range {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A declared port map of a host-only network: `host_port` on the uplink → `target:target_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMap {
    pub proto: Proto,
    pub host_port: u16,
    /// The workload (VM or container name) the traffic goes to.
    pub target: String,
    pub target_port: u16,
}

/// A validated network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Network {
    pub name: String,
    /// The file it came from; `None` for the built-in default.
    pub source: Option<PathBuf>,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(rename = "type")]
    pub kind: NetworkType,
    /// Static range for VMs.
    pub vm_range: Range,
    /// DHCP/dynamic range for containers.
    pub container_range: Range,
    pub reservations: BTreeMap<String, Ipv4Addr>,
    pub dhcp: bool,
    pub mtu: u32,
    /// Whether the file set `mtu` (a cluster derives it from the underlay otherwise).
    #[serde(skip)]
    pub mtu_explicit: bool,
    pub uplink: Option<String>,
    pub port_maps: Vec<PortMap>,
    /// Whether Volt may create the bridge when it is missing.
    pub create_bridge: bool,
}

impl Network {
    /// The built-in default network: bridge `volt0`, 10.42.0.0/24, gateway .1, VMs .2-.99,
    /// containers .100-.254, DHCP on.
    pub fn builtin_default() -> Network {
        let subnet = Ipv4Net::new(Ipv4Addr::new(10, 42, 0, 0), 24).unwrap_or_default();
        let (vm_range, container_range) = default_ranges(&subnet, Ipv4Addr::new(10, 42, 0, 1));
        Network {
            name: DEFAULT_NETWORK.into(),
            source: None,
            bridge: DEFAULT_NETWORK.into(),
            subnet,
            gateway: Ipv4Addr::new(10, 42, 0, 1),
            kind: NetworkType::Bridged,
            vm_range,
            container_range,
            reservations: BTreeMap::new(),
            dhcp: true,
            mtu: 1500,
            mtu_explicit: false,
            uplink: None,
            port_maps: Vec::new(),
            create_bridge: true,
        }
    }

    /// Whether `ip` is a usable host address (not the network or broadcast address, not the
    /// gateway).
    pub fn is_host_addr(&self, ip: Ipv4Addr) -> bool {
        self.subnet.contains(&ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && ip != self.gateway
    }
}

/// Default split of a subnet: for /24 and larger, VMs from gateway+1 .. .99 and containers
/// .100 .. broadcast-1 (relative to the network address); smaller subnets are halved.
fn default_ranges(subnet: &Ipv4Net, gateway: Ipv4Addr) -> (Range, Range) {
    let net = u32::from(subnet.network());
    let bcast = u32::from(subnet.broadcast());
    let first = net.saturating_add(1);
    let last = bcast.saturating_sub(1);
    let gw = u32::from(gateway);
    let vm_start = if gw == first { first + 1 } else { first };
    let split = if subnet.prefix_len() <= 24 {
        net + 99
    } else {
        net + (bcast - net) / 2
    };
    let vm = Range {
        start: Ipv4Addr::from(vm_start),
        end: Ipv4Addr::from(split.min(last)),
    };
    let ct = Range {
        start: Ipv4Addr::from((split + 1).min(last)),
        end: Ipv4Addr::from(last),
    };
    (vm, ct)
}

/// The larger part of the subnet's host addresses left of or right of `taken`, skipping
/// the gateway at its ends. May be empty (start > end) when `taken` covers everything.
fn complement(subnet: &Ipv4Net, gateway: Ipv4Addr, taken: Range) -> Range {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    let gw = u32::from(gateway);
    let trim = |mut a: u32, mut b: u32| {
        if a == gw {
            a += 1;
        }
        if b == gw {
            b = b.saturating_sub(1);
        }
        (a, b)
    };
    let left = trim(first, u32::from(taken.start).saturating_sub(1));
    let right = trim(u32::from(taken.end) + 1, last);
    let size = |(a, b): (u32, u32)| if a <= b { b - a + 1 } else { 0 };
    let (a, b) = if size(right) >= size(left) {
        right
    } else {
        left
    };
    Range {
        start: Ipv4Addr::from(a),
        end: Ipv4Addr::from(b),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    start: Spanned<String>,
    end: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortMap {
    proto: Option<Proto>,
    host_port: Spanned<u16>,
    target: Spanned<String>,
    target_port: Spanned<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    bridge: Option<Spanned<String>>,
    subnet: Spanned<String>,
    gateway: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Option<NetworkType>,
    dhcp: Option<bool>,
    mtu: Option<Spanned<u32>>,
    pool: Option<Spanned<RawRange>>,
    container_pool: Option<Spanned<RawRange>>,
    #[serde(default)]
    reservations: BTreeMap<String, Spanned<String>>,
    uplink: Option<Spanned<String>>,
    create_bridge: Option<bool>,
    #[serde(default)]
    port_map: Vec<Spanned<RawPortMap>>,
}

/// Parse `/etc/volt/networks/<name>.toml`. `path` is the name shown in errors.
pub fn parse_network_toml(path: &Path, text: &str) -> Result<Network, ConfigError> {
    let src = Src::new(path, text);
    let name = super::file_stem(path);
    check_workload_name(&name).map_err(|m| src.whole("name", m))?;
    let raw: RawNetwork = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let subnet = parse_subnet(&src, "subnet", &raw.subnet)?;
    let gateway = match &raw.gateway {
        Some(g) => parse_ip(&src, "gateway", g)?,
        None => Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1)),
    };
    check_in_subnet(&src, "gateway", raw.gateway.as_ref(), gateway, &subnet)?;
    let (mut vm_range, mut container_range) = default_ranges(&subnet, gateway);
    let vm_given = raw
        .pool
        .as_ref()
        .map(|p| parse_range(&src, "pool", p, &subnet))
        .transpose()?;
    let ct_given = raw
        .container_pool
        .as_ref()
        .map(|p| parse_range(&src, "container_pool", p, &subnet))
        .transpose()?;
    match (vm_given, ct_given) {
        (Some(v), Some(c)) => (vm_range, container_range) = (v, c),
        (Some(v), None) => (vm_range, container_range) = (v, complement(&subnet, gateway, v)),
        (None, Some(c)) => (vm_range, container_range) = (complement(&subnet, gateway, c), c),
        (None, None) => {}
    }
    let bridge = match &raw.bridge {
        Some(b) => {
            check_link_name(b.get_ref()).map_err(|m| src.invalid("bridge", b.span(), m))?;
            b.get_ref().clone()
        }
        None => {
            check_link_name(&name).map_err(|m| {
                src.whole(
                    "bridge",
                    format!("no bridge given and the network name {m}"),
                )
            })?;
            name.clone()
        }
    };
    let mtu = match &raw.mtu {
        Some(m) => check_mtu(&src, "mtu", m)?,
        None => 1500,
    };
    let mut net = Network {
        name,
        source: Some(path.to_path_buf()),
        bridge,
        subnet,
        gateway,
        kind: raw.kind.unwrap_or_default(),
        vm_range,
        container_range,
        reservations: BTreeMap::new(),
        dhcp: raw.dhcp.unwrap_or(true),
        mtu,
        mtu_explicit: raw.mtu.is_some(),
        uplink: None,
        port_maps: Vec::new(),
        create_bridge: raw.create_bridge.unwrap_or(true),
    };
    if vm_range.start <= container_range.end && container_range.start <= vm_range.end {
        let span = raw
            .container_pool
            .as_ref()
            .or(raw.pool.as_ref())
            .map(|p| p.span());
        let at = span.map_or_else(|| Location::file(path), |s| src.at(s.start));
        return Err(ConfigError::Invalid {
            at,
            field: "container_pool".into(),
            message: format!("{container_range} overlaps the VM pool {vm_range}"),
        });
    }
    for (key, value) in &raw.reservations {
        let field = format!("reservations.{key}");
        let ip = parse_ip(&src, &field, value)?;
        if !net.is_host_addr(ip) {
            return Err(src.invalid(
                &field,
                value.span(),
                format!("{ip} is not a usable host address of {}", net.subnet),
            ));
        }
        if let Some((other, _)) = net.reservations.iter().find(|(_, v)| **v == ip) {
            return Err(src.invalid(
                &field,
                value.span(),
                format!("{ip} is already reserved for {other}"),
            ));
        }
        net.reservations.insert(key.clone(), ip);
    }
    if let Some(u) = &raw.uplink {
        check_link_name(u.get_ref()).map_err(|m| src.invalid("uplink", u.span(), m))?;
        net.uplink = Some(u.get_ref().clone());
    }
    if net.kind == NetworkType::HostOnly && net.uplink.is_none() {
        return Err(src.whole(
            "uplink",
            "a host-only network needs the uplink interface it masquerades to".into(),
        ));
    }
    for (i, pm) in raw.port_map.iter().enumerate() {
        let field = format!("port_map[{i}]");
        let r = pm.get_ref();
        if net.kind != NetworkType::HostOnly {
            return Err(src.invalid(
                &field,
                pm.span(),
                "port maps apply only to host-only networks".into(),
            ));
        }
        if *r.host_port.get_ref() == 0 || *r.target_port.get_ref() == 0 {
            return Err(src.invalid(&field, pm.span(), "ports must be 1-65535".into()));
        }
        check_workload_name(r.target.get_ref())
            .map_err(|m| src.invalid(&format!("{field}.target"), r.target.span(), m))?;
        let proto = r.proto.unwrap_or(Proto::Tcp);
        if net
            .port_maps
            .iter()
            .any(|p| p.proto == proto && p.host_port == *r.host_port.get_ref())
        {
            return Err(src.invalid(
                &format!("{field}.host_port"),
                r.host_port.span(),
                "this host port is already mapped".into(),
            ));
        }
        net.port_maps.push(PortMap {
            proto,
            host_port: *r.host_port.get_ref(),
            target: r.target.get_ref().clone(),
            target_port: *r.target_port.get_ref(),
        });
    }
    Ok(net)
}

fn parse_subnet(src: &Src, field: &str, s: &Spanned<String>) -> Result<Ipv4Net, ConfigError> {
    let net: Ipv4Net = s.get_ref().parse().map_err(|_| {
        src.invalid(
            field,
            s.span(),
            format!("{:?} is not an IPv4 subnet like 10.42.0.0/24", s.get_ref()),
        )
    })?;
    if net.network() != net.addr() {
        return Err(src.invalid(
            field,
            s.span(),
            format!("{net} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    if net.prefix_len() > 30 {
        return Err(src.invalid(
            field,
            s.span(),
            format!("{net} is too small (the prefix must be /30 or shorter)"),
        ));
    }
    Ok(net)
}

pub(super) fn parse_ip(
    src: &Src,
    field: &str,
    s: &Spanned<String>,
) -> Result<Ipv4Addr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        src.invalid(
            field,
            s.span(),
            format!("{:?} is not an IPv4 address", s.get_ref()),
        )
    })
}

fn check_in_subnet(
    src: &Src,
    field: &str,
    s: Option<&Spanned<String>>,
    ip: Ipv4Addr,
    subnet: &Ipv4Net,
) -> Result<(), ConfigError> {
    if subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast() {
        return Ok(());
    }
    let message = format!("{ip} is not a host address of {subnet}");
    Err(match s {
        Some(s) => src.invalid(field, s.span(), message),
        None => src.whole(field, message),
    })
}

fn parse_range(
    src: &Src,
    field: &str,
    r: &Spanned<RawRange>,
    subnet: &Ipv4Net,
) -> Result<Range, ConfigError> {
    let raw = r.get_ref();
    let start = parse_ip(src, &format!("{field}.start"), &raw.start)?;
    let end = parse_ip(src, &format!("{field}.end"), &raw.end)?;
    check_in_subnet(
        src,
        &format!("{field}.start"),
        Some(&raw.start),
        start,
        subnet,
    )?;
    check_in_subnet(src, &format!("{field}.end"), Some(&raw.end), end, subnet)?;
    if start > end {
        return Err(src.invalid(field, r.span(), format!("start {start} is after end {end}")));
    }
    Ok(Range { start, end })
}

pub(super) fn check_mtu(src: &Src, field: &str, m: &Spanned<u32>) -> Result<u32, ConfigError> {
    let v = *m.get_ref();
    if !(68..=9000).contains(&v) {
        return Err(src.invalid(field, m.span(), format!("{v} is outside 68-9000")));
    }
    Ok(v)
}

// ---- Voltainer zones (YAML) ----

#[derive(Debug, Deserialize)]
struct ZoneKind {
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZoneDhcp {
    enabled: Option<bool>,
    range: Option<serde_saphyr::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    #[serde(rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(rename = "kind")]
    _kind: String,
    name: serde_saphyr::Spanned<String>,
    bridge: Option<serde_saphyr::Spanned<String>>,
    subnet: serde_saphyr::Spanned<String>,
    gateway: Option<serde_saphyr::Spanned<String>>,
    dhcp: Option<RawZoneDhcp>,
    mtu: Option<serde_saphyr::Spanned<u32>>,
}

fn yaml_at(path: &Path, loc: &serde_saphyr::Location) -> Location {
    Location {
        file: path.to_path_buf(),
        line: loc.line() as usize,
        col: loc.column() as usize,
    }
}

fn yaml_error(path: &Path, e: &serde_saphyr::Error) -> ConfigError {
    let at = e
        .location()
        .map_or_else(|| Location::file(path), |l| yaml_at(path, &l));
    // The rendered error repeats the location and may span lines; keep its first line.
    let text = e.to_string();
    let message = text.lines().next().unwrap_or("invalid YAML").to_string();
    ConfigError::Syntax { at, message }
}

/// Parse a Voltainer zone file. Returns `Ok(None)` for YAML documents of another kind.
pub fn parse_zone_yaml(path: &Path, text: &str) -> Result<Option<Network>, ConfigError> {
    let kind: ZoneKind = serde_saphyr::from_str(text).map_err(|e| yaml_error(path, &e))?;
    if kind.kind.as_deref() != Some("NetworkZone") {
        return Ok(None);
    }
    let raw: RawZone = serde_saphyr::from_str(text).map_err(|e| yaml_error(path, &e))?;
    let invalid =
        |field: &str, loc: &serde_saphyr::Location, message: String| ConfigError::Invalid {
            at: yaml_at(path, loc),
            field: field.to_string(),
            message,
        };
    let name = raw.name.value.clone();
    check_workload_name(&name).map_err(|m| invalid("name", &raw.name.referenced, m))?;
    let subnet: Ipv4Net = raw.subnet.value.parse().map_err(|_| {
        invalid(
            "subnet",
            &raw.subnet.referenced,
            format!(
                "{:?} is not an IPv4 subnet like 10.42.0.0/24",
                raw.subnet.value
            ),
        )
    })?;
    if subnet.network() != subnet.addr() || subnet.prefix_len() > 30 {
        return Err(invalid(
            "subnet",
            &raw.subnet.referenced,
            format!("{subnet} is not a network address with a prefix of /30 or shorter"),
        ));
    }
    let gateway = match &raw.gateway {
        Some(g) => {
            let ip: Ipv4Addr = g.value.parse().map_err(|_| {
                invalid(
                    "gateway",
                    &g.referenced,
                    format!("{:?} is not an IPv4 address", g.value),
                )
            })?;
            if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
                return Err(invalid(
                    "gateway",
                    &g.referenced,
                    format!("{ip} is not a host address of {subnet}"),
                ));
            }
            ip
        }
        None => Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1)),
    };
    let bridge = match &raw.bridge {
        Some(b) => {
            check_link_name(&b.value).map_err(|m| invalid("bridge", &b.referenced, m))?;
            b.value.clone()
        }
        None if name == DEFAULT_ZONE => DEFAULT_NETWORK.to_string(),
        None => {
            check_link_name(&name).map_err(|m| {
                invalid(
                    "bridge",
                    &raw.name.referenced,
                    format!("no bridge given and the zone name {m}"),
                )
            })?;
            name.clone()
        }
    };
    let (vm_default, mut container_range) = default_ranges(&subnet, gateway);
    let mut dhcp = true;
    if let Some(d) = &raw.dhcp {
        dhcp = d.enabled.unwrap_or(true);
        if let Some(r) = &d.range {
            let bad = || {
                invalid(
                    "dhcp.range",
                    &r.referenced,
                    format!(
                        "{:?} is not a range like 10.42.0.100-10.42.0.254 inside {subnet}",
                        r.value
                    ),
                )
            };
            let (a, b) = r.value.split_once('-').ok_or_else(bad)?;
            let start: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let end: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
            if start > end || !subnet.contains(&start) || !subnet.contains(&end) {
                return Err(bad());
            }
            container_range = Range { start, end };
        }
    }
    // VMs take the part of the default VM range below the DHCP range.
    let vm_end = if container_range.start <= vm_default.end {
        Ipv4Addr::from(u32::from(container_range.start).saturating_sub(1))
    } else {
        vm_default.end
    };
    let mtu = match &raw.mtu {
        Some(m) if !(68..=9000).contains(&m.value) => {
            return Err(invalid(
                "mtu",
                &m.referenced,
                format!("{} is outside 68-9000", m.value),
            ));
        }
        Some(m) => m.value,
        None => 1500,
    };
    Ok(Some(Network {
        name,
        source: Some(path.to_path_buf()),
        bridge,
        subnet,
        gateway,
        kind: NetworkType::Bridged,
        vm_range: Range {
            start: vm_default.start,
            end: vm_end,
        },
        container_range,
        reservations: BTreeMap::new(),
        dhcp,
        mtu,
        mtu_explicit: raw.mtu.is_some(),
        uplink: None,
        port_maps: Vec::new(),
        create_bridge: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_net(text: &str) -> Result<Network, ConfigError> {
        parse_network_toml(Path::new("/etc/volt/networks/lab.toml"), text)
    }

    #[test]
    fn builtin_default_matches_the_address_plan() {
        let n = Network::builtin_default();
        assert_eq!(n.bridge, "volt0");
        assert_eq!(n.subnet.to_string(), "10.42.0.0/24");
        assert_eq!(n.gateway.to_string(), "10.42.0.1");
        assert_eq!(n.vm_range.to_string(), "10.42.0.2-10.42.0.99");
        assert_eq!(n.container_range.to_string(), "10.42.0.100-10.42.0.254");
    }

    #[test]
    fn network_toml_full() {
        let n = toml_net(
            "bridge = \"lab0\"\nsubnet = \"10.50.0.0/16\"\ngateway = \"10.50.0.1\"\ntype = \"host-only\"\nuplink = \"wan0\"\nmtu = 9000\n\
             [pool]\nstart = \"10.50.1.1\"\nend = \"10.50.1.200\"\n\
             [reservations]\nvm-web = \"10.50.1.10\"\n\
             [[port_map]]\nproto = \"udp\"\nhost_port = 5353\ntarget = \"web\"\ntarget_port = 53\n",
        )
        .expect("valid");
        assert_eq!(n.name, "lab");
        assert_eq!(n.kind, NetworkType::HostOnly);
        assert_eq!(n.vm_range.to_string(), "10.50.1.1-10.50.1.200");
        assert_eq!(n.container_range.to_string(), "10.50.1.201-10.50.255.254");
        assert_eq!(n.reservations["vm-web"].to_string(), "10.50.1.10");
        assert_eq!(n.port_maps[0].proto, Proto::Udp);
        assert_eq!(n.mtu, 9000);
    }

    #[test]
    fn network_errors_name_line_and_field() {
        let e = toml_net("subnet = \"10.50.0.0/24\"\ngateway = \"10.51.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/etc/volt/networks/lab.toml:2:11: gateway: 10.51.0.1 is not a host address of 10.50.0.0/24");
        let e = toml_net("subnet = \"10.50.0.1/24\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":1:10: subnet: 10.50.0.1/24 has host bits set"),
            "{e}"
        );
        let e = toml_net("subnet = \"10.50.0.0/24\"\ncolour = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/volt/networks/lab.toml:2:1: unknown field `colour`"),
            "{e}"
        );
        let e = toml_net("subnet = \"10.50.0.0/24\"\ntype = \"host-only\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("uplink: a host-only network needs"), "{e}");
        let e = toml_net("subnet = \"10.50.0.0/24\"\n[[port_map]]\nhost_port = 80\ntarget = \"web\"\ntarget_port = 80\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("port_map[0]: port maps apply only to host-only"),
            "{e}"
        );
        let e = toml_net(
            "subnet = \"10.50.0.0/24\"\n[pool]\nstart = \"10.50.0.2\"\nend = \"10.50.0.55\"\n[container_pool]\nstart = \"10.50.0.50\"\nend = \"10.50.0.60\"\n",
        )
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlaps the VM pool"), "{e}");
    }

    #[test]
    fn zone_yaml() {
        let p = Path::new("/etc/voltainer/network/default.yaml");
        let text = "kind: NetworkZone\nname: default\nbridge: volt0\nsubnet: 10.42.0.0/24\ngateway: 10.42.0.1\ndhcp:\n  enabled: true\n  range: 10.42.0.100-10.42.0.254\n";
        let n = parse_zone_yaml(p, text).expect("valid").expect("a zone");
        assert_eq!(n.name, "default");
        assert_eq!(n.bridge, "volt0");
        assert_eq!(n.vm_range.to_string(), "10.42.0.2-10.42.0.99");
        assert_eq!(n.container_range.to_string(), "10.42.0.100-10.42.0.254");
        assert!(parse_zone_yaml(p, "kind: Something\nfoo: 1\n")
            .expect("ok")
            .is_none());
        let e = parse_zone_yaml(p, "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\ndhcp:\n  range: 10.43.0.1-10.43.0.9\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/voltainer/network/default.yaml:5:10: dhcp.range:"),
            "{e}"
        );
        let e = parse_zone_yaml(
            p,
            "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\nfoo: 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("default.yaml:4:"), "{e}");
    }
}
