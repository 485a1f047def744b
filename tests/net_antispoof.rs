//! Anti-spoofing on the bridge, with traffic, in namespaces the test creates: an honest
//! workload and an attacker each behind a veth port; rules pin each port to its MAC and
//! IPv4. The attacker's spoofed IP, spoofed MAC and spoofed ARP are dropped (counters
//! show it) while the honest workload keeps working.

mod common;

use common::netns::{skip_reason, TestNs};
use common::ping;
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
    if common::skip(skip_reason(), false) {
        return;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        common::report::skip("nft is missing (scripts/setup installs nftables)");
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
    // The port's four drop counters, read in the host namespace.
    let drops = |port: &'static str| {
        let d = host.run(move || antispoof::drop_counts(port));
        assert_eq!(d.len(), 4, "counters of {port}: {d:?}");
        d
    };
    ping::assert_all(&honest.ok("ping -c 2 -i 0.2 -W 1 10.42.0.1"), 2);
    ping::assert_all(&attacker.ok("ping -c 2 -i 0.2 -W 1 10.42.0.1"), 2);
    // Counters in rule order: ether saddr, arp saddr ether, arp saddr ip, ip saddr.
    let base = drops("veth-b-h");
    assert_eq!(
        base,
        vec![0, 0, 0, 0],
        "honest traffic of the attacker's port"
    );

    // Spoofed source IP: the honest workload's address from the attacker's port.
    attacker.ok("ip addr add 10.42.0.20/32 dev eth0");
    let o = attacker.sh("ping -c 2 -i 0.2 -W 1 -I 10.42.0.20 10.42.0.1");
    ping::assert_counts(&String::from_utf8_lossy(&o.stdout), 2, 0);
    let after_ip = drops("veth-b-h");
    assert!(
        after_ip[2] + after_ip[3] > base[2] + base[3],
        "the spoofed IP was not dropped by the port's rules: {after_ip:?}"
    );
    // Spoofed ARP: two gratuitous ARPs claiming 10.42.0.20 must not reach the host; the
    // port's `arp saddr ip` rule counts both.
    let arping = attacker.ok("busybox arping -U -c 2 -w 2 -s 10.42.0.20 -I eth0 10.42.0.1");
    assert!(arping.contains("Sent 2 probe"), "{arping}");
    let after_arp = drops("veth-b-h");
    assert!(
        after_arp[2] >= after_ip[2] + 2,
        "the spoofed ARPs were not dropped by the arp rule: {after_ip:?} -> {after_arp:?}"
    );
    let neigh = host.ok("ip neigh show 10.42.0.20");
    assert!(
        !neigh.contains(ATTACK_MAC),
        "ARP spoof reached the host: {neigh}"
    );
    attacker.ok("ip addr del 10.42.0.20/32 dev eth0");
    // Spoofed source MAC.
    attacker.ok(&format!("ip link set eth0 address {HONEST_MAC}"));
    let o = attacker.sh("ping -c 2 -i 0.2 -W 1 10.42.0.1");
    ping::assert_counts(&String::from_utf8_lossy(&o.stdout), 2, 0);
    let after_mac = drops("veth-b-h");
    assert!(
        after_mac[0] > after_arp[0],
        "the spoofed MAC was not dropped by the ether rule: {after_arp:?} -> {after_mac:?}"
    );
    assert_eq!(drops("veth-a-h").iter().sum::<u64>(), 0);
    // The honest workload is unaffected.
    ping::assert_all(&honest.ok("ping -c 2 -i 0.2 -W 1 10.42.0.1"), 2);

    // Removing a port's rules leaves the other port's in place.
    host.run(|| antispoof::remove("veth-b-h").expect("remove"));
    host.ok("! nft list chain bridge volt port-veth-b-h");
    host.ok("nft list chain bridge volt port-veth-a-h");
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
