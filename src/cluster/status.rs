//! `volt cluster status`: the hosts the store knows, their lease ages and what runs on them.

use serde::Serialize;

use super::store::{self, ConflictRecord, Snapshot};
use super::{Cluster, ClusterError};

/// One workload a host runs, with its addresses.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WorkloadStatus {
    pub name: String,
    pub kind: String,
    pub addresses: Vec<String>,
}

/// One host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostStatus {
    pub name: String,
    pub underlay: String,
    /// Seconds since it registered.
    pub age_s: u64,
    /// Seconds its lease has left without a keep-alive.
    pub lease_ttl_left_s: i64,
    pub lease: String,
    pub networks: Vec<serde_json::Value>,
    pub workloads: Vec<WorkloadStatus>,
    /// What runs on it while another host holds the claim (Volt stops neither).
    pub conflicts: Vec<ConflictRecord>,
}

impl HostStatus {
    /// One line per conflict: what runs on this host too, and which host holds the claim.
    pub fn conflict_lines(&self) -> Vec<String> {
        self.conflicts
            .iter()
            .map(|c| {
                format!(
                    "CONFLICT {} runs on {} too, but host {} holds the claim (Volt stops neither: stop one)",
                    c.what, self.name, c.holder
                )
            })
            .collect()
    }
}

/// The status of every host in `snap` (`ttl` gives a lease's seconds left).
pub fn hosts(snap: &Snapshot, now: u64, ttl: &dyn Fn(i64) -> i64) -> Vec<HostStatus> {
    snap.hosts
        .iter()
        .map(|(h, lease)| {
            let workloads = snap
                .names
                .iter()
                .filter(|(_, c, _)| c.host == h.name)
                .map(|(name, c, _)| WorkloadStatus {
                    name: name.clone(),
                    kind: c.kind.clone(),
                    addresses: snap
                        .addrs
                        .iter()
                        .filter(|(_, _, a, ..)| {
                            // `vm/<name>/<nic>` or `container/<name>/<nic>`, of the claim's
                            // kind: never `host/<host>` (a host's own address).
                            let mut parts = a.owner.split('/');
                            a.host == h.name
                                && parts.next() == Some(c.kind.as_str())
                                && parts.next() == Some(name.as_str())
                        })
                        .map(|(net, ip, ..)| format!("{net}:{ip}"))
                        .collect(),
                })
                .collect();
            HostStatus {
                name: h.name.clone(),
                underlay: h.underlay.to_string(),
                age_s: now.saturating_sub(h.since),
                lease_ttl_left_s: ttl(*lease),
                lease: format!("{lease:x}"),
                networks: h
                    .networks
                    .iter()
                    .map(|n| serde_json::to_value(n).unwrap_or_default())
                    .collect(),
                workloads,
                conflicts: snap
                    .conflicts
                    .iter()
                    .filter(|(host, _)| *host == h.name)
                    .flat_map(|(_, c)| c.iter().cloned())
                    .collect(),
            }
        })
        .collect()
}

/// Read the store and describe every host.
pub fn read(c: &Cluster) -> Result<Vec<HostStatus>, ClusterError> {
    let snap = store::snapshot(&c.etcd)?;
    Ok(hosts(&snap, store::now(), &|id| {
        c.etcd.ttl_left(id).unwrap_or(-1)
    }))
}

#[cfg(test)]
mod tests {
    use super::super::etcd::Kv;
    use super::*;

    #[test]
    fn workloads_are_grouped_by_host() {
        let kv = |k: &str, v: &str| Kv {
            key: k.into(),
            value: v.as_bytes().to_vec(),
            lease: 255,
            create_revision: 1,
            mod_revision: 1,
        };
        let snap = store::snapshot_of(
            &[
                kv(
                    "/volt/hosts/a",
                    r#"{"name":"a","underlay":"192.168.7.1","vxlan_port":4789,"since":100}"#,
                ),
                kv("/volt/names/web", r#"{"host":"a","kind":"vm","since":100}"#),
                kv(
                    "/volt/ipam/volt0/addr/10.42.0.2",
                    r#"{"owner":"vm/web/eth0","host":"a","static":false,"mac":null,"since":100}"#,
                ),
                // A workload named like the host: the host's own address is not its.
                kv("/volt/names/a", r#"{"host":"a","kind":"vm","since":100}"#),
                kv(
                    "/volt/ipam/volt0/addr/10.42.0.99",
                    r#"{"owner":"host/a","host":"a","static":true,"mac":null,"since":100}"#,
                ),
                kv(
                    "/volt/conflicts/a",
                    r#"[{"what":"db (container)","holder":"b"}]"#,
                ),
            ],
            3,
        );
        let h = hosts(&snap, 130, &|_| 7);
        assert_eq!(
            h[0].conflict_lines(),
            ["CONFLICT db (container) runs on a too, but host b holds the claim (Volt stops neither: stop one)"]
        );
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].age_s, h[0].lease_ttl_left_s), (30, 7));
        assert_eq!(h[0].lease, "ff");
        assert_eq!(
            h[0].workloads,
            vec![
                WorkloadStatus {
                    name: "a".into(),
                    kind: "vm".into(),
                    addresses: vec![]
                },
                WorkloadStatus {
                    name: "web".into(),
                    kind: "vm".into(),
                    addresses: vec!["volt0:10.42.0.2".into()]
                }
            ]
        );
    }
}
