//! Traffic through networks the manager builds, all inside namespaces the tests create:
//! a "host" namespace holding the bridge (and for host-only, an uplink veth to a separate
//! "WAN" namespace), and one namespace per workload holding the container end of its veth.
//! Bridged workloads ping each other; an isolated one reaches nothing; a host-only workload
//! reaches the WAN masqueraded behind the uplink address, and the WAN reaches it only
//! through a declared port map. Skips (saying why) unless root.

mod common;

use std::path::Path;
use std::time::Duration;

use common::netns::{skip_reason, veth, TestNs};
use volt::config::{parse_network_toml, Network};
use volt::net::manager::{Manager, Veth};
use volt::net::netlink::{Netlink, NetnsTarget};

fn skip() -> bool {
    common::skip(skip_reason(), false) || common::skip_without_tool("ping", "-V", "iputils-ping")
}

fn network(text: &str) -> Network {
    parse_network_toml(Path::new("/etc/volt/networks/lab.toml"), text).expect("network")
}

/// Put `veth`'s container end into `ws` as eth0 with `addr`/24 and, if given, a default
/// route via `gw`.
fn plug(host: &TestNs, veth: &Veth, ws: &TestNs, addr: &str, gw: Option<&str>) {
    let end = veth.container_end.clone();
    let target = ws.path();
    host.run(move || {
        let f = std::fs::File::open(&target).expect("open workload netns");
        Netlink::new()
            .expect("nl")
            .move_to_netns(
                &end,
                NetnsTarget::Fd(std::os::fd::AsFd::as_fd(&f)),
                Some("eth0"),
            )
            .expect("move");
    });
    ws.ok(&format!(
        "ip addr add {addr}/24 dev eth0 && ip link set eth0 up"
    ));
    if let Some(gw) = gw {
        ws.ok(&format!("ip route add default via {gw}"));
    }
}

/// The packet counter of the one rule in `chain` (an `nft list chain` listing) that contains
/// `rule`; panics when no rule or several match, or the rule has no counter.
fn packets(chain: &str, rule: &str) -> u64 {
    let lines: Vec<&str> = chain.lines().filter(|l| l.contains(rule)).collect();
    assert_eq!(lines.len(), 1, "one rule with {rule:?} wanted in:\n{chain}");
    lines[0]
        .split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet counter in {:?}", lines[0]))
}

fn pings(from: &TestNs, to: &str) -> bool {
    from.sh(&format!("ping -c 1 -W 1 {to}")).status.success()
}

fn pings_eventually(from: &TestNs, to: &str) -> bool {
    // The first packets may race the links' carrier/DAD.
    (0..5).any(|_| {
        pings(from, to) || {
            std::thread::sleep(Duration::from_millis(200));
            false
        }
    })
}

#[test]
fn bridged_workloads_reach_each_other_and_isolated_reaches_nothing() {
    if skip() {
        return;
    }
    let host = TestNs::new("br");
    let (a, b, c) = (
        TestNs::new("br-a"),
        TestNs::new("br-b"),
        TestNs::new("br-c"),
    );
    let state = tempfile::tempdir().expect("state");
    let sd = state.path().to_path_buf();
    let net = network("bridge = \"vbr1\"\nsubnet = \"10.78.0.0/24\"\n");
    let n2 = net.clone();
    let (va, vb, vc) = host.run(move || {
        let mgr = Manager::new(&sd);
        mgr.ensure_bridge(&n2).expect("bridge");
        let (va, vb, (vc, iso)) = (veth("a").0, veth("b").0, veth("c"));
        mgr.create_veth("vbr1", &va, "a", None).expect("veth a");
        mgr.create_veth("vbr1", &vb, "b", None).expect("veth b");
        // c is on an isolated network: its host end lives alone in its own namespace.
        mgr.create_isolated_veth(&vc, "c", &iso).expect("veth c");
        (va, vb, vc)
    });
    plug(&host, &va, &a, "10.78.0.101", None);
    plug(&host, &vb, &b, "10.78.0.102", None);
    plug(&host, &vc, &c, "10.78.0.103", None);

    assert!(pings_eventually(&a, "10.78.0.102"), "bridged a -> b");
    assert!(pings(&b, "10.78.0.101"), "bridged b -> a");
    assert!(pings(&a, "10.78.0.1"), "bridged a -> gateway");

    let iso = veth("c").1;
    assert!(
        Path::new("/run/netns").join(&iso).exists(),
        "isolated namespace {iso}"
    );
    assert!(!pings(&c, "10.78.0.1"), "isolated c reached the bridge");
    assert!(!pings(&c, "10.78.0.101"), "isolated c reached a");
    assert!(!pings(&a, "10.78.0.103"), "a reached isolated c");
    // Nothing of c is on the bridge.
    let ports = host.ok("ip -br link show master vbr1");
    assert!(!ports.contains(&vc.host_end), "{ports}");
    assert!(
        ports.contains(&va.host_end) && ports.contains(&vb.host_end),
        "{ports}"
    );

    let sd = state.path().to_path_buf();
    host.run(move || {
        let mgr = Manager::new(&sd);
        for ct in ["a", "b", "c"] {
            let (v, ns) = veth(ct);
            mgr.teardown_links(&[&v.host_end], &ns).expect("teardown");
        }
        mgr.net_down(&net).expect("net down");
    });
    assert!(
        !Path::new("/run/netns").join(&iso).exists(),
        "isolated namespace removed"
    );
    assert_eq!(host.ok("ip -br link show type veth"), "");
}

#[test]
fn host_only_masquerades_to_the_uplink_and_dnats_port_maps() {
    if skip() || common::skip_without_tool("nft", "-v", "nftables") {
        return;
    }
    let host = TestNs::new("ho");
    let wan = TestNs::new("ho-wan");
    let a = TestNs::new("ho-a");
    // The uplink: a veth from the host namespace to the WAN namespace.
    host.ok(&format!(
        "ip link add wan0 type veth peer name wan-peer netns {} && ip addr add 203.0.113.1/24 dev wan0 && ip link set wan0 up",
        wan.name
    ));
    wan.ok("ip addr add 203.0.113.2/24 dev wan-peer && ip link set wan-peer up");
    // The WAN counts echo requests by source address.
    wan.ok(
        "nft add table ip count && nft add chain ip count in '{ type filter hook input priority 0; }' \
         && nft add rule ip count in ip saddr 203.0.113.1 icmp type echo-request counter \
         && nft add rule ip count in ip saddr 10.79.0.0/24 icmp type echo-request counter",
    );
    let network_text =
        "bridge = \"vbr2\"\nsubnet = \"10.79.0.0/24\"\ntype = \"host-only\"\nuplink = \"wan0\"\n\
         [reservations]\nct-a = \"10.79.0.150\"\n\
         [[port_map]]\nhost_port = 8080\ntarget = \"a\"\ntarget_port = 80\n\
         [[port_map]]\nproto = \"udp\"\nhost_port = 5353\ntarget = \"a\"\ntarget_port = 53\n";
    let net = network(network_text);
    // Port-map targets resolve to the workload's address (here its reservation), through the
    // same policy `volt net up` uses, on a root holding this network and container a.
    let cfg = tempfile::tempdir().expect("config root");
    for (file, text) in [
        ("etc/volt/networks/lab.toml", network_text.to_string()),
        (
            "etc/volt/containers/a.toml",
            "directory = \"/srv/a\"\nboot = true\n[[network]]\nbridge = \"vbr2\"\n".to_string(),
        ),
    ] {
        let p = cfg.path().join(file);
        std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    let targets = volt::attach::Attach::load(cfg.path())
        .port_map_targets(&net)
        .expect("port map targets");
    assert!(targets.waiting.is_empty(), "{:?}", targets.waiting);
    let targets = targets.ready;
    assert_eq!(targets.len(), 2);
    assert!(targets.iter().all(|t| t.addr.to_string() == "10.79.0.150"));
    let state = tempfile::tempdir().expect("state");
    let sd = state.path().to_path_buf();
    let n2 = net.clone();
    let va = host.run(move || {
        let mgr = Manager::new(&sd);
        let up = mgr.net_up(&n2, &targets).expect("net up");
        assert!(up.bridge_created && up.nat && up.port_maps == 2, "{up:?}");
        let va = veth("a").0;
        mgr.create_veth("vbr2", &va, "a", None).expect("veth");
        va
    });
    plug(&host, &va, &a, "10.79.0.150", Some("10.79.0.1"));
    let rules = host.ok("nft list table ip volt");
    assert!(rules.contains("masquerade"), "{rules}");
    assert!(rules.contains("dnat to 10.79.0.150:80"), "{rules}");
    // Only Volt's table was added in the host namespace.
    assert_eq!(host.ok("nft list tables").trim(), "table ip volt");

    // Outbound: the WAN sees the uplink's address, never the workload's.
    assert!(pings_eventually(&a, "203.0.113.2"), "a -> WAN through NAT");
    let counters = wan.ok("nft list chain ip count in");
    assert!(
        packets(&counters, "ip saddr 203.0.113.1 ") >= 1,
        "no echo request from the uplink address: {counters}"
    );
    assert_eq!(
        packets(&counters, "ip saddr 10.79.0.0/24 "),
        0,
        "the workload's own address reached the WAN: {counters}"
    );

    // Inbound TCP through the port map: WAN -> 203.0.113.1:8080 -> a:80.
    let server = std::process::Command::new("nsenter")
        .arg(format!("--net={}", a.path().display()))
        .args(["timeout", "10", "busybox", "nc", "-l", "-p", "80"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("listener");
    let mut server = server;
    {
        use std::io::Write;
        let mut stdin = server.stdin.take().expect("stdin");
        stdin.write_all(b"hello-from-a\n").expect("write");
    }
    let got = (0..20)
        .find_map(|_| {
            let o = wan.sh("timeout 3 bash -c 'exec 3<>/dev/tcp/203.0.113.1/8080 && echo hi-from-wan >&3 && head -n1 <&3'");
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
                None
            } else {
                Some(s)
            }
        })
        .unwrap_or_default();
    let _ = server.kill();
    let out = server.wait_with_output().expect("listener output");
    assert_eq!(got, "hello-from-a", "WAN -> port map -> a");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hi-from-wan"));

    // Inbound UDP through the port map: a counts datagrams to its port 53.
    a.ok("nft add table ip count && nft add chain ip count in '{ type filter hook input priority 0; }' && nft add rule ip count in udp dport 53 counter");
    wan.ok("for i in 1 2 3; do echo x > /dev/udp/203.0.113.1/5353; done");
    // The datagrams cross two namespaces asynchronously: wait for the count (bounded).
    let start = std::time::Instant::now();
    let mut c = a.ok("nft list chain ip count in");
    while packets(&c, "udp dport 53 ") < 3 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        c = a.ok("nft list chain ip count in");
    }
    assert_eq!(packets(&c, "udp dport 53 "), 3, "{c}");

    // No other inbound: even with a route to the subnet, the WAN cannot reach a directly.
    wan.ok("ip route add 10.79.0.0/24 via 203.0.113.1");
    assert!(
        !pings(&wan, "10.79.0.150"),
        "WAN reached a without a port map"
    );

    let sd = state.path().to_path_buf();
    host.run(move || {
        let mgr = Manager::new(&sd);
        let (v, ns) = veth("a");
        mgr.teardown_links(&[&v.host_end], &ns).expect("teardown");
        mgr.net_down(&net).expect("net down");
    });
    assert_eq!(host.ok("nft list tables").trim(), "", "table volt removed");
    assert!(
        !host.sh("ip link show vbr2").status.success(),
        "bridge removed"
    );
}
