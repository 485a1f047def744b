//! A workload's bridge port: where frames to its MAC go, and what else reaches it.

use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::LinkBridgePort;

use super::{Netlink, NetlinkError};
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
    /// port.
    pub fn pin_port(&self, port: &str, mac: MacAddr) -> Result<(), NetlinkError> {
        let index = self.index(port)?;
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
            format!("turn unknown unicast flooding off on {port}"),
            LinkBridgePort::new(index).flood(false).build(),
        )
    }
}
