//! What the overlay put on this namespace's links, found by its marker ([`ROUTE_PROTO`] as
//! the protocol of its addresses, routes and neighbour entries), so that what a daemon left
//! for a network it no longer shares can go. An admin's own (another protocol, or none) are
//! never listed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::{
    del_ipv4, neighbour_del, overlay_neighbour, overlay_route, req, set_route, ROUTE_PROTO,
};
use crate::net::netlink::{mac_and_ipv4, Netlink, NetlinkError};

/// One thing the overlay put on a link. Sorted, routes come first and addresses last (a
/// route goes with the address it uses as its source anyway).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Marked {
    /// A host route to a remote address, from this host's own.
    Route {
        link: String,
        dst: Ipv4Addr,
        src: Ipv4Addr,
    },
    /// A permanent neighbour entry of a remote address.
    Neighbour { link: String, ip: Ipv4Addr },
    /// This host's own address on a shared bridge.
    Address {
        link: String,
        ip: Ipv4Addr,
        prefix: u8,
    },
}

impl Marked {
    pub fn link(&self) -> &str {
        match self {
            Marked::Route { link, .. }
            | Marked::Neighbour { link, .. }
            | Marked::Address { link, .. } => link,
        }
    }
}

impl fmt::Display for Marked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Marked::Route { link, dst, .. } => write!(f, "the route to {dst} on {link}"),
            Marked::Neighbour { link, ip } => write!(f, "the neighbour entry of {ip} on {link}"),
            Marked::Address { link, ip, prefix } => {
                write!(f, "the address {ip}/{prefix} on {link}")
            }
        }
    }
}

fn marked_address(attrs: &[AddressAttribute]) -> bool {
    attrs.iter().any(
        |a| matches!(a, AddressAttribute::Protocol(AddressProtocol::Other(p)) if *p == ROUTE_PROTO),
    )
}

/// Give `link` the address `ip`/32 with the overlay's marker (one there already, marked or
/// not, is marked).
pub fn add_host_address(nl: &Netlink, link: &str, ip: Ipv4Addr) -> Result<(), NetlinkError> {
    let index = nl.index(link)?;
    let (rt, h) = nl.parts();
    rt.block_on(async move {
        let mut r = h.address().add(index, IpAddr::V4(ip), 32).replace();
        r.message_mut()
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                ROUTE_PROTO,
            )));
        r.execute().await
    })
    .map_err(req(format!("add {ip}/32 to {link}")))
}

/// Everything with the overlay's marker on the links of this namespace, sorted.
pub fn marked(nl: &Netlink) -> Result<Vec<Marked>, NetlinkError> {
    let names: std::collections::BTreeMap<u32, String> =
        nl.links()?.into_iter().map(|l| (l.index, l.name)).collect();
    let name = |i: u32| names.get(&i).cloned();
    let (rt, h) = nl.parts();
    let (addrs, routes) = rt
        .block_on(async move {
            let addrs: Vec<_> = h.address().get().execute().try_collect().await?;
            let routes: Vec<_> = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_collect()
                .await?;
            Ok::<_, rtnetlink::Error>((addrs, routes))
        })
        .map_err(req("list the addresses and routes".to_string()))?;
    let mut out = Vec::new();
    for m in addrs
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet && marked_address(&m.attributes))
    {
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let (Some(link), Some(ip)) = (name(m.header.index), ip) {
            out.push(Marked::Address {
                link,
                ip,
                prefix: m.header.prefix_len,
            });
        }
    }
    for (oif, dst, src) in routes.iter().filter_map(overlay_route) {
        if let Some(link) = name(oif) {
            out.push(Marked::Route { link, dst, src });
        }
    }
    let neighbours = nl.neighbour_dump(AddressFamily::Inet, || "list the neighbours".into())?;
    for m in neighbours.iter().filter(|m| overlay_neighbour(m)) {
        if let (Some(link), (_, Some(ip))) = (name(m.header.ifindex), mac_and_ipv4(m)) {
            out.push(Marked::Neighbour { link, ip });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Remove `m` (gone already is fine).
pub fn remove_marked(nl: &Netlink, m: &Marked) -> Result<(), NetlinkError> {
    match m {
        Marked::Route { link, dst, src } => set_route(nl, link, *dst, *src, false),
        Marked::Neighbour { link, ip } => neighbour_del(nl, link, *ip),
        Marked::Address { link, ip, prefix } => del_ipv4(nl, link, *ip, *prefix),
    }
}
