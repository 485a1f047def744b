//! Anti-spoofing on the shared bridge: per port (TAP or host veth end), nftables
//! bridge-family rules so the workload behind it can only send what a workload needs, from
//! its own addresses: its MAC; untagged frames (a port that declares VLANs may also send
//! those tags); only the IPv4, ARP and IPv6 ethertypes; its IPv4 address when it is known
//! (ARP included) and a DHCP client's requests for its own MAC ([`Ipv4Source`]); no answers
//! to DHCP or DHCPv6 clients where the DHCP server is Volt's; IPv6 from its MAC-derived
//! link-local address (and `::` for ICMPv6 only: duplicate address detection of its own
//! address, MLD), no fragments, no router advertisements or redirects, neighbour
//! advertisements only for its own addresses.
//!
//! Everything lives in Volt's table `bridge volt`: a verdict map from port name to the
//! port's chain, hooked at prerouting. Each rule has its own counter and a comment naming it
//! ([`rule`]), so a drop can be told apart from another. Each change is one `nft -f`
//! transaction, so concurrent owners never see half a rule set.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use super::nft::NftError;
use crate::config::MacAddr;

/// The comments naming each rule, in chain order.
pub mod rule {
    /// A frame whose Ethernet source is not the port's MAC.
    pub const MAC: &str = "mac";
    /// Answers to DHCP clients (UDP to port 68).
    pub const DHCP_SERVER: &str = "dhcp-server";
    /// A DHCP client's requests from 0.0.0.0 for the port's MAC (accepted, not counted).
    pub const DHCP_CLIENT: &str = "dhcp-client";
    /// IPv4 from another source address (all but DHCP requests while none is known).
    pub const IP: &str = "ip";
    /// Untagged IPv4 that passed the rules above: accepted at once, without a counter (the
    /// common frame meets 3 rules instead of 13; the rules below are for other ethertypes).
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
}

impl PortPolicy {
    /// A port that may send from `mac` and `ipv4` (`None`: any IPv4 address, an address
    /// Volt does not know); IPv6 link-local only; no VLANs; no DHCP server.
    pub fn new(mac: MacAddr, ipv4: Option<Ipv4Addr>) -> PortPolicy {
        PortPolicy {
            mac,
            ipv4: ipv4.map_or(Ipv4Source::Any, Ipv4Source::Known),
            ipv6: Vec::new(),
            vlans: Vec::new(),
            dhcp_server: false,
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

/// The nft script that (re)installs `port`'s rules.
pub fn apply_script(port: &str, p: &PortPolicy) -> Result<String, AntispoofError> {
    check_port(port)?;
    if let Some(&vlan) = p.vlans.iter().find(|v| !(1..=4094).contains(*v)) {
        return Err(AntispoofError::BadVlan {
            port: port.into(),
            vlan,
        });
    }
    let chain = format!("port-{port}");
    let mac = p.mac;
    let mut s = String::new();
    s.push_str("add table bridge volt\n");
    s.push_str("add map bridge volt ports { type ifname : verdict; }\n");
    s.push_str("add chain bridge volt prerouting { type filter hook prerouting priority -300; policy accept; }\n");
    s.push_str("flush chain bridge volt prerouting\n");
    s.push_str("add rule bridge volt prerouting iifname vmap @ports\n");
    s.push_str(&format!("add chain bridge volt {chain}\n"));
    s.push_str(&format!("flush chain bridge volt {chain}\n"));
    // `action`: what a match does. Every rule counts what it matched (`counter`), so a drop
    // can be told apart, but the accept of the common frame.
    let mut add = |m: &str, name: &str, action: &str| {
        s.push_str(&format!(
            "add rule bridge volt {chain} {m} {action} comment \"{name}\"\n"
        ));
    };
    add(&format!("ether saddr != {mac}"), rule::MAC, "counter drop");
    // IPv4 first: it is nearly every frame a workload sends, and nothing below can match an
    // untagged IPv4 frame (the VLAN rules see ethertype 802.1Q/802.1ad, the others ARP or
    // IPv6), so it is accepted as soon as its source address is checked.
    //
    // Answers to DHCP clients, whatever their source port (clients look at the destination
    // port only): a workload answering other workloads' DISCOVERs first could hand them
    // itself as their gateway.
    if !p.dhcp_server {
        add(
            "ether type ip udp dport 68",
            rule::DHCP_SERVER,
            "counter drop",
        );
    }
    // A DHCP client's requests from 0.0.0.0, for the port's own MAC (the BOOTP chaddr, at
    // UDP payload byte 28): that spoofs nobody, and no lease of another MAC is asked for.
    let chaddr = format!(
        "0x{}",
        p.mac
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let dhcp_client = format!(
        "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 @th,288,48 {chaddr}"
    );
    match p.ipv4 {
        Ipv4Source::Known(ip) => {
            add(&dhcp_client, rule::DHCP_CLIENT, "accept");
            add(
                &format!("ether type ip ip saddr != {ip}"),
                rule::IP,
                "counter drop",
            );
        }
        Ipv4Source::DhcpOnly => {
            add(&dhcp_client, rule::DHCP_CLIENT, "accept");
            add("ether type ip", rule::IP, "counter drop");
        }
        Ipv4Source::Any => {}
    }
    add("ether type ip", rule::IP_ACCEPT, "accept");
    if !p.vlans.is_empty() {
        let ids: Vec<String> = p.vlans.iter().map(u16::to_string).collect();
        add(
            &format!("ether type 8021q vlan id {{ {} }}", ids.join(", ")),
            rule::VLAN_ALLOWED,
            "counter accept",
        );
    }
    add("ether type 8021q vlan id 0", rule::VLAN0, "counter drop");
    add("ether type 8021q", rule::VLAN, "counter drop");
    add("ether type 8021ad", rule::QINQ, "counter drop");
    add(
        &format!("ether type arp arp saddr ether != {mac}"),
        rule::ARP_MAC,
        "counter drop",
    );
    // 0.0.0.0: a DHCP client's probe of the address it was offered (RFC 5227), which
    // updates nobody's cache; with its address known, only a probe of that address (a
    // probe of another's would make that one give its address up).
    match p.ipv4 {
        Ipv4Source::Known(ip) => {
            add(
                &format!("ether type arp arp saddr ip != {{ 0.0.0.0, {ip} }}"),
                rule::ARP_IP,
                "counter drop",
            );
            add(
                &format!("ether type arp arp saddr ip 0.0.0.0 arp daddr ip != {ip}"),
                rule::ARP_PROBE,
                "counter drop",
            );
        }
        Ipv4Source::DhcpOnly => add(
            "ether type arp arp saddr ip != 0.0.0.0",
            rule::ARP_IP,
            "counter drop",
        ),
        Ipv4Source::Any => {}
    }
    let v6 = p.ipv6_addresses();
    let v6_set = v6
        .iter()
        .map(Ipv6Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    // The target of a neighbour advertisement: ICMPv6 bytes 8..24 (nftables 1.0.6 has no
    // `icmpv6 taddr`), compared as a 128-bit number.
    let targets = v6
        .iter()
        .map(|a| format!("{:#034x}", u128::from(*a)))
        .collect::<Vec<_>>()
        .join(", ");
    // Fragments: a fragmented ND message hides its type and target from the rules below,
    // and the bridge reassembles it (br_netfilter) before the neighbours see it. Volt's
    // IPv6 is link-local: nothing a workload needs is fragmented.
    add(
        "ether type ip6 exthdr frag exists",
        rule::IP6_FRAG,
        "counter drop",
    );
    if !p.dhcp_server {
        add(
            "ether type ip6 udp dport 546",
            rule::DHCP6_SERVER,
            "counter drop",
        );
    }
    add(
        "ether type ip6 icmpv6 type nd-router-advert",
        rule::RA,
        "counter drop",
    );
    add(
        "ether type ip6 icmpv6 type nd-redirect",
        rule::REDIRECT,
        "counter drop",
    );
    add(
        &format!("ether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != {{ {targets} }}"),
        rule::NA,
        "counter drop",
    );
    // Duplicate address detection (a solicitation from ::) only of its own addresses: one
    // of another's makes that one give its address up.
    add(
        &format!(
            "ether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 != {{ {targets} }}"
        ),
        rule::DAD,
        "counter drop",
    );
    // 58 is ICMPv6: by number, since nft resolves names through /etc/protocols, which a
    // minimal system (or a volatile /etc) does not have.
    add(
        "ether type ip6 ip6 saddr :: meta l4proto != 58",
        rule::IP6_UNSPEC,
        "counter drop",
    );
    add(
        &format!("ether type ip6 ip6 saddr != {{ ::, {v6_set} }}"),
        rule::IP6,
        "counter drop",
    );
    add(
        "ether type != { ip, arp, ip6 }",
        rule::ETHERTYPE,
        "counter drop",
    );
    s.push_str(&format!(
        "add element bridge volt ports {{ \"{port}\" : jump {chain} }}\n"
    ));
    Ok(s)
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
    fn script_pins_mac_addresses_and_ethertypes() {
        let p = PortPolicy::new(mac(), Some("10.42.0.10".parse().expect("ip")));
        let s = apply_script("tap-12345678", &p).expect("script");
        let rule = |m: &str, name: &str| {
            format!("add rule bridge volt port-tap-12345678 {m} counter drop comment \"{name}\"")
        };
        for want in [
            rule("ether saddr != 52:54:00:12:34:56", rule::MAC),
            rule("ether type 8021q vlan id 0", rule::VLAN0),
            rule("ether type 8021q", rule::VLAN),
            rule("ether type 8021ad", rule::QINQ),
            rule(
                "ether type arp arp saddr ip != { 0.0.0.0, 10.42.0.10 }",
                rule::ARP_IP,
            ),
            rule("ether type ip udp dport 68", rule::DHCP_SERVER),
            rule(
                "ether type arp arp saddr ip 0.0.0.0 arp daddr ip != 10.42.0.10",
                rule::ARP_PROBE,
            ),
            rule("ether type ip6 exthdr frag exists", rule::IP6_FRAG),
            rule("ether type ip6 udp dport 546", rule::DHCP6_SERVER),
            rule(
                "ether type ip6 ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 != { 0xfe80000000000000505400fffe123456 }",
                rule::DAD,
            ),
            rule("ether type ip ip saddr != 10.42.0.10", rule::IP),
            rule(
                "ether type ip6 ip6 saddr != { ::, fe80::5054:ff:fe12:3456 }",
                rule::IP6,
            ),
            rule(
                "ether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfe80000000000000505400fffe123456 }",
                rule::NA,
            ),
            rule("ether type != { ip, arp, ip6 }", rule::ETHERTYPE),
        ] {
            assert!(s.contains(&want), "missing {want:?} in\n{s}");
        }
        assert!(s.contains(
            "add element bridge volt ports { \"tap-12345678\" : jump port-tap-12345678 }"
        ));
        assert!(!s.contains(rule::VLAN_ALLOWED));
        // Untagged IPv4 is accepted right after its address check, uncounted.
        let accept =
            "add rule bridge volt port-tap-12345678 ether type ip accept comment \"ip-accept\"";
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in\n{s}"));
        assert!(
            at("comment \"ip\"") < at(accept) && at(accept) < at("comment \"vlan0\""),
            "{s}"
        );
        // Nothing nft would resolve through /etc/protocols or /etc/services.
        assert!(s.contains("meta l4proto != 58") && !s.contains("ipv6-icmp"));
        // An address from a DHCP server Volt does not know: held to the MAC only.
        let any = apply_script("veth-1-h", &PortPolicy::new(mac(), None)).expect("script");
        assert!(
            !any.contains("ip saddr") && !any.contains("arp saddr ip"),
            "no address pinned: {any}"
        );
        assert!(any.contains(rule::DHCP_SERVER), "{any}");
        // A DHCP client's request from 0.0.0.0, for this MAC only, comes before the address
        // rule; a server's answers are dropped before it too, unless the network's DHCP
        // server is not Volt's.
        assert!(s.contains(
            "ip daddr 255.255.255.255 udp sport 68 udp dport 67 @th,288,48 0x525400123456 accept"
        ));
        assert!(at("comment \"dhcp-server\"") < at("comment \"dhcp-client\""));
        assert!(at("comment \"dhcp-client\"") < at("comment \"ip\""));
        let own_server = PortPolicy {
            dhcp_server: true,
            ..p.clone()
        };
        let own = apply_script("tap-12345678", &own_server).expect("script");
        assert!(
            !own.contains(rule::DHCP_SERVER) && !own.contains(rule::DHCP6_SERVER),
            "{own}"
        );
        // No address yet: DHCP requests only, and ARP from 0.0.0.0 only.
        let pending = PortPolicy {
            ipv4: Ipv4Source::DhcpOnly,
            ..PortPolicy::new(mac(), None)
        };
        let pending = apply_script("veth-1-h", &pending).expect("script");
        for want in [
            "ether type ip counter drop comment \"ip\"",
            "ether type arp arp saddr ip != 0.0.0.0 counter drop",
            "@th,288,48 0x525400123456 accept comment \"dhcp-client\"",
        ] {
            assert!(pending.contains(want), "{want} in\n{pending}");
        }
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
