//! The daemon's side of membership: registering (adopting its own live lease after a
//! restart), the host record, this host's own address and DHCP block on each shared network,
//! and claiming again what runs here after a lost lease.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use super::conflicts::Retry;
use super::daemon::{setup, Daemon};
use super::shared::Shared;
use super::store::{self, AddrClaim, HostNet, HostRecord};
use super::ClusterError;
use crate::config::{ConfigSet, NetworkLookup};
use crate::plan::{names, Paths, Plan};

impl Daemon {
    /// Adopt this host's live lease (a restarted daemon keeps its claims), else grant one.
    /// The record is written at once (create-if-absent): a second host with the same name
    /// is refused before it creates anything.
    pub(super) fn register(&mut self) -> Result<(), ClusterError> {
        let (lease, adopted) = self.cluster.register(&self.record())?;
        if adopted {
            log::info!("adopted this host's live lease {lease:x}");
        }
        self.lease = lease;
        // The conflicts written under the old lease went with it.
        self.conflicts_written = None;
        Ok(())
    }

    fn record(&self) -> HostRecord {
        let c = self.config();
        HostRecord {
            name: c.host.clone(),
            underlay: c.underlay,
            vxlan_port: c.vxlan_port,
            since: store::now(),
            networks: self
                .shared
                .iter()
                .map(|s| HostNet {
                    bridge_mac: Some(s.mac.to_string()),
                    address: s.address,
                    ..super::agree::definition(&s.net, s.vni, self.workload_mtu(s))
                })
                .collect(),
        }
    }

    /// The MTU workloads get on shared network `s` here: the network's, at most the overlay's.
    pub(super) fn workload_mtu(&self, s: &Shared) -> u32 {
        self.config().overlay_mtu().min(s.net.mtu)
    }

    /// At start, before this host registers: refuse to join when a host already in the
    /// cluster defines a shared network otherwise (another subnet, gateway, container range
    /// or MTU). Its peers would leave this host out anyway; this says why, at once.
    pub(super) fn refuse_disagreement(&self) -> Result<(), ClusterError> {
        let snap = store::snapshot(&self.cluster.etcd)?;
        match super::agree::join_conflict(&snap, self.cluster.host(), &self.record().networks) {
            None => Ok(()),
            Some(why) => Err(setup(format!(
                "cannot join the cluster: {why}; every host must define a shared network the same way (its file under /etc/volt/networks/, and underlay_mtu in {}): make them agree, then start volt-cluster again",
                self.config().path.display()
            ))),
        }
    }

    /// Write the host record, then claim each network's host address, then write it again
    /// with the addresses.
    pub(super) fn publish(&mut self) -> Result<(), ClusterError> {
        let put = |d: &Daemon| d.cluster.put_host_record(&d.record(), d.lease);
        put(self)?;
        for i in 0..self.shared.len() {
            let ip = self.host_address(i)?;
            self.shared[i].address = Some(ip);
        }
        put(self)?;
        // A block only where the DHCP server is Volt's (networkd's, from the `.network` Volt
        // writes): on an admin's bridge the drop-in would go into networkd config Volt does
        // not own, and the block would only keep it from the other hosts.
        for i in 0..self.shared.len() {
            if self.shared[i].net.volt_serves_dhcp() {
                self.dhcp_block(i)?;
            }
        }
        Ok(())
    }

    /// This host's record is gone from the store while its lease lives (deleted by hand):
    /// the peers drop this host's entries, so it is written again, as after a lost lease.
    /// Said once, and a failure once per different error, until it is back. With the lease
    /// gone too, the keep-alive's report of it registers the host anew instead.
    pub(super) fn record_again(&mut self) {
        if self.cluster.etcd.ttl_left(self.lease).unwrap_or(0) <= 0 {
            return;
        }
        if self.record_gone.is_none() {
            log::warn!(
                "this host's record is gone from the store (its lease lives): writing it again"
            );
            self.record_gone = Some(String::new());
        }
        match self.publish() {
            Ok(()) => {
                log::info!("this host's record is in the store again");
                self.record_gone = None;
            }
            Err(e) => {
                let text = crate::error_chain(&e);
                if self.record_gone.as_deref() != Some(text.as_str()) {
                    log::error!("cannot write this host's record again (retrying): {text}");
                    self.record_gone = Some(text);
                }
            }
        }
    }

    /// Claim a block of the network's container range for this host's DHCP server (the one
    /// it has, else the first free one) and point networkd's `[DHCPServer]` at it, so the
    /// hosts' DHCP servers never hand out the same address.
    fn dhcp_block(&self, i: usize) -> Result<(), ClusterError> {
        let s = &self.shared[i];
        let me = self.cluster.host();
        let blocks = super::overlay::dhcp_blocks(s.net.container_range);
        let mut mine = None;
        for (first, size) in &blocks {
            let key = store::dhcp_key(&s.net.name, *first);
            let put = super::etcd::Op::Put {
                key: key.clone(),
                value: me.as_bytes().to_vec(),
                lease: self.lease,
            };
            let held = self.cluster.etcd.get(&key)?;
            // This host's block, kept on its lease (see store::keep_on).
            if let Some(kv) = held.as_ref().filter(|kv| kv.value == me.as_bytes()) {
                if store::keep_on(&self.cluster.etcd, kv, self.lease)? {
                    mine = Some((*first, *size));
                    break;
                }
            }
            if held.is_none()
                && self
                    .cluster
                    .etcd
                    .txn(&[super::etcd::Compare::Absent(key)], &[put], &[])?
            {
                mine = Some((*first, *size));
                break;
            }
        }
        let Some((first, size)) = mine else {
            return Err(setup(format!(
                "no DHCP block of {}'s container range {} is free for host {me}",
                s.net.name, s.net.container_range
            )));
        };
        let path = self.dhcp_dropin_path(s);
        let text = super::overlay::dhcp_dropin(s.net.subnet, first, size, me);
        match crate::fsutil::write_atomic_if_changed(&path, &text) {
            Ok(true) => {
                log::info!(
                    "{}: this host's DHCP server hands out {first} and the {} addresses after it",
                    s.net.name,
                    size - 1
                );
                reconfigure_bridge(&s.net.bridge);
            }
            Ok(false) => {}
            Err(e) => log::warn!("{}", crate::error_chain(&e)),
        }
        Ok(())
    }

    pub(super) fn dhcp_dropin_path(&self, s: &Shared) -> std::path::PathBuf {
        Paths::new(&self.root)
            .networkd_dir()
            .join(super::overlay::dropins(&s.net.bridge).1)
    }

    /// This host's own address on shared network `i`: its claim, else the highest free
    /// address of the VM pool, claimed like any other.
    fn host_address(&self, i: usize) -> Result<Ipv4Addr, ClusterError> {
        let s = &self.shared[i];
        let me = self.cluster.host().to_string();
        let owner = format!("host/{me}");
        let mut configured = None;
        for _ in 0..64 {
            let snap = store::snapshot(&self.cluster.etcd)?;
            let claims: Vec<_> = snap.addrs_on(&s.net.name).collect();
            if let Some((ip, c, rev)) = claims.iter().find(|(_, c, _)| c.owner == owner) {
                // Claimed under an old lease of this host's: moved to this one, or it would
                // lapse with the old one (and another host could take the address).
                if snap.addr_lease(&s.net.name, *ip) == Some(self.lease)
                    || store::update_claim(
                        &self.cluster.etcd,
                        &s.net.name,
                        *ip,
                        c,
                        *rev,
                        self.lease,
                    )?
                {
                    return Ok(*ip);
                }
                continue;
            }
            let taken: BTreeSet<Ipv4Addr> = claims.iter().map(|(ip, ..)| *ip).collect();
            let configured = configured.get_or_insert_with(|| self.configured(&s.net.name));
            let Some(ip) = super::overlay::host_address_pick(&s.net, &taken, configured) else {
                return Err(setup(format!(
                    "no free address left on {} for host {me}",
                    s.net.name
                )));
            };
            let claim = AddrClaim {
                owner: owner.clone(),
                host: me.clone(),
                fixed: true,
                mac: Some(s.mac.to_string()),
                since: store::now(),
            };
            if store::try_claim(&self.cluster.etcd, &s.net.name, ip, &claim, self.lease)? {
                return Ok(ip);
            }
        }
        Err(ClusterError::Contention {
            network: s.net.name.clone(),
        })
    }

    /// The static and reserved addresses this host's config gives its workloads on
    /// `network` (what a pool allocation skips too).
    fn configured(&self, network: &str) -> BTreeSet<Ipv4Addr> {
        Plan::build(&ConfigSet::load(&self.root))
            .workloads
            .iter()
            .flat_map(|w| w.attachments.iter())
            .filter(|a| a.network.as_deref() == Some(network))
            .filter_map(|a| a.addressing.known().map(|n| n.addr()))
            .collect()
    }

    /// The static and reserved addresses of this host's workloads on `network`, each with
    /// the workload that has it.
    fn configured_owners(&self, set: &ConfigSet, network: &str) -> Vec<(Ipv4Addr, String)> {
        Plan::build(set)
            .workloads
            .iter()
            .flat_map(|w| w.attachments.iter().map(move |a| (w, a)))
            .filter(|(_, a)| a.network.as_deref() == Some(network))
            .filter_map(|(w, a)| {
                let ip = a.addressing.known()?.addr();
                Some((ip, format!("{} {}", w.kind.as_str(), w.name)))
            })
            .collect()
    }

    /// Warn, once per change, of this host's static addresses that lie inside a DHCP block
    /// another host serves: networkd's DHCP server there knows only its own host's static
    /// leases and may hand the address to a container of its own.
    pub(super) fn warn_statics_in_foreign_blocks(&mut self, snap: &store::Snapshot) {
        let me = self.cluster.host().to_string();
        let mut now = BTreeSet::new();
        let foreign = |net: &str| {
            snap.dhcp
                .iter()
                .filter(|(n, _, h)| n == net && *h != me)
                .map(|(_, first, h)| (*first, h.clone()))
                .collect::<Vec<_>>()
        };
        if self.shared.iter().any(|s| !foreign(&s.net.name).is_empty()) {
            let set = ConfigSet::load(&self.root);
            for s in &self.shared {
                let configured = self.configured_owners(&set, &s.net.name);
                now.extend(super::agree::statics_in_foreign_blocks(
                    &s.net,
                    &me,
                    &configured,
                    &foreign(&s.net.name),
                ));
            }
        }
        for w in now.difference(&self.statics_warned) {
            log::warn!("{w}");
        }
        self.statics_warned = now;
    }

    /// The link records here: a record is written when a link comes up and removed when it
    /// goes (one whose link is gone is what a `volt link down` cut short left).
    pub(super) fn record_files(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(Paths::new(&self.root).links_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// At start and after a lost lease: claim again the names of the workloads that run here
    /// (their unit is active, as systemd says, or a link of theirs is up) and the addresses
    /// of their links that are up (from the link records). Claims still held are held again.
    pub(super) fn reclaim(&mut self) {
        let mut found = super::conflicts::Conflicts::new();
        let set = ConfigSet::load(&self.root);
        let plan = Plan::build(&set);
        let paths = Paths::new(&self.root);
        // A workload without NICs has no link record: its unit says that it runs.
        let patterns = super::orphans::workload_unit_patterns();
        let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let units: HashSet<String> = match crate::sd::system_bus()
            .and_then(|c| crate::sd::units::running_units(&c, &patterns))
        {
            Ok(u) => u.into_iter().collect(),
            Err(e) => {
                log::warn!(
                    "cannot ask systemd which workloads run, so only those with a link up claim their names again: {}",
                    crate::error_chain(&e)
                );
                HashSet::new()
            }
        };
        let mut claimed: HashSet<String> = HashSet::new();
        for w in &plan.workloads {
            let records: Vec<(&crate::plan::Attachment, serde_json::Value)> = w
                .attachments
                .iter()
                .filter_map(|a| {
                    let text = std::fs::read_to_string(paths.link_record(&a.link)).ok()?;
                    Some((a, serde_json::from_str(&text).unwrap_or_default()))
                })
                .collect();
            if records.is_empty() && !units.contains(&w.unit) {
                continue;
            }
            let name = Retry::Name {
                name: w.name.clone(),
                kind: w.kind.as_str().to_string(),
            };
            self.claim_or_note(name, &mut found);
            claimed.insert(w.unit.clone());
            for (a, rec) in records {
                // A DHCP container's address is its record's `dhcp` (net-up's), not `ipv4`.
                let field = |k: &str| {
                    rec.get(k)
                        .and_then(|v| v.as_str())
                        .and_then(|s| s.split('/').next())
                        .and_then(|s| s.parse::<Ipv4Addr>().ok())
                };
                let ip = field("ipv4").or_else(|| field("dhcp"));
                let mac = rec
                    .get("mac")
                    .and_then(|v| v.as_str())
                    .and_then(|m| m.parse().ok());
                let net = a.network.as_deref().and_then(|n| set.networks.by_name(n));
                if let (Some(ip), Some(net)) = (ip, net.filter(|n| self.cluster.shares(&n.name))) {
                    let owner = match w.kind {
                        crate::plan::Kind::Vm => crate::net::ipam::Owner::vm(&w.name, &a.nic),
                        crate::plan::Kind::Container => {
                            crate::net::ipam::Owner::container(&w.name, &a.nic)
                        }
                    };
                    // A pool lease stays one: only a static or reserved address is fixed.
                    let fixed = a.addressing.known().is_some();
                    let addr = Retry::Addr {
                        net: Box::new(net.clone()),
                        owner: owner.clone(),
                        ip,
                        fixed,
                        mac,
                    };
                    if self.claim_or_note(addr, &mut found) {
                        log::info!("claimed {ip} for {owner} again");
                    }
                }
            }
        }
        // Units that run on the units the generator kept, their file broken or gone: their
        // names are held all the same.
        for unit in units.iter().filter(|u| !claimed.contains(*u)) {
            let Some((kind, name)) = names::workload_of_unit(unit) else {
                continue;
            };
            let retry = Retry::Name {
                name: name.clone(),
                kind: kind.to_string(),
            };
            if self.claim_or_note(retry, &mut found) {
                log::info!("claimed {name} again (its {kind} unit runs without a valid file)")
            }
        }
        self.set_conflicts(found);
    }
}

/// Make networkd read the bridge's new drop-in: Reload, then reconfigure the bridge. Reload
/// alone re-applies the bridge's `.network`, and networkd 252 then fails it on its own
/// `IPMasquerade=` ("Could not enable IP masquerading: File exists"), dropping its addresses;
/// a reconfigure afterwards brings it back. (The daemon puts its own address, neighbours
/// and routes back on its next pass.)
pub(super) fn reconfigure_bridge(bridge: &str) {
    match crate::net::networkd::reload() {
        Ok(()) => {}
        Err(crate::net::networkd::NetworkdError::NotRunning) => return,
        Err(e) => log::warn!("networkd reload: {}", crate::error_chain(&e)),
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    networkctl_reconfigure(bridge);
}

/// `networkctl reconfigure BRIDGE`.
pub(super) fn networkctl_reconfigure(bridge: &str) {
    match std::process::Command::new("networkctl")
        .args(["reconfigure", bridge])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => log::warn!(
            "networkctl reconfigure {bridge}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => log::warn!("cannot run networkctl: {e}"),
    }
}
