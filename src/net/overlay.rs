//! Overlay mechanism for a cluster: a VXLAN link on a bridge, its forwarding entries (remote
//! VTEP per MAC, and all-zero entries that flood broadcast and unknown traffic to every
//! peer), host routes to remote workloads with this host's own source address, and the
//! nftables filter on the VXLAN port (table `bridge volt-cluster`), and the guard that keeps
//! workloads off the VXLAN and etcd ports (`inet volt-cluster`, overlay/guard.rs). No policy: the caller
//! says which entries, routes and pairs there should be.

use std::net::{IpAddr, Ipv4Addr};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkVxlan, RouteMessageBuilder};

use super::netlink::{mac_and_ipv4, Link, Netlink, NetlinkError};
use crate::config::MacAddr;

/// The protocol number Volt's overlay addresses, routes and neighbour entries carry, so they
/// are told apart from others (an admin's own are never changed).
pub const ROUTE_PROTO: u8 = 0x56;

mod filter;
mod guard;
mod marked;
use filter::nft;
pub use filter::{apply_filter, filter_script, remove_filter, FilterError, PortFilter};
pub use guard::{apply_guard, guard_script, Guard};
pub use marked::{add_host_address, marked, remove_marked, Marked};
/// The nftables table of the VXLAN ports' filters.
pub const TABLE: &str = "volt-cluster";

/// One forwarding entry of a VXLAN link: frames for `mac` go to VTEP `dst` (all-zero MAC:
/// broadcast and unknown traffic is copied to `dst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub mac: MacAddr,
    pub dst: Ipv4Addr,
}

/// What a VXLAN link needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanParams {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    /// The underlay interface.
    pub dev: u32,
    pub mtu: u32,
}

fn req(what: String) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    move |e| Netlink::req(what, e)
}

fn send(
    nl: &Netlink,
    what: String,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), NetlinkError> {
    let (rt, mut h) = nl.parts();
    let mut m = NetlinkMessage::from(msg);
    m.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    rt.block_on(async move {
        let mut resp = h.request(m)?;
        while let Some(r) = resp.next().await {
            if let NetlinkPayload::Error(e) = r.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    })
    .map_err(req(what))
}

/// What an existing VXLAN link was made with: VNI, local address, port, underlay index.
fn vxlan_made_with(m: &LinkMessage) -> (Option<u32>, Option<Ipv4Addr>, Option<u16>, Option<u32>) {
    let mut made = (None, None, None, None);
    let infos = m.attributes.iter().filter_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    for info in infos.flatten() {
        let LinkInfo::Data(InfoData::Vxlan(v)) = info else {
            continue;
        };
        for a in v {
            match a {
                InfoVxlan::Id(id) => made.0 = Some(*id),
                InfoVxlan::Local(ip) => made.1 = Some(*ip),
                InfoVxlan::Port(port) => made.2 = Some(*port),
                InfoVxlan::Link(dev) => made.3 = Some(*dev),
                _ => {}
            }
        }
    }
    made
}

/// Make sure the VXLAN link exists (learning on: the kernel then drops frames whose source
/// MAC a static entry places behind another VTEP), with this MTU, on `bridge`, up. A link of
/// that name made with another VNI, local address, port or underlay (a changed cluster.toml,
/// an underlay address that moved) is made again: those cannot be changed in place.
/// Returns whether it was created.
pub fn ensure_vxlan(nl: &Netlink, p: &VxlanParams, bridge: &str) -> Result<bool, NetlinkError> {
    let want = (Some(p.vni), Some(p.local), Some(p.port), Some(p.dev));
    let created = match nl.link_message(&p.name)? {
        Some(m) if Link::from_message(&m).kind.as_deref() == Some("vxlan") => {
            let had = vxlan_made_with(&m);
            if had != want {
                log::info!(
                    "{} was made with VNI {:?}, local {:?}, port {:?}, underlay #{:?}; making it again with VNI {}, local {}, port {}, underlay #{}",
                    p.name, had.0, had.1, had.2, had.3, p.vni, p.local, p.port, p.dev
                );
                nl.delete(&p.name)?;
            }
            had != want
        }
        Some(_) => {
            nl.delete(&p.name)?;
            true
        }
        None => true,
    };
    if created {
        let msg = LinkVxlan::new(&p.name, p.vni)
            .dev(p.dev)
            .local(p.local)
            .port(p.port)
            .learning(true)
            .build();
        let (rt, h) = nl.parts();
        rt.block_on(async move { h.link().add(msg).execute().await })
            .map_err(req(format!("create VXLAN link {} (VNI {})", p.name, p.vni)))?;
    }
    nl.set_mtu(&p.name, p.mtu)?;
    if nl.master(&p.name)?.as_deref() != Some(bridge) {
        nl.set_master(&p.name, bridge)?;
    }
    nl.set_up(&p.name)?;
    Ok(created)
}

/// Every VXLAN link of the namespace: (name, VNI). Which of them are whose is the caller's
/// to say.
pub fn vxlan_links(nl: &Netlink) -> Result<Vec<(String, u32)>, NetlinkError> {
    let mut out = Vec::new();
    for l in nl.links()? {
        if l.kind.as_deref() != Some("vxlan") {
            continue;
        }
        // Gone meanwhile: nothing to say about it.
        let Some(m) = nl.link_message(&l.name)? else {
            continue;
        };
        if let (Some(vni), ..) = vxlan_made_with(&m) {
            out.push((l.name, vni));
        }
    }
    out.sort();
    Ok(out)
}

fn fdb_message(index: u32, e: &Fdb) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            e.dst,
        )));
    m
}

/// The permanent VTEP entries of VXLAN link `vx` (those [`fdb_add`] makes). Entries the
/// kernel learned are not listed: see [`learned_fdb_entries`].
pub fn fdb_entries(nl: &Netlink, vx: &str) -> Result<Vec<Fdb>, NetlinkError> {
    vtep_entries(nl, vx, true)
}

/// The VTEP entries of `vx` the kernel learned from traffic. Those towards a live peer age
/// out by themselves (removing them on every pass would only churn: they come back with the
/// next frame); those towards a host that left the cluster must go at once, or frames for
/// its workloads' MACs go to a dead address until they age out (300 s).
pub fn learned_fdb_entries(nl: &Netlink, vx: &str) -> Result<Vec<Fdb>, NetlinkError> {
    vtep_entries(nl, vx, false)
}

fn vtep_entries(nl: &Netlink, vx: &str, permanent: bool) -> Result<Vec<Fdb>, NetlinkError> {
    let index = nl.index(vx)?;
    let msgs = nl.neighbour_dump(AddressFamily::Bridge, || {
        format!("dump the forwarding entries of {vx}")
    })?;
    let mut out: Vec<Fdb> = msgs
        .iter()
        .filter(|m| {
            m.header.ifindex == index && (m.header.state == NeighbourState::Permanent) == permanent
        })
        .filter_map(|m| match mac_and_ipv4(m) {
            (Some(mac), Some(dst)) => Some(Fdb { mac, dst }),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Add entry `e` to `vx`: all-zero MACs are appended (one per peer), others replaced.
pub fn fdb_add(nl: &Netlink, vx: &str, e: &Fdb) -> Result<(), NetlinkError> {
    let index = nl.index(vx)?;
    let flags = if e.mac.is_zero() {
        NLM_F_CREATE | NLM_F_APPEND
    } else {
        NLM_F_CREATE | NLM_F_REPLACE
    };
    send(
        nl,
        format!("add forwarding entry {} dst {} on {vx}", e.mac, e.dst),
        RouteNetlinkMessage::NewNeighbour(fdb_message(index, e)),
        flags,
    )
}

/// Remove entry `e` from `vx` (gone already is fine).
pub fn fdb_del(nl: &Netlink, vx: &str, e: &Fdb) -> Result<(), NetlinkError> {
    let index = nl.index(vx)?;
    match send(
        nl,
        format!("remove forwarding entry {} dst {} on {vx}", e.mac, e.dst),
        RouteNetlinkMessage::DelNeighbour(fdb_message(index, e)),
        0,
    ) {
        Err(err) if err.errno() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn route_message(index: u32, ip: Ipv4Addr, src: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(index)
        .pref_source(src)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Other(ROUTE_PROTO))
        .build()
}

/// Destinations of the overlay routes (ours, by protocol) on `bridge`.
pub fn routes(nl: &Netlink, bridge: &str) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, NetlinkError> {
    let index = nl.index(bridge)?;
    let (rt, h) = nl.parts();
    let msgs = rt
        .block_on(async move {
            h.route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_collect::<Vec<_>>()
                .await
        })
        .map_err(req(format!("list the routes on {bridge}")))?;
    let mut out: Vec<(Ipv4Addr, Ipv4Addr)> = msgs
        .iter()
        .filter_map(overlay_route)
        .filter(|(oif, ..)| *oif == index)
        .map(|(_, dst, src)| (dst, src))
        .collect();
    out.sort();
    Ok(out)
}

/// A host route the overlay made (its protocol, /32): (output link index, destination,
/// source).
fn overlay_route(m: &RouteMessage) -> Option<(u32, Ipv4Addr, Ipv4Addr)> {
    if m.header.protocol != RouteProtocol::Other(ROUTE_PROTO)
        || m.header.destination_prefix_length != 32
    {
        return None;
    }
    let mut oif = None;
    let mut dst = None;
    let mut src = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => src = Some(*ip),
            _ => {}
        }
    }
    Some((oif?, dst?, src?))
}

/// Whether neighbour entry `m` is one the overlay set (its protocol).
fn overlay_neighbour(m: &NeighbourMessage) -> bool {
    m.header.state == NeighbourState::Permanent
        && m.attributes.iter().any(|a| {
            matches!(a, NeighbourAttribute::Protocol(p) if *p == RouteProtocol::Other(ROUTE_PROTO))
        })
}

/// Route `ip`/32 over `bridge` with source `src` (replacing one that is there), or with
/// `present` false remove it (one already gone is not an error).
pub fn set_route(
    nl: &Netlink,
    bridge: &str,
    ip: Ipv4Addr,
    src: Ipv4Addr,
    present: bool,
) -> Result<(), NetlinkError> {
    let msg = route_message(nl.index(bridge)?, ip, src);
    let (rt, h) = nl.parts();
    if present {
        return rt
            .block_on(async move { h.route().add(msg).replace().execute().await })
            .map_err(req(format!("route {ip} over {bridge} from {src}")));
    }
    match rt
        .block_on(async move { h.route().del(msg).execute().await })
        .map_err(req(format!("remove the route to {ip} over {bridge}")))
    {
        Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The permanent IPv4 neighbour entries Volt set on `link` (address, MAC): those carrying
/// its protocol number, as its routes do. An admin's own entries are never listed, so never
/// removed.
pub fn neighbours(nl: &Netlink, link: &str) -> Result<Vec<(Ipv4Addr, MacAddr)>, NetlinkError> {
    let index = nl.index(link)?;
    let msgs = nl.neighbour_dump(AddressFamily::Inet, || {
        format!("list the neighbours on {link}")
    })?;
    let mut out: Vec<(Ipv4Addr, MacAddr)> = msgs
        .iter()
        .filter(|m| m.header.ifindex == index && overlay_neighbour(m))
        .filter_map(|m| match mac_and_ipv4(m) {
            (Some(mac), Some(ip)) => Some((ip, mac)),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `ip` is at `mac` on `link`, for good (no ARP for it).
pub fn neighbour_set(
    nl: &Netlink,
    link: &str,
    ip: Ipv4Addr,
    mac: MacAddr,
) -> Result<(), NetlinkError> {
    let index = nl.index(link)?;
    let (rt, h) = nl.parts();
    rt.block_on(async move {
        let mut req = h
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::Other(
                ROUTE_PROTO,
            )));
        req.execute().await
    })
    .map_err(req(format!("set neighbour {ip} at {mac} on {link}")))
}

/// Remove the neighbour entry of `ip` on `link` (gone already is fine).
pub fn neighbour_del(nl: &Netlink, link: &str, ip: Ipv4Addr) -> Result<(), NetlinkError> {
    let index = nl.index(link)?;
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = index;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    match send(
        nl,
        format!("remove neighbour {ip} on {link}"),
        RouteNetlinkMessage::DelNeighbour(m),
        0,
    ) {
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The link that has `ip` among its addresses.
pub fn link_with_address(
    nl: &Netlink,
    ip: Ipv4Addr,
) -> Result<Option<(String, u32, u32)>, NetlinkError> {
    for l in nl.links()? {
        if nl.ipv4_addrs(&l.name)?.iter().any(|(a, _)| *a == ip) {
            return Ok(Some((l.name, l.index, l.mtu)));
        }
    }
    Ok(None)
}

/// Remove `ip`/`prefix` from `link` (absent already is fine).
pub fn del_ipv4(nl: &Netlink, link: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
    let Some(index) = nl.link(link)?.map(|l| l.index) else {
        return Ok(());
    };
    let (rt, h) = nl.parts();
    rt.block_on(async move {
        let msgs: Vec<_> = h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        for m in msgs {
            let ours = m.header.index == index
                && m.header.prefix_len == prefix
                && m.attributes.iter().any(|a| {
                    matches!(a, rtnetlink::packet_route::address::AddressAttribute::Local(IpAddr::V4(x)) if *x == ip)
                });
            if ours {
                h.address().del(m).execute().await?;
            }
        }
        Ok(())
    })
    .map_err(req(format!("remove {ip}/{prefix} from {link}")))
}
