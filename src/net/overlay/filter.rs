//! The filter of the VXLAN ports (table `bridge volt-cluster`: what may cross each port),
//! and which VXLAN datagrams of each port's VNI the underlay may deliver at all (table `ip
//! volt-cluster`, before the VXLAN driver sees them).

use std::net::Ipv4Addr;

use super::TABLE;
use crate::config::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot run nft (is the nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the VXLAN filter: {0}")]
    Nft(String),
}

/// What may cross one VXLAN port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFilter {
    pub port: String,
    /// The network's gateway: each host answers it alone, so its ARP never crosses.
    pub gateway: Ipv4Addr,
    /// (MAC, address) of every workload and host the store places on another host.
    pub remote: Vec<(MacAddr, Ipv4Addr)>,
    /// The network's subnet (its traffic is never NATed).
    pub subnet: ipnet::Ipv4Net,
    /// The port's VNI, and the UDP port this host's VXLAN links listen on.
    pub vni: u32,
    pub udp_port: u16,
    /// (VTEP, MAC): the peer's underlay address each MAC the store places on another host
    /// (its workloads', its bridge's) is behind. A datagram of this VNI whose inner source is
    /// not one of these, from that VTEP, is dropped before the VXLAN driver learns its
    /// source: with learning on (which makes the driver drop frames whose MAC a static entry
    /// places behind another VTEP), every unknown source MAC would otherwise become a
    /// forwarding entry of the VXLAN link, without limit, even though the bridge's filter
    /// drops the frame right after.
    pub sources: Vec<(Ipv4Addr, MacAddr)>,
}

fn elements(pairs: &[(MacAddr, Ipv4Addr)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let v: Vec<String> = pairs.iter().map(|(m, ip)| format!("{m} . {ip}")).collect();
    format!(" elements = {{ {} }};", v.join(", "))
}

/// The rule that drops `p`'s VNI's datagrams from sources the store does not place behind
/// their VTEP: the VXLAN header is the UDP payload (`@ih`), its VNI at bits 32-55, the inner
/// Ethernet source at bits 112-159.
fn source_rule(p: &PortFilter) -> String {
    let head = format!(
        "    udp dport {} @ih,32,24 {} ",
        p.udp_port,
        p.vni & 0x00ff_ffff
    );
    let tail = format!("counter drop comment \"vxlan source {}\"\n", p.port);
    let mut sources: Vec<String> = p
        .sources
        .iter()
        .map(|(vtep, mac)| {
            let hex: String = mac.0.iter().map(|b| format!("{b:02x}")).collect();
            format!("{vtep} . 0x{hex}")
        })
        .collect();
    sources.sort();
    sources.dedup();
    if sources.is_empty() {
        return format!("{head}{tail}");
    }
    format!(
        "{head}ip saddr . @ih,112,48 != {{ {} }} {tail}",
        sources.join(", ")
    )
}

/// The whole table for `ports`, replacing what was there in one transaction. Frames from a
/// VXLAN port pass only as IPv4 or ARP from a (MAC, address) pair the store places on another
/// host, never DHCP, never ARP about the gateway (every host has it); frames to it never carry
/// DHCP or the gateway's ARP either, nor unicast to a MAC the store places on no other host
/// (a workload sending to random MACs, which the bridge floods to the port, would have every
/// peer get a copy of each: local workloads' ports no longer take unknown unicast, this one
/// must, for remote MACs the bridge has not learned or has forgotten). Datagrams of a port's VNI from the underlay reach the
/// VXLAN driver only when their inner source MAC is one the store places behind their
/// sender ([`PortFilter::sources`]).
pub fn filter_script(ports: &[PortFilter]) -> String {
    let mut s =
        format!("add table bridge {TABLE}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{\n");
    for p in ports {
        let n = &p.port;
        s.push_str(&format!(
            "  set pairs-{n} {{ type ether_addr . ipv4_addr;{} }}\n",
            elements(&p.remote)
        ));
        s.push_str(&format!("  set macs-{n} {{ type ether_addr;{} }}\n", {
            let mut macs: Vec<MacAddr> = p.remote.iter().map(|(m, _)| *m).collect();
            macs.sort();
            macs.dedup();
            if macs.is_empty() {
                String::new()
            } else {
                let v: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
                format!(" elements = {{ {} }};", v.join(", "))
            }
        }));
        let gw = p.gateway;
        s.push_str(&format!(
            "  chain in-{n} {{\n    udp dport {{ 67, 68 }} counter drop comment \"dhcp\"\n    ether type arp arp daddr ip {gw} counter drop comment \"gateway\"\n    ether type arp arp saddr ip {gw} counter drop comment \"gateway\"\n    ether type ip ether saddr . ip saddr @pairs-{n} accept\n    ether type arp ether saddr . arp saddr ip @pairs-{n} arp saddr ether . arp saddr ip @pairs-{n} accept\n    ether type arp arp saddr ip 0.0.0.0 ether saddr @macs-{n} accept\n    counter drop comment \"spoof\"\n  }}\n"
        ));
        s.push_str(&format!(
            "  chain out-{n} {{\n    udp dport {{ 67, 68 }} counter drop comment \"dhcp\"\n    ether type arp arp daddr ip {gw} counter drop comment \"gateway\"\n    ether type arp arp saddr ip {gw} counter drop comment \"gateway\"\n    ether type ip ip saddr {gw} counter drop comment \"gateway\"\n    ether type != {{ ip, arp }} counter drop comment \"not ipv4\"\n    ether daddr & 01:00:00:00:00:00 != 01:00:00:00:00:00 ether daddr != @macs-{n} counter drop comment \"unknown unicast\"\n  }}\n"
        ));
    }
    s.push_str(
        "  chain prerouting {\n    type filter hook prerouting priority -290; policy accept;\n",
    );
    for p in ports {
        s.push_str(&format!("    iifname \"{0}\" jump in-{0}\n", p.port));
    }
    s.push_str("  }\n  chain postrouting {\n    type filter hook postrouting priority -290; policy accept;\n");
    for p in ports {
        s.push_str(&format!("    oifname \"{0}\" jump out-{0}\n", p.port));
    }
    s.push_str("  }\n}\n");
    // Traffic inside a shared subnet is never NATed: networkd's IPMasquerade= masquerades
    // everything from the subnet whatever the output interface (the host's own address would
    // leave as the gateway's), and with br_netfilter loaded bridged frames pass the IP hooks
    // too (a workload's address would). Untracked packets skip NAT.
    s.push_str(&format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n"
    ));
    for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
        s.push_str(&format!(
            "  chain {chain} {{\n    type filter hook {hook} priority raw; policy accept;\n"
        ));
        if chain == "prerouting" {
            // A datagram to a VXLAN port in fragments: the first (MF set, offset 0) goes,
            // so it is never reassembled. Without conntrack's defragmentation ahead of this
            // chain, a first fragment too short to hold the inner source would pass the
            // source rule (its load fails, so it does not match), and the VXLAN driver would
            // learn the source once IP reassembled the datagram. The overlay's MTU leaves
            // room for VXLAN's 50 bytes: nothing of Volt's is fragmented.
            let mut udp: Vec<u16> = ports.iter().map(|p| p.udp_port).collect();
            udp.sort_unstable();
            udp.dedup();
            for port in udp {
                s.push_str(&format!(
                    "    ip frag-off & 0x3fff == 0x2000 udp dport {port} counter drop comment \"vxlan fragment\"\n"
                ));
            }
            for p in ports {
                s.push_str(&source_rule(p));
            }
        }
        for p in ports {
            s.push_str(&format!(
                "    ip saddr {0} ip daddr {0} notrack\n",
                p.subnet
            ));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// `nft -f -` with `script`, the cluster's tables' errors.
pub(super) fn nft(script: &str) -> Result<(), FilterError> {
    crate::net::nft::run(&[], script.as_bytes()).map_err(|e| match e {
        crate::net::nft::NftError::Spawn(e) => FilterError::Spawn(e),
        crate::net::nft::NftError::Refused(stderr) => FilterError::Nft(stderr),
    })
}

/// Install the filters of `ports` (one transaction).
pub fn apply_filter(ports: &[PortFilter]) -> Result<(), FilterError> {
    nft(&filter_script(ports))
}

/// Remove the tables, the guard's included (nothing to do when absent).
pub fn remove_filter() -> Result<(), FilterError> {
    nft(&format!(
        "add table bridge {TABLE}\ndelete table bridge {TABLE}\nadd table ip {TABLE}\ndelete table ip {TABLE}\n{}",
        super::guard::REMOVE
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_pins_pairs_and_keeps_dhcp_and_gateway_home() {
        let mac: MacAddr = "52:54:00:01:02:03".parse().expect("mac");
        let s = filter_script(&[PortFilter {
            port: "vx-42".into(),
            gateway: Ipv4Addr::new(10, 42, 0, 1),
            remote: vec![(mac, Ipv4Addr::new(10, 42, 0, 2))],
            subnet: "10.42.0.0/24".parse().expect("net"),
            vni: 42,
            udp_port: 4789,
            sources: vec![
                (Ipv4Addr::new(192, 168, 77, 2), mac),
                (
                    Ipv4Addr::new(192, 168, 77, 3),
                    "0a:00:00:00:00:0b".parse().expect("mac"),
                ),
            ],
        }]);
        assert!(
            s.contains("ip saddr 10.42.0.0/24 ip daddr 10.42.0.0/24 notrack"),
            "{s}"
        );
        assert!(s.starts_with("add table bridge volt-cluster\ndelete table bridge volt-cluster\n"));
        assert!(s.contains("set pairs-vx-42 { type ether_addr . ipv4_addr; elements = { 52:54:00:01:02:03 . 10.42.0.2 }; }"), "{s}");
        assert!(s.contains("iifname \"vx-42\" jump in-vx-42"));
        assert!(s.contains("oifname \"vx-42\" jump out-vx-42"));
        assert!(s.contains("arp daddr ip 10.42.0.1 counter drop"));
        assert!(s.contains("counter drop comment \"spoof\""));
        assert!(
            s.contains("    ether daddr & 01:00:00:00:00:00 != 01:00:00:00:00:00 ether daddr != @macs-vx-42 counter drop comment \"unknown unicast\"\n  }\n"),
            "{s}"
        );
        // Before the VXLAN driver: only (VTEP, inner source MAC) pairs from the store, ahead
        // of anything else in the underlay's prerouting.
        let source = "    udp dport 4789 @ih,32,24 42 ip saddr . @ih,112,48 != { 192.168.77.2 . 0x525400010203, 192.168.77.3 . 0x0a000000000b } counter drop comment \"vxlan source vx-42\"\n";
        let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in\n{s}"));
        assert!(
            at("table ip volt-cluster {\n  chain prerouting") < at(source),
            "{s}"
        );
        assert!(at(source) < at("ip saddr 10.42.0.0/24 ip daddr"), "{s}");
        // Its first fragments go before it.
        let fragment = "    ip frag-off & 0x3fff == 0x2000 udp dport 4789 counter drop comment \"vxlan fragment\"\n";
        assert!(
            at("table ip volt-cluster {\n  chain prerouting") < at(fragment)
                && at(fragment) < at(source),
            "{s}"
        );
        assert_eq!(s.matches("vxlan fragment").count(), 1, "{s}");
        assert_eq!(s.matches("vxlan source").count(), 1, "{s}");
        let empty = filter_script(&[PortFilter {
            port: "vx-7".into(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            remote: vec![],
            subnet: "10.0.0.0/24".parse().expect("net"),
            vni: 7,
            udp_port: 8472,
            sources: vec![],
        }]);
        assert!(empty.contains("set pairs-vx-7 { type ether_addr . ipv4_addr; }"));
        // Nothing known yet (the daemon's start): none of the VNI's datagrams.
        assert!(
            empty.contains(
                "    udp dport 8472 @ih,32,24 7 counter drop comment \"vxlan source vx-7\"\n"
            ),
            "{empty}"
        );
    }
}
