//! Choosing an address: [`pick`] for a new lease, [`gives_way`] for an existing one. Pure.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{Ask, IpamError, Kind, Lease, Request};

/// Choose an address for `ask.owner` on `ask.net`, given the current leases and addresses
/// that are configured statically for workloads that have no lease yet (`ask.configured`).
/// Pure.
pub fn pick(ask: Ask, leases: &[Lease]) -> Result<(Ipv4Addr, bool), IpamError> {
    let (net, owner, configured) = (ask.net, ask.owner, ask.configured);
    let holder_of = |ip: Ipv4Addr| leases.iter().find(|l| l.ip == ip && l.owner != *owner);
    let reserved_for_other = |ip: Ipv4Addr| {
        net.reservations
            .iter()
            .find(|(k, v)| **v == ip && **k != owner.reservation_key())
            .map(|(k, _)| k.clone())
    };
    let check = |ip: Ipv4Addr| -> Result<(), IpamError> {
        if !net.is_host_addr(ip) {
            return Err(IpamError::OutOfNetwork {
                ip,
                network: net.name.clone(),
                subnet: net.subnet,
            });
        }
        if let Some(l) = holder_of(ip) {
            return Err(IpamError::Taken {
                ip,
                network: net.name.clone(),
                holder: l.owner.clone(),
            });
        }
        if let Some(key) = reserved_for_other(ip) {
            return Err(IpamError::Reserved {
                ip,
                network: net.name.clone(),
                key,
            });
        }
        Ok(())
    };
    if let Request::Static(ip) = ask.request {
        check(ip)?;
        return Ok((ip, true));
    }
    if let Some(ip) = net.reservations.get(&owner.reservation_key()) {
        check(*ip)?;
        return Ok((*ip, true));
    }
    let (range, pool) = match owner.kind {
        Kind::Vm => (net.vm_range, "VM"),
        Kind::Container => (net.container_range, "container"),
    };
    let reserved: BTreeSet<Ipv4Addr> = net.reservations.values().copied().collect();
    let leased: BTreeSet<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();
    let (start, end) = (u32::from(range.start), u32::from(range.end));
    (start..=end)
        .map(Ipv4Addr::from)
        .find(|ip| {
            net.is_host_addr(*ip)
                && !leased.contains(ip)
                && !reserved.contains(ip)
                && !configured.contains(ip)
        })
        .map(|ip| (ip, false))
        .ok_or(IpamError::Exhausted {
            network: net.name.clone(),
            pool,
            range,
        })
}

/// Why `ask.owner`'s lease of `held` cannot answer `ask` any more, if it cannot: the
/// owner's file now names another address, or its reservation is another one, or the
/// address is now another workload's static address or reservation (the files win over a
/// pool lease given out before they said so).
pub(super) fn gives_way(ask: Ask, held: Ipv4Addr) -> Option<String> {
    if let Request::Static(ip) = ask.request {
        return (ip != held).then(|| format!("its file names {ip}"));
    }
    let key = ask.owner.reservation_key();
    if let Some(mine) = ask.net.reservations.get(&key).filter(|ip| **ip != held) {
        return Some(format!("its reservation is {mine}"));
    }
    if let Some((other, _)) = ask
        .net
        .reservations
        .iter()
        .find(|(k, ip)| **ip == held && **k != key)
    {
        return Some(format!("the address is reserved for {other}"));
    }
    ask.configured
        .contains(&held)
        .then(|| "another workload's file names it as its static address".to_string())
}
