//! A workload's bridge port: where frames to its MAC go, and what else reaches it.

use rtnetlink::packet_route::neighbour::{
    NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::LinkBridgePort;

use super::{mac_of, Netlink, NetlinkError};
use crate::config::MacAddr;

impl Netlink {
    /// Bridge port `port`'s workload sends only from `mac` (its anti-spoofing rules say so):
    /// a static forwarding entry sends frames for `mac` to the port whatever the bridge has
    /// learned or forgotten (a workload silent for longer than the ageing time stays
    /// reachable), and with that the port's `flood` flag goes off, so frames for addresses
    /// the bridge does not know (another workload can send them at line rate, and the bridge
    /// would copy each to every port) no longer reach it. Broadcast and multicast are not
    /// touched. The entry is static, not permanent (a permanent one would be the bridge's own
    /// address, delivered to the host), and sticky: a frame from `mac` on another port (one
    /// without Volt's rules, an admin's uplink) does not move it there. It goes with the
    /// port. A static entry of another MAC there (a container end whose MAC changed) goes.
    ///
    /// The port learns nothing either: the static entry is all it needs, and frames to
    /// link-local group addresses (`01:80:c2:00:00:0x`: LLDP, 802.1X), which the bridge does
    /// not forward, reach the bridge's local input, not the prerouting hook the rules are in,
    /// and the bridge learned their sources: any MAC (another workload's, the router's
    /// behind an admin's uplink), at line rate.
    pub fn pin_port(&self, port: &str, mac: MacAddr) -> Result<(), NetlinkError> {
        let index = self.index(port)?;
        let stale: Vec<NeighbourMessage> = self
            .neighbour_dump(AddressFamily::Bridge, || format!("dump the FDB of {port}"))?
            .into_iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Noarp)
            .filter(|m| {
                m.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::LinkLayerAddress(b) if mac_of(b).is_some_and(|o| o != mac))
                })
            })
            .collect();
        for mut m in stale {
            // The bridge's entry (NTF_MASTER), not the port's own table: with the dump's
            // flags (sticky) the kernel would ask the port, which has none.
            m.header.flags = NeighbourFlags::Controller;
            let h = self.handle.clone();
            self.rt
                .block_on(async move { h.neighbours().del(m).execute().await })
                .map_err(|e| Self::req(format!("remove a stale static entry on {port}"), e))?;
        }
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                h.neighbours()
                    .add_bridge(index, &mac.0)
                    .state(NeighbourState::Noarp)
                    .flags(NeighbourFlags::Controller | NeighbourFlags::Sticky)
                    .replace()
                    .execute()
                    .await
            })
            .map_err(|e| Self::req(format!("add a static forwarding entry {mac} on {port}"), e))?;
        self.change(
            format!("turn unknown unicast flooding and learning off on {port}"),
            LinkBridgePort::new(index)
                .flood(false)
                .learning(false)
                .build(),
        )
    }
}
