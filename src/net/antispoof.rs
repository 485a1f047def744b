//! Anti-spoofing on the shared bridge: per port (TAP or host veth end), nftables
//! bridge-family rules so the workload behind it can only send what a workload needs, from
//! its own addresses: its MAC; untagged frames (a port that declares VLANs may also send
//! those tags); only the IPv4, ARP and IPv6 ethertypes; its IPv4 address when it is known
//! (ARP included) and a DHCP client's requests for its own MAC ([`Ipv4Source`]); no answers
//! to DHCP or DHCPv6 clients where the DHCP server is Volt's; IPv6 from its MAC-derived
//! link-local address (and `::` for ICMPv6 only: duplicate address detection of its own
//! address, MLD), no fragments, no router advertisements or redirects, neighbour
//! advertisements only for its own addresses; and at most so many frames a second to
//! broadcast and multicast addresses ([`GroupLimit`]), which the bridge copies to every
//! other port and to the host.
//!
//! Everything lives in Volt's table `bridge volt`: a verdict map from port name to the
//! port's chain, hooked at prerouting. Each rule has its own counter and a comment naming it
//! ([`rule`]), so a drop can be told apart from another. Each change is one `nft -f`
//! transaction, so concurrent owners never see half a rule set.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use super::nft::NftError;
use crate::config::MacAddr;

mod script;
pub use script::apply_script;

/// The comments naming each rule, in chain order.
pub mod rule {
    /// A frame whose Ethernet source is not the port's MAC.
    pub const MAC: &str = "mac";
    /// Frames to a group (broadcast or multicast) address beyond the port's
    /// [`GroupLimit`](super::GroupLimit).
    pub const GROUP_LIMIT: &str = "group-limit";
    /// Answers to DHCP clients (UDP to port 68).
    pub const DHCP_SERVER: &str = "dhcp-server";
    /// A DHCP client's requests from 0.0.0.0 for the port's MAC (accepted, not counted).
    pub const DHCP_CLIENT: &str = "dhcp-client";
    /// A DHCP request from the port's address for another MAC (BOOTP chaddr).
    pub const DHCP_CHADDR: &str = "dhcp-chaddr";
    /// A DHCP request from the port's address whose ciaddr is another address (a RELEASE of
    /// another's lease).
    pub const DHCP_CIADDR: &str = "dhcp-ciaddr";
    /// IPv4 from another source address (all but DHCP requests while none is known).
    pub const IP: &str = "ip";
    /// Untagged IPv4 that passed the rules above: accepted at once, without a counter (the
    /// common frame meets 4 rules instead of 14; the rules below are for other ethertypes).
    pub const IP_ACCEPT: &str = "ip-accept";

    /// A tagged frame of a VLAN the port declares: accepted.
    pub const VLAN_ALLOWED: &str = "vlan-allowed";
    /// An 802.1Q priority tag (VLAN 0): Linux reads the frame as untagged.
    pub const VLAN0: &str = "vlan0";
    /// Any other 802.1Q tag.
    pub const VLAN: &str = "vlan";
    /// An 802.1ad (QinQ) service tag.
    pub const QINQ: &str = "qinq";
    /// ARP whose sender hardware address is not the port's MAC.
    pub const ARP_MAC: &str = "arp-mac";
    /// ARP whose sender address is not the port's IPv4 address.
    pub const ARP_IP: &str = "arp-ip";
    /// An ARP probe (from 0.0.0.0) of another address than the port's.
    pub const ARP_PROBE: &str = "arp-probe";
    /// IPv6 fragments.
    pub const IP6_FRAG: &str = "ip6-frag";
    /// Answers to DHCPv6 clients (UDP to port 546).
    pub const DHCP6_SERVER: &str = "dhcp6-server";
    /// An ICMPv6 router advertisement.
    pub const RA: &str = "ra";
    /// An ICMPv6 redirect.
    pub const REDIRECT: &str = "redirect";
    /// A neighbour advertisement for an address that is not the port's.
    pub const NA: &str = "na";
    /// Duplicate address detection of another's address.
    pub const DAD: &str = "dad";
    /// IPv6 from the unspecified address that is not ICMPv6 (DAD, MLD).
    pub const IP6_UNSPEC: &str = "ip6-unspec";
    /// IPv6 from another source address.
    pub const IP6: &str = "ip6";
    /// Any ethertype but IPv4, ARP and IPv6.
    pub const ETHERTYPE: &str = "ethertype";
}

#[derive(Debug, thiserror::Error)]
pub enum AntispoofError {
    #[error("cannot run nft (is the nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the rules for {port}: {stderr}")]
    Nft { port: String, stderr: String },
    #[error("{port:?} is not a port name anti-spoofing rules can be written for")]
    BadPort { port: String },
    #[error("VLAN {vlan} of port {port} is outside 1-4094")]
    BadVlan { port: String, vlan: u16 },
    #[error("the broadcast limit of port {port} lets nothing through ({limit:?})")]
    BadGroupLimit { port: String, limit: GroupLimit },
}

/// The IPv4 (and ARP) sources a port may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Source {
    /// Its address: IPv4 and ARP from it, and a DHCP client's requests and its probes of
    /// that address from 0.0.0.0 (a guest whose own network setup asks DHCP).
    Known(Ipv4Addr),
    /// No address it may use yet (its DHCP address not seen, or one that is another
    /// workload's): a DHCP client's requests from 0.0.0.0 and ARP probes only.
    DhcpOnly,
    /// An address from a DHCP server Volt does not know: IPv4 and ARP limited by MAC only.
    Any,
}

/// How many frames to group addresses (broadcast and multicast: ARP requests, DHCP
/// requests, IPv6 neighbour discovery, mDNS) a port may send: a token bucket of `burst`
/// frames that refills at `per_second`. The bridge copies each such frame to every other
/// port and to the host (its ARP, ND and DHCP server), so a workload sending them at line
/// rate would flood every neighbour; what goes over is dropped and counted
/// ([`rule::GROUP_LIMIT`]). Unicast is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl GroupLimit {
    /// The default: a network's `broadcast_limit` unless its file sets one (why 2000: see
    /// [`crate::config::DEFAULT_BROADCAST_LIMIT`]).
    pub const DEFAULT_PER_SECOND: u32 = crate::config::DEFAULT_BROADCAST_LIMIT;

    /// `per_second` a second, with up to one second's worth at once.
    pub fn per_second(per_second: u32) -> GroupLimit {
        GroupLimit {
            per_second,
            burst: per_second,
        }
    }
}

impl Default for GroupLimit {
    fn default() -> GroupLimit {
        GroupLimit::per_second(GroupLimit::DEFAULT_PER_SECOND)
    }
}

/// What may leave one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPolicy {
    /// The only Ethernet (and ARP sender) address.
    pub mac: MacAddr,
    /// The IPv4 and ARP sender addresses.
    pub ipv4: Ipv4Source,
    /// IPv6 sources besides the link-local address derived from `mac`.
    pub ipv6: Vec<Ipv6Addr>,
    /// 802.1Q VLANs the workload may send tagged frames on (1-4094); empty: none.
    pub vlans: Vec<u16>,
    /// Whether the port may answer DHCP (and DHCPv6) clients: only on a network whose DHCP
    /// server is not Volt's (networkd's on the bridge), where a workload may be the server.
    pub dhcp_server: bool,
    /// Frames to broadcast and multicast addresses.
    pub group_limit: GroupLimit,
}

impl PortPolicy {
    /// A port that may send from `mac` and `ipv4` (`None`: any IPv4 address, an address
    /// Volt does not know); IPv6 link-local only; no VLANs; no DHCP server; the default
    /// [`GroupLimit`].
    pub fn new(mac: MacAddr, ipv4: Option<Ipv4Addr>) -> PortPolicy {
        PortPolicy {
            mac,
            ipv4: ipv4.map_or(Ipv4Source::Any, Ipv4Source::Known),
            ipv6: Vec::new(),
            vlans: Vec::new(),
            dhcp_server: false,
            group_limit: GroupLimit::default(),
        }
    }

    /// Every IPv6 address the port may use: the EUI-64 link-local one of its MAC first.
    pub fn ipv6_addresses(&self) -> Vec<Ipv6Addr> {
        let ll = link_local(self.mac);
        let mut v = vec![ll];
        v.extend(self.ipv6.iter().filter(|a| **a != ll));
        v
    }
}

/// The modified EUI-64 link-local address of `mac` (RFC 4291 appendix A): what Linux gives
/// an interface by default (`addr_gen_mode` eui64).
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

/// Port names go into the nft script as a chain name and a string: only what link names
/// may hold (letters, digits, `_`, `.`, `-`).
fn check_port(port: &str) -> Result<(), AntispoofError> {
    crate::config::check_link_name(port).map_err(|_| AntispoofError::BadPort { port: port.into() })
}

fn nft(port: &str, script: &str) -> Result<(), AntispoofError> {
    super::nft::run(&[], script.as_bytes()).map_err(|e| match e {
        NftError::Spawn(e) => AntispoofError::Spawn(e),
        NftError::Refused(stderr) => AntispoofError::Nft {
            port: port.into(),
            stderr,
        },
    })
}

/// Allow only what `policy` says from `port`. Replaces earlier rules of the port.
pub fn apply(port: &str, policy: &PortPolicy) -> Result<(), AntispoofError> {
    nft(port, &apply_script(port, policy)?)
}

/// Whether `port` has rules (its chain exists in the calling thread's namespace).
pub fn installed(port: &str) -> bool {
    check_port(port).is_ok()
        && Command::new("nft")
            .args(["list", "chain", "bridge", "volt", &format!("port-{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Remove `port`'s rules, if any (never touches other tables or ports).
pub fn remove(port: &str) -> Result<(), AntispoofError> {
    check_port(port)?;
    if !installed(port) {
        return Ok(());
    }
    nft(port, &format!("delete element bridge volt ports {{ \"{port}\" }}\ndelete chain bridge volt port-{port}\n"))
}

/// Dropped (or, for [`rule::VLAN_ALLOWED`], accepted) frame counters of `port`'s rules, in
/// chain order, named by [`rule`]. Empty when the port has no rules.
pub fn counters(port: &str) -> Vec<(String, u64)> {
    if check_port(port).is_err() {
        return Vec::new();
    }
    let Ok(o) = Command::new("nft")
        .args([
            "-j",
            "list",
            "chain",
            "bridge",
            "volt",
            &format!("port-{port}"),
        ])
        .output()
    else {
        return Vec::new();
    };
    parse_counters(&String::from_utf8_lossy(&o.stdout))
}

/// The named counters in `nft -j list chain` output.
fn parse_counters(json: &str) -> Vec<(String, u64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .cloned()
        .unwrap_or_default();
    items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter_map(|r| {
            let name = r.get("comment")?.as_str()?.to_string();
            let packets = r
                .get("expr")?
                .as_array()?
                .iter()
                .find_map(|e| e.get("counter")?.get("packets")?.as_u64())?;
            Some((name, packets))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> MacAddr {
        "52:54:00:12:34:56".parse().expect("mac")
    }

    #[test]
    fn link_local_is_modified_eui64() {
        assert_eq!(
            link_local(mac()),
            "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().expect("ip6")
        );
        assert_eq!(
            link_local("02:00:00:00:00:01".parse().expect("mac")),
            "fe80::ff:fe00:1".parse::<Ipv6Addr>().expect("ip6")
        );
    }

    #[test]
    fn declared_vlans_bad_vlans_and_bad_ports() {
        let mut p = PortPolicy::new(mac(), None);
        p.vlans = vec![5, 7];
        let s = apply_script("tap-1", &p).expect("script");
        let allowed = s.find("vlan id { 5, 7 } counter accept").expect("allowed");
        let vlan0 = s.find("comment \"vlan0\"").expect("vlan0");
        assert!(allowed < vlan0, "{s}");
        p.vlans = vec![0];
        assert!(matches!(
            apply_script("tap-1", &p),
            Err(AntispoofError::BadVlan { vlan: 0, .. })
        ));
        for bad in [
            "",
            "a b",
            "x\"; flush ruleset",
            "tap-1\nx",
            "0123456789abcdef",
        ] {
            assert!(
                matches!(
                    apply_script(bad, &PortPolicy::new(mac(), None)),
                    Err(AntispoofError::BadPort { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn counters_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "bridge", "table": "volt", "name": "port-x"}},
            {"rule": {"family": "bridge", "expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}, {"drop": null}], "comment": "mac"}},
            {"rule": {"family": "bridge", "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}], "comment": "vlan0"}}]}"#;
        assert_eq!(
            parse_counters(json),
            vec![("mac".to_string(), 3), ("vlan0".to_string(), 0)]
        );
        assert!(parse_counters("").is_empty());
    }
}
