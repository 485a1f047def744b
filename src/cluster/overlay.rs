//! Pure: what one host's VXLAN port on a shared network should carry, from a snapshot of the
//! store: a flood entry per peer, a forwarding entry per remote workload MAC and per peer
//! bridge, a host route per remote address, and the (MAC, address) pairs its filter lets in.
//! Only hosts that are registered (their lease alive) count: when a host's lease expires, its
//! claims vanish with it and so does everything derived from them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::store::Snapshot;
use crate::config::MacAddr;
use crate::net::overlay::Fdb;

/// The VXLAN link of the network with VNI `vni` (at most 11 bytes).
pub fn vxlan_name(vni: u32) -> String {
    format!("vx-{vni}")
}

/// The MAC of this host's bridge `bridge`: locally administered, stable, unique per host
/// (the packaged bridge file gives every host the same one).
pub fn bridge_mac(host: &str, bridge: &str) -> MacAddr {
    let u = uuid::Uuid::new_v5(
        &crate::config::VOLT_NAMESPACE,
        format!("cluster-bridge/{host}/{bridge}").as_bytes(),
    );
    let b = u.as_bytes();
    MacAddr([0x0a, b[0], b[1], b[2], b[3], b[4]])
}

/// The wanted state of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub fdb: BTreeSet<Fdb>,
    /// Remote addresses this host routes to over the bridge (with its own address).
    pub routes: BTreeSet<Ipv4Addr>,
    /// (MAC, address) pairs allowed in from the VXLAN port.
    pub pairs: BTreeSet<(MacAddr, Ipv4Addr)>,
    /// Peer hosts on this network.
    pub peers: Vec<String>,
}

/// What host `me`'s port on `network` should carry.
pub fn desired(snap: &Snapshot, me: &str, network: &str) -> Desired {
    let mut d = Desired::default();
    for (h, _) in &snap.hosts {
        if h.name == me {
            continue;
        }
        let Some(hn) = h.network(network) else {
            continue;
        };
        d.peers.push(h.name.clone());
        d.fdb.insert(Fdb {
            mac: MacAddr([0; 6]),
            dst: h.underlay,
        });
        let mac = hn
            .bridge_mac
            .as_deref()
            .and_then(|m| m.parse::<MacAddr>().ok());
        if let Some(mac) = mac {
            d.fdb.insert(Fdb {
                mac,
                dst: h.underlay,
            });
            if let Some(a) = hn.address {
                d.pairs.insert((mac, a));
                d.routes.insert(a);
            }
        }
    }
    for (ip, c, _) in snap.addrs_on(network) {
        if c.host == me {
            continue;
        }
        let Some(h) = snap.host(&c.host) else {
            continue;
        };
        if h.network(network).is_none() {
            continue;
        }
        d.routes.insert(ip);
        if let Some(mac) = c.mac() {
            d.fdb.insert(Fdb {
                mac,
                dst: h.underlay,
            });
            d.pairs.insert((mac, ip));
        }
    }
    d
}

/// The entries to add and to remove to get from `now` to `want`.
pub fn fdb_changes(now: &[Fdb], want: &BTreeSet<Fdb>) -> (Vec<Fdb>, Vec<Fdb>) {
    let have: BTreeSet<Fdb> = now.iter().copied().collect();
    let add = want.difference(&have).copied().collect();
    let del = have.difference(want).copied().collect();
    (add, del)
}

#[cfg(test)]
mod tests {
    use super::super::etcd::Kv;
    use super::super::store::snapshot_of;
    use super::*;

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
            &format!(
                r#"{{"owner":"{owner}","host":"{host}","static":false,"mac":"{mac}","since":1}}"#
            ),
        )
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
        let d = desired(&snap, "a", "volt0");
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
        // Another network is untouched by volt0's claims.
        assert!(desired(&snap, "a", "lab").fdb.is_empty());
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

    #[test]
    fn names_fit_and_bridge_macs_differ_per_host() {
        assert!(vxlan_name(16_777_215).len() <= 15);
        let a = bridge_mac("a", "volt0");
        assert_ne!(a, bridge_mac("b", "volt0"));
        assert_eq!(a, bridge_mac("a", "volt0"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
    }
}
