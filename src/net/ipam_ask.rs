//! What the address stores take: an allocation ([`Ask`]) and an address got elsewhere
//! ([`Holding`]), one shape for the lease files ([`super::Ipam`]) and the cluster's claims.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{Owner, Request};
use crate::config::{MacAddr, Network};

/// An allocation: `owner` asks for an address on `net`, what every address book's
/// `allocate` takes.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub net: &'a Network,
    pub owner: &'a Owner,
    pub request: Request,
    /// Static addresses of other workloads' configs: kept out of the pool.
    pub configured: &'a BTreeSet<Ipv4Addr>,
    /// The workload's MAC, when known (the cluster's claims carry it; lease files do not).
    pub mac: Option<MacAddr>,
}

/// No addresses: [`Ask::new`]'s `configured`.
static NO_ADDRESSES: BTreeSet<Ipv4Addr> = BTreeSet::new();

impl<'a> Ask<'a> {
    /// `request` for `owner` on `net`, with no configured addresses and no MAC (add them
    /// with [`Ask::with_configured`] and `Ask { mac, ..Ask::new(..) }`).
    pub fn new(net: &'a Network, owner: &'a Owner, request: Request) -> Ask<'a> {
        Ask {
            net,
            owner,
            request,
            configured: &NO_ADDRESSES,
            mac: None,
        }
    }

    /// The same ask with `addrs` kept out of the pool in place of `configured`.
    pub fn with_configured(self, addrs: &'a BTreeSet<Ipv4Addr>) -> Ask<'a> {
        Ask {
            configured: addrs,
            ..self
        }
    }
}

/// An address `owner` holds on `net`, got elsewhere than from an allocation (a container's
/// DHCP lease from networkd, a static address configured at start, the cluster's claim):
/// what a record takes.
#[derive(Debug, Clone, Copy)]
pub struct Holding<'a> {
    pub net: &'a Network,
    pub owner: &'a Owner,
    pub ip: Ipv4Addr,
    /// Asked for (static config or reservation) rather than picked from a pool.
    pub fixed: bool,
    /// The workload's MAC, when known (as in [`Ask`]).
    pub mac: Option<MacAddr>,
}

impl<'a> Holding<'a> {
    /// `owner` holds `ip` on `net`, no MAC known.
    pub fn new(net: &'a Network, owner: &'a Owner, ip: Ipv4Addr, fixed: bool) -> Holding<'a> {
        Holding {
            net,
            owner,
            ip,
            fixed,
            mac: None,
        }
    }
}
