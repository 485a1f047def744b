//! A container's veth pair (host end on the bridge, or alone in the container's isolated
//! namespace; the other end for nspawn), and, once nspawn runs, its address inside the
//! container's network namespace and its lease.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{owner_of, Attach, AttachError, LinkRecord};
use crate::config::NetworkLookup;
use crate::net::antispoof::Ipv4Source;
use crate::net::ipam::{Ask, Holding, Owner, Request};
use crate::net::link;
use crate::net::manager::Veth;
use crate::net::netlink::{Netlink, NetlinkError};
use crate::plan::{Addressing, Attachment, Kind, LinkKind, Workload};
use crate::sys::netns;

mod dhcp;

/// How long the host end waits for its bridge (networkd creates it when it starts) before
/// Volt creates it.
const BRIDGE_WAIT: Duration = Duration::from_secs(5);
/// How long `net-up` waits for a DHCP address inside the container (`$VOLT_DHCP_WAIT_SECS`).
const DHCP_WAIT: Duration = Duration::from_secs(20);
/// How long `net-up` waits for nspawn's container process to appear.
const LEADER_WAIT: Duration = Duration::from_secs(5);

fn veth(a: &Attachment) -> Veth {
    let peer = match &a.kind {
        LinkKind::Veth { peer } => peer.clone(),
        _ => String::new(),
    };
    Veth {
        host_end: a.link.clone(),
        container_end: peer,
    }
}

/// The veth pair of a container NIC: kept when whole, else (re)created with the host end on
/// the bridge (or alone in the container's namespace on an isolated network).
pub(super) fn up(at: &Attach, a: &Attachment) -> Result<LinkRecord, AttachError> {
    let v = veth(a);
    let mgr = at.manager();
    let what = a.describe();
    let created = if let Some(ns) = &a.netns {
        mgr.ensure_isolated_veth(&v, &a.altname, ns, Some(a.mac))
            .map_err(AttachError::manager(format!(
                "{what}: veth {} in {ns}",
                v.host_end
            )))?
    } else {
        let bridge = a
            .bridge
            .as_deref()
            .ok_or(AttachError::NoBridge { what: what.clone() })?;
        let rendered = at
            .paths
            .networkd_dir()
            .join(crate::plan::names::bridge_netdev_file_name(bridge));
        if link::index(bridge).is_none() && rendered.exists() {
            // networkd creates the bridge of a network a file defines once it reads the
            // generator's files: a daemon-reload since networkd last loaded them needs a reload.
            match crate::net::networkd::reload() {
                Ok(()) | Err(crate::net::networkd::NetworkdError::NotRunning) => {}
                Err(e) => log::warn!("{what}: {}", crate::error_chain(&e)),
            }
        }
        let start = Instant::now();
        while link::index(bridge).is_none() && start.elapsed() < BRIDGE_WAIT {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(net) = at.plan.networks.by_bridge(bridge) {
            if mgr
                .ensure_bridge(net)
                .map_err(AttachError::manager(format!("{what}: bridge {bridge}")))?
            {
                log::info!("created bridge {bridge} for network {} directly", net.name);
            }
        }
        mgr.ensure_veth(bridge, &v, &a.altname, Some(a.mac))
            .map_err(AttachError::manager(format!(
                "{what}: veth {} on {bridge}",
                v.host_end
            )))?
    };
    // A static address is claimed (in the lease file, or cluster-wide on a shared network)
    // before nspawn runs: refused while another workload holds it.
    if let (Some(known), Some(net)) = (a.addressing.known(), at.network(a)) {
        let book = at.book(&net.name)?;
        let owner = Owner::container(&a.workload, &a.nic);
        book.allocate(Ask {
            mac: Some(a.mac),
            ..Ask::new(net, &owner, Request::Static(known.addr()))
        })
        .map_err(super::book_error(what.clone()))?;
    }
    log::info!(
        "{}: veth pair {} / {} {} for {what} (MAC {}{})",
        a.link,
        v.host_end,
        v.container_end,
        if created { "created" } else { "kept" },
        a.mac,
        a.netns
            .as_deref()
            .map(|ns| format!(", host end alone in {ns}"))
            .or_else(|| a.bridge.as_deref().map(|b| format!(", on {b}")))
            .unwrap_or_default()
    );
    // The container end's MAC (and its static address) are all that may leave the port.
    let source = super::ipv4_source(at, a, a.addressing.known().map(|n| n.addr()));
    super::protect(at, a, a.mac, source)?;
    super::pin(at, a, a.mac)?;
    Ok(LinkRecord {
        link: a.link.clone(),
        kind: Kind::Container.as_str().into(),
        workload: a.workload.clone(),
        nic: a.nic.clone(),
        mac: a.mac.to_string(),
        ipv4: a.addressing.known(),
        gateway: a.gateway,
        netns: a.netns.clone(),
        created_by: "direct".into(),
        dhcp: None,
    })
}

/// Keep a container's DHCP address in its link's record, so a corrupt lease file is rebuilt
/// with it (see [`LinkRecord::dhcp`]).
pub(super) fn remember_dhcp(at: &Attach, link: &str, ip: Ipv4Addr) {
    let saved = match LinkRecord::load(&at.paths, link) {
        Ok(Some(mut r)) if r.dhcp != Some(ip) => {
            r.dhcp = Some(ip);
            r.save(&at.paths)
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = saved {
        log::warn!("{}", crate::error_chain(&e));
    }
}

/// A DHCP address the address book gives to a workload that does not run and got it from
/// the pool (not its configured address): networkd's DHCP server, which keeps no leases across
/// its restarts, may hand it to another container since. That stale lease gives way: in the
/// lease file, or on a network the cluster shares the claim, where this host made it (see
/// [`super::AddressBook::record_displacing`]).
pub(super) fn displaced_a_stale_lease(
    at: &Attach,
    book: &dyn super::AddressBook,
    h: Holding,
    e: &super::book::BookError,
) -> bool {
    if !e.refuses_the_address() {
        return false;
    }
    let up = super::leases::records(&at.paths.links_dir());
    let runs = |o: &Owner| {
        up.iter()
            .any(|r| super::leases::record_owner(r).as_ref() == Some(o))
    };
    match book.record_displacing(h, &runs) {
        Ok((_, holder)) => {
            if let Some(holder) = holder {
                log::info!(
                    "{} has {} from DHCP; the lease of {holder}, which does not run, gave way",
                    h.owner,
                    h.ip
                );
            }
            true
        }
        Err(e) => {
            log::debug!("{}", crate::error_chain(&e));
            false
        }
    }
}

/// The parent PID of `pid` from `/proc/<pid>/stat`.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn netns_id(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// Whether `pid` is PID 1 of its own PID namespace (the last `NSpid` entry is 1): the
/// container's init, not one of nspawn's short-lived helpers.
fn is_container_init(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().map(|x| x == "1"))
        })
        .unwrap_or(false)
}

/// The container's leader: the child of nspawn (`main`) that is PID 1 of its own PID
/// namespace, in another network namespace.
fn find_leader(what: &str, main: u32) -> Result<u32, AttachError> {
    let fail = |message: String| AttachError::Container {
        what: what.into(),
        message,
    };
    let ours = netns_id("self");
    let start = Instant::now();
    loop {
        if !Path::new(&format!("/proc/{main}")).exists() {
            return Err(fail(format!("systemd-nspawn (PID {main}) is gone")));
        }
        let found = std::fs::read_dir("/proc")
            .map_err(|e| fail(format!("cannot list /proc: {e}")))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .find(|pid| {
                ppid(*pid) == Some(main)
                    && is_container_init(*pid)
                    && netns_id(&pid.to_string()) != ours
            });
        if let Some(pid) = found {
            return Ok(pid);
        }
        if start.elapsed() > LEADER_WAIT {
            return Err(fail(format!(
                "systemd-nspawn (PID {main}) has no child in its own network namespace after {LEADER_WAIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn in_container<T: Send + 'static>(
    what: &str,
    leader: u32,
    f: impl FnOnce() -> Result<T, NetlinkError> + Send + 'static,
) -> Result<T, AttachError> {
    let ns = PathBuf::from(format!("/proc/{leader}/ns/net"));
    netns::run_in(&ns, f)
        .map_err(|source| AttachError::Netns {
            what: format!("{what}: cannot enter the container's network namespace"),
            source,
        })?
        .map_err(|source| AttachError::Netlink {
            what: format!("{what}: inside the container"),
            source,
        })
}

/// `volt container net-up` (the unit's ExecStartPost=): inside the network namespace of
/// nspawn's container process (a child of `main`), bring `lo` and each NIC's container end
/// up; for a static address add it and the default route. The address goes into IPAM as the
/// container's lease: a static one at once, a DHCP one once the container's DHCP client has
/// configured it (bounded wait; a warning if it never comes) and, where networkd's DHCP
/// server is the network's, networkd has leased it to the container's MAC ([`dhcp`]).
pub fn net_up(at: &Attach, w: &Workload, main: u32) -> Result<(), AttachError> {
    if w.attachments.is_empty() {
        return Ok(());
    }
    let what = format!("container {}", w.name);
    let leader = find_leader(&what, main)?;
    let dhcp_wait = std::env::var("VOLT_DHCP_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DHCP_WAIT, Duration::from_secs);
    for a in &w.attachments {
        let inside = veth(a).container_end;
        let (l, addr, gw) = (inside.clone(), a.addressing.known(), a.gateway);
        in_container(&what, leader, move || {
            let nl = Netlink::new()?;
            if nl.link("lo")?.is_some_and(|lo| !lo.up) {
                nl.set_up("lo")?;
            }
            nl.set_up(&l)?;
            if let Some(a) = addr {
                nl.add_ipv4(&l, a.addr(), a.prefix_len())?;
                if let Some(g) = gw {
                    nl.set_default_route(&l, g)?;
                }
            }
            Ok(())
        })?;
        let net = at.network(a);
        let owner = owner_of(w, a);
        let book = match net {
            Some(n) => Some(at.book(&n.name)?),
            None => None,
        };
        let record = |ip: Ipv4Addr, fixed: bool| {
            if let (Some(net), Some(book)) = (net, &book) {
                let h = Holding {
                    mac: Some(a.mac),
                    ..Holding::new(net, &owner, ip, fixed)
                };
                if let Err(e) = book.record(h) {
                    if !fixed && displaced_a_stale_lease(at, book.as_ref(), h, &e) {
                        return true;
                    }
                    log::warn!("{what}: lease not recorded: {}", crate::error_chain(&e));
                    return !e.refuses_the_address();
                }
            }
            true
        };
        if let Some(addr) = addr {
            log::info!(
                "{what}: {inside} is up inside with {addr}{}",
                gw.map(|g| format!(", default route via {g}"))
                    .unwrap_or_default()
            );
            // A static address is refused before the container starts (veth up).
            let _ = record(addr.addr(), true);
            continue;
        }
        if a.addressing != Addressing::Dhcp {
            continue;
        }
        log::info!(
            "{what}: {inside} is up inside; waiting up to {dhcp_wait:?} for its DHCP address"
        );
        // Where networkd's DHCP server is the network's (Volt renders it), the address must be
        // one it leased to this container; elsewhere nobody Volt can ask gave it.
        let authority = match a.bridge.as_deref() {
            Some(bridge) if super::volts_dhcp(at, a) => dhcp::Authority::Networkd { bridge },
            _ => dhcp::Authority::Unknown,
        };
        let got = dhcp::wait_for_address(
            &what,
            leader,
            &inside,
            a.mac,
            net.map(|n| n.subnet),
            &authority,
            dhcp_wait,
        )?;
        match got {
            dhcp::Seen::Leased {
                ip,
                prefix,
                by_networkd,
            } => {
                if by_networkd {
                    log::debug!("{what}: networkd's DHCP server leases {ip} to {inside}'s MAC");
                }
                log::info!("{what}: {inside} has {ip}/{prefix} from DHCP");
                // Its port passed DHCP requests only: from now on this address too, unless
                // the address book gives it to another workload (where Volt cannot ask the
                // DHCP server, root in the container may have set it itself; networkd, which
                // forgets its leases when it restarts, may lease an address again).
                if !record(ip, false) {
                    log::error!(
                        "{what}: {ip} is not this container's to use: its port passes DHCP requests only (let its DHCP client configure the address, then restart it)"
                    );
                    continue;
                }
                super::protect(at, a, a.mac, Ipv4Source::Known(ip))?;
                remember_dhcp(at, &a.link, ip);
                // A port map to it can now be made.
                if let Some(net) = net {
                    at.refresh_nat(&net.name, false);
                }
            }
            dhcp::Seen::NotLeased { shown, leased } => {
                let bridge = a.bridge.as_deref().unwrap_or("-");
                log::error!(
                    "{what}: {inside} {}; {} is not this container's to use: its port passes DHCP requests only, and no lease is recorded (let its DHCP client configure the address, then restart it)",
                    dhcp::not_leased(bridge, a.mac, &shown, &leased),
                    shown.first().map(Ipv4Addr::to_string).unwrap_or_default()
                );
            }
            dhcp::Seen::Nothing => log::warn!(
                "{what}: {inside} got no DHCP address within {dhcp_wait:?} (is a DHCP client running inside?); no lease recorded, and its port passes DHCP requests only until the container starts again"
            ),
        }
    }
    Ok(())
}
