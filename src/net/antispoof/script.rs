//! The text of a port's rules: one `nft -f` script that (re)creates Volt's table, the
//! port's chain and its entry in the verdict map.

use std::net::Ipv6Addr;

use super::{check_port, rule, AntispoofError, GroupLimit, Ipv4Source, PortPolicy};

/// The nft script that (re)installs `port`'s rules.
pub fn apply_script(port: &str, p: &PortPolicy) -> Result<String, AntispoofError> {
    check_port(port)?;
    if let Some(&vlan) = p.vlans.iter().find(|v| !(1..=4094).contains(*v)) {
        return Err(AntispoofError::BadVlan {
            port: port.into(),
            vlan,
        });
    }
    if p.group_limit.per_second == 0 || p.group_limit.burst == 0 {
        return Err(AntispoofError::BadGroupLimit {
            port: port.into(),
            limit: p.group_limit,
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
    // Frames to a group address (broadcast, multicast: the I/G bit of the destination) are
    // limited before anything can accept them (DHCP requests and broadcast IPv4 included):
    // the bridge copies each to every other port and to the host. Unicast fails the first
    // comparison and goes on (one 6-byte load, a mask and a compare); frames under the
    // limit go on through the rules below.
    let GroupLimit { per_second, burst } = p.group_limit;
    add(
        "ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00",
        rule::GROUP_LIMIT,
        &format!("limit rate over {per_second}/second burst {burst} packets counter drop"),
    );
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
    // ciaddr (UDP payload byte 12) is 0.0.0.0 in every request a client sends before it has
    // an address (RFC 2131, table 5).
    let dhcp_client = format!(
        "ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 @th,288,48 {chaddr} @th,160,32 0"
    );
    match p.ipv4 {
        Ipv4Source::Known(ip) => {
            add(&dhcp_client, rule::DHCP_CLIENT, "accept");
            add(
                &format!("ether type ip ip saddr != {ip}"),
                rule::IP,
                "counter drop",
            );
            // Requests from its address (renewals, a RELEASE, an INFORM) only for its own
            // MAC and address where Volt's server answers: networkd finds a lease by the
            // client identifier a request carries, which anybody can copy from another
            // client's broadcast, and frees it on a RELEASE whose ciaddr is the lease's.
            if !p.dhcp_server {
                add(
                    &format!("ether type ip udp dport 67 @th,288,48 != {chaddr}"),
                    rule::DHCP_CHADDR,
                    "counter drop",
                );
                add(
                    &format!(
                        "ether type ip udp dport 67 @th,160,32 != {{ 0, {:#010x} }}",
                        u32::from(ip)
                    ),
                    rule::DHCP_CIADDR,
                    "counter drop",
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacAddr;

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
        // Frames to group addresses are limited right after the MAC check, before anything
        // (IPv4 and DHCP requests included) can be accepted; by default 2000 a second.
        let limit = "add rule bridge volt port-tap-12345678 ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 limit rate over 2000/second burst 2000 packets counter drop comment \"group-limit\"";
        assert!(
            at("comment \"mac\"") < at(limit) && at(limit) < at("comment \"dhcp-server\""),
            "{s}"
        );
        assert!(at(limit) < at("comment \"dhcp-client\"") && at(limit) < at(accept));
        let slow = PortPolicy {
            group_limit: GroupLimit::per_second(50),
            ..p.clone()
        };
        let slow = apply_script("tap-12345678", &slow).expect("script");
        assert!(
            slow.contains(
                "limit rate over 50/second burst 50 packets counter drop comment \"group-limit\""
            ),
            "{slow}"
        );
        for none in [
            GroupLimit::per_second(0),
            GroupLimit {
                per_second: 10,
                burst: 0,
            },
        ] {
            let bad = PortPolicy {
                group_limit: none,
                ..p.clone()
            };
            assert!(
                matches!(
                    apply_script("tap-12345678", &bad),
                    Err(AntispoofError::BadGroupLimit { .. })
                ),
                "{none:?}"
            );
        }
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
            "ip daddr 255.255.255.255 udp sport 68 udp dport 67 @th,288,48 0x525400123456 @th,160,32 0 accept"
        ));
        assert!(at("comment \"dhcp-server\"") < at("comment \"dhcp-client\""));
        assert!(at("comment \"dhcp-client\"") < at("comment \"ip\""));
        // Requests from its address: for its MAC and address only, before the accept.
        assert!(s.contains(
            "ether type ip udp dport 67 @th,288,48 != 0x525400123456 counter drop comment \"dhcp-chaddr\""
        ));
        assert!(s.contains(
            "ether type ip udp dport 67 @th,160,32 != { 0, 0x0a2a000a } counter drop comment \"dhcp-ciaddr\""
        ));
        assert!(at("comment \"ip\"") < at("comment \"dhcp-chaddr\""));
        assert!(at("comment \"dhcp-ciaddr\"") < at("comment \"ip-accept\""));
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
            "@th,288,48 0x525400123456 @th,160,32 0 accept comment \"dhcp-client\"",
        ] {
            assert!(pending.contains(want), "{want} in\n{pending}");
        }
    }
}
