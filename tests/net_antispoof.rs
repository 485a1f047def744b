//! Anti-spoofing on the bridge, with traffic, in namespaces the test creates: an honest
//! workload and an attacker each behind a veth port; rules pin each port to its MAC and
//! IPv4. The attacker's spoofed IP, spoofed MAC and spoofed ARP are dropped (counters
//! show it) while the honest workload keeps working.

mod common;

use common::netns::{skip_reason, TestNs};
use volt::net::antispoof;

const HONEST_MAC: &str = "52:54:00:00:00:20";
const ATTACK_MAC: &str = "52:54:00:00:00:30";

fn workload(host: &TestNs, ns: &TestNs, port: &str, mac: &str, cidr: &str) {
    host.ok(&format!(
        "ip link add {port} type veth peer name eth0 netns {} && ip link set {port} master br0 up",
        ns.name
    ));
    ns.ok(&format!(
        "ip link set eth0 address {mac} && ip addr add {cidr} dev eth0 && ip link set eth0 up"
    ));
}

#[test]
fn spoofed_ip_mac_and_arp_are_dropped_honest_traffic_passes() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: nft is missing (scripts/setup installs nftables)");
        return;
    }
    let host = TestNs::new("spoofh");
    let honest = TestNs::new("spoofa");
    let attacker = TestNs::new("spoofb");
    host.ok(
        "ip link add br0 type bridge && ip addr add 10.42.0.1/24 dev br0 && ip link set br0 up",
    );
    workload(&host, &honest, "veth-a-h", HONEST_MAC, "10.42.0.20/24");
    workload(&host, &attacker, "veth-b-h", ATTACK_MAC, "10.42.0.30/24");
    host.run(|| {
        antispoof::apply(
            "veth-a-h",
            HONEST_MAC.parse().expect("mac"),
            Some("10.42.0.20".parse().expect("ip")),
        )
        .expect("apply a");
        antispoof::apply(
            "veth-b-h",
            ATTACK_MAC.parse().expect("mac"),
            Some("10.42.0.30".parse().expect("ip")),
        )
        .expect("apply b");
    });
    honest.ok("ping -c 2 -i 0.2 -W 1 10.42.0.1");
    attacker.ok("ping -c 2 -i 0.2 -W 1 10.42.0.1");

    // Spoofed source IP: the honest workload's address from the attacker's port.
    attacker.ok("ip addr add 10.42.0.20/32 dev eth0");
    let o = attacker.sh("ping -c 2 -i 0.2 -W 1 -I 10.42.0.20 10.42.0.1");
    assert!(!o.status.success(), "spoofed source IP got through");
    // Counters in rule order: ether saddr, arp saddr ether, arp saddr ip, ip saddr.
    let drops = host.run(|| antispoof::drop_counts("veth-b-h"));
    assert!(
        drops[2] > 0 || drops[3] > 0,
        "the spoofed IP was not dropped by the port's rules: {drops:?}"
    );
    // Spoofed ARP: a gratuitous ARP claiming 10.42.0.20 must not reach the host.
    let _ = attacker.sh("busybox arping -U -c 2 -s 10.42.0.20 -I eth0 10.42.0.1");
    let neigh = host.ok("ip neigh show 10.42.0.20");
    assert!(
        !neigh.contains(ATTACK_MAC),
        "ARP spoof reached the host: {neigh}"
    );
    let before_mac = host.run(|| antispoof::drop_counts("veth-b-h"));
    assert!(
        before_mac[2] > 0,
        "the spoofed ARP was not dropped by the arp rule: {before_mac:?}"
    );
    attacker.ok("ip addr del 10.42.0.20/32 dev eth0");
    // Spoofed source MAC.
    attacker.ok(&format!("ip link set eth0 address {HONEST_MAC}"));
    let o = attacker.sh("ping -c 2 -i 0.2 -W 1 10.42.0.1");
    assert!(!o.status.success(), "spoofed source MAC got through");
    let drops = host.run(|| antispoof::drop_counts("veth-b-h"));
    assert!(
        drops[0] > before_mac[0],
        "the spoofed MAC was not dropped by the ether rule: {drops:?}"
    );
    assert_eq!(
        host.run(|| antispoof::drop_counts("veth-a-h"))
            .iter()
            .sum::<u64>(),
        0
    );
    // The honest workload is unaffected.
    honest.ok("ping -c 2 -i 0.2 -W 1 10.42.0.1");

    // Removing a port's rules leaves the other port's in place.
    host.run(|| antispoof::remove("veth-b-h").expect("remove"));
    host.ok("! nft list chain bridge volt port-veth-b-h");
    host.ok("nft list chain bridge volt port-veth-a-h");
}
