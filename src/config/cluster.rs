//! `/etc/volt/cluster.toml`: the etcd endpoints (with TLS client certificate options), this
//! host's name and underlay address, and a VNI per clustered network. Absent: one host, as
//! without a cluster. Pure: the file's text in, a checked [`ClusterConfig`] or errors naming
//! file, line, column and field out; the networks it names are checked against the set.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::derive::check_workload_name;
use super::error::{ConfigError, Location};
use super::network::{parse_ip, Network, NetworkType};
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Spanned<Vec<Spanned<String>>>,
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: Spanned<String>,
    vni: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    host: Option<Spanned<String>>,
    underlay: Spanned<String>,
    underlay_mtu: Option<Spanned<u32>>,
    vxlan_port: Option<Spanned<u16>>,
    lease_ttl: Option<Spanned<u32>>,
    etcd: Spanned<RawEtcd>,
    #[serde(default)]
    network: Vec<Spanned<RawNetwork>>,
}

fn endpoint(src: &Src, e: &Spanned<String>, i: usize) -> Result<(String, bool), ConfigError> {
    let field = format!("etcd.endpoints[{i}]");
    let s = e.get_ref().trim_end_matches('/');
    let bad = |why: &str| {
        src.invalid(
            &field,
            e.span(),
            format!("{:?} {why} (like http://192.168.1.10:2379)", e.get_ref()),
        )
    };
    let (tls, rest) = match s.split_once("://") {
        Some(("http", r)) => (false, r),
        Some(("https", r)) => (true, r),
        _ => return Err(bad("is not an http:// or https:// URL")),
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad("is not host:port"));
    }
    Ok((s.to_string(), tls))
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

/// Parse `cluster.toml` (`path` is the name shown in errors); `host_default` is used when it
/// names no host; networks are checked against `networks`.
pub fn parse_cluster_toml(
    path: &Path,
    text: &str,
    host_default: &str,
    networks: &[Network],
) -> Result<ClusterConfig, ConfigError> {
    let src = Src::new(path, text);
    let raw: RawCluster = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let host = match &raw.host {
        Some(h) => {
            check_workload_name(h.get_ref()).map_err(|m| src.invalid("host", h.span(), m))?;
            h.get_ref().clone()
        }
        None => {
            check_workload_name(host_default)
                .map_err(|m| src.whole("host", format!("no host given and the hostname {m}")))?;
            host_default.to_string()
        }
    };
    let underlay = parse_ip(&src, "underlay", &raw.underlay)?;
    if underlay.is_unspecified() || underlay.is_loopback() || underlay.is_multicast() {
        return Err(src.invalid(
            "underlay",
            raw.underlay.span(),
            format!("{underlay} cannot be a VXLAN endpoint other hosts reach"),
        ));
    }
    let underlay_mtu = match &raw.underlay_mtu {
        Some(m) if !(576..=9216).contains(m.get_ref()) => {
            return Err(src.invalid(
                "underlay_mtu",
                m.span(),
                format!("{} is outside 576-9216", m.get_ref()),
            ))
        }
        Some(m) => *m.get_ref(),
        None => 1500,
    };
    let vxlan_port = match &raw.vxlan_port {
        Some(p) if *p.get_ref() == 0 => {
            return Err(src.invalid("vxlan_port", p.span(), "must be 1-65535".into()))
        }
        Some(p) => *p.get_ref(),
        None => DEFAULT_VXLAN_PORT,
    };
    let lease_ttl = match &raw.lease_ttl {
        Some(t) if !(2..=3600).contains(t.get_ref()) => {
            return Err(src.invalid(
                "lease_ttl",
                t.span(),
                format!("{} s is outside 2-3600", t.get_ref()),
            ))
        }
        Some(t) => *t.get_ref(),
        None => DEFAULT_LEASE_TTL,
    };
    let etcd = etcd_config(&src, &raw.etcd)?;
    let mut nets: Vec<ClusterNetwork> = Vec::new();
    for (i, n) in raw.network.iter().enumerate() {
        let r = n.get_ref();
        let field = format!("network[{i}]");
        let name = r.name.get_ref();
        let Some(net) = networks.iter().find(|x| &x.name == name) else {
            return Err(src.invalid(
                &format!("{field}.name"),
                r.name.span(),
                format!("no network named {name:?} (see volt net list)"),
            ));
        };
        if net.kind == NetworkType::Isolated {
            return Err(src.invalid(
                &format!("{field}.name"),
                r.name.span(),
                format!("{name} is an isolated network: it has no bridge to share"),
            ));
        }
        let vni = *r.vni.get_ref();
        if vni == 0 || vni > MAX_VNI {
            return Err(src.invalid(
                &format!("{field}.vni"),
                r.vni.span(),
                format!("{vni} is outside 1-{MAX_VNI}"),
            ));
        }
        if let Some(o) = nets.iter().find(|o| o.name == *name || o.vni == vni) {
            let what = if o.name == *name {
                format!("{name} is listed twice")
            } else {
                format!("VNI {vni} is already used by {}", o.name)
            };
            return Err(src.invalid(&field, n.span(), what));
        }
        nets.push(ClusterNetwork {
            name: name.clone(),
            bridge: net.bridge.clone(),
            vni,
        });
    }
    Ok(ClusterConfig {
        path: path.to_path_buf(),
        host,
        underlay,
        underlay_mtu,
        vxlan_port,
        lease_ttl,
        etcd,
        networks: nets,
    })
}

fn etcd_config(src: &Src, raw: &Spanned<RawEtcd>) -> Result<EtcdConfig, ConfigError> {
    let r = raw.get_ref();
    if r.endpoints.get_ref().is_empty() {
        return Err(src.invalid(
            "etcd.endpoints",
            r.endpoints.span(),
            "at least one endpoint is needed".into(),
        ));
    }
    let mut endpoints = Vec::new();
    let mut any_tls = false;
    for (i, e) in r.endpoints.get_ref().iter().enumerate() {
        let (url, tls) = endpoint(src, e, i)?;
        any_tls |= tls;
        endpoints.push(url);
    }
    let file = |f: &Option<Spanned<String>>, field: &str| -> Result<Option<PathBuf>, ConfigError> {
        match f {
            None => Ok(None),
            Some(s) if !s.get_ref().starts_with('/') => Err(src.invalid(
                &format!("etcd.{field}"),
                s.span(),
                format!("{:?} must be an absolute path", s.get_ref()),
            )),
            Some(s) => Ok(Some(PathBuf::from(s.get_ref()))),
        }
    };
    let ca = file(&r.ca, "ca")?;
    let cert = file(&r.cert, "cert")?;
    let key = file(&r.key, "key")?;
    if cert.is_some() != key.is_some() {
        return Err(src.invalid(
            "etcd",
            raw.span(),
            "cert and key go together: give both or neither".into(),
        ));
    }
    if !any_tls && (ca.is_some() || cert.is_some()) {
        return Err(src.invalid(
            "etcd",
            raw.span(),
            "ca, cert and key need https:// endpoints".into(),
        ));
    }
    let timeout_ms = match &r.timeout_ms {
        Some(t) if !(100..=60_000).contains(t.get_ref()) => {
            return Err(src.invalid(
                "etcd.timeout_ms",
                t.span(),
                format!("{} is outside 100-60000", t.get_ref()),
            ))
        }
        Some(t) => *t.get_ref(),
        None => 3000,
    };
    Ok(EtcdConfig {
        endpoints,
        ca,
        cert,
        key,
        timeout_ms,
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
                at: Location::file(net.source.as_deref().unwrap_or(&c.path)),
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
pub fn check_files(c: &ClusterConfig, root: &Path) -> Vec<ConfigError> {
    [
        ("ca", &c.etcd.ca),
        ("cert", &c.etcd.cert),
        ("key", &c.etcd.key),
    ]
    .into_iter()
    .filter_map(|(field, p)| p.as_ref().map(|p| (field, p)))
    .filter_map(|(field, p)| {
        let real = root.join(p.strip_prefix("/").unwrap_or(p));
        std::fs::File::open(&real)
            .err()
            .map(|e| ConfigError::Invalid {
                at: Location::file(&c.path),
                field: format!("etcd.{field}"),
                message: format!("cannot read {}: {e}", p.display()),
            })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/etc/volt/cluster.toml";

    fn nets() -> Vec<Network> {
        let mut iso = Network::builtin_default();
        iso.name = "iso".into();
        iso.bridge = "iso0".into();
        iso.kind = NetworkType::Isolated;
        vec![Network::builtin_default(), iso]
    }

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        parse_cluster_toml(Path::new(P), text, "node-a", &nets())
    }

    const GOOD: &str = "underlay = \"192.168.7.1\"\n[etcd]\nendpoints = [\"http://192.168.7.1:2379\", \"http://192.168.7.2:2379/\"]\n[[network]]\nname = \"volt0\"\nvni = 42\n";

    #[test]
    fn defaults_and_network() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.host, "node-a");
        assert_eq!(c.underlay_mtu, 1500);
        assert_eq!(c.overlay_mtu(), 1450);
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.vxlan_port, 4789);
        assert_eq!(c.etcd.endpoints[1], "http://192.168.7.2:2379");
        assert_eq!(
            c.networks,
            vec![ClusterNetwork {
                name: "volt0".into(),
                bridge: "volt0".into(),
                vni: 42
            }]
        );
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let cases = [
            (
                GOOD.replace("192.168.7.1\"\n[etcd]", "127.0.0.1\"\n[etcd]"),
                "cluster.toml:1:12: underlay: 127.0.0.1 cannot be a VXLAN endpoint",
            ),
            (
                GOOD.replace("vni = 42", "vni = 16777216"),
                ":6:7: network[0].vni: 16777216 is outside 1-16777215",
            ),
            (
                GOOD.replace("name = \"volt0\"", "name = \"lab\""),
                ":5:8: network[0].name: no network named \"lab\"",
            ),
            (
                GOOD.replace("name = \"volt0\"", "name = \"iso\""),
                "network[0].name: iso is an isolated network",
            ),
            (
                GOOD.replace("http://192.168.7.1:2379\"", "ftp://x:1\""),
                ":3:14: etcd.endpoints[0]: \"ftp://x:1\" is not an http:// or https:// URL",
            ),
            (
                GOOD.replace("[etcd]\n", "[etcd]\ncert = \"/c.pem\"\n"),
                "etcd: cert and key go together",
            ),
            (
                GOOD.replace("[etcd]\n", "[etcd]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n"),
                "etcd: ca, cert and key need https:// endpoints",
            ),
            (
                format!("{GOOD}[[network]]\nname = \"volt0\"\nvni = 7\n"),
                ":7:1: network[1]: volt0 is listed twice",
            ),
            (
                format!("lease_ttl = 1\n{GOOD}"),
                ":1:13: lease_ttl: 1 s is outside 2-3600",
            ),
            (
                format!("colour = 1\n{GOOD}"),
                "cluster.toml:1:1: unknown field `colour`",
            ),
            (
                format!("host = \"a b\"\n{GOOD}"),
                ":1:8: host: \"a b\" is not a valid systemd instance name",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}\n=> {e}\nwanted {want}");
        }
    }

    #[test]
    fn mtu_is_derived_unless_set_and_checked_when_set() {
        let c =
            parse(&GOOD.replace("underlay = ", "underlay_mtu = 1400\nunderlay = ")).expect("ok");
        let mut n = nets();
        assert!(apply_to_networks(&c, &mut n).is_empty());
        assert_eq!(n[0].mtu, 1350);
        let mut n = nets();
        n[0].mtu = 1500;
        n[0].mtu_explicit = true;
        n[0].source = Some("/etc/volt/networks/volt0.toml".into());
        let e = apply_to_networks(&c, &mut n);
        assert_eq!(e.len(), 1);
        let e = e[0].to_string();
        assert!(
            e.starts_with("/etc/volt/networks/volt0.toml: mtu: volt0 is clustered"),
            "{e}"
        );
        assert!(e.contains("its MTU 1500 must be at most 1350"), "{e}");
    }
}
