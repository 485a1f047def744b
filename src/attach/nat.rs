//! Host-only networks' NAT and port maps, kept as the workloads on them come and go: each
//! time a link on such a network comes up or goes down (and a container's DHCP address is
//! recorded), the network's chains are made again with the port maps whose targets have an
//! address then. `volt net up` does the same by hand.

use super::{Attach, AttachError};
use crate::config::{Network, NetworkLookup, NetworkType};
use crate::net::ipam::{Kind, Lease};
use crate::net::nat::PortTarget;

/// The port maps of a network: those whose target has an address, and those that wait.
#[derive(Debug, Default)]
pub struct PortTargets {
    pub ready: Vec<PortTarget>,
    /// Each a sentence naming the map and what it waits for.
    pub waiting: Vec<String>,
}

impl Attach {
    /// The address each port map of `net` reaches: the target workload's static or reserved
    /// address on `net`, else its lease (a VM's first, then a container's). A target with
    /// none of them (not started yet, or waiting for its DHCP address) waits.
    pub fn port_map_targets(&self, net: &Network) -> Result<PortTargets, AttachError> {
        let leases: Vec<Lease> =
            self.ipam()
                .list(&net.name)
                .map_err(|source| AttachError::Ipam {
                    what: format!("network {}", net.name),
                    source: Box::new(source),
                })?;
        let mut out = PortTargets::default();
        for pm in &net.port_maps {
            let planned = self
                .plan
                .workloads
                .iter()
                .filter(|w| w.name == pm.target)
                .flat_map(|w| w.attachments.iter())
                .find(|a| a.network.as_deref() == Some(net.name.as_str()))
                .and_then(|a| a.addressing.known().map(|n| n.addr()));
            let leased = || {
                leases
                    .iter()
                    .find(|l| l.owner.kind == Kind::Vm && l.owner.name == pm.target)
                    .or_else(|| leases.iter().find(|l| l.owner.name == pm.target))
                    .map(|l| l.ip)
            };
            match planned.or_else(leased) {
                Some(addr) => out.ready.push(PortTarget {
                    map: pm.clone(),
                    addr,
                }),
                None => out.waiting.push(format!(
                    "port map {pm} waits for {} to have an address on {} (a static ipv4, a reservation or a lease)",
                    pm.target,
                    net.name
                )),
            }
        }
        Ok(out)
    }

    /// A link on `network` came up (`went_down` false) or went down: when the network is
    /// host-only, make its NAT again with the port maps that resolve now. A link going down
    /// only refreshes chains that are there (an admin's `volt net down` stays down), and
    /// neither ever creates the bridge. A failure is logged, not returned: the workloads on
    /// the bridge still reach each other, and the next change (or `volt net up`) tries again.
    pub(super) fn refresh_nat(&self, network: &str, went_down: bool) {
        let Some(net) = self.plan.networks.by_name(network) else {
            return;
        };
        if net.kind != NetworkType::HostOnly {
            return;
        }
        let mgr = self.manager();
        // The leases are read under the lock: two owners that each read before the other
        // wrote its lease would otherwise apply in either order, the last one without the
        // other's port map.
        let _lock = match mgr.lock_nat() {
            Ok(f) => f,
            Err(e) => {
                log::warn!("{}: no NAT refresh: {}", net.name, crate::error_chain(&e));
                return;
            }
        };
        let targets = match self.port_map_targets(net) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("{}", crate::error_chain(&e));
                return;
            }
        };
        match mgr.nat_refresh(net, &targets.ready, went_down) {
            Ok(false) => {}
            Ok(true) => {
                for w in &targets.waiting {
                    log::info!("{w}");
                }
                log::info!(
                    "{}: NAT to {} with {} port map(s)",
                    net.name,
                    net.uplink.as_deref().unwrap_or("-"),
                    targets.ready.len()
                );
            }
            Err(e) => log::warn!(
                "{}: no NAT to its uplink: {} (`volt net up {}` tries again)",
                net.name,
                crate::error_chain(&e),
                net.name
            ),
        }
    }

    /// A link whose workload left the plan went down: the records do not say its network, so
    /// every host-only network whose NAT is in place is refreshed.
    pub(super) fn refresh_every_nat(&self) {
        for n in &self.plan.networks.list {
            if n.kind == NetworkType::HostOnly {
                self.refresh_nat(&n.name, true);
            }
        }
    }
}
