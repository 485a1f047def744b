//! What the cluster keeps in etcd, under `/volt/`:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `hosts/<host>` | [`HostRecord`]: underlay address, per network its VNI, bridge MAC, host address and definition (subnet, gateway, container range, MTU) | the host's |
//! | `names/<workload>` | [`NameClaim`]: the host that runs it | the host's |
//! | `ipam/<network>/addr/<ip>` | [`AddrClaim`]: owner, host, MAC | the host's |
//! | `ipam/<network>/owner/<owner>` | the address | the host's |
//! | `dhcp/<network>/<first address>` | the host whose DHCP server hands out that block | the host's |
//! | `conflicts/<host>` | [`ConflictRecord`]s: what runs on the host while another holds its claim | the host's |
//!
//! Every key a host writes is attached to its lease, so when the host dies (or leaves) all of
//! it disappears at once. Claims are transactions that create a key only if it is absent
//! (`create_revision == 0`): two hosts can never both get one address or one name.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::etcd::{Compare, Etcd, EtcdError, Kv, Op};
use crate::config::MacAddr;
use crate::net::ipam::Owner;

pub const PREFIX: &str = "/volt/";

pub fn host_key(host: &str) -> String {
    format!("{PREFIX}hosts/{host}")
}

pub fn name_key(name: &str) -> String {
    format!("{PREFIX}names/{name}")
}

pub fn addr_key(network: &str, ip: Ipv4Addr) -> String {
    format!("{PREFIX}ipam/{network}/addr/{ip}")
}

/// The DHCP block of `network` that starts at `first` (its value: the host serving it).
pub fn dhcp_key(network: &str, first: Ipv4Addr) -> String {
    format!("{PREFIX}dhcp/{network}/{first}")
}

/// What host `host` runs while another host holds its claim (see [`ConflictRecord`]).
pub fn conflicts_key(host: &str) -> String {
    format!("{PREFIX}conflicts/{host}")
}

pub fn owner_key(network: &str, owner: &str) -> String {
    format!("{PREFIX}ipam/{network}/owner/{owner}")
}

/// A host's network as the others need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNet {
    pub name: String,
    pub vni: u32,
    /// The MAC of the host's bridge on this network (unique per host).
    pub bridge_mac: Option<String>,
    /// The host's own address on the network (how it reaches the other hosts' workloads).
    pub address: Option<Ipv4Addr>,
    /// How the host defines the network, which every host sharing it must agree on
    /// (`cluster::agree`). Absent from records of older versions, which agree with any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<ipnet::Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The container (DHCP) range, `first-last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_range: Option<String>,
    /// The MTU of its workloads on the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// `hosts/<host>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub underlay: Ipv4Addr,
    pub vxlan_port: u16,
    /// Seconds since the epoch when it registered.
    pub since: u64,
    #[serde(default)]
    pub networks: Vec<HostNet>,
}

impl HostRecord {
    pub fn network(&self, name: &str) -> Option<&HostNet> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// `names/<workload>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameClaim {
    pub host: String,
    /// `vm` or `container`.
    pub kind: String,
    pub since: u64,
}

/// `ipam/<network>/addr/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrClaim {
    /// `vm/<name>/<nic>`, `container/<name>/<nic>` or `host/<host>`.
    pub owner: String,
    pub host: String,
    /// Asked for (static or reserved) rather than picked from a pool.
    #[serde(rename = "static")]
    pub fixed: bool,
    pub mac: Option<String>,
    pub since: u64,
}

impl AddrClaim {
    pub fn mac(&self) -> Option<MacAddr> {
        self.mac.as_deref().and_then(|m| m.parse().ok())
    }

    /// The workload whose claim this is, where it gives way to another owner's address from
    /// the pool that this host's DHCP server gave (`fixed`: that address is not from the
    /// pool): a claim this host (`me`) made, from the pool, of a workload `stale` says does
    /// not run. Never another host's (whether its workload runs is that host's to know, and
    /// its claims lapse with its lease when it is gone), nor a host address.
    pub fn gives_way(
        &self,
        me: &str,
        fixed: bool,
        stale: &dyn Fn(&Owner) -> bool,
    ) -> Option<Owner> {
        let holder = self.owner.parse::<Owner>().ok()?;
        (self.host == me && !self.fixed && !fixed && stale(&holder)).then_some(holder)
    }
}

/// A workload that runs on a host while another host holds its claim (after a partition
/// longer than the lease's TTL, both ran it): the host it runs on keeps trying to claim it
/// and writes what it cannot claim under `conflicts/<host>`. Volt stops neither.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// What cannot be claimed: `web (vm)`, `10.42.0.5 on volt0 (vm/web/eth0)`.
    pub what: String,
    /// The host that holds the claim.
    pub holder: String,
}

/// Everything under `/volt/` at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    /// Hosts with their lease IDs.
    pub hosts: Vec<(HostRecord, i64)>,
    pub names: Vec<(String, NameClaim, i64)>,
    /// (network, address, claim, mod revision, lease)
    pub addrs: Vec<(String, Ipv4Addr, AddrClaim, i64, i64)>,
    /// (host, what it runs that another host holds the claim of)
    pub conflicts: Vec<(String, Vec<ConflictRecord>)>,
    /// (network, first address of a DHCP block, the host serving it)
    pub dhcp: Vec<(String, Ipv4Addr, String)>,
}

impl Snapshot {
    pub fn host(&self, name: &str) -> Option<&HostRecord> {
        self.hosts.iter().map(|(h, _)| h).find(|h| h.name == name)
    }

    /// Claims on `network`.
    pub fn addrs_on<'a>(
        &'a self,
        network: &'a str,
    ) -> impl Iterator<Item = (Ipv4Addr, &'a AddrClaim, i64)> + 'a {
        self.addrs
            .iter()
            .filter(move |(n, ..)| n == network)
            .map(|(_, ip, c, r, _)| (*ip, c, *r))
    }

    /// The lease the claim on `ip` on `network` is attached to.
    pub fn addr_lease(&self, network: &str, ip: Ipv4Addr) -> Option<i64> {
        self.addrs
            .iter()
            .find(|(n, a, ..)| n == network && *a == ip)
            .map(|(.., lease)| *lease)
    }
}

fn parse_into(s: &mut Snapshot, kv: &Kv) {
    let Some(rest) = kv.key.strip_prefix(PREFIX) else {
        return;
    };
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    match parts.as_slice() {
        ["hosts", key] => {
            // A record under another host's key would be taken for that host's.
            if let Ok(h) = serde_json::from_slice::<HostRecord>(&kv.value) {
                if h.name == *key {
                    s.hosts.push((h, kv.lease));
                }
            }
        }
        ["names", name] => {
            if let Ok(c) = serde_json::from_slice::<NameClaim>(&kv.value) {
                s.names.push((name.to_string(), c, kv.mod_revision));
            }
        }
        ["dhcp", net, first] => {
            if let Ok(first) = first.parse() {
                let host = String::from_utf8_lossy(&kv.value).into_owned();
                s.dhcp.push((net.to_string(), first, host));
            }
        }
        ["conflicts", host] => {
            if let Ok(c) = serde_json::from_slice::<Vec<ConflictRecord>>(&kv.value) {
                s.conflicts.push((host.to_string(), c));
            }
        }
        ["ipam", net, "addr", ip] => {
            let claim = serde_json::from_slice::<AddrClaim>(&kv.value);
            if let (Ok(ip), Ok(c)) = (ip.parse(), claim) {
                s.addrs
                    .push((net.to_string(), ip, c, kv.mod_revision, kv.lease));
            }
        }
        _ => {}
    }
}

/// Parse keys read from `/volt/` (unknown or broken keys are skipped).
pub fn snapshot_of(kvs: &[Kv], revision: i64) -> Snapshot {
    let mut s = Snapshot {
        revision,
        ..Snapshot::default()
    };
    for kv in kvs {
        parse_into(&mut s, kv);
    }
    s.hosts.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    s.names.sort_by(|a, b| a.0.cmp(&b.0));
    s.addrs.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    s
}

/// Read the whole cluster state.
pub fn snapshot(etcd: &Etcd) -> Result<Snapshot, EtcdError> {
    let (kvs, rev) = etcd.range_prefix(PREFIX)?;
    Ok(snapshot_of(&kvs, rev))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The puts that claim `ip` on `network` for `claim.owner`, both keys on `lease`.
pub fn claim_ops(network: &str, ip: Ipv4Addr, claim: &AddrClaim, lease: i64) -> Vec<Op> {
    vec![
        Op::Put {
            key: addr_key(network, ip),
            value: serde_json::to_vec(claim).unwrap_or_default(),
            lease,
        },
        Op::Put {
            key: owner_key(network, &claim.owner),
            value: ip.to_string().into_bytes(),
            lease,
        },
    ]
}

/// Claim `ip` for `claim.owner` if neither the address nor the owner has a claim yet.
/// `Ok(false)`: someone got there first; read again.
pub fn try_claim(
    etcd: &Etcd,
    network: &str,
    ip: Ipv4Addr,
    claim: &AddrClaim,
    lease: i64,
) -> Result<bool, EtcdError> {
    etcd.txn(
        &[
            Compare::Absent(addr_key(network, ip)),
            Compare::Absent(owner_key(network, &claim.owner)),
        ],
        &claim_ops(network, ip, claim, lease),
        &[],
    )
}

/// Replace the claim on `ip` (same owner, on `lease`) if it is still the one at `revision`.
pub fn update_claim(
    etcd: &Etcd,
    network: &str,
    ip: Ipv4Addr,
    claim: &AddrClaim,
    revision: i64,
    lease: i64,
) -> Result<bool, EtcdError> {
    etcd.txn(
        &[Compare::ModRevision(addr_key(network, ip), revision)],
        &claim_ops(network, ip, claim, lease),
        &[],
    )
}

/// Keep `kv`, a key this host holds, on this host's `lease`: when it is on another one (the
/// host registered anew while its old lease lived, so there was nothing to adopt), it is put
/// again on `lease`, or it would vanish when the old lease lapses though what it claims
/// runs on. `Ok(false)`: the key changed meanwhile; read it again.
pub fn keep_on(etcd: &Etcd, kv: &Kv, lease: i64) -> Result<bool, EtcdError> {
    if kv.lease == lease {
        return Ok(true);
    }
    renew(etcd, kv, lease)
}

/// Drop the claim on `ip` (and its owner key) if it is still the one at `revision`.
pub fn drop_claim(
    etcd: &Etcd,
    network: &str,
    ip: Ipv4Addr,
    owner: &str,
    revision: i64,
) -> Result<bool, EtcdError> {
    etcd.txn(
        &[Compare::ModRevision(addr_key(network, ip), revision)],
        &[
            Op::Delete(addr_key(network, ip)),
            Op::Delete(owner_key(network, owner)),
        ],
        &[],
    )
}

/// Put `kv`, a claim this host holds, again as it is, on `lease`, if it is still the one at
/// its mod revision: a claim made again (a start finding its claim held already) always
/// writes, so that the daemon's release of a claim that no workload backs
/// (`cluster::orphans`), a transaction on the revision it read, fails once a start claimed
/// it meanwhile. `Ok(false)`: it changed meanwhile; read it again.
pub fn renew(etcd: &Etcd, kv: &Kv, lease: i64) -> Result<bool, EtcdError> {
    etcd.txn(
        &[Compare::ModRevision(kv.key.clone(), kv.mod_revision)],
        &[Op::Put {
            key: kv.key.clone(),
            value: kv.value.clone(),
            lease,
        }],
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, lease: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease,
            create_revision: 1,
            mod_revision: 3,
        }
    }

    #[test]
    fn snapshot_parses_every_kind_and_skips_junk() {
        let kvs = vec![
            kv(
                "/volt/hosts/a",
                r#"{"name":"a","underlay":"192.168.7.1","vxlan_port":4789,"since":1,"networks":[{"name":"volt0","vni":42,"bridge_mac":"0a:00:00:00:00:01","address":"10.42.0.99"}]}"#,
                7,
            ),
            kv(
                "/volt/names/web",
                r#"{"host":"a","kind":"vm","since":2}"#,
                7,
            ),
            kv(
                "/volt/ipam/volt0/addr/10.42.0.2",
                r#"{"owner":"vm/web/eth0","host":"a","static":false,"mac":"52:54:00:01:02:03","since":2}"#,
                7,
            ),
            kv("/volt/ipam/volt0/owner/vm/web/eth0", "10.42.0.2", 7),
            kv("/volt/ipam/volt0/addr/not-an-ip", "{}", 7),
            kv("/volt/hosts/b", "not json", 8),
            kv("/elsewhere/x", "1", 0),
        ];
        let s = snapshot_of(&kvs, 9);
        assert_eq!(s.revision, 9);
        assert_eq!(s.hosts.len(), 1);
        assert_eq!(s.hosts[0].1, 7);
        let h = s.host("a").expect("host a");
        assert_eq!(
            h.network("volt0").and_then(|n| n.address),
            Some(Ipv4Addr::new(10, 42, 0, 99))
        );
        assert_eq!(s.names[0].0, "web");
        let addrs: Vec<_> = s.addrs_on("volt0").collect();
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0].0, Ipv4Addr::new(10, 42, 0, 2));
        assert_eq!(
            addrs[0].1.mac(),
            Some("52:54:00:01:02:03".parse().expect("mac"))
        );
        assert_eq!(s.addrs_on("lab").count(), 0);
        assert_eq!(s.addr_lease("volt0", Ipv4Addr::new(10, 42, 0, 2)), Some(7));
        assert_eq!(s.addr_lease("volt0", Ipv4Addr::new(10, 42, 0, 3)), None);
    }

    #[test]
    fn only_this_hosts_stale_pool_claims_give_way() {
        let claim = |owner: &str, host: &str, fixed: bool| AddrClaim {
            owner: owner.into(),
            host: host.into(),
            fixed,
            mac: None,
            since: 1,
        };
        let old = Owner::container("old", "eth0");
        let stale = |o: &Owner| o.name == "old";
        let pool = claim("container/old/eth0", "a", false);
        assert_eq!(pool.gives_way("a", false, &stale), Some(old));
        // Not for a static address, not another host's, not a fixed one, not a running one.
        assert_eq!(pool.gives_way("a", true, &stale), None);
        assert_eq!(pool.gives_way("b", false, &stale), None);
        assert_eq!(
            claim("container/old/eth0", "a", true).gives_way("a", false, &stale),
            None
        );
        assert_eq!(
            claim("container/new/eth0", "a", false).gives_way("a", false, &stale),
            None
        );
        // A host's own address is no workload's.
        assert_eq!(
            claim("host/a", "a", false).gives_way("a", false, &|_| true),
            None
        );
    }

    #[test]
    fn keys() {
        assert_eq!(
            owner_key("volt0", "vm/web/eth0"),
            "/volt/ipam/volt0/owner/vm/web/eth0"
        );
        assert_eq!(
            addr_key("volt0", Ipv4Addr::new(10, 42, 0, 2)),
            "/volt/ipam/volt0/addr/10.42.0.2"
        );
    }
}
