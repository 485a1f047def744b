//! Addresses got elsewhere, into the lease file: [`Ipam::record`] and the ways a record
//! drops another owner's lease first ([`Ipam::mirror`], [`Ipam::take_over`], and
//! [`Ipam::record_displacing`] on it).

use super::{insert_lease, Holding, Ipam, IpamError, Lease, Owner};

/// Whose lease of the address a record drops before it looks for a holder.
#[derive(Clone, Copy)]
enum Displace<'a> {
    Nobody,
    /// Any other owner's ([`Ipam::mirror`]).
    Any,
    /// This owner's pool lease ([`Ipam::take_over`]).
    PoolLeaseOf(&'a Owner),
}

impl Ipam {
    /// Record that `h.owner` holds `h.ip` on `h.net` (see [`Holding`]). Replaces the owner's
    /// lease; refuses an address another owner holds. The MAC is not kept.
    pub fn record(&self, h: Holding) -> Result<Lease, IpamError> {
        self.record_as(h, Displace::Nobody)
    }

    /// [`Ipam::record`] of what another store decided (the cluster's claims on a network it
    /// shares): that store wins, so a local lease of another owner on `ip` (left from before a
    /// crash that outlived the cluster's claims) is dropped, with a warning, not refused.
    pub fn mirror(&self, h: Holding) -> Result<Lease, IpamError> {
        self.record_as(h, Displace::Any)
    }

    /// [`Ipam::record`] that first drops `from`'s pool lease of `h.ip` (picked, not asked
    /// for), in the same write: a lease the caller knows has ended. Any other holder of
    /// `h.ip`, `from` with a fixed lease of it included, still refuses it.
    pub fn take_over(&self, h: Holding, from: &Owner) -> Result<Lease, IpamError> {
        self.record_as(h, Displace::PoolLeaseOf(from))
    }

    /// [`Ipam::record`] of an address from the pool (`h.fixed` false: one the host's DHCP
    /// server gave) that the file gives to another owner's pool lease: that lease gives way
    /// ([`Ipam::take_over`]) when `stale` says so of its owner (its workload does not run).
    /// Returns the lease and the owner whose lease gave way; a lease that does not give way
    /// is refused as [`Ipam::record`] refuses it.
    pub fn record_displacing(
        &self,
        h: Holding,
        stale: &dyn Fn(&Owner) -> bool,
    ) -> Result<(Lease, Option<Owner>), IpamError> {
        let held = match h.fixed {
            true => None,
            false => self
                .list(&h.net.name)?
                .into_iter()
                .find(|l| l.ip == h.ip && l.owner != *h.owner && !l.fixed),
        };
        match held.map(|l| l.owner).filter(|o| stale(o)) {
            // take_over drops `from`'s lease only if it still is a pool lease of `h.ip`.
            Some(from) => Ok((self.take_over(h, &from)?, Some(from))),
            None => Ok((self.record(h)?, None)),
        }
    }

    fn record_as(&self, h: Holding, displace: Displace) -> Result<Lease, IpamError> {
        let (net, owner, ip, fixed) = (h.net, h.owner, h.ip, h.fixed);
        self.with_leases(&net.name, |leases| {
            if !net.is_host_addr(ip) {
                return Err(IpamError::OutOfNetwork {
                    ip,
                    network: net.name.clone(),
                    subnet: net.subnet,
                });
            }
            match displace {
                Displace::Nobody => {}
                Displace::Any => {
                    if let Some(pos) = leases.iter().position(|l| l.ip == ip && l.owner != *owner)
                    {
                        let old = leases.remove(pos);
                        log::warn!(
                            "{ip} on {} is {owner}'s in the cluster's claims; the local lease file gave it to {}, which is dropped",
                            net.name,
                            old.owner
                        );
                    }
                }
                Displace::PoolLeaseOf(from) => {
                    leases.retain(|l| !(l.ip == ip && l.owner == *from && !l.fixed));
                }
            }
            if let Some(l) = leases.iter().find(|l| l.ip == ip && l.owner != *owner) {
                return Err(IpamError::Taken {
                    ip,
                    network: net.name.clone(),
                    holder: l.owner.clone(),
                });
            }
            if let Some(pos) = leases.iter().position(|l| l.owner == *owner) {
                if leases[pos].ip == ip && leases[pos].fixed == fixed {
                    return Ok(leases[pos].clone());
                }
                leases.remove(pos);
            }
            Ok(insert_lease(leases, ip, owner, fixed))
        })
    }
}
