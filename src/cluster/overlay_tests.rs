use super::super::etcd::Kv;
use super::super::store::snapshot_of;
use super::*;

trait WithKey {
    /// The same record under `key`, saying it is host `name`.
    fn with_key(self, key: &str, name: &str) -> Kv;
}

impl WithKey for Kv {
    fn with_key(mut self, key: &str, name: &str) -> Kv {
        let mut v: serde_json::Value = serde_json::from_slice(&self.value).expect("json");
        v["name"] = name.into();
        self.value = serde_json::to_vec(&v).expect("json");
        self.key = key.into();
        self
    }
}

fn kv(key: &str, value: &str) -> Kv {
    Kv {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: 1,
        create_revision: 1,
        mod_revision: 1,
    }
}

fn host(name: &str, n: u8) -> Kv {
    kv(
        &format!("/volt/hosts/{name}"),
        &format!(
            r#"{{"name":"{name}","underlay":"192.168.7.{n}","vxlan_port":4789,"since":1,"networks":[{{"name":"volt0","vni":42,"bridge_mac":"0a:00:00:00:00:0{n}","address":"10.42.0.9{n}"}}]}}"#
        ),
    )
}

fn addr(ip: &str, owner: &str, host: &str, mac: &str) -> Kv {
    kv(
        &format!("/volt/ipam/volt0/addr/{ip}"),
        &format!(r#"{{"owner":"{owner}","host":"{host}","static":false,"mac":"{mac}","since":1}}"#),
    )
}

/// Host `me` (underlay 192.168.7.1, port 4789, VNI 42) on `net`.
fn local<'a>(me: &'a str, net: &'a Network) -> Local<'a> {
    Local {
        me,
        underlay: Ipv4Addr::new(192, 168, 7, 1),
        vxlan_port: 4789,
        vni: 42,
        net,
        mtu: 1450,
    }
}

fn host_with(name: &str, underlay: &str, port: u16, vni: u32, mac: &str, address: &str) -> Kv {
    kv(
        &format!("/volt/hosts/{name}"),
        &format!(
            r#"{{"name":"{name}","underlay":"{underlay}","vxlan_port":{port},"since":1,"networks":[{{"name":"volt0","vni":{vni},"bridge_mac":"{mac}","address":"{address}"}}]}}"#
        ),
    )
}

/// Every host can write the store: what cannot be right is left out, and said.
#[test]
fn hostile_or_broken_records_are_left_out() {
    let good = "0a:00:00:00:00:02";
    let snap = snapshot_of(
        &[
            host("a", 1),
            host_with("b", "192.168.7.2", 4789, 42, good, "10.42.0.92"),
            // A record under another host's key ("hosts/0" saying it is b).
            host_with("0", "192.168.7.66", 4789, 42, good, "10.42.0.92")
                .with_key("/volt/hosts/0", "b"),
            host_with(
                "lo",
                "127.0.0.1",
                4789,
                42,
                "0a:00:00:00:00:03",
                "10.42.0.93",
            ),
            host_with(
                "me2",
                "192.168.7.1",
                4789,
                42,
                "0a:00:00:00:00:04",
                "10.42.0.94",
            ),
            host_with(
                "vni",
                "192.168.7.5",
                4789,
                7,
                "0a:00:00:00:00:05",
                "10.42.0.95",
            ),
            host_with(
                "port",
                "192.168.7.6",
                8472,
                42,
                "0a:00:00:00:00:06",
                "10.42.0.96",
            ),
            host_with(
                "bc",
                "192.168.7.7",
                4789,
                42,
                "ff:ff:ff:ff:ff:ff",
                "10.42.0.97",
            ),
            host_with(
                "gw",
                "192.168.7.8",
                4789,
                42,
                "0a:00:00:00:00:08",
                "10.42.0.1",
            ),
            host_with(
                "c",
                "192.168.7.3",
                4789,
                42,
                "0a:00:00:00:00:09",
                "10.42.0.99",
            ),
            // Claims: outside the subnet, the gateway, a broadcast MAC, one MAC from two
            // hosts, and one good one.
            addr("192.168.50.1", "vm/out/eth0", "b", "52:54:00:00:00:01"),
            addr("10.42.0.1", "vm/gw/eth0", "b", "52:54:00:00:00:02"),
            addr("10.42.0.10", "vm/bc/eth0", "b", "ff:ff:ff:ff:ff:ff"),
            addr("10.42.0.11", "vm/dup1/eth0", "b", "52:54:00:00:00:03"),
            addr("10.42.0.12", "vm/dup2/eth0", "c", "52:54:00:00:00:03"),
            addr("10.42.0.13", "vm/ok/eth0", "c", "52:54:00:00:00:04"),
        ],
        5,
    );
    let net = Network::builtin_default();
    let d = desired(&snap, &local("a", &net));
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    let mac = |s: &str| s.parse::<MacAddr>().expect("mac");
    assert_eq!(d.peers, ["b", "bc", "c", "gw"]);
    let b_underlay = ip("192.168.7.2");
    assert!(
        d.fdb.iter().all(|e| e.dst != ip("192.168.7.66")),
        "b's MAC stays at b's underlay: {:?}",
        d.fdb
    );
    assert!(d.fdb.contains(&Fdb {
        mac: mac(good),
        dst: b_underlay
    }));
    assert!(d.fdb.iter().all(|e| !e.mac.is_multicast()), "{:?}", d.fdb);
    assert_eq!(
        d.pairs,
        [
            (mac(good), ip("10.42.0.92")),
            (mac("0a:00:00:00:00:09"), ip("10.42.0.99")),
            (mac("52:54:00:00:00:04"), ip("10.42.0.13")),
        ]
        .into_iter()
        .collect()
    );
    assert!(!d.routes.contains(&ip("192.168.50.1")));
    assert!(!d.routes.contains(&ip("10.42.0.1")));
    let said = d.rejected.iter().cloned().collect::<Vec<_>>().join("\n");
    for want in [
        "host lo: its underlay address 127.0.0.1 is not a unicast address",
        "host me2: its underlay address 192.168.7.1 is this host's own",
        "host vni: it has VNI 7 for volt0, this host 42",
        "host port: it uses VXLAN port 8472, this host 4789",
        "host bc: its bridge MAC ff:ff:ff:ff:ff:ff is not a unicast MAC",
        "host gw: its address 10.42.0.1 is not a host address of 10.42.0.0/24",
        "vm/out/eth0 on host b: 192.168.50.1 is not a host address of 10.42.0.0/24",
        "vm/gw/eth0 on host b: 10.42.0.1 is not a host address",
        "vm/bc/eth0 on host b: ff:ff:ff:ff:ff:ff is not a unicast MAC",
        "vm/dup1/eth0 on host b: 52:54:00:00:00:03 is claimed from several hosts",
        "vm/dup2/eth0 on host c: 52:54:00:00:00:03 is claimed from several hosts",
    ] {
        assert!(said.contains(want), "{want:?} not in:\n{said}");
    }
}

#[test]
fn peers_workloads_and_dead_hosts() {
    let snap = snapshot_of(
        &[
            host("a", 1),
            host("b", 2),
            host("c", 3),
            addr("10.42.0.2", "vm/x/eth0", "a", "52:54:00:00:00:0a"),
            addr("10.42.0.3", "vm/y/eth0", "b", "52:54:00:00:00:0b"),
            // Host d has no registration (its lease expired): nothing of it counts.
            addr("10.42.0.4", "vm/z/eth0", "d", "52:54:00:00:00:0d"),
        ],
        5,
    );
    let net = Network::builtin_default();
    let d = desired(&snap, &local("a", &net));
    assert_eq!(d.peers, vec!["b".to_string(), "c".to_string()]);
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    let mac = |s: &str| s.parse::<MacAddr>().expect("mac");
    let want: BTreeSet<Fdb> = [
        ("00:00:00:00:00:00", "192.168.7.2"),
        ("00:00:00:00:00:00", "192.168.7.3"),
        ("0a:00:00:00:00:02", "192.168.7.2"),
        ("0a:00:00:00:00:03", "192.168.7.3"),
        ("52:54:00:00:00:0b", "192.168.7.2"),
    ]
    .iter()
    .map(|(m, d)| Fdb {
        mac: mac(m),
        dst: ip(d),
    })
    .collect();
    assert_eq!(d.fdb, want);
    assert_eq!(
        d.routes,
        ["10.42.0.3", "10.42.0.92", "10.42.0.93"]
            .iter()
            .map(|s| ip(s))
            .collect()
    );
    assert!(d
        .pairs
        .contains(&(mac("52:54:00:00:00:0b"), ip("10.42.0.3"))));
    assert!(
        !d.pairs.iter().any(|(_, a)| *a == ip("10.42.0.2")),
        "own workloads stay out"
    );
    assert!(
        !d.pairs.iter().any(|(_, a)| *a == ip("10.42.0.4")),
        "dead host's too"
    );
    assert!(d.rejected.is_empty(), "{:?}", d.rejected);
    // Another network is untouched by volt0's claims.
    let mut lab = Network::builtin_default();
    lab.name = "lab".into();
    assert!(desired(&snap, &local("a", &lab)).fdb.is_empty());
    let (add, del) = fdb_changes(
        &[Fdb {
            mac: mac("52:54:00:00:00:0d"),
            dst: ip("192.168.7.4"),
        }],
        &d.fdb,
    );
    assert_eq!(add.len(), 5);
    assert_eq!(del.len(), 1);
}

/// A peer that defines the shared network otherwise (another subnet, container range or
/// MTU) gets no forwarding entries and no filter pairs, and is said with both definitions; a
/// record of an older version, which states no definition, is a peer as before.
#[test]
fn a_peer_with_another_definition_is_left_out() {
    let def = r#""subnet":"10.42.0.0/24","gateway":"10.42.0.1","container_range":"10.42.0.100-10.42.0.254","mtu":1450"#;
    let rec = |name: &str, n: u8, def: &str| {
        kv(
            &format!("/volt/hosts/{name}"),
            &format!(
                r#"{{"name":"{name}","underlay":"192.168.7.{n}","vxlan_port":4789,"since":1,"networks":[{{"name":"volt0","vni":42,"bridge_mac":"0a:00:00:00:00:0{n}","address":"10.42.0.9{n}",{def}}}]}}"#
            ),
        )
    };
    let snap = snapshot_of(
        &[
            rec("b", 2, def),
            rec("c", 3, &def.replace("10.42.0.100-", "10.42.0.50-")),
            rec("d", 4, &def.replace("1450", "1400")),
            // An older record: no definition.
            host("e", 5),
            addr("10.42.0.3", "vm/y/eth0", "c", "52:54:00:00:00:0c"),
        ],
        5,
    );
    let net = Network::builtin_default();
    let d = desired(&snap, &local("a", &net));
    assert_eq!(d.peers, ["b", "e"]);
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    for gone in ["192.168.7.3", "192.168.7.4"] {
        assert!(d.fdb.iter().all(|e| e.dst != ip(gone)), "{:?}", d.fdb);
    }
    assert!(
        d.pairs.iter().all(|(_, a)| *a != ip("10.42.0.3")),
        "{:?}",
        d.pairs
    );
    assert!(!d.routes.contains(&ip("10.42.0.93")));
    let said = d.rejected.iter().cloned().collect::<Vec<_>>().join("\n");
    for want in [
        "host c: it defines volt0 as subnet 10.42.0.0/24, gateway 10.42.0.1, containers 10.42.0.50-10.42.0.254, MTU 1450, this host as subnet 10.42.0.0/24, gateway 10.42.0.1, containers 10.42.0.100-10.42.0.254, MTU 1450",
        "host d: it defines volt0 as subnet 10.42.0.0/24, gateway 10.42.0.1, containers 10.42.0.100-10.42.0.254, MTU 1400, this host as",
    ] {
        assert!(said.contains(want), "{want:?} not in:\n{said}");
    }
    assert_eq!(d.rejected.len(), 2, "{said}");
}

#[test]
fn dhcp_blocks_cover_the_container_range() {
    let r = crate::config::Range {
        start: Ipv4Addr::new(10, 42, 0, 100),
        end: Ipv4Addr::new(10, 42, 0, 254),
    };
    let b = dhcp_blocks(r);
    assert_eq!(b.len(), 10);
    assert_eq!(b[0], (Ipv4Addr::new(10, 42, 0, 100), 16));
    assert_eq!(b[9], (Ipv4Addr::new(10, 42, 0, 244), 11));
    assert_eq!(b.iter().map(|(_, n)| n).sum::<u32>(), 155);
    let d = dhcp_dropin("10.42.0.0/24".parse().expect("net"), b[1].0, 16, "a");
    assert!(d.contains("PoolOffset=116\nPoolSize=16\n"), "{d}");
}

#[test]
fn stale_ports_are_volts_own_not_wanted_ones() {
    let found: Vec<(String, u32)> = [
        ("vx-42", 42),
        ("vx-43", 43),
        // Not Volt's: an admin's VXLAN, and one named like Volt's with another VNI.
        ("vxlan0", 42),
        ("vx-7", 8),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), *v))
    .collect();
    assert_eq!(stale_ports(&found, &["vx-43".into()]), ["vx-42"]);
    assert_eq!(stale_ports(&found, &[]), ["vx-42", "vx-43"]);
}

#[test]
fn host_address_skips_claims_reservations_and_local_static_addresses() {
    let mut net = Network::builtin_default();
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    net.reservations.insert("vm-r".into(), ip("10.42.0.98"));
    let taken: BTreeSet<Ipv4Addr> = [ip("10.42.0.99")].into();
    // A local VM's static address, not claimed yet (the VM is not running).
    let configured: BTreeSet<Ipv4Addr> = [ip("10.42.0.97")].into();
    assert_eq!(
        host_address_pick(&net, &taken, &configured),
        Some(ip("10.42.0.96"))
    );
    let all: BTreeSet<Ipv4Addr> = (2..=99).map(|n| Ipv4Addr::new(10, 42, 0, n)).collect();
    assert_eq!(host_address_pick(&net, &all, &configured), None);
}

#[test]
fn names_fit_and_bridge_macs_differ_per_host() {
    assert!(vxlan_name(16_777_215).len() <= 15);
    let a = bridge_mac("a", "volt0");
    assert_ne!(a, bridge_mac("b", "volt0"));
    assert_eq!(a, bridge_mac("a", "volt0"));
    assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
}

/// The daemon's drop-ins are found again by their directory (for removing those of a bridge
/// no longer shared) and begin with the header that tells them apart from an admin's.
#[test]
fn dropins_are_found_by_their_directory() {
    let (mac, dhcp) = dropins("volt0");
    assert_eq!(mac, "10-volt0.netdev.d/50-volt-cluster.conf");
    assert_eq!(dhcp, "10-volt0.network.d/70-volt-cluster-dhcp.conf");
    for rel in [&mac, &dhcp] {
        let dir = rel.split('/').next().expect("dir");
        assert_eq!(dropin_bridge(dir), Some("volt0"), "{rel}");
    }
    for other in [
        "10-.netdev.d",
        "20-volt0.netdev.d",
        "10-volt0.netdev",
        "volt0",
    ] {
        assert_eq!(dropin_bridge(other), None, "{other}");
    }
    let m: MacAddr = "0a:01:02:03:04:05".parse().expect("mac");
    assert!(mac_dropin("volt0", m).starts_with(DROPIN_HEADER));
    let d = dhcp_dropin(
        "10.42.0.0/24".parse().expect("net"),
        Ipv4Addr::new(10, 42, 0, 100),
        16,
        "a",
    );
    assert!(d.starts_with(DROPIN_HEADER));
}

/// The guard holds every network's bridge (shared or not, a broken file's too) off the
/// cluster's VXLAN port, etcd's usual ports and each endpoint's.
#[test]
fn the_guard_covers_every_bridge_and_every_etcd_port() {
    use crate::config::{parse_cluster_toml, BrokenNetwork, Networks};
    let volt0 = Network::builtin_default();
    let mut lab = volt0.clone();
    lab.name = "lab".into();
    lab.bridge = "lab0".into();
    let c = parse_cluster_toml(
        std::path::Path::new("/etc/volt/cluster.toml"),
        "underlay = \"192.168.77.1\"\nvxlan_port = 4790\n[etcd]\nendpoints = [\"https://e1:12379\", \"http://e2:2379\", \"http://e3:22380\"]\n[[network]]\nname = \"volt0\"\nvni = 42\n",
        "a",
        &[volt0.clone(), lab.clone()],
    )
    .expect("cluster.toml");
    let mut networks = Networks::new(vec![volt0, lab]);
    networks.broken.push(BrokenNetwork {
        name: "odd".into(),
        bridge: Some("odd0".into()),
        path: "/etc/volt/networks/odd.toml".into(),
    });
    let g = workload_guard(&networks, &c);
    assert_eq!(g.bridges, ["lab0", "odd0", "volt0"]);
    assert_eq!(g.vxlan_port, 4790);
    assert_eq!(g.etcd_ports, [2379, 2380, 12379, 22380]);
}

/// A bridge no longer shared leaves both drop-ins stale; a shared one whose DHCP server is
/// not Volt's (an admin's bridge) only the DHCP block's; one where Volt serves DHCP none.
/// Each is named under its own directory only.
#[test]
fn stale_dropins_follow_sharing_and_who_serves_dhcp() {
    let shared = |b: &str| match b {
        "volt0" => Some(true),
        "br7" => Some(false),
        _ => None,
    };
    assert!(stale_dropins("10-volt0.netdev.d", shared).is_empty());
    assert!(stale_dropins("10-volt0.network.d", shared).is_empty());
    assert!(stale_dropins("10-br7.netdev.d", shared).is_empty());
    assert_eq!(
        stale_dropins("10-br7.network.d", shared),
        ["10-br7.network.d/70-volt-cluster-dhcp.conf"]
    );
    assert_eq!(
        stale_dropins("10-lab0.netdev.d", shared),
        ["10-lab0.netdev.d/50-volt-cluster.conf"]
    );
    assert_eq!(
        stale_dropins("10-lab0.network.d", shared),
        ["10-lab0.network.d/70-volt-cluster-dhcp.conf"]
    );
    for other in ["10-lab0.network", "20-lab0.network.d", "lab0"] {
        assert!(stale_dropins(other, shared).is_empty(), "{other}");
    }
}

/// Only this host's blocks, and only on networks where it claims none now.
#[test]
fn stale_dhcp_blocks_are_this_hosts_where_it_serves_none() {
    let ip = |d: u8| Ipv4Addr::new(10, 42, 0, d);
    let blocks = vec![
        ("volt0".to_string(), ip(100), "a".to_string()),
        ("volt0".to_string(), ip(116), "b".to_string()),
        ("lab".to_string(), ip(100), "a".to_string()),
        ("lab".to_string(), ip(116), "b".to_string()),
        ("gone".to_string(), ip(132), "a".to_string()),
    ];
    let serves = |net: &str| net == "volt0";
    assert_eq!(
        stale_dhcp_blocks(&blocks, "a", serves),
        [("lab".to_string(), ip(100)), ("gone".to_string(), ip(132))]
    );
    assert!(stale_dhcp_blocks(&blocks, "c", serves).is_empty());
    assert_eq!(stale_dhcp_blocks(&blocks, "b", |_| false).len(), 2);
}
