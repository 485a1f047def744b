//! Attach: the only policy that brings a workload's host links up or down. It reads the plan
//! and drives the `net` mechanism: networkd (runtime files, D-Bus reload, bounded wait with
//! backoff) or direct creation, isolated namespaces, MAC conflicts on the bridge, anti-spoofing
//! rules, address leases. The link owner units (`volt link run|down`, what `volt-tap@` and
//! `volt-veth@` run) and the container start call it; the VMM never does.
//!
//! What an owner brought up is written to a [`LinkRecord`]; `volt vm run` reads it to give the
//! guest its MAC and address.

mod book;
mod container;
mod leases;
mod nat;
mod record;
mod vm;

use std::net::Ipv4Addr;
use std::path::Path;

pub use book::{book_error, AddressBook, BookError, ClusterBook};
pub use container::net_up as container_net_up;
pub use nat::PortTargets;
pub use record::{LinkRecord, RecordError};

use crate::config::{ConfigError, ConfigSet, MacAddr, Network, NetworkLookup};
use crate::fsutil::FsError;
use crate::net::ipam::{IpamError, Owner};
use crate::net::manager::{LinkParams, ManagerError};
use crate::net::netlink::{Netlink, NetlinkError};
use crate::net::{antispoof, link, monitor, networkd};
use crate::plan::{names, Attachment, Kind, LinkKind, Paths, Plan, Workload};
use crate::sys::netns;
use crate::sys::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no valid configuration has a host link named {link}")]
    Unknown { link: String },
    #[error("{message}")]
    BadName { link: String, message: String },
    #[error("{link} is not a link Volt owns (no workload's NIC uses it and Volt keeps no record of it); refusing to touch it")]
    NotOwned { link: String },
    #[error("{what}: no bridge to attach to")]
    NoBridge { what: String },
    #[error("{what}: a macvtap NIC has no parent interface")]
    NoParent { what: String },
    #[error("{what}")]
    Manager {
        what: String,
        #[source]
        source: Box<ManagerError>,
    },
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{what}")]
    Netns {
        what: String,
        #[source]
        source: NetnsError,
    },
    #[error("cannot lease an address for {what}")]
    Ipam {
        what: String,
        #[source]
        source: Box<IpamError>,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("cannot watch {link}")]
    Monitor {
        link: String,
        #[source]
        source: monitor::MonitorError,
    },
    #[error("{what}")]
    Cluster {
        what: String,
        #[source]
        source: Box<crate::cluster::ClusterError>,
    },
    #[error("{what}: {message}")]
    Container { what: String, message: String },
    #[error("cannot install the anti-spoofing rules of {link}; the workload must not start without them")]
    Antispoof {
        link: String,
        #[source]
        source: antispoof::AntispoofError,
    },
    #[error("{what}")]
    Neigh {
        what: String,
        #[source]
        source: crate::net::neigh::NeighError,
    },
    #[error("{} teardown step(s) of {link} failed: {}", steps.len(), steps.join("; "))]
    Teardown { link: String, steps: Vec<String> },
}

impl AttachError {
    fn manager(what: impl Into<String>) -> impl FnOnce(ManagerError) -> AttachError {
        let what = what.into();
        move |source| AttachError::Manager {
            what,
            source: Box::new(source),
        }
    }
}

/// The configuration under a root, planned, with the paths Volt keeps its state in.
pub struct Attach {
    pub paths: Paths,
    pub set: ConfigSet,
    pub plan: Plan,
}

/// How a link owner's watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// systemd stopped the owner.
    Stopped,
    /// The link was deleted under its workload.
    Deleted,
}

impl Attach {
    /// Load and plan everything under `root`.
    pub fn load(root: &Path) -> Attach {
        let set = ConfigSet::load(root);
        let plan = Plan::build(&set);
        Attach {
            paths: Paths::new(root),
            set,
            plan,
        }
    }

    /// The errors of the workload file that would have owned `link`, for the log.
    pub fn errors(&self) -> &[ConfigError] {
        &self.set.errors
    }

    fn find(&self, link: &str) -> Result<(&Workload, &Attachment), AttachError> {
        check_name(link)?;
        self.plan
            .attachment(link)
            .ok_or_else(|| AttachError::Unknown { link: link.into() })
    }

    fn network(&self, a: &Attachment) -> Option<&Network> {
        a.network
            .as_deref()
            .and_then(|n| self.plan.networks.by_name(n))
    }

    fn manager(&self) -> crate::net::manager::Manager {
        crate::net::manager::Manager::new(self.paths.runtime_dir())
    }

    /// Bring `link` up as the plan says and record what was done.
    pub fn up(&self, link: &str) -> Result<LinkRecord, AttachError> {
        let (w, a) = self.find(link)?;
        self.claim_name(w)?;
        // Leases of workloads (or NICs) that are gone go back to the pool first.
        if let Some(net) = self.network(a) {
            if let Err(e) = self.reconcile_leases(net) {
                log::warn!("{}", crate::error_chain(&e));
            }
        }
        let record = match w.kind {
            Kind::Vm => vm::up(self, w, a),
            Kind::Container => container::up(self, a),
        }
        .and_then(|r| r.save(&self.paths).map(|()| r).map_err(AttachError::from));
        if record.is_ok() {
            if let Some(net) = &a.network {
                self.refresh_nat(net, false);
            }
        }
        if record.is_err() {
            // Fail closed and leave nothing behind: no port without its rules, and no link,
            // rules or claims of a start that failed half-way (an address another workload
            // holds, a record that cannot be written). `down` leaves links it does not own.
            if let Err(d) = self.down(link) {
                log::warn!("{}", crate::error_chain(&d));
            }
        }
        record
    }

    /// Take `link` down: its anti-spoofing rules, networkd files, the link (in the host
    /// namespace or its isolated one, then that namespace), its record. Every step runs.
    /// Needs no valid config (a workload whose file is gone or broken is still torn down),
    /// but refuses a link that Volt does not own.
    pub fn down(&self, link: &str) -> Result<(), AttachError> {
        check_name(link)?;
        let owned = self.plan.attachment(link);
        // A record that cannot be read is still Volt's (only Volt writes there): the link is
        // taken down by what the plan and the link's name say.
        let (record, broken_record) = match LinkRecord::load(&self.paths, link) {
            Ok(r) => (r, false),
            Err(e) => {
                log::warn!("{}", crate::error_chain(&e));
                (None, true)
            }
        };
        let networkd_files: Vec<std::path::PathBuf> = [
            names::netdev_file_name(link),
            names::network_file_name(link),
        ]
        .iter()
        .map(|f| self.paths.networkd_dir().join(f))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| names::is_owned_networkd_path(p, &t)))
        .collect();
        if owned.is_none() && record.is_none() && !broken_record && networkd_files.is_empty() {
            return Err(AttachError::NotOwned { link: link.into() });
        }
        let ns = owned
            .and_then(|(_, a)| a.netns.clone())
            .or_else(|| record.as_ref().and_then(|r| r.netns.clone()));
        let peer = match owned.map(|(_, a)| &a.kind) {
            Some(LinkKind::Veth { peer }) => Some(peer.clone()),
            _ => link.strip_suffix("-h").map(|s| format!("{s}-c")),
        };
        let mut failed = Vec::new();
        if let Err(e) = antispoof::remove(link) {
            failed.push(crate::error_chain(&e));
        }
        let mut removed = false;
        for path in networkd_files {
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) => failed.push(format!("cannot remove {}: {e}", path.display())),
            }
        }
        if removed {
            match networkd::reload() {
                Ok(()) | Err(networkd::NetworkdError::NotRunning) => {}
                Err(e) => log::warn!("{}", crate::error_chain(&e)),
            }
        }
        // networkd never deletes a link whose .netdev is gone: do it ourselves. A veth's
        // container end goes too (it is back in the host namespace when the container stopped).
        let mut links = vec![link.to_string()];
        links.extend(peer.filter(|_| link.starts_with("veth-")));
        for l in &links {
            if let Some(kind) = foreign_kind(l) {
                failed.push(format!(
                    "{l} is a {kind}, not a link Volt creates; left alone"
                ));
                continue;
            }
            match link::delete(l) {
                Ok(true) => log::info!("deleted {l}"),
                Ok(false) => {}
                Err(e) => failed.push(crate::error_chain(&e)),
            }
        }
        if let Some(ns) = ns.filter(|ns| netns::exists(ns)) {
            if let Err(e) = teardown_in_netns(&ns, links) {
                failed.push(crate::error_chain(&e));
            }
        }
        // The claims go before the record: a down cut short in between leaves the record
        // (whose link is gone), which says whose claims these are to the next down of the
        // link, and which the cluster daemon does not take for a link that is up; it gives
        // up claims that nothing backs (a failed release here included) after a while.
        match (owned, &record) {
            (Some((w, a)), _) => self.release_cluster_claims(w, a),
            // Its file is gone or broken: what the record says is all there is to go by.
            (None, Some(r)) => self.release_cluster_claims_of(r),
            (None, None) => {}
        }
        if let Err(e) = LinkRecord::remove(&self.paths, link) {
            failed.push(format!("cannot remove the record of {link}: {e}"));
        }
        match owned {
            Some((_, a)) => {
                if let Some(net) = &a.network {
                    self.refresh_nat(net, true);
                }
            }
            None => self.refresh_every_nat(),
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(AttachError::Teardown {
                link: link.into(),
                steps: failed,
            })
        }
    }

    /// What `volt-tap@<link>.service` runs: [`Attach::up`], then `ready` (sd_notify READY=1),
    /// then watch the link until systemd stops us or the link is deleted under its workload
    /// (its lease is released then, and the owner fails so `BindsTo=` stops the workload).
    pub fn run(&self, link: &str, ready: &dyn Fn(&LinkRecord)) -> Result<Watch, AttachError> {
        let record = self.up(link)?;
        ready(&record);
        let (w, a) = self.find(link)?;
        let watched = link.to_string();
        let wait = move || -> Result<monitor::Ended, AttachError> {
            let mon = |source| AttachError::Monitor {
                link: watched.clone(),
                source,
            };
            match link::index(&watched) {
                Some(i) => monitor::wait(&watched, i).map_err(mon),
                None => Ok(monitor::Ended::Deleted),
            }
        };
        let ended = match &a.netns {
            None => wait()?,
            Some(ns) => netns::run_in(&netns::path_of(ns), wait).map_err(|source| {
                AttachError::Netns {
                    what: format!("cannot enter {ns} to watch {link}"),
                    source,
                }
            })??,
        };
        match ended {
            monitor::Ended::Signal(_) => Ok(Watch::Stopped),
            monitor::Ended::Deleted => {
                log::error!(
                    "{link} was deleted under {} {} (NIC {}); stopping the {}",
                    w.kind.noun(),
                    w.name,
                    a.nic,
                    w.kind.noun()
                );
                if let (Some(net), Kind::Vm) = (&a.network, w.kind) {
                    let owner = Owner::vm(&w.name, &a.nic);
                    let released = self.book(net).and_then(|b| {
                        b.release(net, &owner)
                            .map_err(book_error(format!("cannot release {owner}'s lease")))
                    });
                    match released {
                        Ok(Some(l)) => log::info!("released {} on {net} from {owner}", l.ip),
                        Ok(None) => {}
                        Err(e) => log::warn!("{}", crate::error_chain(&e)),
                    }
                }
                Ok(Watch::Deleted)
            }
        }
    }

    /// [`Attach::release_cluster_claims`] for a link whose workload is no longer in the plan
    /// (its file was removed or broke while it ran): its owner's address on every shared
    /// network (the record does not say which), and its name once none of its other links
    /// has a record.
    fn release_cluster_claims_of(&self, r: &LinkRecord) {
        let (Some(c), Some(owner)) = (self.set.cluster.as_ref(), leases::record_owner(r)) else {
            return;
        };
        for net in &c.networks {
            let released = self.book(&net.name).and_then(|b| {
                b.release(&net.name, &owner)
                    .map_err(book_error(format!("cannot release {owner}'s address")))
            });
            if let Err(e) = released {
                log::warn!("{}", crate::error_chain(&e));
            }
        }
        let others_up = leases::records(&self.paths.links_dir())
            .iter()
            .any(|o| o.link != r.link && o.kind == r.kind && o.workload == r.workload);
        if !others_up {
            self.release_name(&r.workload);
        }
    }

    /// With a cluster: give up the address `a` claimed on a shared network, and `w`'s name
    /// once none of its other links has a record on this host. Failures are logged: the
    /// cluster daemon gives up what no workload here backs (`cluster::orphans`).
    fn release_cluster_claims(&self, w: &Workload, a: &Attachment) {
        let Some(c) = self.set.cluster.as_ref() else {
            return;
        };
        if let Some(net) = a.network.as_deref().filter(|n| c.network(n).is_some()) {
            let owner = owner_of(w, a);
            let r = self.book(net).and_then(|b| {
                b.release(net, &owner)
                    .map_err(book_error(format!("cannot release {owner}'s address")))
            });
            if let Err(e) = r {
                log::warn!("{}", crate::error_chain(&e));
            }
        }
        let others_up = w.attachments.iter().any(|o| {
            o.link != a.link && LinkRecord::load(&self.paths, &o.link).is_ok_and(|r| r.is_some())
        });
        if !others_up {
            self.release_name(&w.name);
        }
    }

    /// Addresses configured (static or reserved) for workloads on `network`, except those of
    /// `except` (its own NIC): a pool allocation must not hand them out.
    pub fn configured_addresses(&self, network: &str, except: Option<&Owner>) -> Vec<Ipv4Addr> {
        self.plan
            .workloads
            .iter()
            .flat_map(|w| w.attachments.iter().map(move |a| (w, a)))
            .filter(|(_, a)| a.network.as_deref() == Some(network))
            .filter(|(w, a)| except.is_none_or(|o| *o != owner_of(w, a)))
            .filter_map(|(_, a)| a.addressing.known().map(|n| n.addr()))
            .collect()
    }
}

/// Link names come from systemd instance names, which can unescape to anything: only what
/// a link name may hold gets near a path or the kernel.
fn check_name(link: &str) -> Result<(), AttachError> {
    crate::config::check_link_name(link).map_err(|message| AttachError::BadName {
        link: link.into(),
        message,
    })
}

/// The kinds of link Volt creates: TAPs, veth pairs, macvtaps.
const OWN_KINDS: [&str; 3] = ["tun", "veth", "macvtap"];

/// What `link` is, in the calling thread's namespace, when it exists and is not a kind Volt
/// creates (a bridge that happens to carry a planned name is never deleted).
fn foreign_kind(link: &str) -> Option<String> {
    let l = crate::net::netlink::Netlink::new()
        .ok()?
        .link(link)
        .ok()??;
    match l.kind {
        Some(k) if OWN_KINDS.contains(&k.as_str()) => None,
        Some(k) => Some(k),
        None => Some("link of no known kind".into()),
    }
}

/// Delete `links` inside the named namespace `ns`, then the namespace when nothing but `lo`
/// is left in it (a VM's NICs on isolated networks share its namespace).
fn teardown_in_netns(ns: &str, links: Vec<String>) -> Result<(), AttachError> {
    let enter = |source| AttachError::Netns {
        what: format!("cannot enter {ns}"),
        source,
    };
    let left = netns::run_in(&netns::path_of(ns), move || {
        let nl = crate::net::netlink::Netlink::new()?;
        for l in &links {
            let ours = nl
                .link(l)?
                .is_some_and(|k| k.kind.is_some_and(|k| OWN_KINDS.contains(&k.as_str())));
            if ours && nl.delete(l)? {
                log::info!("deleted {l} in its isolated namespace");
            }
        }
        Ok::<usize, NetlinkError>(nl.links()?.iter().filter(|l| l.name != "lo").count())
    })
    .map_err(enter)?
    .map_err(|source| AttachError::Netlink {
        what: format!("cannot clean up namespace {ns}"),
        source,
    })?;
    if left == 0 {
        netns::delete(ns).map_err(|source| AttachError::Netns {
            what: format!("cannot delete namespace {ns}"),
            source,
        })?;
        log::info!("deleted namespace {ns}");
    }
    Ok(())
}

/// What `a`'s port may send IPv4 from: its address when known; without one, DHCP requests
/// only where the network's DHCP server is Volt's (until the address is seen), else any
/// address (a DHCP server Volt does not know gives it).
fn ipv4_source(at: &Attach, a: &Attachment, known: Option<Ipv4Addr>) -> antispoof::Ipv4Source {
    match known {
        Some(ip) => antispoof::Ipv4Source::Known(ip),
        None if volts_dhcp(at, a) => antispoof::Ipv4Source::DhcpOnly,
        None => antispoof::Ipv4Source::Any,
    }
}

/// Whether `a`'s network gets its DHCP server from Volt (see [`Network::volt_serves_dhcp`]).
fn volts_dhcp(at: &Attach, a: &Attachment) -> bool {
    at.network(a).is_some_and(Network::volt_serves_dhcp)
}

/// Install the anti-spoofing rules of `a`'s port on its bridge: only `mac`, IPv4 and ARP
/// as `ipv4` says, no DHCP server's answers where the network's DHCP server is Volt's, and
/// broadcast and multicast up to the network's `broadcast_limit`. Nothing for links that are
/// on no bridge (isolated, macvtap).
fn protect(
    at: &Attach,
    a: &Attachment,
    mac: MacAddr,
    ipv4: antispoof::Ipv4Source,
) -> Result<(), AttachError> {
    if a.bridge.is_none() || a.netns.is_some() {
        return Ok(());
    }
    let group_limit = at
        .network(a)
        .map_or_else(antispoof::GroupLimit::default, |n| {
            antispoof::GroupLimit::per_second(n.broadcast_limit)
        });
    let policy = antispoof::PortPolicy {
        ipv4,
        dhcp_server: !volts_dhcp(at, a),
        group_limit,
        ..antispoof::PortPolicy::new(mac, None)
    };
    antispoof::apply(&a.link, &policy).map_err(|source| AttachError::Antispoof {
        link: a.link.clone(),
        source,
    })?;
    log::debug!("{}: anti-spoofing rules installed", a.link);
    Ok(())
}

/// Keep unknown unicast off `a`'s port, now on its bridge: a static forwarding entry for
/// `mac` (the only source its rules let out) and the port's `flood` flag off
/// ([`Netlink::pin_port`]). Another workload's frames to addresses the bridge does not know
/// then no longer reach this one. On a bridge Volt defines, the host's replies that wait for
/// a neighbour are bounded too ([`crate::net::neigh`]: a workload that never answers ARP
/// cannot stop the machine's ICMP). Nothing for links that are on no bridge (isolated,
/// macvtap).
fn pin(at: &Attach, a: &Attachment, mac: MacAddr) -> Result<(), AttachError> {
    let Some(bridge) = a.bridge.as_deref() else {
        return Ok(());
    };
    if a.netns.is_some() || matches!(a.kind, LinkKind::Macvtap { .. }) {
        return Ok(());
    }
    if at.network(a).is_some_and(|n| n.create_bridge) {
        use crate::net::neigh;
        let changed = neigh::bound_unresolved_queues(bridge, neigh::UNRESOLVED_QUEUE_BYTES)
            .map_err(|source| AttachError::Neigh {
                what: format!(
                    "{}: cannot bound the host's neighbour queues on {bridge}",
                    a.link
                ),
                source,
            })?;
        for path in changed {
            log::info!("{path}: {} bytes", neigh::UNRESOLVED_QUEUE_BYTES);
        }
    }
    Netlink::new()
        .and_then(|nl| nl.pin_port(&a.link, mac))
        .map_err(|source| AttachError::Netlink {
            what: format!("{}: cannot keep unknown unicast off the port", a.link),
            source,
        })?;
    log::debug!(
        "{}: static forwarding entry {mac}, no unknown unicast",
        a.link
    );
    Ok(())
}

/// The IPAM owner of an attachment: `vm/<name>/<nic>` or `container/<name>/<nic>`.
pub fn owner_of(w: &Workload, a: &Attachment) -> Owner {
    match w.kind {
        Kind::Vm => Owner::vm(&w.name, &a.nic),
        Kind::Container => Owner::container(&w.name, &a.nic),
    }
}

/// The mechanism-level description of an attachment's host link.
pub fn link_params(a: &Attachment) -> LinkParams {
    LinkParams {
        name: a.link.clone(),
        altname: a.altname.clone(),
        mtu: a.mtu,
        queues: a.queues(),
        mac: a.mac,
    }
}

/// The `volt` user and group, if the user exists (TAPs it may open, device nodes it owns).
pub fn volt_user() -> Option<(u32, Option<u32>)> {
    crate::net::manager::lookup_user(names::VOLT_USER)
}
