//! One network this host shares with the cluster, as the daemon keeps it: its VXLAN port,
//! the bridge's identity (MAC, MTU), and the port's filter.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::config::{MacAddr, Network};
use crate::net::netlink::Netlink;
use crate::net::overlay::{self as mech, PortFilter};

/// One shared network on this host.
pub(super) struct Shared {
    pub(super) net: Network,
    pub(super) vni: u32,
    pub(super) vx: String,
    pub(super) mac: MacAddr,
    pub(super) address: Option<Ipv4Addr>,
}

impl Shared {
    /// The bridge's MAC and MTU as this host needs them (networkd may reset them when it
    /// reconfigures the bridge); the MTU at most the overlay's (`overlay_mtu`).
    pub(super) fn bridge_identity(&self, nl: &Netlink, overlay_mtu: u32) {
        let s = self;
        let b = &s.net.bridge;
        let mtu = overlay_mtu.min(s.net.mtu);
        // networkd 252 fails the bridge on its own IPMasquerade= when a reload re-applies its
        // .network, and drops its addresses; a reconfigure brings them back.
        let has_gateway = nl
            .ipv4_addrs(b)
            .is_ok_and(|a| a.iter().any(|(ip, _)| *ip == s.net.gateway));
        if !has_gateway && crate::net::networkd::Networkd::connect().is_ok() {
            log::warn!(
                "{b} lost its gateway address {} (networkd failed the link?); asking networkd to reconfigure it",
                s.net.gateway
            );
            super::membership::networkctl_reconfigure(b);
        }
        match nl.link(b) {
            Ok(Some(l)) => {
                if l.mac != Some(s.mac) {
                    match nl.set_mac(b, s.mac) {
                        Ok(()) => log::info!("{b}: MAC set to {} (this host's)", s.mac),
                        Err(e) => log::warn!("{}", crate::error_chain(&e)),
                    }
                }
                if l.mtu != mtu {
                    match nl.set_mtu(b, mtu) {
                        Ok(()) => log::info!("{b}: MTU set to {mtu}"),
                        Err(e) => log::warn!("{}", crate::error_chain(&e)),
                    }
                }
            }
            Ok(None) => log::warn!("bridge {b} is gone"),
            Err(e) => log::warn!("{}", crate::error_chain(&e)),
        }
    }

    /// The filter of this network's VXLAN port (on UDP `udp_port`), letting in the (MAC,
    /// address) pairs `remote`, from the VTEPs `fdb` places their MACs behind.
    pub(super) fn filter(
        &self,
        udp_port: u16,
        remote: Vec<(MacAddr, Ipv4Addr)>,
        fdb: &BTreeSet<mech::Fdb>,
    ) -> PortFilter {
        PortFilter {
            port: self.vx.clone(),
            gateway: self.net.gateway,
            remote,
            subnet: self.net.subnet,
            vni: self.vni,
            udp_port,
            sources: fdb
                .iter()
                .filter(|e| !e.mac.is_zero())
                .map(|e| (e.dst, e.mac))
                .collect(),
        }
    }
}
