//! `volt link up|down`: what `volt-tap@<link>.service` runs.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::Outcome;
use crate::config::{ConfigSet, NicConfig, NicMode, VmConfig};
use crate::generator::{self, render, NETWORKD_RUNTIME_DIR};
use crate::net::{link, networkd};

/// How long networkd gets to create and enslave a TAP.
const NETWORKD_TIMEOUT: Duration = Duration::from_secs(10);

fn find<'a>(set: &'a ConfigSet, name: &str) -> Result<(&'a VmConfig, &'a NicConfig)> {
    for vm in &set.vms {
        if let Some(nic) = vm.nics.iter().find(|n| n.link == name) {
            return Ok((vm, nic));
        }
    }
    for e in &set.errors {
        log::error!("{}", e.report());
    }
    bail!("no valid VM configuration has a NIC with host link {name}")
}

pub fn up(root: &Path, name: &str) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let (vm, nic) = find(&set, name)?;
    match nic.mode {
        NicMode::Networkd => {
            let dir = root.join(NETWORKD_RUNTIME_DIR);
            generator::write_atomic_if_changed(
                &dir.join(render::netdev_file_name(nic)),
                &render::netdev(vm, nic),
            )?;
            generator::write_atomic_if_changed(
                &dir.join(render::network_file_name(nic)),
                &render::network(vm, nic),
            )?;
            networkd::reload().context("cannot reload systemd-networkd")?;
            let index = networkd::wait_for_link(name, nic.bridge.as_deref(), NETWORKD_TIMEOUT)?;
            log::info!(
                "{name} (ifindex {index}) is up on {} for VM {} NIC {}",
                nic.bridge.as_deref().unwrap_or("-"),
                vm.name,
                nic.id
            );
            Ok(Outcome::Ok)
        }
        NicMode::Macvtap => bail!(
            "{name}: macvtap host links are not supported yet (VM {}, NIC {})",
            vm.name,
            nic.id
        ),
        NicMode::Direct => bail!(
            "{name}: NIC {} of VM {} is in direct mode; the VMM creates its TAP",
            nic.id,
            vm.name
        ),
    }
}

pub fn down(root: &Path, name: &str) -> Result<Outcome> {
    // Tear down even if the VM's file is gone or broken now: remove what we own by name.
    let dir = root.join(NETWORKD_RUNTIME_DIR);
    let mut failed = false;
    let mut removed = false;
    for file in [
        format!("{}{name}.netdev", render::NETWORKD_PREFIX),
        format!("{}{name}.network", render::NETWORKD_PREFIX),
    ] {
        let path = dir.join(file);
        if generator::is_owned_networkd_file(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) => {
                    log::error!("cannot remove {}: {e}", path.display());
                    failed = true;
                }
            }
        }
    }
    if removed {
        if let Err(e) = networkd::reload() {
            log::warn!("{}", crate::error_chain(&e));
        }
    }
    // networkd never deletes a link whose .netdev is gone: do it ourselves.
    match link::delete(name) {
        Ok(true) => log::info!("deleted {name}"),
        Ok(false) => {}
        Err(e) => {
            log::error!("{}", crate::error_chain(&e));
            failed = true;
        }
    }
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}
