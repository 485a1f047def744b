//! `volt net down --all`: everything Volt made on the host's network, taken down once no
//! workload's link is up (the package's removal runs it after stopping the workloads):
//! every network's NAT rules and the bridges Volt created, the networkd runtime files the
//! generator rendered (bridges of network files, DHCP static leases) and the bridges networkd
//! made from them (networkd never deletes a link), and the nftables tables Volt keeps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::Outcome;
use crate::config::ConfigSet;
use crate::net::manager::Manager;
use crate::net::netlink::Netlink;
use crate::plan::{names, Paths};

/// The nftables tables of Volt's links and networks: NAT and port maps (`ip volt`), the
/// links' spoofing filters (`bridge volt`).
const TABLES: [(&str, &str); 2] = [("ip", crate::net::nat::TABLE), ("bridge", "volt")];

pub fn down_all(root: &Path) -> Result<Outcome> {
    let paths = Paths::new(root);
    let up = link_records(&paths.links_dir());
    if !up.is_empty() {
        bail!(
            "links are up ({}): stop the VMs and containers first (`systemctl stop 'volt-vm@*' 'volt-container@*'`)",
            up.join(", ")
        );
    }
    let set = ConfigSet::load(root);
    let mgr = Manager::new(paths.runtime_dir());
    let _lock = mgr.lock_nat()?;
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
    // The generator's networkd files, then networkd told, then the bridges it made.
    let (removed, bridges) = remove_rendered(&paths.networkd_dir(), &mut fail);
    if removed > 0 {
        println!("removed {removed} networkd file(s) the generator wrote");
        if let Err(e) = crate::net::networkd::reload() {
            log::info!("networkd not reloaded: {}", crate::error_chain(&e));
        }
    }
    for bridge in bridges {
        match delete_bridge(&bridge) {
            Ok(true) => println!("deleted bridge {bridge}"),
            Ok(false) => {}
            Err(e) => fail(format!("bridge {bridge}"), &e),
        }
        let _ = std::fs::remove_file(paths.left_bridges_dir().join(&bridge));
    }
    for (family, table) in TABLES {
        match crate::net::nft::run(&[], format!("delete table {family} {table}\n").as_bytes()) {
            Ok(()) => println!("removed nftables table {family} {table}"),
            // Not there (never made, or gone with its last network).
            Err(e) if crate::error_chain(&e).contains("No such file or directory") => {}
            Err(e) => fail(
                format!("nftables table {family} {table}"),
                &crate::error_chain(&e),
            ),
        }
    }
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

/// The links whose owners recorded them as up.
fn link_records(dir: &Path) -> Vec<String> {
    let mut up: Vec<String> = std::fs::read_dir(dir)
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
    up.sort();
    up
}

/// Remove the networkd files in `dir` that carry the generator's header (its static-lease
/// drop-ins too); returns how many, and the bridges their `.netdev`s defined.
fn remove_rendered(
    dir: &Path,
    fail: &mut dyn FnMut(String, &dyn std::fmt::Display),
) -> (usize, Vec<String>) {
    let mut files: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.push(p.join(names::STATIC_LEASES_NAME));
        } else {
            files.push(p);
        }
    }
    files.sort();
    let (mut removed, mut bridges) = (0, Vec::new());
    for p in files {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        if !names::is_owned_networkd_path(&p, &text) {
            continue;
        }
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some((bridge, _)) = names::left_bridge(name, &text) {
            bridges.push(bridge);
        }
        match std::fs::remove_file(&p) {
            Ok(()) => {
                removed += 1;
                if p.ends_with(names::STATIC_LEASES_NAME) {
                    if let Some(d) = p.parent() {
                        let _ = std::fs::remove_dir(d);
                    }
                }
            }
            Err(e) => fail(format!("remove {}", p.display()), &e),
        }
    }
    (removed, bridges)
}

/// Delete `name` if it is a bridge of exactly that name (a lookup by name also matches
/// altnames; another kind of link is not Volt's).
fn delete_bridge(name: &str) -> Result<bool, crate::net::netlink::NetlinkError> {
    let nl = Netlink::new()?;
    match nl.link(name)? {
        Some(l) if l.name == name && l.kind.as_deref() == Some("bridge") => nl.delete(name),
        _ => Ok(false),
    }
}
