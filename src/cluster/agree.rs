//! Pure: what the hosts sharing a network must agree on, judged from their records. A
//! shared network is one bridge stretched over the hosts, so each host's definition of it
//! (subnet, gateway, container range, MTU) must be the same: another subnet would put
//! workloads out of each other's reach, another container range would overlap the DHCP
//! blocks, another MTU would drop the larger frames of one side.

use std::net::Ipv4Addr;

use super::store::{HostNet, Snapshot};
use crate::config::Network;

/// `net` as this host defines it, for its record: the fields the other hosts compare.
/// `mtu` is the MTU its workloads get on it (the network's, at most the overlay's).
pub fn definition(net: &Network, vni: u32, mtu: u32) -> HostNet {
    HostNet {
        name: net.name.clone(),
        vni,
        bridge_mac: None,
        address: None,
        subnet: Some(net.subnet),
        gateway: Some(net.gateway),
        container_range: Some(net.container_range.to_string()),
        mtu: Some(mtu),
    }
}

/// A definition in words: `subnet 10.42.0.0/24, gateway 10.42.0.1, containers
/// 10.42.0.100-10.42.0.254, MTU 1450` (`?` for what an older record does not say).
pub fn describe(n: &HostNet) -> String {
    fn or_unknown<T: ToString>(v: &Option<T>) -> String {
        v.as_ref().map_or_else(|| "?".into(), T::to_string)
    }
    format!(
        "subnet {}, gateway {}, containers {}, MTU {}",
        or_unknown(&n.subnet),
        or_unknown(&n.gateway),
        or_unknown(&n.container_range),
        or_unknown(&n.mtu)
    )
}

/// Whether two definitions of one network differ in a field both of them state (a record
/// written before these fields existed states none and agrees with anything).
pub fn differs(theirs: &HostNet, mine: &HostNet) -> bool {
    fn both_differ<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
        matches!((a, b), (Some(a), Some(b)) if a != b)
    }
    both_differ(&theirs.subnet, &mine.subnet)
        || both_differ(&theirs.gateway, &mine.gateway)
        || both_differ(&theirs.container_range, &mine.container_range)
        || both_differ(&theirs.mtu, &mine.mtu)
}

/// Host `host`'s definition of a network against this host's, in words naming both.
pub fn disagreement(host: &str, theirs: &HostNet, mine: &HostNet) -> String {
    format!(
        "host {host} defines {} as {}, this host as {}",
        mine.name,
        describe(theirs),
        describe(mine)
    )
}

/// At start: the first host already in the cluster (not `me`) that defines one of `mine`
/// otherwise, in words naming both definitions.
pub fn join_conflict(snap: &Snapshot, me: &str, mine: &[HostNet]) -> Option<String> {
    snap.hosts
        .iter()
        .map(|(h, _)| h)
        .filter(|h| h.name != me)
        .find_map(|h| {
            mine.iter().find_map(|m| {
                let theirs = h.network(&m.name)?;
                differs(theirs, m).then(|| disagreement(&h.name, theirs, m))
            })
        })
}

/// This host's static addresses on `net` (`configured`: address and the workload that has
/// it) that lie inside a DHCP block another host's DHCP server hands out (`blocks`: first
/// address and the host serving it): that server may give one of them to a container of its
/// own. In words, one per address.
pub fn statics_in_foreign_blocks(
    net: &Network,
    me: &str,
    configured: &[(Ipv4Addr, String)],
    blocks: &[(Ipv4Addr, String)],
) -> Vec<String> {
    let sizes = super::overlay::dhcp_blocks(net.container_range);
    let mut out = Vec::new();
    for (ip, workload) in configured {
        for (first, host) in blocks.iter().filter(|(_, h)| h != me) {
            let Some((_, size)) = sizes.iter().find(|(f, _)| f == first) else {
                continue;
            };
            let last = Ipv4Addr::from(u32::from(*first).saturating_add(size - 1));
            if *first <= *ip && *ip <= last {
                out.push(format!(
                    "{ip} on {}, the static address of {workload} here, is inside host {host}'s DHCP block {first}-{last}: its DHCP server may hand {ip} to a container there; give {workload} an address outside the container range {} (the VM range, or a reservation)",
                    net.name, net.container_range
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::etcd::Kv;
    use super::super::store::snapshot_of;
    use super::*;

    fn record(name: &str, net: &str) -> Kv {
        Kv {
            key: format!("/volt/hosts/{name}"),
            value: format!(
                r#"{{"name":"{name}","underlay":"192.168.7.2","vxlan_port":4789,"since":1,"networks":[{net}]}}"#
            )
            .into_bytes(),
            lease: 1,
            create_revision: 1,
            mod_revision: 1,
        }
    }

    #[test]
    fn a_different_definition_is_a_conflict_an_older_record_is_not() {
        let net = Network::builtin_default();
        let mine = definition(&net, 42, 1450);
        let same = r#"{"name":"volt0","vni":42,"subnet":"10.42.0.0/24","gateway":"10.42.0.1","container_range":"10.42.0.100-10.42.0.254","mtu":1450}"#;
        let old =
            r#"{"name":"volt0","vni":42,"bridge_mac":"0a:00:00:00:00:02","address":"10.42.0.92"}"#;
        let other_pool = same.replace("10.42.0.100-", "10.42.0.50-");
        let other_mtu = same.replace("1450", "1400");
        let snap = snapshot_of(&[record("b", same), record("c", old)], 2);
        assert_eq!(join_conflict(&snap, "a", std::slice::from_ref(&mine)), None);
        let snap = snapshot_of(&[record("a", &other_pool), record("b", same)], 2);
        assert_eq!(
            join_conflict(&snap, "a", std::slice::from_ref(&mine)),
            None,
            "this host's own old record is not another host"
        );
        let snap = snapshot_of(&[record("b", same), record("c", &other_pool)], 2);
        assert_eq!(
            join_conflict(&snap, "a", std::slice::from_ref(&mine)).as_deref(),
            Some("host c defines volt0 as subnet 10.42.0.0/24, gateway 10.42.0.1, containers 10.42.0.50-10.42.0.254, MTU 1450, this host as subnet 10.42.0.0/24, gateway 10.42.0.1, containers 10.42.0.100-10.42.0.254, MTU 1450")
        );
        let snap = snapshot_of(&[record("b", &other_mtu)], 2);
        let said = join_conflict(&snap, "a", std::slice::from_ref(&mine)).expect("conflict");
        assert!(said.contains("MTU 1400, this host as"), "{said}");
        let c = snap
            .host("b")
            .and_then(|h| h.network("volt0"))
            .expect("net");
        assert!(differs(c, &mine));
        let older: HostNet = serde_json::from_str(old).expect("an older record parses");
        assert!(!differs(&older, &mine));
        assert_eq!(describe(&older), "subnet ?, gateway ?, containers ?, MTU ?");
    }

    #[test]
    fn a_local_static_address_in_another_hosts_dhcp_block_is_said() {
        let net = Network::builtin_default();
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        let configured = vec![
            (ip("10.42.0.120"), "db".to_string()),
            (ip("10.42.0.101"), "own".to_string()),
            (ip("10.42.0.10"), "vm".to_string()),
        ];
        let blocks = vec![
            (ip("10.42.0.100"), "a".to_string()),
            (ip("10.42.0.116"), "b".to_string()),
        ];
        let said = statics_in_foreign_blocks(&net, "a", &configured, &blocks);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("10.42.0.120 on volt0, the static address of db here, is inside host b's DHCP block 10.42.0.116-10.42.0.131"),
            "{}",
            said[0]
        );
    }
}
