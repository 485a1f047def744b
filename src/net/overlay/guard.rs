//! The sending side of the cluster's filter (table `inet volt-cluster`). A workload's
//! datagram to a peer's VXLAN port is routed and masqueraded by this host, so the peer takes
//! it for this host's own VXLAN traffic and puts the frame inside on its bridge: the peer
//! cannot tell the two apart, so what enters from a Volt network's bridge is stopped here,
//! before it leaves (forward) or reaches this host's own VXLAN socket or etcd member (input).
//! etcd's ports are held the same way: with http:// endpoints a workload could write claims.

use super::{nft, FilterError, TABLE};

/// What the workloads' bridges may not reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// Every Volt network's bridge (shared or not: a host-only network routes to the
    /// underlay too).
    pub bridges: Vec<String>,
    /// The cluster's VXLAN port (UDP).
    pub vxlan_port: u16,
    /// etcd's client and peer ports (TCP).
    pub etcd_ports: Vec<u16>,
}

/// What removes the table (nothing to do when absent).
pub(super) const REMOVE: &str = "add table inet volt-cluster\ndelete table inet volt-cluster\n";

fn list<T: ToString>(v: &[T], quote: bool) -> String {
    let q = if quote { "\"" } else { "" };
    let items: Vec<String> = v
        .iter()
        .map(|x| format!("{q}{}{q}", x.to_string()))
        .collect();
    items.join(", ")
}

/// The whole table, replacing what was there in one transaction. Input drops what a
/// workload sends to this host's VXLAN port or etcd; forward drops it on its way to another
/// host (traffic from one Volt bridge to another, bridged frames included, is left alone).
pub fn guard_script(g: &Guard) -> String {
    let mut s =
        format!("add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    s.push_str("  set bridges {\n    type ifname;\n");
    if !g.bridges.is_empty() {
        s.push_str(&format!(
            "    elements = {{ {} }}\n",
            list(&g.bridges, true)
        ));
    }
    s.push_str("  }\n");
    let vx = g.vxlan_port;
    let etcd = if g.etcd_ports.is_empty() {
        None
    } else {
        Some(list(&g.etcd_ports, false))
    };
    for (chain, out) in [("input", ""), ("forward", " oifname != @bridges")] {
        s.push_str(&format!(
            "  chain {chain} {{\n    type filter hook {chain} priority filter; policy accept;\n"
        ));
        s.push_str(&format!(
            "    iifname @bridges{out} udp dport {vx} counter drop comment \"vxlan from a workload\"\n"
        ));
        if let Some(ports) = &etcd {
            s.push_str(&format!(
                "    iifname @bridges{out} tcp dport {{ {ports} }} counter drop comment \"etcd from a workload\"\n"
            ));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// Install the guard (one transaction).
pub fn apply_guard(g: &Guard) -> Result<(), FilterError> {
    nft(&guard_script(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_holds_every_bridge_off_the_vxlan_and_etcd_ports() {
        let s = guard_script(&Guard {
            bridges: vec!["lab0".into(), "volt0".into()],
            vxlan_port: 4790,
            etcd_ports: vec![2379, 2380, 12379],
        });
        assert!(s.starts_with("add table inet volt-cluster\ndelete table inet volt-cluster\n"));
        assert!(s.contains("elements = { \"lab0\", \"volt0\" }"), "{s}");
        assert!(s.contains("type filter hook input priority filter; policy accept;\n    iifname @bridges udp dport 4790 counter drop comment \"vxlan from a workload\"\n    iifname @bridges tcp dport { 2379, 2380, 12379 } counter drop"), "{s}");
        assert!(s.contains("type filter hook forward priority filter; policy accept;\n    iifname @bridges oifname != @bridges udp dport 4790 counter drop"), "{s}");
        assert!(s.contains("iifname @bridges oifname != @bridges tcp dport { 2379, 2380, 12379 } counter drop comment \"etcd from a workload\""), "{s}");
    }
}
