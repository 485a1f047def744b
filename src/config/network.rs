//! Network definitions: `/etc/volt/networks/<name>.toml`, Voltainer zones
//! `/etc/voltainer/network/*.yaml` (`kind: NetworkZone`), and the built-in `volt0`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::derive::check_workload_name;
use super::error::{ConfigError, Location};
use super::reader::{self, Errors, Table};
use super::span::Src;

#[path = "network_values.rs"]
mod values;
use values::network_from_raw;

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
    /// Where `target` is written (checked against the workloads later).
    #[serde(skip)]
    pub target_at: Option<Location>,
}

impl std::fmt::Display for PortMap {
    /// As the file says it: `tcp 8080 -> web:80`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(
            f,
            "{proto} {} -> {}:{}",
            self.host_port, self.target, self.target_port
        )
    }
}

/// The default `broadcast_limit` (`net::antispoof::GroupLimit`'s default). A busy but
/// normal workload sends tens to a few hundred broadcast and multicast frames a second (ARP
/// for a few hundred neighbours every half minute, DHCP, duplicate address detection, MLD,
/// mDNS announcements), and a boot or an ARP sweep of a /24 a few hundred at once: 2000 a
/// second, and as many at once, is ten times that, while a flood (hundreds of thousands a
/// second from one workload, each copied to every port and the host) is cut to what every
/// neighbour, the host's neighbour tables and its DHCP server handle without noticing. A
/// network that carries multicast streams between its workloads sets a higher one.
pub const DEFAULT_BROADCAST_LIMIT: u32 = 2000;
/// What `broadcast_limit` may be: at least a few a second (ARP and DHCP need them), at most
/// far more than a port can send.
pub const BROADCAST_LIMITS: std::ops::RangeInclusive<u32> = 10..=10_000_000;

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
    /// Frames a second each workload port may send to broadcast and multicast addresses
    /// (as many again at once); more are dropped.
    pub broadcast_limit: u32,
    /// Whether Volt may create the bridge when it is missing.
    pub create_bridge: bool,
    /// Where the file writes its name, bridge and subnet (for an error about a collision
    /// with another network's).
    #[serde(skip)]
    pub at: NetworkAt,
}

/// Where a network file writes the values another network's may collide with; `None` where
/// the file does not write it (a bridge named after the network) or for the built-in one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkAt {
    pub name: Option<Location>,
    pub bridge: Option<Location>,
    pub subnet: Option<Location>,
    /// Where it sets `mtu` (checked against a cluster's overlay).
    pub mtu: Option<Location>,
}

impl Network {
    /// Whether a workload may take its address by DHCP here (a container NIC without
    /// `ipv4`): `dhcp` on, and a bridge in the host's namespace (an isolated network's
    /// workloads each have a namespace of their own, with no server). The server is Volt's
    /// ([`Network::volt_serves_dhcp`]) or, on an admin's bridge (`create_bridge = false`),
    /// the admin's, which `dhcp` says is there.
    pub fn offers_dhcp(&self) -> bool {
        self.dhcp && self.kind != NetworkType::Isolated
    }

    /// Whether the DHCP server on the bridge is Volt's: networkd's, from the `.network` Volt
    /// writes for a bridge it defines ([`Network::offers_dhcp`] and `create_bridge`; for an
    /// admin's bridge Volt writes no networkd file, so a server there is not Volt's). Where
    /// Volt writes DHCP static leases, and where a workload's port may not answer DHCP.
    pub fn volt_serves_dhcp(&self) -> bool {
        self.offers_dhcp() && self.create_bridge
    }

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
            broadcast_limit: DEFAULT_BROADCAST_LIMIT,
            create_bridge: true,
            at: NetworkAt::default(),
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
pub(super) fn default_ranges(subnet: &Ipv4Net, gateway: Ipv4Addr) -> (Range, Range) {
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

/// Whether `r` holds no address a workload can take (it is inverted, or holds the gateway
/// alone).
pub(super) fn no_room(r: Range, gateway: Ipv4Addr) -> bool {
    r.start > r.end || (r.start == r.end && r.start == gateway)
}

/// The error of a subnet whose default split leaves a pool no address (a /30 and smaller),
/// or `None`.
pub(super) fn too_small(
    subnet: &Ipv4Net,
    gateway: Ipv4Addr,
    vm: Range,
    ct: Range,
) -> Option<String> {
    let what = if no_room(vm, gateway) {
        "the VM pool"
    } else if no_room(ct, gateway) {
        "the container pool"
    } else {
        return None;
    };
    Some(format!(
        "{subnet} leaves no address for {what} (besides the gateway {gateway}): use a /29 or larger subnet, or give the pools yourself"
    ))
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

struct RawRange {
    start: Spanned<String>,
    end: Spanned<String>,
}

struct RawPortMap {
    proto: Option<Proto>,
    host_port: Spanned<u16>,
    target: Spanned<String>,
    target_port: Spanned<u16>,
}

struct RawNetwork {
    bridge: Option<Spanned<String>>,
    subnet: Spanned<String>,
    gateway: Option<Spanned<String>>,
    kind: Option<NetworkType>,
    dhcp: Option<bool>,
    mtu: Option<Spanned<u32>>,
    pool: Option<Spanned<RawRange>>,
    container_pool: Option<Spanned<RawRange>>,
    reservations: BTreeMap<String, Spanned<String>>,
    uplink: Option<Spanned<String>>,
    broadcast_limit: Option<Spanned<u32>>,
    create_bridge: Option<bool>,
    port_map: Vec<Spanned<RawPortMap>>,
}

const NETWORK_TYPES: [(&str, NetworkType); 3] = [
    ("bridged", NetworkType::Bridged),
    ("isolated", NetworkType::Isolated),
    ("host-only", NetworkType::HostOnly),
];
const PROTOS: [(&str, Proto); 2] = [("tcp", Proto::Tcp), ("udp", Proto::Udp)];

/// A required string of table `t`, or an error saying it is missing.
fn required(
    src: &Src,
    t: &Table,
    e: &mut Errors,
    key: &'static str,
    what: &str,
) -> Option<Spanned<String>> {
    let v = t.string(src, e, key);
    if v.is_none() && !t.has(key) {
        e.push(src.invalid(&t.field(key), t.span(), format!("missing: {what}")));
    }
    v
}

fn read_range(
    src: &Src,
    t: &Table,
    e: &mut Errors,
    key: &'static str,
) -> Option<Spanned<RawRange>> {
    let r = t.table(src, e, key)?;
    let start = required(src, &r, e, "start", "the first address of the range");
    let end = required(src, &r, e, "end", "the last address of the range");
    r.finish(src, e, &[]);
    Some(Spanned::new(
        r.span(),
        RawRange {
            start: start?,
            end: end?,
        },
    ))
}

impl RawNetwork {
    fn read(src: &Src, t: &Table, e: &mut Errors) -> Option<RawNetwork> {
        let raw = RawNetwork {
            bridge: t.string(src, e, "bridge"),
            subnet: required(
                src,
                t,
                e,
                "subnet",
                "the network's IPv4 subnet, e.g. \"10.43.0.0/24\"",
            )
            .unwrap_or_else(|| Spanned::new(0..0, String::new())),
            gateway: t.string(src, e, "gateway"),
            kind: t.choice(src, e, "type", &NETWORK_TYPES),
            dhcp: t.boolean(src, e, "dhcp").map(Spanned::into_inner),
            mtu: t.integer(src, e, "mtu", 68..=9000, ""),
            pool: read_range(src, t, e, "pool"),
            container_pool: read_range(src, t, e, "container_pool"),
            reservations: t.string_map(src, e, "reservations"),
            uplink: t.string(src, e, "uplink"),
            broadcast_limit: t.integer(
                src,
                e,
                "broadcast_limit",
                BROADCAST_LIMITS,
                " frames a second",
            ),
            create_bridge: t.boolean(src, e, "create_bridge").map(Spanned::into_inner),
            port_map: t
                .tables(src, e, "port_map")
                .iter()
                .filter_map(|pm| {
                    let proto = pm.choice(src, e, "proto", &PROTOS);
                    let host_port = pm.integer(src, e, "host_port", 1..=u16::MAX, "");
                    let target =
                        required(src, pm, e, "target", "the workload the port map reaches");
                    let target_port = pm.integer(src, e, "target_port", 1..=u16::MAX, "");
                    for (key, v) in [("host_port", &host_port), ("target_port", &target_port)] {
                        if v.is_none() && !pm.has(key) {
                            e.push(src.invalid(
                                &pm.field(key),
                                pm.span(),
                                "missing: a port 1-65535".into(),
                            ));
                        }
                    }
                    pm.finish(src, e, &[]);
                    Some(Spanned::new(
                        pm.span(),
                        RawPortMap {
                            proto,
                            host_port: host_port?,
                            target: target?,
                            target_port: target_port?,
                        },
                    ))
                })
                .collect(),
        };
        t.finish(src, e, &[]);
        Some(raw)
    }
}

/// Parse `/etc/volt/networks/<name>.toml`. `path` is the name shown in errors. Every error
/// is returned, in line order: of the file's form (unknown keys, types) and of its values
/// (those placed in the subnet only once the subnet is right).
pub fn parse_network_toml(path: &Path, text: &str) -> Result<Network, Vec<ConfigError>> {
    let (src, name, doc) = reader::open(path, text, check_workload_name)?;
    let mut errors = Vec::new();
    let raw = RawNetwork::read(&src, &Table::root(&doc), &mut errors);
    // The values are checked even when the form has errors: every error in one run.
    match raw.map(|raw| network_from_raw(&src, name, raw)) {
        Some(Ok(net)) if errors.is_empty() => Ok(net),
        Some(Err(more)) => {
            errors.extend(more);
            Err(reader::in_line_order(errors))
        }
        _ => Err(reader::in_line_order(errors)),
    }
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

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
