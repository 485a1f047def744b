//! `volt net down --all`: everything Volt made on the host's network, taken down once no
//! workload's link is up (the package's removal runs it after stopping the workloads):
//! every network's NAT rules and the bridges Volt created, the bridges of networks whose
//! files are broken or gone, the networkd runtime files the generator rendered (bridges of
//! network files, DHCP static leases) and the bridges networkd made from them (networkd never
//! deletes a link), the VXLAN ports and filter of a cluster daemon that is not running, and the
//! nftables tables Volt keeps. A bridge with ports, or one another networkd file defines, is
//! not Volt's alone and stays.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::Outcome;
use crate::config::ConfigSet;
use crate::net::manager::Manager;
use crate::net::netlink::Netlink;
use crate::net::nft::NftError;
use crate::plan::{names, Paths};

/// The nftables tables of Volt's links and networks: NAT and port maps (`ip volt`), the
/// links' spoofing filters (`bridge volt`).
const TABLES: [(&str, &str); 2] = [("ip", crate::net::nat::TABLE), ("bridge", "volt")];

/// Where networkd reads `.netdev` files besides its runtime directory: one there naming a
/// bridge makes it the admin's (or another package's) too.
const NETDEV_DIRS: [&str; 4] = [
    "etc/systemd/network",
    "usr/lib/systemd/network",
    "lib/systemd/network",
    "usr/local/lib/systemd/network",
];

pub fn down_all(root: &Path) -> Result<Outcome> {
    let paths = Paths::new(root);
    let set = ConfigSet::load(root);
    let mgr = Manager::new(paths.runtime_dir());
    // Before looking: a link owner refreshing NAT waits for this, and sees the links gone.
    let _lock = mgr.lock_nat()?;
    let (up, stale) = link_records(&paths);
    if !up.is_empty() {
        bail!(
            "links are up ({}): stop the VMs and containers first (`systemctl stop 'volt-vm@*' 'volt-container@*'`)",
            up.join(", ")
        );
    }
    for link in &stale {
        eprintln!("volt: {link} is recorded as up but is gone; taking the network down anyway");
    }
    let cluster_runs = unit_active("volt-cluster.service");
    let mut failed = false;
    let mut fail = |what: String, e: &dyn std::fmt::Display| {
        eprintln!("volt: {what}: {e}");
        failed = true;
    };
    for net in &set.networks.list {
        match mgr.net_down(net) {
            Ok(()) => println!("{}: down", net.name),
            Err(e) => fail(net.name.clone(), &crate::error_chain(&e)),
        }
    }
    // Bridges Volt made, or networkd made from files Volt rendered, of networks whose files
    // are broken or gone now.
    let left = paths.left_bridges_dir();
    let mut leftovers: Vec<String> = mgr
        .bridge_markers(&left)
        .into_iter()
        .map(|m| m.bridge)
        .collect();
    leftovers.dedup();
    for bridge in leftovers {
        let kept = leftovers_kept(root, &mgr, &bridge, &[]);
        if let Some((_, why)) = kept.first() {
            println!("bridge {bridge} stays: {why}");
            continue;
        }
        match mgr.net_down_leftovers(&bridge, &[], &left) {
            Ok(removed) if !removed.is_empty() => {
                println!("{bridge}: removed {}", removed.join(" and "))
            }
            Ok(_) => {}
            Err(e) => fail(format!("bridge {bridge}"), &crate::error_chain(&e)),
        }
    }
    // The generator's networkd files, then networkd told, then the bridges it made.
    let (removed, bridges) = remove_rendered(&paths.networkd_dir(), &mut fail);
    if removed > 0 {
        println!("removed {removed} networkd file(s) the generator wrote");
        if let Err(e) = crate::net::networkd::reload() {
            log::info!("networkd not reloaded: {}", crate::error_chain(&e));
        }
    }
    for bridge in bridges {
        match delete_bridge(root, &bridge) {
            Ok(Kept::Deleted) => println!("deleted bridge {bridge}"),
            Ok(Kept::Absent) => {}
            Ok(Kept::Because(why)) => println!("bridge {bridge} stays: {why}"),
            Err(e) => fail(format!("bridge {bridge}"), &e),
        }
    }
    if cluster_runs {
        println!(
            "volt-cluster.service runs: its VXLAN ports and filter stay (stop it to remove them)"
        );
    } else {
        cluster_leftovers(&mut fail);
    }
    for (family, table) in TABLES {
        delete_table(family, table, &mut fail);
    }
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

/// The links whose owners recorded them as up: those that are there (up), and those whose
/// link is gone (a record a failed `volt link down` left).
fn link_records(paths: &Paths) -> (Vec<String>, Vec<String>) {
    let mut names: Vec<String> = std::fs::read_dir(paths.links_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            name.strip_suffix(".json")
                .filter(|n| !n.starts_with('.'))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    let nl = Netlink::new().ok();
    names.into_iter().partition(|link| {
        let record = crate::attach::LinkRecord::load(paths, link).ok().flatten();
        match (record.and_then(|r| r.netns), &nl) {
            // A link in an isolated namespace is up while its namespace is there.
            (Some(ns), _) => Path::new(crate::sys::netns::NETNS_DIR).join(ns).exists(),
            (None, Some(nl)) => nl.link(link).ok().flatten().is_some(),
            // Cannot look: up.
            (None, None) => true,
        }
    })
}

/// Whether systemd says `unit` is active (false when it cannot be asked).
fn unit_active(unit: &str) -> bool {
    crate::sd::system_bus()
        .ok()
        .and_then(|c| crate::sd::units::state(&c, unit).ok())
        .is_some_and(|s| s.is_active())
}

/// Remove the networkd files in `dir` that carry the generator's header (its static-lease
/// drop-ins too); returns how many, and the bridges their `.netdev`s defined.
fn remove_rendered(
    dir: &Path,
    fail: &mut dyn FnMut(String, &dyn std::fmt::Display),
) -> (usize, Vec<String>) {
    let owned = match crate::generator::sweep::owned_files(dir) {
        Ok(f) => f,
        Err(e) => {
            fail(format!("list {}", dir.display()), &e);
            return (0, Vec::new());
        }
    };
    let (mut removed, mut bridges) = (0, Vec::new());
    for (p, text) in owned {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some((bridge, _)) = names::left_bridge(name, &text) {
            bridges.push(bridge);
        }
        match crate::generator::sweep::remove_owned(&p) {
            Ok(()) => removed += 1,
            Err(e) => fail(format!("remove {}", p.display()), &e),
        }
    }
    (removed, bridges)
}

/// What became of a bridge.
enum Kept {
    Deleted,
    Absent,
    Because(String),
}

/// Delete `name` if it is a bridge of exactly that name (another kind of link is not
/// Volt's), nothing is on it, and no networkd file but Volt's defines it.
fn delete_bridge(root: &Path, name: &str) -> Result<Kept, crate::net::netlink::NetlinkError> {
    let nl = Netlink::new()?;
    let Some(l) = nl.link(name)? else {
        return Ok(Kept::Absent);
    };
    if !l.is_bridge_named(name) {
        return Ok(Kept::Absent);
    }
    if let Some(why) = why_kept(root, &nl, &l)? {
        return Ok(Kept::Because(why));
    }
    Ok(if nl.delete(name)? {
        Kept::Deleted
    } else {
        Kept::Absent
    })
}

/// Why bridge `l` must stay though Volt's file for it is gone: links on it (an uplink of the
/// admin's, or a workload's), or a networkd file of the admin's that defines it too.
fn why_kept(
    root: &Path,
    nl: &Netlink,
    l: &crate::net::netlink::Link,
) -> Result<Option<String>, crate::net::netlink::NetlinkError> {
    let ports: Vec<String> = nl
        .links()?
        .into_iter()
        .filter(|p| p.master == Some(l.index))
        .map(|p| p.name)
        .collect();
    if !ports.is_empty() {
        return Ok(Some(format!("{} on it", ports.join(", "))));
    }
    Ok(defined_elsewhere(root, &l.name).map(|file| format!("{} defines it too", file.display())))
}

/// The left-behind bridges (see [`Manager::bridge_markers`]) of network or bridge `name` that
/// must stay ([`why_kept`]), with why. A bridge another networkd file defines is not Volt's
/// to remember: its marker goes. Bridges in `in_use` (another network's now) are not
/// leftovers and are passed over.
pub(super) fn leftovers_kept(
    root: &Path,
    mgr: &Manager,
    name: &str,
    in_use: &[&str],
) -> Vec<(String, String)> {
    let Ok(nl) = Netlink::new() else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let left = Paths::new(root).left_bridges_dir();
    for m in mgr.bridge_markers(&left) {
        if (m.bridge != name && m.network != name) || in_use.contains(&m.bridge.as_str()) {
            continue;
        }
        let Ok(Some(l)) = nl.link(&m.bridge) else {
            continue;
        };
        if !l.is_bridge_named(&m.bridge) {
            continue;
        }
        // A bridge that cannot be looked at stays: deleting it could take an uplink along.
        let why = why_kept(root, &nl, &l)
            .unwrap_or_else(|e| Some(format!("its links cannot be listed ({e})")));
        if let Some(why) = why {
            if defined_elsewhere(root, &m.bridge).is_some() {
                if let Err(e) = std::fs::remove_file(&m.path) {
                    log::warn!("cannot remove {}: {e}", m.path.display());
                }
            }
            kept.push((m.bridge, why));
        }
    }
    kept
}

/// A `.netdev` outside networkd's runtime directory whose `Name=` is `bridge`.
fn defined_elsewhere(root: &Path, bridge: &str) -> Option<PathBuf> {
    let want = format!("Name={bridge}");
    NETDEV_DIRS.iter().find_map(|d| {
        std::fs::read_dir(root.join(d))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "netdev"))
            .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l.trim() == want)))
            .map(|p| Path::new("/").join(p.strip_prefix(root).unwrap_or(&p)))
    })
}

/// The VXLAN ports and filter a cluster daemon left when it was killed before it could leave.
fn cluster_leftovers(fail: &mut dyn FnMut(String, &dyn std::fmt::Display)) {
    let ports = Netlink::new().and_then(|nl| {
        let found = crate::net::overlay::vxlan_links(&nl)?;
        let mut gone = Vec::new();
        for name in crate::cluster::stale_ports(&found, &[]) {
            if nl.delete(&name)? {
                gone.push(name);
            }
        }
        Ok(gone)
    });
    match ports {
        Ok(gone) if !gone.is_empty() => println!("removed VXLAN port(s) {}", gone.join(", ")),
        Ok(_) => {}
        Err(e) => fail("VXLAN ports".into(), &crate::error_chain(&e)),
    }
    if let Err(e) = crate::net::overlay::remove_filter() {
        fail("the VXLAN ports' filter".into(), &crate::error_chain(&e));
    }
}

/// Delete nftables table `family` `table`, if it is there.
fn delete_table(family: &str, table: &str, fail: &mut dyn FnMut(String, &dyn std::fmt::Display)) {
    let script = format!("delete table {family} {table}\n");
    match crate::net::nft::run(&[], script.as_bytes()) {
        Ok(()) => println!("removed nftables table {family} {table}"),
        // Not there (never made, or gone with its last network).
        Err(NftError::Refused(s)) if s.contains("No such file or directory") => {}
        Err(e) => fail(
            format!("nftables table {family} {table}"),
            &crate::error_chain(&e),
        ),
    }
}
