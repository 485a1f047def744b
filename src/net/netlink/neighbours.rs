//! Neighbour tables over rtnetlink: the dump every reader shares, and the bridges'
//! forwarding databases built on it.

use futures::TryStreamExt;
use std::net::Ipv4Addr;

use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use serde::Serialize;

use super::{mac_of, Netlink, NetlinkError};
use crate::config::MacAddr;

/// One bridge forwarding database entry (`bridge fdb show br <bridge>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbEntry {
    pub mac: MacAddr,
    /// The port (or the bridge itself, for its own entries).
    pub port: u32,
    pub vlan: Option<u16>,
    /// A local/permanent entry (the port's own address) rather than a learned one.
    pub permanent: bool,
}

/// A neighbour entry's link-layer address and IPv4 destination, where it has them. In an
/// AF_BRIDGE message (a VXLAN port's forwarding entry) the parser cannot know the
/// destination's family: four bytes there are an IPv4 address.
pub fn mac_and_ipv4(m: &NeighbourMessage) -> (Option<MacAddr>, Option<Ipv4Addr>) {
    let (mut mac, mut ip) = (None, None);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                if let Ok(b) = <[u8; 4]>::try_from(b.as_slice()) {
                    ip = Some(Ipv4Addr::from(b));
                }
            }
            _ => {}
        }
    }
    (mac, ip)
}

impl Netlink {
    /// Every neighbour entry of `family` (the bridges' forwarding entries for
    /// [`AddressFamily::Bridge`]); `what` names the dump in an error ("dump the FDB of br0").
    pub fn neighbour_dump(
        &self,
        family: AddressFamily,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                h.neighbours()
                    .get()
                    .set_address_family(family)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| Self::req(what(), e))
    }

    /// The forwarding database of `bridge`: entries learned on or owned by its ports, and the
    /// bridge's own.
    pub fn fdb(&self, bridge: &str) -> Result<Vec<FdbEntry>, NetlinkError> {
        let br = self.index(bridge)?;
        let msgs = self.neighbour_dump(AddressFamily::Bridge, || {
            format!("dump the FDB of {bridge}")
        })?;
        let mut out = Vec::new();
        for m in msgs {
            let mut mac = None;
            let mut master = None;
            let mut vlan = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(b) => mac = mac_of(b),
                    NeighbourAttribute::Controller(i) => master = Some(*i),
                    NeighbourAttribute::Vlan(v) => vlan = Some(*v),
                    _ => {}
                }
            }
            let ours = master == Some(br) || m.header.ifindex == br;
            if let (true, Some(mac)) = (ours, mac) {
                out.push(FdbEntry {
                    mac,
                    port: m.header.ifindex,
                    vlan,
                    permanent: m.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }

    /// The port (name) of `bridge` other than `own_port` where `mac` is known, if any.
    pub fn mac_elsewhere_on(
        &self,
        bridge: &str,
        mac: MacAddr,
        own_port: Option<&str>,
    ) -> Result<Option<String>, NetlinkError> {
        let own = match own_port {
            Some(p) => self.link(p)?.map(|l| l.index),
            None => None,
        };
        for e in self.fdb(bridge)? {
            if e.mac == mac && Some(e.port) != own {
                let name = self
                    .link_by_index(e.port)?
                    .map_or_else(|| format!("#{}", e.port), |l| l.name);
                return Ok(Some(name));
            }
        }
        Ok(None)
    }
}
