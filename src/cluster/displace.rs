//! Where one owner's address claim gives way to another's on this host's word: a stale pool
//! claim of a workload that does not run ([`Cluster::record_displacing`]), and the claim of
//! a running container whose DHCP lease networkd's server here has given to another
//! ([`Cluster::take_over`]). Only ever a claim this host made, from the pool, and only on
//! the revision read.

use super::etcd::{Compare, Op};
use super::store::{self, AddrClaim};
use super::{as_lease, backoff, Cluster, ClusterError, CLAIM_TRIES};
use crate::net::ipam::{Holding, Lease, Owner};

impl Cluster {
    /// [`Cluster::record`] of an address from the pool (`h.fixed` false: one this host's
    /// DHCP server gave from its block) that the store gives to another owner: that claim
    /// gives way when this host made it, it is from the pool too, and `stale` says so of its
    /// owner (its workload does not run here; see [`AddrClaim::gives_way`]). Returns the
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

    /// Whether `owner` holds `ip` on `network` by a claim this host made from the pool.
    pub fn holds_pool_claim(
        &self,
        network: &str,
        owner: &Owner,
        ip: std::net::Ipv4Addr,
    ) -> Result<bool, ClusterError> {
        let snap = store::snapshot(&self.etcd)?;
        let owner_s = owner.to_string();
        let held = snap
            .addrs_on(network)
            .any(|(at, c, _)| at == ip && c.owner == owner_s && c.host == self.host() && !c.fixed);
        Ok(held)
    }

    /// `h.owner` gets `h.ip` (from the pool: `h.fixed` false), whose claim `from` holds: a
    /// lease the caller knows has ended (networkd's DHCP server on this host's bridge leases
    /// it to `h.owner` now, and `from` runs here as its client). Only a claim this host made,
    /// from the pool; one transaction on the revision read swaps the address key to
    /// `h.owner` (its claim of another address, this host's, goes in it too), so a claim
    /// made again meanwhile, or any other host's, stays and refuses it as
    /// [`Cluster::record`] does. Nobody holding `h.ip` any more, it is an ordinary record.
    pub fn take_over(&self, h: Holding, from: &Owner) -> Result<Lease, ClusterError> {
        let (net, ip) = (&h.net.name, h.ip);
        let me = self.host().to_string();
        let (owner_s, from_s) = (h.owner.to_string(), from.to_string());
        for _ in 0..CLAIM_TRIES {
            let snap = store::snapshot(&self.etcd)?;
            let claims: Vec<_> = snap.addrs_on(net).collect();
            let Some((_, held, rev)) = claims.iter().find(|(at, ..)| *at == ip) else {
                return self.record(h);
            };
            if held.owner == owner_s {
                return self.record(h);
            }
            if held.owner != from_s || held.host != me || held.fixed || h.fixed {
                return Err(ClusterError::Taken {
                    ip,
                    network: net.clone(),
                    owner: held.owner.clone(),
                    host: held.host.clone(),
                });
            }
            let lease = self.host_lease()?;
            let mut compares = vec![Compare::ModRevision(store::addr_key(net, ip), *rev)];
            let mut ops = vec![Op::Delete(store::owner_key(net, &from_s))];
            match claims.iter().find(|(_, c, _)| c.owner == owner_s) {
                Some((other, c, _)) if c.host != me => {
                    return Err(ClusterError::OwnerElsewhere {
                        owner: owner_s,
                        ip: *other,
                        network: net.clone(),
                        host: c.host.clone(),
                    })
                }
                Some((other, _, other_rev)) => {
                    let key = store::addr_key(net, *other);
                    compares.push(Compare::ModRevision(key.clone(), *other_rev));
                    ops.push(Op::Delete(key));
                }
                None => compares.push(Compare::Absent(store::owner_key(net, &owner_s))),
            }
            let claim = AddrClaim {
                owner: owner_s.clone(),
                host: me.clone(),
                fixed: false,
                mac: h.mac.map(|m| m.to_string()),
                since: store::now(),
            };
            ops.extend(store::claim_ops(net, ip, &claim, lease));
            if self.etcd.txn(&compares, &ops, &[])? {
                log::info!("{ip} on {net}: the claim of {from_s}, whose DHCP lease of it ended, is {owner_s}'s now");
                return Ok(as_lease(ip, &claim));
            }
            // Changed meanwhile: read again.
            backoff();
        }
        Err(ClusterError::Contention {
            network: net.clone(),
        })
    }
}
