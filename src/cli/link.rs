//! `volt link up|down`: what `volt-tap@<link>.service` and `volt-veth@<link>.service` run.
//!
//! Container veths (`veth-<id>-h`): the pair from the manager, the host end on the bridge
//! (waiting a bounded time for networkd to create the bridge, else creating it), the
//! container end left for nspawn; down deletes the pair.
//! `networkd` NICs: write the runtime `.netdev`/`.network`, `Reload` networkd over D-Bus and
//! wait (bounded) until it has created and enslaved the TAP. When networkd is not running,
//! or the TAP does not appear in time, create it directly (persistent, owned by `volt`) and
//! say so once. NICs on isolated networks get their TAP in the VM's own namespace.
//! `macvtap` NICs: the macvtap on its parent and its `/dev/tapN`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::Outcome;
use crate::config::{
    ConfigSet, ContainerConfig, ContainerNic, NetworkLookup, NetworkType, NicConfig, NicMode,
    VmConfig,
};
use crate::generator::{self, render, NETWORKD_RUNTIME_DIR};
use crate::net::manager::{self, Manager, TapOptions};
use crate::net::netlink::Netlink;
use crate::net::networkd::{self, Networkd, NetworkdError};
use crate::net::{link, netns};

/// How long networkd gets to create and enslave a TAP before Volt does it itself.
const NETWORKD_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the manager keeps its state under a root.
pub fn state_dir(root: &Path) -> PathBuf {
    root.join("run/volt")
}

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

/// networkd's way: reload over D-Bus and wait. `Err` carries why it did not work out.
fn via_networkd(name: &str, bridge: Option<&str>) -> Result<u32, NetworkdError> {
    match Networkd::connect() {
        Ok(n) => {
            n.reload()?;
            n.wait_for_link(name, bridge, NETWORKD_TIMEOUT)
        }
        Err(NetworkdError::Bus(e)) => {
            log::debug!("system bus not reachable ({e}); using networkctl");
            networkd::networkctl_reload()?;
            networkd::wait_for_link(name, bridge, NETWORKD_TIMEOUT)
        }
        Err(e) => Err(e),
    }
}

fn tap_options() -> TapOptions {
    TapOptions {
        persist: true,
        owner: manager::volt_user(),
    }
}

fn find_container<'a>(
    set: &'a ConfigSet,
    name: &str,
) -> Option<(&'a ContainerConfig, &'a ContainerNic)> {
    set.containers
        .iter()
        .find_map(|c| c.nics.iter().find(|n| n.host_link == name).map(|n| (c, n)))
}

/// Wait (bounded) for `bridge` to appear (networkd creates it when it starts); then create
/// it directly if its network allows that.
fn wait_for_bridge(set: &ConfigSet, mgr: &Manager, bridge: &str) -> Result<()> {
    let start = std::time::Instant::now();
    while link::index(bridge).is_none() && start.elapsed() < NETWORKD_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(net) = set.networks.by_bridge(bridge) {
        if mgr.ensure_bridge(net)? {
            log::info!("created bridge {bridge} for network {} directly", net.name);
        }
    }
    Ok(())
}

/// The veth pair of container `ct`'s NIC: kept when whole, else (re)created with the host
/// end on the bridge (or alone in the container's namespace on an isolated network).
pub(super) fn veth_up(
    root: &Path,
    set: &ConfigSet,
    ct: &ContainerConfig,
    nic: &ContainerNic,
) -> Result<()> {
    let mgr = Manager::new(state_dir(root));
    let name = &nic.host_link;
    if nic.isolated {
        let (_, created) = mgr.ensure_isolated_veth(&ct.name, Some(nic.mac))?;
        log::info!(
            "{name}: {} alone in namespace {} for container {} NIC {} (isolated network)",
            if created { "created" } else { "kept" },
            manager::isolated_netns(&manager::container_id(&ct.name)),
            ct.name,
            nic.id
        );
        return Ok(());
    }
    let Some(bridge) = nic.bridge.as_deref() else {
        bail!(
            "{name}: NIC {} of container {} has no bridge",
            nic.id,
            ct.name
        );
    };
    wait_for_bridge(set, &mgr, bridge)?;
    let (v, created) = mgr.ensure_veth(bridge, &ct.name, Some(nic.mac))?;
    if created {
        log::info!(
            "{name}: veth pair {} / {} created on {bridge} for container {} NIC {} (MAC {})",
            v.host_end,
            v.container_end,
            ct.name,
            nic.id,
            nic.mac
        );
    } else {
        log::debug!("{name}: veth pair on {bridge} is whole, kept");
    }
    Ok(())
}

/// Tear down container veth `veth-<id>-h`: the pair (wherever its host end is) and the
/// container's isolated namespace. Needs no config: everything follows from the name.
fn veth_down(name: &str, id: &str) -> Result<Outcome> {
    let mut failed = false;
    for l in [name.to_string(), format!("veth-{id}-c")] {
        match link::delete(&l) {
            Ok(true) => log::info!("deleted {l}"),
            Ok(false) => {}
            Err(e) => {
                log::error!("{}", crate::error_chain(&e));
                failed = true;
            }
        }
    }
    let ns = manager::isolated_netns(id);
    if netns::exists(&ns) {
        let n = name.to_string();
        let r = netns::run_in(&netns::path_of(&ns), move || Netlink::new()?.delete(&n));
        if let Ok(Ok(true)) = r {
            log::info!("deleted {name} in {ns}");
        }
        if let Err(e) = netns::delete(&ns) {
            log::error!("{}", crate::error_chain(&e));
            failed = true;
        }
    }
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

/// The id of a container host link name `veth-<id>-h`.
fn veth_id(name: &str) -> Option<&str> {
    name.strip_prefix("veth-")
        .and_then(|r| r.strip_suffix("-h"))
        .filter(|id| id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()))
}

pub fn up(root: &Path, name: &str) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    if let Some((ct, nic)) = find_container(&set, name) {
        veth_up(root, &set, ct, nic)?;
        return Ok(Outcome::Ok);
    }
    if veth_id(name).is_some() {
        for e in &set.errors {
            log::error!("{}", e.report());
        }
        bail!("no valid container configuration has the veth {name}");
    }
    let (vm, nic) = find(&set, name)?;
    let mgr = Manager::new(state_dir(root));
    let network = nic.network.as_deref().and_then(|n| set.networks.by_name(n));
    match nic.mode {
        NicMode::Networkd if network.is_some_and(|n| n.kind == NetworkType::Isolated) => {
            let tap = mgr.create_isolated_tap(vm, nic, &tap_options())?;
            log::info!(
                "{name} is up alone in namespace {} for VM {} NIC {} (isolated network)",
                manager::isolated_netns(&crate::config::short_id(&vm.uuid)),
                vm.name,
                nic.id
            );
            drop(tap);
            Ok(Outcome::Ok)
        }
        NicMode::Networkd => {
            let Some(bridge) = nic.bridge.as_deref() else {
                bail!("{name}: NIC {} of VM {} has no bridge", nic.id, vm.name);
            };
            let dir = root.join(NETWORKD_RUNTIME_DIR);
            generator::write_atomic_if_changed(
                &dir.join(render::netdev_file_name(nic)),
                &render::netdev(vm, nic),
            )?;
            generator::write_atomic_if_changed(
                &dir.join(render::network_file_name(nic)),
                &render::network(vm, nic),
            )?;
            match via_networkd(name, Some(bridge)) {
                Ok(index) => {
                    let nl = Netlink::new()?;
                    if let Err(e) = nl.add_altname(name, &manager::vm_altname(vm, nic)) {
                        log::warn!("{name}: {}", crate::error_chain(&e));
                    }
                    log::info!(
                        "{name} (ifindex {index}) is up on {bridge} for VM {} NIC {} (networkd)",
                        vm.name,
                        nic.id
                    );
                }
                Err(why) => {
                    log::warn!(
                        "{name}: {}; falling back to creating the TAP directly",
                        crate::error_chain(&why)
                    );
                    direct(&mgr, &set, vm, nic, bridge)?;
                }
            }
            Ok(Outcome::Ok)
        }
        NicMode::Macvtap => {
            let Some(parent) = nic.parent.as_deref() else {
                bail!(
                    "{name}: macvtap NIC {} of VM {} has no parent",
                    nic.id,
                    vm.name
                );
            };
            let m = mgr.create_macvtap(parent, vm, nic, manager::volt_user())?;
            log::info!(
                "{name} (ifindex {}) is up on {parent} for VM {} NIC {}; the VMM opens {}",
                m.index,
                vm.name,
                nic.id,
                m.device.display()
            );
            Ok(Outcome::Ok)
        }
        NicMode::Direct => bail!(
            "{name}: NIC {} of VM {} is in direct mode; the VMM creates its TAP",
            nic.id,
            vm.name
        ),
    }
}

/// Without networkd: the bridge (when the network allows creating it), then the TAP
/// (persistent, owned by `volt`), or, if networkd made the TAP but never enslaved it, the
/// enslavement.
fn direct(
    mgr: &Manager,
    set: &ConfigSet,
    vm: &VmConfig,
    nic: &NicConfig,
    bridge: &str,
) -> Result<()> {
    let name = nic.link.as_str();
    if let Some(net) = set.networks.by_bridge(bridge) {
        if mgr.ensure_bridge(net)? {
            log::info!("created bridge {bridge} for network {} directly", net.name);
        }
    }
    let nl = Netlink::new()?;
    if nl.link(name)?.is_some() {
        nl.set_mtu(name, nic.mtu)?;
        nl.set_master(name, bridge)?;
        nl.set_up(name)?;
        if let Err(e) = nl.add_altname(name, &manager::vm_altname(vm, nic)) {
            log::warn!("{name}: {}", crate::error_chain(&e));
        }
        log::info!("{name}: enslaved to {bridge} directly (fallback)");
    } else {
        let _tap = mgr.create_tap_with(bridge, vm, nic, &tap_options())?;
        log::info!(
            "{name}: created directly on {bridge} (fallback, persistent{})",
            if tap_options().owner.is_some() {
                ", owned by volt"
            } else {
                ""
            }
        );
    }
    Ok(())
}

pub fn down(root: &Path, name: &str) -> Result<Outcome> {
    if let Some(id) = veth_id(name) {
        return veth_down(name, id);
    }
    // Tear down even if the VM's file is gone or broken now: remove what we own by name.
    let dir = root.join(NETWORKD_RUNTIME_DIR);
    let mut failed = false;
    if let Err(e) = crate::net::antispoof::remove(name) {
        log::warn!("{}", crate::error_chain(&e));
    }
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
        match networkd::reload() {
            Ok(()) => {}
            Err(NetworkdError::NotRunning) => log::debug!("networkd is not running"),
            Err(e) => log::warn!("{}", crate::error_chain(&e)),
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
    // A TAP of an isolated network lives in its VM's namespace.
    let set = ConfigSet::load(root);
    if let Ok((vm, _)) = find(&set, name) {
        let ns = manager::isolated_netns(&crate::config::short_id(&vm.uuid));
        if netns::exists(&ns) {
            let n = name.to_string();
            let left = netns::run_in(&netns::path_of(&ns), move || -> Result<usize> {
                let nl = Netlink::new()?;
                if nl.delete(&n)? {
                    log::info!("deleted {n} in its isolated namespace");
                }
                Ok(nl.links()?.iter().filter(|l| l.name != "lo").count())
            })
            .context("cannot enter the isolated namespace")
            .and_then(|r| r);
            match left {
                Ok(0) => {
                    if let Err(e) = netns::delete(&ns) {
                        log::error!("{}", crate::error_chain(&e));
                        failed = true;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::error!("{e:#}");
                    failed = true;
                }
            }
        }
    }
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

/// `volt link run`: bring the link up, tell systemd it is ready, then stay until the link is
/// deleted (exit 1: the owner unit fails and `BindsTo=` stops the VM; the VM's address lease
/// is released) or systemd stops us (exit 0; `ExecStopPost=volt link down` tears down).
pub fn run(root: &Path, name: &str) -> Result<Outcome> {
    if let Outcome::Failed = up(root, name)? {
        return Ok(Outcome::Failed);
    }
    let set = ConfigSet::load(root);
    let (vm, nic) = find(&set, name)?;
    let isolated = nic
        .network
        .as_deref()
        .and_then(|n| set.networks.by_name(n))
        .is_some_and(|n| n.kind == NetworkType::Isolated);
    let status = format!("{name}: host link of VM {} NIC {}", vm.name, nic.id);
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
    // An isolated NIC's link lives in the VM's own namespace; watch the host's otherwise.
    let index = if isolated { None } else { link::index(name) };
    let ended = match index {
        Some(i) => crate::net::monitor::wait(name, i)?,
        None if isolated => {
            let ns = netns::path_of(&manager::isolated_netns(&crate::config::short_id(&vm.uuid)));
            let owned = name.to_string();
            netns::run_in(&ns, move || -> Result<crate::net::monitor::Ended> {
                let i = link::index(&owned).context("the link is gone")?;
                Ok(crate::net::monitor::wait(&owned, i)?)
            })??
        }
        None => crate::net::monitor::Ended::Deleted,
    };
    match ended {
        crate::net::monitor::Ended::Signal(_) => Ok(Outcome::Ok),
        crate::net::monitor::Ended::Deleted => {
            log::error!(
                "{name} was deleted under VM {} (NIC {}); stopping the VM",
                vm.name,
                nic.id
            );
            if let Some(network) = &nic.network {
                let owner = crate::net::ipam::Owner::vm(&vm.name, &nic.id);
                match crate::net::ipam::Ipam::new(super::ipam::ipam_dir(root))
                    .release(network, &owner)
                {
                    Ok(Some(l)) => log::info!("released {} on {network} from {owner}", l.ip),
                    Ok(None) => {}
                    Err(e) => log::warn!("{}", crate::error_chain(&e)),
                }
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                "{name} was deleted"
            ))]);
            Ok(Outcome::Failed)
        }
    }
}
