//! Where one owner's address claim gives way to another's on this host's word: a stale pool
//! claim of a workload that does not run ([`Cluster::record_displacing`]). Only ever a claim
//! this host made, from the pool, and only on the revision read.

use super::store;
use super::{Cluster, ClusterError};
use crate::net::ipam::{Holding, Lease, Owner};

impl Cluster {
    /// [`Cluster::record`] of an address from the pool (`h.fixed` false: one this host's
    /// DHCP server gave from its block) that the store gives to another owner: that claim
    /// gives way when this host made it, it is from the pool too, and `stale` says so of its
    /// owner (its workload does not run here; see [`store::AddrClaim::gives_way`]). Returns the
    /// lease and the owner whose claim gave way.
    pub fn record_displacing(
        &self,
        h: Holding,
        stale: &dyn Fn(&Owner) -> bool,
    ) -> Result<(Lease, Option<Owner>), ClusterError> {
        let snap = store::snapshot(&self.etcd)?;
        let owner_s = h.owner.to_string();
        let held = snap
            .addrs_on(&h.net.name)
            .find(|(ip, c, _)| *ip == h.ip && c.owner != owner_s);
        let gives_way = held.and_then(|(_, c, rev)| {
            let holder = c.gives_way(self.host(), h.fixed, stale)?;
            Some((holder, c.owner.clone(), rev))
        });
        let Some((holder, holder_s, rev)) = gives_way else {
            return self.record(h).map(|l| (l, None));
        };
        // On the revision read: a holder that claimed it again meanwhile keeps it.
        if !store::drop_claim(&self.etcd, &h.net.name, h.ip, &holder_s, rev)? {
            return self.record(h).map(|l| (l, None));
        }
        log::info!(
            "released {} on {} from {holder_s}, which does not run, for {owner_s}",
            h.ip,
            h.net.name
        );
        self.record(h).map(|l| (l, Some(holder)))
    }
}
