//! `volt cluster run` (volt-cluster.service, Type=notify): register this host under a lease
//! and keep it alive, then keep each shared bridge's VXLAN port in line with the store:
//! forwarding entries, host routes, the port filter. A watch on `/volt/` triggers a
//! reconcile, and a resync runs every few seconds anyway (level-triggered: a missed event
//! only delays). When the store cannot be read (no quorum), nothing is torn down: running
//! workloads keep their traffic on the last state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::leftovers::{remove_stale_ports, remove_unshared, Kept};
use super::overlay::{bridge_mac, desired, dropins, fdb_changes, mac_dropin, vxlan_name, Local};
use super::shared::Shared;
use super::store;
use super::threads::{keepalive, signals, watch};
use super::{Cluster, ClusterError};
use crate::config::{ClusterConfig, ConfigSet, NetworkLookup};
use crate::net::netlink::Netlink;
use crate::net::overlay::{self as mech, PortFilter, VxlanParams};
use crate::plan::Paths;

pub(super) const RESYNC: Duration = Duration::from_secs(5);

pub(super) enum Msg {
    Changed,
    LeaseLost,
    Stop,
}

pub(super) fn setup(what: impl Into<String>) -> ClusterError {
    ClusterError::Setup { what: what.into() }
}

pub(super) fn nl_err(
    what: &str,
) -> impl FnOnce(crate::net::netlink::NetlinkError) -> ClusterError + '_ {
    move |e| setup(format!("{what}: {}", crate::error_chain(&e)))
}

pub(super) struct Daemon {
    pub(super) cluster: Cluster,
    pub(super) root: std::path::PathBuf,
    pub(super) lease: i64,
    pub(super) underlay_index: u32,
    pub(super) shared: Vec<Shared>,
    pub(super) last_filter: Option<Vec<PortFilter>>,
    pub(super) store_ok: bool,
    /// What the store said that was left out, as last logged (logged again only when it
    /// changes: the daemon reconciles every few seconds).
    pub(super) rejected: BTreeSet<String>,
    /// This host's record was found gone from the store (its lease alive): written again,
    /// and said once until it is back.
    pub(super) record_gone: Option<String>,
    /// What runs here while another host holds its claim, and what of it the store has.
    pub(super) conflicts: super::conflicts::Conflicts,
    pub(super) conflicts_written: Option<Vec<store::ConflictRecord>>,
    /// This host's static addresses inside another host's DHCP block, as last warned of.
    pub(super) statics_warned: BTreeSet<String>,
    /// This host's claims that no workload here backs, until they are released.
    pub(super) orphans: super::orphans::Orphans,
}

/// Run the daemon until SIGTERM; `notify` gets sd_notify states.
pub fn run(root: &Path, notify: &dyn Fn(bool, &str)) -> Result<(), ClusterError> {
    let set = ConfigSet::load(root);
    // The file's own errors first: they say why it is not taken.
    for e in set
        .errors
        .iter()
        .filter(|e| e.file().ends_with("cluster.toml"))
    {
        log::error!("{}", e.report());
    }
    let Some(c) = set.cluster.clone() else {
        // Ports an earlier run left (the file since removed or broken) would stay on their
        // bridges, unmaintained: they go, with their filter.
        let left = Netlink::new().map_err(nl_err("rtnetlink")).and_then(|nl| {
            let ports = remove_stale_ports(&nl, &[])?;
            Ok(ports + remove_unshared(&nl, root, &BTreeMap::new()))
        });
        match left {
            Ok(0) => {}
            Ok(_) => {
                if let Err(e) = mech::remove_filter() {
                    log::warn!("{}", crate::error_chain(&e));
                }
            }
            Err(e) => log::warn!("{}", crate::error_chain(&e)),
        }
        return Err(setup(format!(
            "/{} does not exist or is invalid (above; volt validate says the same): this host is not in a cluster",
            crate::config::CLUSTER_FILE
        )));
    };
    for w in c.warnings() {
        log::warn!("{w}");
    }
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    signals(tx.clone(), stop.clone());
    let nl = Netlink::new().map_err(nl_err("rtnetlink"))?;
    let (ul_name, ul_index, ul_mtu) = mech::link_with_address(&nl, c.underlay)
        .map_err(nl_err("cannot list addresses"))?
        .ok_or_else(|| {
            setup(format!(
                "no interface has the underlay address {} ({})",
                c.underlay,
                c.path.display()
            ))
        })?;
    if ul_mtu < c.underlay_mtu {
        return Err(setup(format!(
            "the underlay {ul_name} has MTU {ul_mtu}, but {} says underlay_mtu = {}: the overlay's {} would not fit; lower underlay_mtu",
            c.path.display(),
            c.underlay_mtu,
            c.overlay_mtu()
        )));
    }
    let mut shared = Vec::new();
    for cn in &c.networks {
        let Some(net) = set.networks.by_name(&cn.name) else {
            continue;
        };
        shared.push(Shared {
            net: net.clone(),
            vni: cn.vni,
            vx: vxlan_name(cn.vni),
            mac: bridge_mac(&c.host, &net.bridge),
            address: None,
        });
    }
    // Before any filter is installed: it has chains only for the ports wanted now.
    let wanted: Vec<String> = shared.iter().map(|s| s.vx.clone()).collect();
    remove_stale_ports(&nl, &wanted)?;
    let mut d = Daemon {
        cluster: Cluster::new(&c)?,
        root: root.to_path_buf(),
        lease: 0,
        underlay_index: ul_index,
        shared,
        last_filter: None,
        store_ok: true,
        rejected: BTreeSet::new(),
        record_gone: None,
        conflicts: Default::default(),
        conflicts_written: None,
        statics_warned: BTreeSet::new(),
        orphans: Default::default(),
    };
    d.refuse_disagreement()?;
    d.register()?;
    // A start that fails halfway takes back what it made (ports, filter, addresses) and
    // ends the lease it took, as a stop does.
    let guard = super::overlay::workload_guard(&set.networks, &c);
    if let Err(e) = d.start(&nl, &c, &guard) {
        log::error!("{}; undoing what this start made", crate::error_chain(&e));
        d.leave(&nl);
        return Err(e);
    }
    // Workloads that run here keep their claims: after a restart within the TTL the live
    // lease was adopted and this finds them held; after a crash that outlived it (or a lease
    // another daemon revoked) they are claimed anew.
    // What an earlier run left for networks this host no longer shares.
    let now = d
        .shared
        .iter()
        .map(|s| {
            let kept = Kept {
                address: s.address,
                dhcp: s.net.volt_serves_dhcp(),
            };
            (s.net.bridge.clone(), kept)
        })
        .collect();
    remove_unshared(&nl, root, &now);
    d.release_unshared();
    d.reclaim();
    d.reconcile(&nl);
    log::info!(
        "host {} is in the cluster (lease {:x}, TTL {} s), underlay {} on {ul_name}, overlay MTU {}",
        c.host,
        d.lease,
        c.lease_ttl,
        c.underlay,
        c.overlay_mtu()
    );
    notify(
        true,
        &format!("host {} in the cluster{}", c.host, d.conflict_status()),
    );
    // Keeps this host's lease alive (again after it was lost and registered anew).
    let ka_tx = tx.clone();
    let keep_lease = |d: &Daemon| {
        keepalive(
            d.cluster.clone(),
            d.lease,
            c.lease_ttl,
            ka_tx.clone(),
            stop.clone(),
        );
    };
    keep_lease(&d);
    watch(d.cluster.clone(), tx, stop.clone());
    // Registering again failed (the store just recovering, say): tried on every pass until it
    // works, since the keep-alive thread reports a lost lease only once.
    let mut unregistered = false;
    let mut last_failure = String::new();
    loop {
        let msg = rx.recv_timeout(RESYNC);
        let mut lost = matches!(msg, Ok(Msg::LeaseLost));
        let mut stopping = matches!(msg, Ok(Msg::Stop));
        while let Ok(m) = rx.try_recv() {
            lost |= matches!(m, Msg::LeaseLost);
            stopping |= matches!(m, Msg::Stop);
        }
        if stopping || stop.load(Ordering::SeqCst) {
            break;
        }
        if lost {
            log::error!("this host's lease expired: its claims are gone; registering again and claiming its running workloads anew");
        }
        if lost || unregistered {
            if let Err(e) = d.register().and_then(|_| d.publish()) {
                let text = crate::error_chain(&e);
                if text != last_failure {
                    log::error!("{text}; trying again every {} s", RESYNC.as_secs());
                    last_failure = text;
                }
                unregistered = true;
                continue;
            }
            if unregistered {
                log::info!("this host is registered in the cluster again");
            }
            unregistered = false;
            last_failure.clear();
            d.reclaim();
            keep_lease(&d);
        } else {
            d.retry_conflicts();
        }
        let peers = d.reconcile(&nl);
        notify(
            false,
            &format!("host {}: {peers}{}", c.host, d.conflict_status()),
        );
    }
    log::info!("stopping: leaving the cluster");
    d.leave(&nl);
    Ok(())
}

impl Daemon {
    pub(super) fn config(&self) -> &ClusterConfig {
        &self.cluster.config
    }

    /// Workloads are kept off the VXLAN and etcd ports (`guard`). The VXLAN ports come up
    /// behind their filter, closed (no remote pairs) until the store
    /// says who is where; then the host record with this host's addresses. A filter that
    /// cannot be installed stops the start: an unfiltered port would let any underlay source
    /// onto the bridge (rogue DHCP, the gateway's ARP).
    fn start(
        &mut self,
        nl: &Netlink,
        c: &ClusterConfig,
        guard: &mech::Guard,
    ) -> Result<(), ClusterError> {
        // Before the ports: a workload's datagram to a peer's VXLAN port would leave as this
        // host's (masqueraded), and the peer would take the frame inside.
        mech::apply_guard(guard).map_err(|e| {
            setup(format!(
                "the guard on the VXLAN and etcd ports: {}",
                crate::error_chain(&e)
            ))
        })?;
        let closed: Vec<PortFilter> = self
            .shared
            .iter()
            .map(|s| s.filter(c.vxlan_port, Vec::new(), &BTreeSet::new()))
            .collect();
        mech::apply_filter(&closed).map_err(|e| {
            setup(format!(
                "the VXLAN ports' filter: {}",
                crate::error_chain(&e)
            ))
        })?;
        self.last_filter = Some(closed);
        self.ports(nl, c)?;
        self.publish()?;
        // This host's address on each bridge, with the overlay's marker (one an earlier
        // version added without it gets it).
        for s in &self.shared {
            if let Some(ip) = s.address {
                mech::add_host_address(nl, &s.net.bridge, ip)
                    .map_err(nl_err("this host's address on the bridge"))?;
            }
        }
        Ok(())
    }

    /// Each shared bridge (waiting for networkd, else created), its MAC and MTU, its VXLAN
    /// port.
    fn ports(&self, nl: &Netlink, c: &ClusterConfig) -> Result<(), ClusterError> {
        for s in &self.shared {
            let b = &s.net.bridge;
            let start = std::time::Instant::now();
            while crate::net::link::index(b).is_none() && start.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            if crate::net::link::index(b).is_none() {
                let created =
                    crate::net::manager::Manager::new(Paths::new(&self.root).runtime_dir())
                        .ensure_bridge(&s.net)
                        .map_err(|e| setup(format!("bridge {b}: {}", crate::error_chain(&e))))?;
                if created {
                    log::info!("created bridge {b} directly");
                }
            }
            // networkd gives every host's bridge the packaged MAC: this host's own, for
            // networkd too (a drop-in), and on the link now.
            let dropin = Paths::new(&self.root).networkd_dir().join(dropins(b).0);
            if let Err(e) = crate::fsutil::write_atomic_if_changed(&dropin, &mac_dropin(b, s.mac)) {
                log::warn!("{}", crate::error_chain(&e));
            }
            s.bridge_identity(nl, self.config().overlay_mtu());
            let p = VxlanParams {
                name: s.vx.clone(),
                vni: s.vni,
                local: c.underlay,
                port: c.vxlan_port,
                dev: self.underlay_index,
                mtu: c.overlay_mtu(),
            };
            if mech::ensure_vxlan(nl, &p, b).map_err(nl_err("VXLAN port"))? {
                log::info!(
                    "created {} (VNI {}) on {b}, MTU {}",
                    s.vx,
                    s.vni,
                    c.overlay_mtu()
                );
            }
        }
        Ok(())
    }

    /// Bring every port in line with the store; returns a summary for STATUS=.
    fn reconcile(&mut self, nl: &Netlink) -> String {
        let snap = match store::snapshot(&self.cluster.etcd) {
            Ok(s) => {
                if !self.store_ok {
                    log::info!("the cluster store answers again");
                }
                self.store_ok = true;
                s
            }
            Err(e) => {
                if self.store_ok {
                    log::error!("{}; keeping the overlay as it is", crate::error_chain(&e));
                }
                self.store_ok = false;
                return "store unreachable; overlay kept as it was".into();
            }
        };
        let me = self.cluster.host().to_string();
        if snap.host(&me).is_none() {
            self.record_again();
        }
        let mut filters = Vec::new();
        let mut summary = Vec::new();
        let mut rejected = BTreeSet::new();
        for s in &self.shared {
            s.bridge_identity(nl, self.config().overlay_mtu());
            let local = Local {
                me: &me,
                underlay: self.config().underlay,
                vxlan_port: self.config().vxlan_port,
                vni: s.vni,
                net: &s.net,
                mtu: self.workload_mtu(s),
            };
            let mut want = desired(&snap, &local);
            rejected.append(&mut want.rejected);
            let fdb_now = mech::fdb_entries(nl, &s.vx).unwrap_or_default();
            let (add, del) = fdb_changes(&fdb_now, &want.fdb);
            for e in &del {
                match mech::fdb_del(nl, &s.vx, e) {
                    Ok(()) => log::info!("{}: removed {} -> {}", s.vx, e.mac, e.dst),
                    Err(err) => log::warn!("{}", crate::error_chain(&err)),
                }
            }
            for e in &add {
                match mech::fdb_add(nl, &s.vx, e) {
                    Ok(()) => log::info!("{}: {} -> {}", s.vx, e.mac, e.dst),
                    Err(err) => log::warn!("{}", crate::error_chain(&err)),
                }
            }
            // Learned entries towards hosts that are no peers now (gone, or refused).
            let peers: BTreeSet<_> = want.fdb.iter().map(|e| e.dst).collect();
            let learned = mech::learned_fdb_entries(nl, &s.vx).unwrap_or_default();
            for e in learned.iter().filter(|e| !peers.contains(&e.dst)) {
                match mech::fdb_del(nl, &s.vx, e) {
                    Ok(()) => log::debug!("{}: forgot learned {} -> {}", s.vx, e.mac, e.dst),
                    Err(err) => log::debug!("{}", crate::error_chain(&err)),
                }
            }
            // The host never ARPs for remote addresses (its ARP would carry the gateway's
            // address, which stays home): permanent neighbour entries from the store.
            let neigh_now = mech::neighbours(nl, &s.net.bridge).unwrap_or_default();
            for (ip, _) in neigh_now
                .iter()
                .filter(|(ip, mac)| s.net.subnet.contains(ip) && !want.pairs.contains(&(*mac, *ip)))
            {
                if let Err(e) = mech::neighbour_del(nl, &s.net.bridge, *ip) {
                    log::warn!("{}", crate::error_chain(&e));
                }
            }
            for (mac, ip) in &want.pairs {
                if !neigh_now.contains(&(*ip, *mac)) {
                    if let Err(e) = mech::neighbour_set(nl, &s.net.bridge, *ip, *mac) {
                        log::warn!("{}", crate::error_chain(&e));
                    }
                }
            }
            if let Some(src) = s.address {
                let has = nl
                    .ipv4_addrs(&s.net.bridge)
                    .is_ok_and(|a| a.contains(&(src, 32)));
                if !has {
                    if let Err(e) = mech::add_host_address(nl, &s.net.bridge, src) {
                        log::warn!("{}", crate::error_chain(&e));
                    }
                }
                let have: BTreeSet<Ipv4Addr> = mech::routes(nl, &s.net.bridge)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(d, _)| d)
                    .collect();
                for ip in have.difference(&want.routes) {
                    if let Err(e) = mech::set_route(nl, &s.net.bridge, *ip, src, false) {
                        log::warn!("{}", crate::error_chain(&e));
                    }
                }
                for ip in want.routes.difference(&have) {
                    if let Err(e) = mech::set_route(nl, &s.net.bridge, *ip, src, true) {
                        log::warn!("{}", crate::error_chain(&e));
                    }
                }
            }
            summary.push(format!(
                "{}: {} peer(s), {} remote address(es)",
                s.net.name,
                want.peers.len(),
                want.pairs.len()
            ));
            filters.push(s.filter(
                self.config().vxlan_port,
                want.pairs.into_iter().collect(),
                &want.fdb,
            ));
        }
        self.warn_statics_in_foreign_blocks(&snap);
        self.release_unbacked(&snap);
        for r in rejected.difference(&self.rejected) {
            log::warn!("ignoring what the cluster store says of {r}");
        }
        self.rejected = rejected;
        if self.last_filter.as_ref() != Some(&filters) {
            match mech::apply_filter(&filters) {
                Ok(()) => self.last_filter = Some(filters),
                Err(e) => log::error!("{}", crate::error_chain(&e)),
            }
        }
        summary.join("; ")
    }

    /// Leave: end the lease when no workload runs here (every claim of this host goes at
    /// once), remove the VXLAN ports, the host addresses (their routes go with them) and the
    /// filter; the DHCP drop-ins only with the lease.
    fn leave(&self, nl: &Netlink) {
        // The lease carries the claims of the workloads running here: ended now, another host
        // could start the same VM on the same disk or take its address while this daemon
        // restarts (`systemctl restart volt-cluster`, the way to apply a cluster.toml edit).
        // So it is ended only when nothing runs; else it lapses after the TTL unless the
        // daemon comes back and adopts it.
        let kept = self.what_runs_here();
        match &kept {
            Some(what) => log::info!(
                "keeping this host's lease: {what}; it lapses in {} s unless volt-cluster comes back",
                self.config().lease_ttl
            ),
            None => {
                if let Err(e) = self.cluster.etcd.revoke(self.lease) {
                    log::warn!(
                        "cannot end the lease (it expires by itself): {}",
                        crate::error_chain(&e)
                    );
                }
            }
        }
        for s in &self.shared {
            if let Err(e) = nl.delete(&s.vx) {
                log::warn!("{}", crate::error_chain(&e));
            }
            for (ip, _) in mech::neighbours(nl, &s.net.bridge).unwrap_or_default() {
                if s.net.subnet.contains(&ip) {
                    let _ = mech::neighbour_del(nl, &s.net.bridge, ip);
                }
            }
            if let Some(ip) = s.address {
                if let Err(e) = mech::del_ipv4(nl, &s.net.bridge, ip, 32) {
                    log::warn!("{}", crate::error_chain(&e));
                }
            }
        }
        // The DHCP blocks are on the lease too: while it is kept, networkd serves this host's
        // block only, or it would hand out the whole container range, other hosts' blocks
        // included, until the daemon is back.
        for s in self.shared.iter().filter(|_| kept.is_none()) {
            if std::fs::remove_file(self.dhcp_dropin_path(s)).is_ok() {
                super::membership::reconfigure_bridge(&s.net.bridge);
            }
        }
        if let Err(e) = mech::remove_filter() {
            log::warn!("{}", crate::error_chain(&e));
        }
    }
}
