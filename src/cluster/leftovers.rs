//! What an earlier run of the daemon left for networks this host no longer shares (one
//! dropped from cluster.toml, its VNI or bridge changed, the file removed), found by what
//! Volt marks its own with and never an admin's: the VXLAN ports (named after their VNI),
//! the host's own addresses, routes and neighbour entries on the bridges (the overlay's
//! protocol number), the networkd drop-ins (their header), and in the store this host's
//! claims of addresses and DHCP blocks on those networks. The DHCP block (its claim and its
//! drop-in) goes too where the network is still shared but its DHCP server is not Volt's
//! now (its bridge the admin's, or `dhcp = false`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use super::daemon::{nl_err, Daemon};
use super::etcd::{Compare, Op};
use super::overlay::DROPIN_HEADER;
use super::overlay::{dropin_bridge, dropins, stale_dhcp_blocks, stale_dropins, stale_ports};
use super::{store, ClusterError};
use crate::net::netlink::Netlink;
use crate::net::overlay::{self as mech, Marked};
use crate::plan::Paths;

/// Remove the VXLAN ports (and with them their forwarding entries) that an earlier run left
/// for a VNI or network this host's config no longer has: the filter installed next has no
/// chain for them, and an unfiltered port would let any underlay source onto the bridge.
/// Returns how many went.
pub(super) fn remove_stale_ports(nl: &Netlink, wanted: &[String]) -> Result<usize, ClusterError> {
    let found = mech::vxlan_links(nl).map_err(nl_err("cannot list the VXLAN links"))?;
    let stale = stale_ports(&found, wanted);
    for name in &stale {
        nl.delete(name).map_err(nl_err(
            "cannot remove a VXLAN port left from an earlier run",
        ))?;
        log::info!(
            "removed {name}, left from an earlier run: the cluster config no longer has its VNI"
        );
    }
    Ok(stale.len())
}

/// What this host has on a bridge it shares now.
pub(super) struct Kept {
    /// Its own address on the bridge.
    pub(super) address: Option<Ipv4Addr>,
    /// Whether it claims a DHCP block there (the network's DHCP server is Volt's).
    pub(super) dhcp: bool,
}

/// Remove what the overlay put on links and in networkd's drop-ins for bridges other than
/// those in `shared` (by bridge): everything on those; on a shared bridge, only an address
/// of this host's that is not its address now, and the DHCP drop-in where it claims no
/// block. Each removal is logged; returns how many there were. What cannot be removed is a
/// warning: the start goes on.
pub(super) fn remove_unshared(nl: &Netlink, root: &Path, shared: &BTreeMap<String, Kept>) -> usize {
    let marked = match mech::marked(nl) {
        Ok(m) => m,
        Err(e) => {
            log::warn!(
                "cannot look for what an earlier run left: {}",
                crate::error_chain(&e)
            );
            Vec::new()
        }
    };
    let stale = marked.iter().filter(|m| match (shared.get(m.link()), m) {
        (None, _) => true,
        (Some(now), Marked::Address { ip, .. }) => now.address != Some(*ip),
        (Some(_), _) => false,
    });
    let mut removed = 0;
    for m in stale {
        match mech::remove_marked(nl, m) {
            Ok(()) => {
                log::info!("removed {m}, left from an earlier run for a network this host no longer shares");
                removed += 1;
            }
            Err(e) => log::warn!("{}", crate::error_chain(&e)),
        }
    }
    removed + remove_dropins(root, shared)
}

/// The daemon's networkd drop-ins of bridges not in `shared`, and the DHCP drop-ins of those
/// whose DHCP block it gives up (those with its header only). networkd is asked to apply the
/// bridge's `.network` again where a DHCP drop-in went.
fn remove_dropins(root: &Path, shared: &BTreeMap<String, Kept>) -> usize {
    let dir = Paths::new(root).networkd_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(bridge) = dropin_bridge(&name) else {
            continue;
        };
        let dhcp = dropins(bridge).1;
        let why = match shared.get(bridge) {
            None => "this host no longer shares its network",
            Some(_) => "the bridge's DHCP server is not Volt's (an admin's bridge, or dhcp = false), so this host claims no DHCP block there",
        };
        for rel in stale_dropins(&name, |b| shared.get(b).map(|k| k.dhcp)) {
            let path = dir.join(&rel);
            let ours = std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with(DROPIN_HEADER));
            if !ours {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    log::info!(
                        "removed {}, left from an earlier run for {bridge}: {why}",
                        path.display()
                    );
                    removed += 1;
                    if rel == dhcp {
                        super::membership::reconfigure_bridge(bridge);
                    }
                }
                Err(err) => log::warn!("cannot remove {}: {err}", path.display()),
            }
        }
    }
    removed
}

impl Daemon {
    /// Give up this host's claims in the store on networks it no longer shares: its own and
    /// its workloads' addresses (there they are this host's alone now, and the claims would
    /// keep them from the hosts that still share the network) and its DHCP blocks; and its
    /// DHCP block on a shared network whose DHCP server is not Volt's (the block would only
    /// keep it from the other hosts). Names stay: they are the cluster's whatever the
    /// networks. A store error is a warning.
    pub(super) fn release_unshared(&self) {
        if let Err(e) = self.try_release_unshared() {
            log::warn!(
                "cannot give up the claims on networks this host no longer shares: {}",
                crate::error_chain(&e)
            );
        }
    }

    fn try_release_unshared(&self) -> Result<(), ClusterError> {
        let me = self.cluster.host();
        let etcd = &self.cluster.etcd;
        let snap = store::snapshot(etcd)?;
        for (net, ip, c, rev, _) in &snap.addrs {
            let unshared = c.host == me && !self.cluster.shares(net);
            if unshared && store::drop_claim(etcd, net, *ip, &c.owner, *rev)? {
                log::info!(
                    "released {ip} on {net} ({}): this host no longer shares {net}",
                    c.owner
                );
            }
        }
        let serves = |net: &str| {
            self.shared
                .iter()
                .any(|s| s.net.name == net && s.net.volt_serves_dhcp())
        };
        for (net, first) in stale_dhcp_blocks(&snap.dhcp, me, serves) {
            let why = if self.cluster.shares(&net) {
                format!(
                    "Volt does not serve DHCP on {net} here (an admin's bridge, or dhcp = false)"
                )
            } else {
                format!("this host no longer shares {net}")
            };
            let key = store::dhcp_key(&net, first);
            let Some(kv) = etcd.get(&key)? else {
                continue;
            };
            let still = Compare::ModRevision(key.clone(), kv.mod_revision);
            if kv.value == me.as_bytes() && etcd.txn(&[still], &[Op::Delete(key)], &[])? {
                log::info!("released the DHCP block at {first} of {net}: {why}");
            }
        }
        Ok(())
    }
}
