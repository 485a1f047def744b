//! Anti-spoofing on the bridge, with raw frames, in namespaces the test creates: an honest
//! workload and an attacker each behind a veth port on `br0`. The attacker sends hand-built
//! frames over AF_PACKET: VLAN-0, VLAN-5 and QinQ tagged ARP, spoofed IPv4, ARP and MAC,
//! a spoofed IPv6 source, a router advertisement, a neighbour advertisement for the honest
//! workload's address, a redirect, non-ICMPv6 from `::`, an unknown ethertype. Without rules
//! each reaches the host (and the tagged ARP, the RA and the NA change its state); with the
//! port's rules each is dropped by its own rule, counted once, while the attacker's honest
//! frames and the honest neighbour (IPv4 and IPv6) keep working. A flood of broadcast and
//! multicast frames from the attacker is cut to its port's limit; frames from forged
//! sources are dropped before the bridge learns them; its unicast to unknown MACs does not
//! reach a pinned port.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::frames::{self as fr, BROADCAST, ETH_ARP, ETH_IP, ETH_IP6};
use common::netns::{skip_reason, TestNs};
use common::ping;
use volt::net::antispoof::{self, link_local, rule, Ipv4Source, PortPolicy};

const BR_MAC: &str = "02:00:00:00:00:01";
const HONEST_MAC: &str = "52:54:00:00:00:20";
const ATTACK_MAC: &str = "52:54:00:00:00:30";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
const HONEST_IP: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 20);
const ATTACK_IP: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 30);
const HONEST_PORT: &str = "veth-a-h";
const ATTACK_PORT: &str = "veth-b-h";

fn mac(s: &str) -> volt::config::MacAddr {
    s.parse().expect("mac")
}

fn skip() -> bool {
    common::skip(skip_reason(), false) || common::skip_without_tool("nft", "--version", "nftables")
}

/// No duplicate address detection in `ns`: link-local addresses are usable at once.
fn no_dad(ns: &TestNs) {
    ns.ok("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
}

fn workload(host: &TestNs, ns: &TestNs, port: &str, mac: &str, ip: Ipv4Addr) {
    no_dad(ns);
    host.ok(&format!(
        "ip link add {port} type veth peer name eth0 netns {} && ip link set {port} master br0 up",
        ns.name
    ));
    ns.ok(&format!(
        "ip link set eth0 address {mac} && ip addr add {ip}/24 dev eth0 && ip link set eth0 up"
    ));
}

struct Lab {
    host: TestNs,
    honest: TestNs,
    attacker: TestNs,
}

fn lab() -> Lab {
    let lab = Lab {
        host: TestNs::new("spoofh"),
        honest: TestNs::new("spoofa"),
        attacker: TestNs::new("spoofb"),
    };
    no_dad(&lab.host);
    lab.host.ok(&format!(
        "ip link add br0 address {BR_MAC} type bridge && ip addr add {GATEWAY}/24 dev br0 && ip link set br0 up"
    ));
    workload(&lab.host, &lab.honest, HONEST_PORT, HONEST_MAC, HONEST_IP);
    workload(&lab.host, &lab.attacker, ATTACK_PORT, ATTACK_MAC, ATTACK_IP);
    // The attacker's own kernel stays quiet on IPv6: every IPv6 frame from it is the test's.
    lab.attacker
        .ok("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1");
    lab
}

impl Lab {
    /// `policy` on the attacker's port; a socket that sees what reaches the bridge, and one
    /// the attacker sends raw frames on.
    fn attacker_under(&self, policy: PortPolicy) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        self.host
            .run(move || antispoof::apply(ATTACK_PORT, &policy))
            .expect("rules");
        (
            self.host.run(|| fr::packet_socket("br0")),
            self.attacker.run(|| fr::packet_socket("eth0")),
        )
    }
}

/// The honest workload reaches the host over IPv4 and IPv6 (link-local).
fn honest_works(lab: &Lab) {
    ping::assert_all(
        &lab.honest.ok(&format!("ping -c 2 -i 0.2 -W 1 {GATEWAY}")),
        2,
    );
    let br_ll = link_local(mac(BR_MAC));
    ping::assert_all(
        &lab.honest
            .ok(&format!("ping -6 -c 2 -i 0.2 -W 1 {br_ll}%eth0")),
        2,
    );
}

fn counters(host: &TestNs, port: &'static str) -> BTreeMap<String, u64> {
    host.run(move || antispoof::counters(port))
        .into_iter()
        .collect()
}

/// One frame from the attacker's port, and the rule that must drop it (`None`: it must
/// pass).
struct Attack {
    name: &'static str,
    rule: Option<&'static str>,
    frame: Vec<u8>,
}

/// An attack as written in the table: name, rule, destination, source, VLAN tags, ethertype,
/// payload.
type Row = (
    &'static str,
    Option<&'static str>,
    [u8; 6],
    [u8; 6],
    &'static [(u16, u16)],
    u16,
    Vec<u8>,
);

fn attacks() -> Vec<Attack> {
    let attacker = fr::mac(ATTACK_MAC);
    let honest = fr::mac(HONEST_MAC);
    let br = fr::mac(BR_MAC);
    let attacker_ll = link_local(mac(ATTACK_MAC));
    let honest_ll = link_local(mac(HONEST_MAC));
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("ip6");
    let all6 = fr::mcast6(all_nodes);
    // "Who has the gateway? Tell 10.42.0.20 at the attacker's MAC": the attack of the issue.
    let steal = fr::arp_request(attacker, HONEST_IP, GATEWAY);
    let own_arp = fr::arp_request(attacker, ATTACK_IP, GATEWAY);
    let icmp6 = |src: Ipv6Addr, l4: Vec<u8>| fr::ipv6(src, all_nodes, 58, 255, &l4);
    // ND messages carry their marker in an option, echoes and UDP in their data.
    let nd = |m: Vec<u8>, name: &str| [m, fr::nd_option(&fr::marker(name))].concat();
    let mk = |name: &str| fr::marker(name);
    let solicited: Ipv6Addr = {
        let o = attacker_ll.octets();
        Ipv6Addr::from([
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
        ])
    };
    const Q: u16 = fr::TPID_8021Q;
    const AD: u16 = fr::TPID_8021AD;
    let (a, bc, none) = (attacker, BROADCAST, &[][..]);
    let echo4 = |src: Ipv4Addr, name: &str| fr::icmp_echo(src, GATEWAY, &mk(name));
    let ra = nd(fr::router_advert(attacker), "router-advert");
    let na = nd(
        fr::neighbour_advert(honest_ll, attacker),
        "neighbour-advert",
    );
    let redirect = nd(fr::redirect(attacker_ll, honest_ll), "redirect");
    let unspec_udp = fr::udp(9, 9, mk("unspecified-udp").as_bytes());
    let unspec =
        |dst, proto, hops, l4: &[u8]| fr::ipv6(Ipv6Addr::UNSPECIFIED, dst, proto, hops, l4);
    let own_na = nd(
        fr::neighbour_advert(attacker_ll, attacker),
        "own-neighbour-advert",
    );
    let dad = nd(fr::neighbour_solicit(attacker_ll), "dad-solicit");
    // DHCP: offers from the attacker (a rogue server, from any source port), a client's
    // discover for its own MAC and for another's, address probes from 0.0.0.0.
    let bcast4 = Ipv4Addr::BROADCAST;
    let dhcp = |src, sport, dport, name: &str| {
        fr::ipv4(src, bcast4, 17, &fr::udp(sport, dport, mk(name).as_bytes()))
    };
    let unspec4 = Ipv4Addr::UNSPECIFIED;
    let discover = |chaddr, name: &str| {
        let b = fr::bootp_request(chaddr, &mk(name));
        fr::ipv4(unspec4, bcast4, 17, &fr::udp(68, 67, &b))
    };
    // A client's request from `src` with `chaddr` and `ciaddr` (BOOTP byte 12): a renewal,
    // or a RELEASE of whatever lease `ciaddr` names.
    let request = |src, chaddr, ciaddr: Ipv4Addr, name: &str| {
        let mut b = fr::bootp_request(chaddr, &mk(name));
        b[12..16].copy_from_slice(&ciaddr.octets());
        fr::ipv4(src, GATEWAY, 17, &fr::udp(68, 67, &b))
    };
    // IPv6: a fragmented neighbour advertisement, a DHCPv6 answer, DAD of another's address.
    let fragment = fr::ipv6_fragment(
        attacker_ll,
        all_nodes,
        58,
        &nd(fr::neighbour_advert(honest_ll, attacker), "ip6-fragment"),
    );
    let dhcp6 = fr::ipv6(
        attacker_ll,
        all_nodes,
        17,
        64,
        &fr::udp(547, 546, mk("dhcp6-reply").as_bytes()),
    );
    let dad_other = nd(fr::neighbour_solicit(honest_ll), "dad-other");
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        ("vlan0-arp", Some(rule::VLAN0), bc, a, &[(Q, 0)], ETH_ARP, steal.clone()),
        ("vlan5-arp", Some(rule::VLAN), bc, a, &[(Q, 5)], ETH_ARP, steal.clone()),
        ("qinq-arp", Some(rule::QINQ), bc, a, &[(AD, 5), (Q, 0)], ETH_ARP, steal.clone()),
        // IPv4 from the attacker's own address, but tagged: IPv4 is accepted early in the
        // chain, which must not let tagged frames past the VLAN rules.
        ("vlan5-ipv4", Some(rule::VLAN), br, a, &[(Q, 5)], ETH_IP, echo4(ATTACK_IP, "vlan5-ipv4")),
        ("vlan0-ipv4", Some(rule::VLAN0), br, a, &[(Q, 0)], ETH_IP, echo4(ATTACK_IP, "vlan0-ipv4")),
        ("spoofed-ipv4", Some(rule::IP), br, a, none, ETH_IP, echo4(HONEST_IP, "spoofed-ipv4")),
        ("spoofed-arp-ip", Some(rule::ARP_IP), bc, a, none, ETH_ARP, steal),
        ("spoofed-arp-mac", Some(rule::ARP_MAC), bc, a, none, ETH_ARP, fr::arp_request(honest, ATTACK_IP, GATEWAY)),
        ("spoofed-mac", Some(rule::MAC), bc, honest, none, ETH_ARP, fr::arp_request(honest, HONEST_IP, GATEWAY)),
        ("spoofed-ipv6", Some(rule::IP6), all6, a, none, ETH_IP6, icmp6(honest_ll, fr::icmp6_echo(&mk("spoofed-ipv6")))),
        ("router-advert", Some(rule::RA), all6, a, none, ETH_IP6, icmp6(attacker_ll, ra)),
        ("neighbour-advert", Some(rule::NA), all6, a, none, ETH_IP6, icmp6(attacker_ll, na)),
        ("redirect", Some(rule::REDIRECT), all6, a, none, ETH_IP6, icmp6(attacker_ll, redirect)),
        ("unspecified-udp", Some(rule::IP6_UNSPEC), all6, a, none, ETH_IP6, unspec(all_nodes, 17, 64, &unspec_udp)),
        ("unknown-ethertype", Some(rule::ETHERTYPE), bc, a, none, 0x88b5, b"volt".to_vec()),
        ("dhcp-offer", Some(rule::DHCP_SERVER), bc, a, none, ETH_IP, dhcp(ATTACK_IP, 67, 68, "dhcp-offer")),
        ("dhcp-offer-sport", Some(rule::DHCP_SERVER), bc, a, none, ETH_IP, dhcp(ATTACK_IP, 12345, 68, "dhcp-offer-sport")),
        ("dhcp-offer-spoofed", Some(rule::DHCP_SERVER), bc, a, none, ETH_IP, dhcp(GATEWAY, 67, 68, "dhcp-offer-spoofed")),
        ("dhcp-discover-other-mac", Some(rule::IP), bc, a, none, ETH_IP, discover(honest, "dhcp-discover-other-mac")),
        ("zero-source-udp", Some(rule::IP), bc, a, none, ETH_IP, dhcp(unspec4, 68, 1234, "zero-source-udp")),
        ("arp-probe-other", Some(rule::ARP_PROBE), bc, a, none, ETH_ARP, fr::arp_request(attacker, unspec4, HONEST_IP)),
        ("ip6-fragment", Some(rule::IP6_FRAG), all6, a, none, ETH_IP6, fragment),
        ("dhcp6-reply", Some(rule::DHCP6_SERVER), all6, a, none, ETH_IP6, dhcp6),
        ("dad-other", Some(rule::DAD), fr::mcast6(all_nodes), a, none, ETH_IP6, unspec(all_nodes, 58, 255, &dad_other)),
        ("dhcp-release-other", Some(rule::DHCP_CIADDR), br, a, none, ETH_IP, request(ATTACK_IP, attacker, HONEST_IP, "dhcp-release-other")),
        ("dhcp-request-other-mac", Some(rule::DHCP_CHADDR), br, a, none, ETH_IP, request(ATTACK_IP, honest, ATTACK_IP, "dhcp-request-other-mac")),
        ("dhcp-discover-ciaddr", Some(rule::IP), bc, a, none, ETH_IP, {
            let mut d = fr::bootp_request(attacker, &mk("dhcp-discover-ciaddr"));
            d[12..16].copy_from_slice(&HONEST_IP.octets());
            fr::ipv4(unspec4, bcast4, 17, &fr::udp(68, 67, &d))
        }),
        ("dhcp-discover", None, bc, a, none, ETH_IP, discover(attacker, "dhcp-discover")),
        ("dhcp-renew", None, br, a, none, ETH_IP, request(ATTACK_IP, attacker, ATTACK_IP, "dhcp-renew")),
        ("arp-probe", None, bc, a, none, ETH_ARP, fr::arp_request(attacker, unspec4, ATTACK_IP)),
        // What the attacker may send from its own addresses.
        ("own-arp", None, bc, a, none, ETH_ARP, own_arp),
        ("own-ipv4", None, br, a, none, ETH_IP, echo4(ATTACK_IP, "own-ipv4")),
        ("own-ipv6", None, all6, a, none, ETH_IP6, icmp6(attacker_ll, fr::icmp6_echo(&mk("own-ipv6")))),
        ("own-neighbour-advert", None, all6, a, none, ETH_IP6, icmp6(attacker_ll, own_na)),
        ("dad-solicit", None, fr::mcast6(solicited), a, none, ETH_IP6, unspec(solicited, 58, 255, &dad)),
    ];
    table
        .into_iter()
        .map(|(name, rule, dst, src, tags, ethertype, payload)| Attack {
            name,
            rule,
            frame: fr::ether(dst, src, tags, ethertype, &payload, &fr::marker(name)),
        })
        .collect()
}

/// A frame the attacker may always send, after each attack: once it arrived, the attack
/// frame before it has arrived too unless it was dropped.
fn sentinel(i: usize) -> (String, Vec<u8>) {
    let name = format!("sentinel-{i}");
    let attacker = fr::mac(ATTACK_MAC);
    let frame = fr::ether(
        BROADCAST,
        attacker,
        &[],
        ETH_ARP,
        // A probe of its own address from 0.0.0.0: what every policy lets by.
        &fr::arp_request(attacker, Ipv4Addr::UNSPECIFIED, ATTACK_IP),
        &fr::marker(&name),
    );
    (fr::marker(&name), frame)
}

/// Send each attack from the attacker's port (which has rules), a sentinel after it
/// (numbered from `first`): an attack with a rule must not reach the host and is counted by
/// that rule alone; one without must reach it and be counted by none.
fn through_the_rules(
    host: &TestNs,
    listen: &std::os::fd::OwnedFd,
    send: &std::os::fd::OwnedFd,
    attacks: &[Attack],
    first: usize,
) {
    for (i, a) in attacks.iter().enumerate() {
        let before = counters(host, ATTACK_PORT);
        let (until, frame) = sentinel(first + i);
        fr::send(send, &a.frame);
        fr::send(send, &frame);
        let seen = fr::markers_until(listen, &until, Duration::from_secs(2));
        assert!(
            seen.contains(&until),
            "sentinel after {} lost: {seen:?}",
            a.name
        );
        let after = counters(host, ATTACK_PORT);
        let mut expected = before.clone();
        match a.rule {
            Some(r) => {
                assert!(
                    !seen.contains(&fr::marker(a.name)),
                    "{} reached the host through the rules",
                    a.name
                );
                *expected.get_mut(r).unwrap_or_else(|| panic!("no rule {r}")) += 1;
                assert_eq!(
                    after, expected,
                    "{} must be counted by rule {r} only",
                    a.name
                );
            }
            None => {
                assert!(
                    seen.contains(&fr::marker(a.name)),
                    "{} from the attacker's own addresses was dropped",
                    a.name
                );
                assert_eq!(after, expected, "{} must hit no drop rule", a.name);
            }
        }
    }
}

#[test]
fn tagged_spoofed_and_foreign_frames_are_dropped_each_by_its_own_rule() {
    if skip() {
        return;
    }
    let lab = lab();
    let honest_policy = PortPolicy::new(mac(HONEST_MAC), Some(HONEST_IP));
    lab.host
        .run(move || antispoof::apply(HONEST_PORT, &honest_policy))
        .expect("honest port rules");
    honest_works(&lab);
    let listen = lab.host.run(|| fr::packet_socket("br0"));
    let send = lab.attacker.run(|| fr::packet_socket("eth0"));
    let honest_ll = link_local(mac(HONEST_MAC));
    let attacker_ll = link_local(mac(ATTACK_MAC));
    let neigh = |ip: String| lab.host.ok(&format!("ip neigh show {ip} dev br0"));

    // Without rules on its port, every frame of the attacker reaches the host, and the
    // VLAN-0 tagged ARP, the RA and the NA take effect (the holes).
    let has = |what: &str, show: &dyn Fn() -> String, want: &str| {
        let start = std::time::Instant::now();
        loop {
            let now = show();
            if now.contains(want) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{what} had no effect: {now}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let list = attacks();
    for (i, a) in list.iter().enumerate() {
        let (until, frame) = sentinel(i);
        fr::send(&send, &a.frame);
        fr::send(&send, &frame);
        let seen = fr::markers_until(&listen, &until, Duration::from_secs(2));
        assert!(
            seen.contains(&fr::marker(a.name)),
            "without rules, {} did not reach the host: {seen:?}",
            a.name
        );
        match a.name {
            "vlan0-arp" => has(a.name, &|| neigh(HONEST_IP.to_string()), ATTACK_MAC),
            "neighbour-advert" => has(a.name, &|| neigh(honest_ll.to_string()), ATTACK_MAC),
            "router-advert" => has(
                a.name,
                &|| lab.host.ok("ip -6 route show default"),
                &attacker_ll.to_string(),
            ),
            _ => {}
        }
    }
    lab.host
        .ok("ip neigh flush dev br0 && ip -6 neigh flush dev br0 && ip -6 route flush default");
    honest_works(&lab);

    let attacker_policy = PortPolicy::new(mac(ATTACK_MAC), Some(ATTACK_IP));
    lab.host
        .run(move || antispoof::apply(ATTACK_PORT, &attacker_policy))
        .expect("attacker port rules");
    let base = counters(&lab.host, ATTACK_PORT);
    assert!(base.values().all(|n| *n == 0), "{base:?}");
    through_the_rules(&lab.host, &listen, &send, &list, 100);
    let v4 = neigh(HONEST_IP.to_string());
    assert!(!v4.contains(ATTACK_MAC), "ARP spoof reached the host: {v4}");
    let v6 = neigh(honest_ll.to_string());
    assert!(!v6.contains(ATTACK_MAC), "NA spoof reached the host: {v6}");
    assert_eq!(lab.host.ok("ip -6 route show default").trim(), "");
    // The honest neighbour is unaffected, and its port dropped nothing.
    honest_works(&lab);
    let honest = counters(&lab.host, HONEST_PORT);
    assert!(honest.values().all(|n| *n == 0), "{honest:?}");
    ping::assert_all(
        &lab.attacker.ok(&format!("ping -c 2 -i 0.2 -W 1 {GATEWAY}")),
        2,
    );

    // Removing a port's rules leaves the other port's in place.
    lab.host
        .run(|| antispoof::remove(ATTACK_PORT))
        .expect("remove");
    assert!(!lab.host.run(|| antispoof::installed(ATTACK_PORT)));
    assert!(lab.host.run(|| antispoof::installed(HONEST_PORT)));
}

#[test]
fn a_declared_vlan_passes_and_other_tags_do_not() {
    if skip() {
        return;
    }
    let lab = lab();
    let mut policy = PortPolicy::new(mac(ATTACK_MAC), Some(ATTACK_IP));
    policy.vlans = vec![5];
    let (listen, send) = lab.attacker_under(policy);
    let attacker = fr::mac(ATTACK_MAC);
    let arp = fr::arp_request(attacker, ATTACK_IP, GATEWAY);
    for (i, (vid, passes)) in [(5u16, true), (6, false), (0, false)]
        .into_iter()
        .enumerate()
    {
        let name = format!("vlan-{vid}");
        let frame = fr::ether(
            BROADCAST,
            attacker,
            &[(fr::TPID_8021Q, vid)],
            ETH_ARP,
            &arp,
            &fr::marker(&name),
        );
        let (until, s) = sentinel(i);
        fr::send(&send, &frame);
        fr::send(&send, &s);
        let seen = fr::markers_until(&listen, &until, Duration::from_secs(2));
        assert_eq!(
            seen.contains(&fr::marker(&name)),
            passes,
            "VLAN {vid}: {seen:?}"
        );
    }
    let c = counters(&lab.host, ATTACK_PORT);
    assert_eq!(c.get(rule::VLAN_ALLOWED), Some(&1), "{c:?}");
    assert_eq!(c.get(rule::VLAN), Some(&1), "{c:?}");
    assert_eq!(c.get(rule::VLAN0), Some(&1), "{c:?}");
}

/// A port whose address is still to come from Volt's DHCP server (or whose container set
/// another workload's) passes a DHCP client's requests for its own MAC and its probes from
/// 0.0.0.0, and no other IPv4 or ARP: not the gateway's address, not a pool address, not
/// 0.0.0.0 to anything but a DHCP server, no request for another MAC, no offer.
#[test]
fn a_port_awaiting_dhcp_passes_dhcp_requests_only() {
    if skip() {
        return;
    }
    let lab = lab();
    let policy = PortPolicy {
        ipv4: Ipv4Source::DhcpOnly,
        ..PortPolicy::new(mac(ATTACK_MAC), None)
    };
    let (listen, send) = lab.attacker_under(policy);
    let a = fr::mac(ATTACK_MAC);
    let pooled = Ipv4Addr::new(10, 42, 0, 35);
    let (zero, bcast) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST);
    let udp4 =
        |src, dst, sport, dport, data: &[u8]| fr::ipv4(src, dst, 17, &fr::udp(sport, dport, data));
    let m = fr::marker;
    let discover =
        |chaddr, name: &str| udp4(zero, bcast, 68, 67, &fr::bootp_request(chaddr, &m(name)));
    let case = |name, rule, dst, ethertype, payload: Vec<u8>| Attack {
        name,
        rule,
        frame: fr::ether(dst, a, &[], ethertype, &payload, &fr::marker(name)),
    };
    let br = fr::mac(BR_MAC);
    #[rustfmt::skip]
    let cases = [
        case("gateway-ipv4", Some(rule::IP), br, ETH_IP, fr::icmp_echo(GATEWAY, HONEST_IP, &m("gateway-ipv4"))),
        case("gateway-arp", Some(rule::ARP_IP), BROADCAST, ETH_ARP, fr::arp_request(a, GATEWAY, HONEST_IP)),
        case("pool-ipv4", Some(rule::IP), br, ETH_IP, fr::icmp_echo(pooled, GATEWAY, &m("pool-ipv4"))),
        case("pool-arp", Some(rule::ARP_IP), BROADCAST, ETH_ARP, fr::arp_request(a, pooled, GATEWAY)),
        case("zero-to-other", Some(rule::IP), BROADCAST, ETH_IP, udp4(zero, bcast, 68, 1234, m("zero-to-other").as_bytes())),
        case("other-mac", Some(rule::IP), BROADCAST, ETH_IP, discover(fr::mac(HONEST_MAC), "other-mac")),
        case("rogue-offer", Some(rule::DHCP_SERVER), BROADCAST, ETH_IP, udp4(pooled, bcast, 12345, 68, m("rogue-offer").as_bytes())),
        case("discover", None, BROADCAST, ETH_IP, discover(a, "discover")),
        case("probe", None, BROADCAST, ETH_ARP, fr::arp_request(a, zero, pooled)),
    ];
    through_the_rules(&lab.host, &listen, &send, &cases, 200);
    let v4 = lab.host.ok(&format!("ip neigh show {GATEWAY} dev br0"));
    assert!(!v4.contains(ATTACK_MAC), "{v4}");
}

/// A receive buffer of `bytes` on `sock` (as root, past `rmem_max`): a flood's frames wait
/// there until the test reads them, instead of being dropped for want of room.
fn big_buffer(sock: &std::os::fd::OwnedFd, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid fd and an i32 of the size passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(bytes).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// Send an echo request from the attacker's address (Ethernet source `src`) to the honest
/// neighbour, marked `name`; returns the marker (what ends a count of what came before it).
fn to_the_neighbour(send: &std::os::fd::OwnedFd, src: [u8; 6], name: &str) -> String {
    let end = fr::marker(name);
    fr::send(
        send,
        &fr::ether(
            fr::mac(HONEST_MAC),
            src,
            &[],
            ETH_IP,
            &fr::icmp_echo(ATTACK_IP, HONEST_IP, &end),
            &end,
        ),
    );
    end
}

/// How many frames marked `marker` arrive on `sock` until `until` does (within `wait`), and
/// whether it did; frames still on their way after it are counted too.
fn count_marked(
    sock: &std::os::fd::OwnedFd,
    marker: &str,
    until: &str,
    wait: Duration,
) -> (usize, bool) {
    let seen = fr::markers_until(sock, until, wait);
    let came = seen.iter().any(|m| m == until);
    let late = fr::markers_until(sock, "@@never@@", Duration::from_millis(300));
    let n = seen.iter().chain(&late).filter(|m| *m == marker).count();
    (n, came)
}

/// A workload that sends broadcast and multicast frames (from its own addresses: every other
/// rule lets them by) as fast as it can gets the port's limit's worth through, and no more:
/// its neighbour receives at most the bucket and what refilled while it sent, the rest is
/// dropped and counted by the limit's rule. Its unicast passes at once, flood or not; once
/// the bucket has refilled, a DHCP request (a broadcast) passes again, and ARP and ping work.
/// The bounds hold however slow the machine is: the test sends until the rule has dropped
/// something, and allows what the measured time refilled.
#[test]
fn a_broadcast_flood_is_cut_to_the_limit_and_normal_traffic_still_passes() {
    if skip() {
        return;
    }
    let lab = lab();
    let policy = PortPolicy::new(mac(ATTACK_MAC), Some(ATTACK_IP));
    let limit = policy.group_limit;
    assert_eq!(
        limit,
        antispoof::GroupLimit::per_second(2000),
        "the default"
    );
    let (listen, send) = lab.attacker_under(policy);
    let neighbour = lab.honest.run(|| fr::packet_socket("eth0"));
    big_buffer(&neighbour, 256 << 20);
    let attacker = fr::mac(ATTACK_MAC);
    let attacker_ll = link_local(mac(ATTACK_MAC));
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("ip6");
    let mark = fr::marker("flood");
    let arp = fr::ether(
        BROADCAST,
        attacker,
        &[],
        ETH_ARP,
        &fr::arp_request(attacker, ATTACK_IP, GATEWAY),
        &mark,
    );
    // A datagram to all nodes' discard port, which nobody answers (echo requests would be:
    // thousands of replies to a workload that answers no neighbour solicitation wait in the
    // host's queues, charged to ICMPv6 sockets every namespace shares, and other tests'
    // pings fail meanwhile).
    let mcast = fr::ether(
        fr::mcast6(all_nodes),
        attacker,
        &[],
        ETH_IP6,
        &fr::ipv6(
            attacker_ll,
            all_nodes,
            17,
            64,
            &fr::udp(9, 9, mark.as_bytes()),
        ),
        &mark,
    );
    const BATCH: u64 = 5000;
    let group_drops = || {
        counters(&lab.host, ATTACK_PORT)
            .get(rule::GROUP_LIMIT)
            .copied()
            .unwrap_or(0)
    };
    let start = std::time::Instant::now();
    let (mut sent, mut dropped) = (0u64, 0u64);
    // Batches of more than twice the bucket, until the rule has dropped some (at most 20).
    for _ in 0..20 {
        for i in 0..BATCH {
            fr::send(&send, if i % 2 == 0 { &arp } else { &mcast });
        }
        sent += BATCH;
        dropped = group_drops();
        if dropped > 0 {
            break;
        }
    }
    let elapsed = start.elapsed();
    // Unicast right behind the flood, the bucket empty: not limited.
    let end = to_the_neighbour(&send, attacker, "flood-end");
    let (received, came) = count_marked(&neighbour, &mark, &end, Duration::from_secs(5));
    assert!(
        dropped > 0,
        "{sent} group frames sent, none dropped by the limit"
    );
    assert!(came, "the unicast frame after the flood was lost");
    assert!(
        received as u64 + dropped <= sent,
        "received {received} + dropped {dropped} > sent {sent}"
    );
    // The bucket, and what refilled while the flood was sent (half a second to spare).
    let bound =
        f64::from(limit.burst) + f64::from(limit.per_second) * (elapsed.as_secs_f64() + 0.5);
    assert!(
        (received as f64) <= bound,
        "the neighbour received {received} of {sent} flood frames in {elapsed:?}: more than {bound}"
    );
    eprintln!(
        "flood: sent {sent} in {elapsed:?}, dropped {dropped}, the neighbour received {received}"
    );

    // Once the bucket has refilled (it takes burst / rate = 1 s; 3 s given), a DHCP request
    // and ARP pass again, and the limit drops nothing more.
    std::thread::sleep(Duration::from_secs_f64(
        f64::from(limit.burst) / f64::from(limit.per_second) + 2.0,
    ));
    // What the host's socket had no room for is gone; what it had is read now.
    fr::markers_until(&listen, "@@never@@", Duration::from_millis(300));
    let before = group_drops();
    let name = "dhcp-after-flood";
    let discover = fr::ipv4(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        17,
        &fr::udp(68, 67, &fr::bootp_request(attacker, &fr::marker(name))),
    );
    fr::send(
        &send,
        &fr::ether(
            BROADCAST,
            attacker,
            &[],
            ETH_IP,
            &discover,
            &fr::marker(name),
        ),
    );
    let want = fr::marker(name);
    for (who, sock) in [("neighbour", &neighbour), ("host", &listen)] {
        let seen = fr::markers_until(sock, &want, Duration::from_secs(2));
        assert!(
            seen.contains(&want),
            "the {who} missed the DHCP request: {seen:?}"
        );
    }
    ping::assert_all(
        &lab.attacker.ok(&format!(
            "ip neigh flush dev eth0; ping -c 2 -i 0.2 -W 1 {HONEST_IP}"
        )),
        2,
    );
    honest_works(&lab);
    assert_eq!(group_drops(), before, "normal traffic hit the limit");
    let honest = counters(&lab.host, HONEST_PORT);
    assert!(honest.values().all(|n| *n == 0), "{honest:?}");
}

/// The port's chain runs at prerouting priority -300, before the bridge learns a frame's
/// source: frames from forged MACs, dropped there, leave no forwarding entry (a workload
/// cannot fill the bridge's table, or draw another's traffic). Without rules the same frames
/// are learned, each one.
#[test]
fn forged_sources_are_dropped_before_the_bridge_learns_them() {
    if skip() {
        return;
    }
    let lab = lab();
    let (listen, send) = lab.attacker_under(PortPolicy::new(mac(ATTACK_MAC), Some(ATTACK_IP)));
    big_buffer(&listen, 16 << 20);
    const N: u16 = 200;
    let forged = |i: u16| -> [u8; 6] {
        let [hi, lo] = i.to_be_bytes();
        [0x52, 0x54, 0x00, 0xee, hi, lo]
    };
    // IPv4 from the attacker's own address: only the MAC rule stands in its way.
    let echo = fr::icmp_echo(ATTACK_IP, GATEWAY, &fr::marker("forged"));
    let flood = |first: usize| {
        for i in 0..N {
            let frame = fr::ether(
                fr::mac(BR_MAC),
                forged(i),
                &[],
                ETH_IP,
                &echo,
                &fr::marker("forged"),
            );
            fr::send(&send, &frame);
        }
        // Once the sentinel is through, every frame before it has been through the bridge.
        let (until, frame) = sentinel(first);
        fr::send(&send, &frame);
        let seen = fr::markers_until(&listen, &until, Duration::from_secs(2));
        assert!(seen.contains(&until), "sentinel lost: {seen:?}");
        seen
    };
    let learned = || {
        lab.host
            .run(|| volt::net::netlink::Netlink::new()?.fdb("br0"))
            .expect("the bridge's forwarding entries")
            .into_iter()
            .filter(|e| e.mac.0[..4] == [0x52, 0x54, 0x00, 0xee])
            .count()
    };
    let seen = flood(300);
    assert_eq!(learned(), 0, "a forged source was learned");
    assert!(!seen.contains(&fr::marker("forged")), "{seen:?}");
    let c = counters(&lab.host, ATTACK_PORT);
    assert_eq!(c.get(rule::MAC), Some(&u64::from(N)), "{c:?}");
    assert_eq!(c.get(rule::GROUP_LIMIT), Some(&0), "{c:?}");
    // The control: without the port's rules the bridge learns every one.
    lab.host
        .run(|| antispoof::remove(ATTACK_PORT))
        .expect("remove");
    flood(301);
    assert_eq!(learned(), usize::from(N));
}

/// Frames to link-local group addresses (LLDP's `01:80:c2:00:00:0e`), which the bridge does
/// not forward, go to its local input, past the prerouting hook the port's rules are in: the
/// bridge learned their forged sources. A pinned port learns nothing, and a static entry
/// of an earlier MAC on it goes when it is pinned again.
#[test]
fn a_pinned_port_learns_no_source_from_link_local_frames() {
    if skip() {
        return;
    }
    let lab = lab();
    let (listen, send) = lab.attacker_under(PortPolicy::new(mac(ATTACK_MAC), Some(ATTACK_IP)));
    const N: u16 = 100;
    let forged = |i: u16| -> [u8; 6] {
        let [hi, lo] = i.to_be_bytes();
        [0x52, 0x54, 0x00, 0xed, hi, lo]
    };
    let flood = |first: usize| {
        for i in 0..N {
            let frame = fr::ether(
                [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e],
                forged(i),
                &[],
                0x88cc,
                &[0u8; 46],
                &fr::marker("lldp"),
            );
            fr::send(&send, &frame);
        }
        let (until, frame) = sentinel(first);
        fr::send(&send, &frame);
        let seen = fr::markers_until(&listen, &until, Duration::from_secs(2));
        assert!(seen.contains(&until), "sentinel lost: {seen:?}");
    };
    let on_port = |prefix: [u8; 4]| {
        lab.host
            .run(|| volt::net::netlink::Netlink::new()?.fdb("br0"))
            .expect("the bridge's forwarding entries")
            .into_iter()
            .filter(|e| e.mac.0[..4] == prefix)
            .count()
    };
    let pin = |m: &'static str| {
        lab.host
            .run(move || volt::net::netlink::Netlink::new()?.pin_port(ATTACK_PORT, mac(m)))
            .expect("pin");
    };
    // Pinned first to an earlier MAC, then to its own: the earlier one's entry goes.
    pin("52:54:00:aa:bb:cc");
    pin(ATTACK_MAC);
    flood(400);
    assert_eq!(
        on_port([0x52, 0x54, 0x00, 0xed]),
        0,
        "a forged source was learned"
    );
    let fdb = lab.host.ok("bridge fdb show dev veth-b-h");
    assert!(!fdb.contains("52:54:00:aa:bb:cc"), "{fdb}");
    // The control: with learning on again, the rules alone do not keep the bridge from
    // learning every one.
    lab.host.ok("bridge link set dev veth-b-h learning on");
    flood(401);
    assert_eq!(on_port([0x52, 0x54, 0x00, 0xed]), usize::from(N));
    assert!(
        fdb.contains(&format!("{ATTACK_MAC} sticky master br0 static")),
        "{fdb}"
    );
}

/// Unknown unicast: the attacker sends IPv4 from its own addresses (which its rules let by)
/// to MACs the bridge does not know, and the bridge copies each to every port. A pinned port
/// (a static, sticky entry for its workload's MAC, its `flood` flag off: what Volt does to
/// every workload's port) gets none of them, while its workload stays reachable: after it
/// was silent longer than the bridge's ageing time (the host's neighbour entry still
/// stale, so the host sends without asking), and after a port without rules sent from its
/// MAC.
#[test]
fn a_pinned_port_gets_no_unknown_unicast_and_its_workload_stays_reachable() {
    if skip() {
        return;
    }
    let lab = lab();
    let (_listen, send) = lab.attacker_under(PortPolicy::new(mac(ATTACK_MAC), Some(ATTACK_IP)));
    let neighbour = lab.honest.run(|| fr::packet_socket("eth0"));
    big_buffer(&neighbour, 16 << 20);
    let attacker = fr::mac(ATTACK_MAC);
    const N: u16 = 500;
    let mark = fr::marker("unknown");
    let echo = fr::icmp_echo(ATTACK_IP, Ipv4Addr::new(10, 42, 0, 99), &mark);
    // How many of N frames to unknown MACs reach the neighbour (a frame to it comes last).
    let unknown_reaching = |round: u8| {
        for i in 0..N {
            let [hi, lo] = i.to_be_bytes();
            let to = [0x52, 0x54, 0x00, 0xdd ^ round, hi, lo];
            fr::send(&send, &fr::ether(to, attacker, &[], ETH_IP, &echo, &mark));
        }
        let end = to_the_neighbour(&send, attacker, &format!("unknown-end-{round}"));
        let (n, came) = count_marked(&neighbour, &mark, &end, Duration::from_secs(5));
        assert!(came, "the frame to the neighbour itself was lost");
        n
    };
    assert_eq!(
        unknown_reaching(0),
        usize::from(N),
        "flooded without the pin"
    );
    lab.host
        .run(|| volt::net::netlink::Netlink::new()?.pin_port(HONEST_PORT, mac(HONEST_MAC)))
        .expect("pin the honest port");
    assert_eq!(
        unknown_reaching(1),
        0,
        "unknown unicast reached a pinned port"
    );
    let port = lab
        .host
        .ok(&format!("bridge -d link show dev {HONEST_PORT}"));
    assert!(port.contains("flood off"), "{port}");
    let entry = || lab.host.ok(&format!("bridge fdb show dev {HONEST_PORT}"));
    let static_entry = format!("{HONEST_MAC} sticky master br0 static");
    // The honest workload falls silent (its IPv6 off: no reports) for longer than the
    // bridge keeps what it learned; the host still has its neighbour entry and sends to it
    // without asking first. Only the static entry leads there.
    lab.honest
        .ok("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1");
    lab.host.ok("ip link set br0 type bridge ageing_time 100");
    std::thread::sleep(Duration::from_secs(3));
    let reach = || {
        lab.host.ok(&format!(
            "ip neigh replace {HONEST_IP} lladdr {HONEST_MAC} dev br0 nud stale"
        ));
        ping::assert_all(
            &lab.host.ok(&format!("ping -c 2 -i 0.2 -W 1 {HONEST_IP}")),
            2,
        );
    };
    reach();
    assert!(entry().contains(&static_entry), "{}", entry());
    // A port without rules sends from the honest workload's MAC: the entry stays put.
    lab.host
        .run(|| antispoof::remove(ATTACK_PORT))
        .expect("remove");
    let stolen = fr::ether(
        fr::mac(BR_MAC),
        fr::mac(HONEST_MAC),
        &[],
        ETH_IP,
        &fr::icmp_echo(HONEST_IP, GATEWAY, &fr::marker("stolen")),
        &fr::marker("stolen"),
    );
    for _ in 0..3 {
        fr::send(&send, &stolen);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(entry().contains(&static_entry), "{}", entry());
    reach();
}

#[test]
fn ping_summaries_of_iputils_and_busybox() {
    assert_eq!(
        common::ping::counts("--- x ping statistics ---\n3 packets transmitted, 2 received, 33.3333% packet loss, time 401ms\n"),
        Some((3, 2))
    );
    assert_eq!(
        common::ping::counts("--- x ping statistics ---\n2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1001ms\n"),
        Some((2, 0))
    );
    assert_eq!(
        common::ping::counts("--- x ping statistics ---\n3 packets transmitted, 3 packets received, 0% packet loss\n"),
        Some((3, 3))
    );
    assert_eq!(
        common::ping::counts("connect: Network is unreachable\n"),
        None
    );
}
