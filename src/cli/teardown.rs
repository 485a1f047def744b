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
use crate::net::manager::{LeftBridge, LeftBridges, Manager};
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
    let others = |bridge: &str| defined_elsewhere(root, bridge);
    let policy = LeftBridges {
        left_dir: &left,
        in_use: &[],
        defined_elsewhere: &others,
    };
    for bridge in leftovers {
        match mgr.net_down_leftovers(&bridge, &policy) {
            Ok(done) => {
                for (bridge, why) in &done.kept {
                    println!("bridge {bridge} stays: {why}");
                }
                if !done.removed.is_empty() {
                    println!("{bridge}: removed {}", done.removed.join(" and "))
                }
            }
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
        match mgr.delete_left_bridge(&bridge, &others) {
            Ok(LeftBridge::Deleted) => println!("deleted bridge {bridge}"),
            Ok(LeftBridge::Absent) => {}
            Ok(LeftBridge::Kept(why)) => println!("bridge {bridge} stays: {why}"),
            Err(e) => fail(format!("bridge {bridge}"), &crate::error_chain(&e)),
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

/// A `.netdev` outside networkd's runtime directory whose `Name=` is `bridge`: a bridge the
/// admin (or another package) defines too, which `volt net down` leaves alone.
pub(super) fn defined_elsewhere(root: &Path, bridge: &str) -> Option<PathBuf> {
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
