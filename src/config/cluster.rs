//! `/etc/volt/cluster.toml`: the etcd endpoints (with TLS client certificate options), this
//! host's name and underlay address, and a VNI per clustered network. Absent: one host, as
//! without a cluster. Pure: the file's text in, a checked [`ClusterConfig`] or errors naming
//! file, line, column and field out; the networks it names are checked against the set.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::Spanned;

use super::derive::check_workload_name;
use super::endpoint::Endpoint;
use super::error::{looked_at, ConfigError, Location};
use super::network::{parse_ip, Network, NetworkType};
use super::reader::{self, Errors, Table};
use super::span::Src;

/// Where the file lives, relative to the root.
pub const CLUSTER_FILE: &str = "etc/volt/cluster.toml";
/// What VXLAN adds to every frame on the underlay: outer Ethernet 14, IPv4 20, UDP 8,
/// VXLAN 8 bytes.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The IANA VXLAN port.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Seconds a host's lease lives without a keep-alive.
pub const DEFAULT_LEASE_TTL: u32 = 10;
const MAX_VNI: u32 = 0x00ff_ffff;

/// How this host reaches etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, tried in order.
    pub endpoints: Vec<String>,
    /// CA bundle that signed the members' certificates (https).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (https, both or neither).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: u64,
    /// Where the file writes `ca`, `cert` and `key` (for an error about the files they name).
    #[serde(skip)]
    pub at: EtcdAt,
}

/// Where `[etcd]` writes its file paths; `None` where it does not (or for a config made in
/// code).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdAt {
    pub ca: Option<Location>,
    pub cert: Option<Location>,
    pub key: Option<Location>,
    /// Where each endpoint is written, in the order of [`EtcdConfig::endpoints`].
    pub endpoints: Vec<Location>,
}

/// One network shared across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterNetwork {
    pub name: String,
    pub bridge: String,
    pub vni: u32,
}

/// A checked `cluster.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    pub path: PathBuf,
    /// This host's name in the cluster (default: the hostname).
    pub host: String,
    /// This host's underlay address: the VXLAN endpoint the other hosts send to.
    pub underlay: Ipv4Addr,
    /// The underlay's MTU (checked against the interface at run time).
    pub underlay_mtu: u32,
    pub vxlan_port: u16,
    pub lease_ttl: u32,
    pub etcd: EtcdConfig,
    pub networks: Vec<ClusterNetwork>,
}

impl ClusterConfig {
    /// The MTU workloads on a clustered network get: the underlay's minus VXLAN's overhead.
    pub fn overlay_mtu(&self) -> u32 {
        self.underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    }

    /// The clustered network called `name`.
    pub fn network(&self, name: &str) -> Option<&ClusterNetwork> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// What works but is likely not what was meant, as `file: field: message` lines:
    /// - a file that shares no network. Such a cluster still claims workload names across
    ///   its hosts (a VM runs on one host at a time), so it is not refused;
    /// - an endpoint in plain HTTP to another machine: etcd then checks no client, and this
    ///   host's lease and claims cross the network in clear. A test cluster or one behind a
    ///   trusted network may mean it, so it is not refused either.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.networks.is_empty() {
            w.push(format!(
                "{}: network: no [[network]], so this cluster shares no network: workload names are claimed across its hosts, but every network stays this host's own (no VXLAN port, addresses unique on this host only); add [[network]] with name and vni to share one",
                self.path.display()
            ));
        }
        for (i, url) in self.etcd.endpoints.iter().enumerate() {
            let Ok(ep) = Endpoint::parse(url) else {
                continue;
            };
            if ep.tls || ep.is_loopback() {
                continue;
            }
            let at = self
                .etcd
                .at
                .endpoints
                .get(i)
                .cloned()
                .unwrap_or_else(|| Location::file(&self.path));
            w.push(format!(
                "{at}: etcd.endpoints[{i}]: {url:?} is plain HTTP to another machine: anyone who reaches that port can rewrite this cluster's host leases and workload claims (etcd checks no client there), and they cross the network unencrypted; use https:// endpoints with ca, cert and key"
            ));
        }
        w
    }
}

/// Endpoint `i` of `[etcd]`: a URL the client can reach, naming a member no earlier entry
/// (`earlier`: index and endpoint) names. Returns it as written (without a trailing `/`).
fn endpoint(
    src: &Src,
    e: &Spanned<String>,
    i: usize,
    earlier: &[(usize, Endpoint)],
) -> Result<(String, Endpoint), ConfigError> {
    let field = format!("etcd.endpoints[{i}]");
    let invalid = |message: String| src.invalid(&field, e.span(), message);
    let ep = Endpoint::parse(e.get_ref()).map_err(|bad| invalid(bad.to_string()))?;
    if let Some((j, _)) = earlier.iter().find(|(_, o)| o.member() == ep.member()) {
        return Err(invalid(format!(
            "{:?} names the same etcd member as etcd.endpoints[{j}] ({}:{}): list each member once",
            e.get_ref(),
            ep.host,
            ep.port
        )));
    }
    Ok((e.get_ref().trim_end_matches('/').to_string(), ep))
}

/// The local host name (`/etc/hostname`, else the kernel's), for the default `host`.
pub fn default_host_name(root: &Path) -> String {
    let from_file = std::fs::read_to_string(root.join("etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    from_file
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// What a valid underlay address is, for the errors about one that is not.
const UNDERLAY_VALID: &str = "give this host's unicast address on the network between the hosts (like underlay = \"192.168.50.11\")";

/// Why `ip` cannot be this host's VXLAN endpoint, if it cannot: other hosts must be able to
/// send unicast packets to it across a router too.
fn unusable_underlay(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("is the unspecified address")
    } else if ip.is_broadcast() {
        Some("is the broadcast address")
    } else if ip.is_loopback() {
        Some("is a loopback address")
    } else if ip.is_multicast() {
        Some("is a multicast address")
    } else if ip.is_link_local() {
        Some("is a link-local address (169.254.0.0/16, never routed)")
    } else if ip.octets()[0] >= 240 {
        Some("is a reserved address (240.0.0.0/4)")
    } else {
        None
    }
}

/// Parse `cluster.toml` (`path` is the name shown in errors); `host_default` is used when it
/// names no host; networks are checked against `networks`. Every error, in line order.
pub fn parse_cluster_toml(
    path: &Path,
    text: &str,
    host_default: &str,
    networks: &[Network],
) -> Result<ClusterConfig, Vec<ConfigError>> {
    let read = reader::read(
        path,
        text,
        |_| Ok(()),
        |src, _, t, e| cluster_from(src, t, e, host_default, networks),
    )?;
    // `None` comes with errors, so `read` returned them already.
    read.ok_or_else(|| {
        vec![ConfigError::Invalid {
            at: Location::file(path),
            field: "cluster".into(),
            message: "incomplete".into(),
        }]
    })
}

fn cluster_from(
    src: &Src,
    t: &Table,
    e: &mut Errors,
    host_default: &str,
    networks: &[Network],
) -> Option<ClusterConfig> {
    let host = match t.string(src, e, "host") {
        Some(h) => match check_workload_name(h.get_ref()) {
            Ok(()) => Some(h.into_inner()),
            Err(m) => {
                e.push(src.invalid("host", h.span(), m));
                None
            }
        },
        None => match check_workload_name(host_default) {
            Ok(()) => Some(host_default.to_string()),
            Err(m) => {
                e.push(src.whole("host", format!("no host given and the hostname {m}")));
                None
            }
        },
    };
    let underlay = match t.string(src, e, "underlay") {
        Some(u) => match parse_ip(src, "underlay", &u) {
            Ok(ip) => match unusable_underlay(ip) {
                Some(why) => {
                    e.push(src.invalid(
                        "underlay",
                        u.span(),
                        format!("{ip} {why}, so it cannot be a VXLAN endpoint other hosts reach: {UNDERLAY_VALID}"),
                    ));
                    None
                }
                None => Some((ip, u.span())),
            },
            Err(err) => {
                e.push(err);
                None
            }
        },
        None => {
            if !t.has("underlay") {
                e.push(src.whole(
                    "underlay",
                    "missing: this host's address on the network the hosts share (like underlay = \"192.168.50.11\")".into(),
                ));
            }
            None
        }
    };
    let underlay_mtu = t
        .integer(src, e, "underlay_mtu", 576..=9216u32, "")
        .map_or(1500, Spanned::into_inner);
    let vxlan_port = t
        .integer(src, e, "vxlan_port", 1..=u16::MAX, "")
        .map_or(DEFAULT_VXLAN_PORT, Spanned::into_inner);
    let lease_ttl = t
        .integer(src, e, "lease_ttl", 2..=3600u32, " s")
        .map_or(DEFAULT_LEASE_TTL, Spanned::into_inner);
    let etcd = match t.table(src, e, "etcd") {
        Some(et) => {
            let c = etcd_config(src, &et, e, lease_ttl);
            et.finish(src, e, &[]);
            c
        }
        None => {
            if !t.has("etcd") {
                e.push(src.whole(
                    "etcd",
                    "missing: an [etcd] table with endpoints = [\"http://HOST:2379\", ...]".into(),
                ));
            }
            None
        }
    };
    let mut nets: Vec<ClusterNetwork> = Vec::new();
    let top = t.asked();
    for (i, nt) in t.tables(src, e, "network").iter().enumerate() {
        if let Some(n) = cluster_network(src, i, nt, networks, &nets, e) {
            nets.push(n);
        }
        nt.finish(src, e, &top);
    }
    if let Some((ip, span)) = &underlay {
        // The overlay's own subnet on the underlay: the VXLAN packets would be routed into
        // the bridge they carry (the gateway, .1, is on every host's bridge).
        for n in networks
            .iter()
            .filter(|n| nets.iter().any(|c| c.name == n.name))
        {
            if n.subnet.contains(ip) {
                e.push(src.invalid(
                    "underlay",
                    span.clone(),
                    format!(
                        "{ip} is inside {} ({}), which this cluster shares: give the host's address on the network between the hosts",
                        n.name, n.subnet
                    ),
                ));
            }
        }
    }
    t.finish(src, e, &[]);
    Some(ClusterConfig {
        path: src.path.to_path_buf(),
        host: host?,
        underlay: underlay?.0,
        underlay_mtu,
        vxlan_port,
        lease_ttl,
        etcd: etcd?,
        networks: nets,
    })
}

/// `[[network]]` entry `i`: a network of this host that is not isolated, with a VNI no other
/// entry has.
fn cluster_network(
    src: &Src,
    i: usize,
    t: &Table,
    networks: &[Network],
    earlier: &[ClusterNetwork],
    e: &mut Errors,
) -> Option<ClusterNetwork> {
    let field = format!("network[{i}]");
    let name = t.string(src, e, "name");
    let vni = t.integer(src, e, "vni", 1..=MAX_VNI, "");
    for (key, v) in [("name", name.is_none()), ("vni", vni.is_none())] {
        if v && !t.has(key) {
            e.push(src.invalid(
                &t.field(key),
                t.span(),
                format!("missing: each [[network]] has a {key}"),
            ));
        }
    }
    let (name, vni) = (name?, vni?.into_inner());
    let Some(net) = networks.iter().find(|x| &x.name == name.get_ref()) else {
        e.push(src.invalid(
            &format!("{field}.name"),
            name.span(),
            format!("no network named {:?} (see volt net list)", name.get_ref()),
        ));
        return None;
    };
    if net.kind == NetworkType::Isolated {
        e.push(src.invalid(
            &format!("{field}.name"),
            name.span(),
            format!(
                "{} is an isolated network: it has no bridge to share",
                net.name
            ),
        ));
        return None;
    }
    if let Some(o) = earlier.iter().find(|o| o.name == net.name || o.vni == vni) {
        let what = if o.name == net.name {
            format!("{} is listed twice", net.name)
        } else {
            format!("VNI {vni} is already used by {}", o.name)
        };
        e.push(src.invalid(&field, t.span(), what));
        return None;
    }
    Some(ClusterNetwork {
        name: net.name.clone(),
        bridge: net.bridge.clone(),
        vni,
    })
}

fn etcd_config(src: &Src, t: &Table, e: &mut Errors, lease_ttl: u32) -> Option<EtcdConfig> {
    let mut endpoints = Vec::new();
    let mut endpoints_at = Vec::new();
    let mut any_tls = false;
    match t.string_list(src, e, "endpoints") {
        Some(l) if l.get_ref().is_empty() => e.push(src.invalid(
            "etcd.endpoints",
            l.span(),
            "at least one endpoint is needed".into(),
        )),
        Some(l) => {
            let mut parsed: Vec<(usize, Endpoint)> = Vec::new();
            for (i, u) in l.get_ref().iter().enumerate() {
                match endpoint(src, u, i, &parsed) {
                    Ok((url, ep)) => {
                        any_tls |= ep.tls;
                        endpoints.push(url);
                        endpoints_at.push(src.at(u.span().start));
                        parsed.push((i, ep));
                    }
                    Err(err) => e.push(err),
                }
            }
        }
        None => {
            if !t.has("endpoints") {
                e.push(src.invalid(
                    "etcd.endpoints",
                    t.span(),
                    "missing: endpoints = [\"http://HOST:2379\", ...]".into(),
                ));
            }
        }
    }
    let mut file = |field: &'static str| match t.string(src, e, field) {
        Some(s) if !s.get_ref().starts_with('/') => {
            e.push(src.invalid(
                &format!("etcd.{field}"),
                s.span(),
                format!("{:?} must be an absolute path", s.get_ref()),
            ));
            (None, None)
        }
        Some(s) => (
            Some(src.at(s.span().start)),
            Some(PathBuf::from(s.into_inner())),
        ),
        None => (None, None),
    };
    let ((ca_at, ca), (cert_at, cert), (key_at, key)) = (file("ca"), file("cert"), file("key"));
    if cert.is_some() != key.is_some() {
        e.push(src.invalid(
            "etcd",
            t.span(),
            "cert and key go together: give both or neither".into(),
        ));
    }
    if !any_tls && !endpoints.is_empty() && (ca.is_some() || cert.is_some()) {
        e.push(src.invalid(
            "etcd",
            t.span(),
            "ca, cert and key need https:// endpoints".into(),
        ));
    }
    let timeout = t.integer(src, e, "timeout_ms", 100..=60_000u64, "");
    let timeout_ms = timeout.as_ref().map_or(3000, |v| *v.get_ref());
    // The keep-alive runs every third of the TTL; one that meets a dead member first must
    // still reach a live one (one timeout later) before the lease lapses.
    if timeout_ms * 3 > u64::from(lease_ttl) * 1000 {
        let (field, span) = match &timeout {
            Some(v) => ("etcd.timeout_ms", v.span()),
            None => ("etcd", t.span()),
        };
        e.push(src.invalid(
            field,
            span,
            format!(
                "timeout_ms {timeout_ms} is more than a third of lease_ttl ({lease_ttl} s): a keep-alive that meets a dead etcd member would not reach a live one before this host's lease lapses; lower timeout_ms or raise lease_ttl"
            ),
        ));
    }
    (!endpoints.is_empty()).then_some(EtcdConfig {
        endpoints,
        ca,
        cert,
        key,
        timeout_ms,
        at: EtcdAt {
            ca: ca_at,
            cert: cert_at,
            key: key_at,
            endpoints: endpoints_at,
        },
    })
}

/// What a cluster changes in the networks it shares: a network whose MTU was not set gets
/// the underlay's minus VXLAN's 50 bytes; one set higher than that is an error (naming the
/// network's file and the cluster file).
pub fn apply_to_networks(c: &ClusterConfig, networks: &mut [Network]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let fit = c.overlay_mtu();
    for cn in &c.networks {
        let Some(net) = networks.iter_mut().find(|n| n.name == cn.name) else {
            continue;
        };
        if !net.mtu_explicit {
            net.mtu = fit;
        } else if net.mtu > fit {
            errors.push(ConfigError::Invalid {
                at: net.at.mtu.clone().unwrap_or_else(|| {
                    Location::file(net.source.as_deref().unwrap_or(&c.path))
                }),
                field: "mtu".into(),
                message: format!(
                    "{} is clustered ({}) over an underlay of MTU {}: its MTU {} must be at most {fit} (the underlay's minus {VXLAN_OVERHEAD} bytes of VXLAN)",
                    net.name,
                    c.path.display(),
                    c.underlay_mtu,
                    net.mtu
                ),
            });
        }
    }
    errors
}

/// Files the config names that must be readable (TLS material), as errors when they are not.
/// Under a `root` other than `/` they are looked for below it (the daemon opens the paths as
/// written); the errors then say where validate looked.
pub fn check_files(c: &ClusterConfig, root: &Path) -> Vec<ConfigError> {
    let at = &c.etcd.at;
    [
        ("ca", &c.etcd.ca, &at.ca),
        ("cert", &c.etcd.cert, &at.cert),
        ("key", &c.etcd.key, &at.key),
    ]
    .into_iter()
    .filter_map(|(field, p, at)| {
        let p = p.as_ref()?;
        let real = root.join(p.strip_prefix("/").unwrap_or(p));
        let at = at.clone().unwrap_or_else(|| Location::file(&c.path));
        let field = format!("etcd.{field}");
        let checked = (real != *p).then(|| real.clone());
        match std::fs::File::open(&real).and_then(|f| f.metadata()) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some(ConfigError::Invalid {
                at,
                field,
                message: format!(
                    "{} is not a regular file{}: give the PEM file itself",
                    p.display(),
                    looked_at(checked.as_deref())
                ),
            }),
            Err(source) => Some(ConfigError::Unreadable {
                at,
                field,
                path: p.clone(),
                checked,
                source,
            }),
        }
    })
    .collect()
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
