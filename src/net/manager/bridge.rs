//! The manager's bridges and host-only networks: a bridge with its gateway address (created
//! when missing and allowed, remembered so `net down` deletes only what Volt made), and the
//! forwarding and NAT of host-only networks.

use std::path::{Path, PathBuf};

use super::{io, set_forwarding, Collect, Manager, ManagerError, NetUp};
use crate::config::{Network, NetworkType};
use crate::net::nat::{self, PortTarget};
use crate::net::netlink::Netlink;

impl Manager {
    fn bridge_marker(&self, bridge: &str) -> PathBuf {
        self.state_dir.join("bridges").join(bridge)
    }

    /// The lock under which bridges are checked, made, and deleted, and links put on them
    /// (beside the markers' directory, so no bridge name can be its name). Held until the
    /// file is dropped.
    pub(super) fn bridges_lock(&self) -> Result<std::fs::File, ManagerError> {
        std::fs::create_dir_all(&self.state_dir)
            .map_err(io(format!("create {}", self.state_dir.display())))?;
        let path = self.state_dir.join("bridges.lock");
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        lock.lock()
            .map_err(io(format!("lock {}", path.display())))?;
        Ok(lock)
    }

    /// Make sure `net`'s bridge exists and is up. A missing bridge is created (STP off,
    /// forward delay 0, the gateway address, the network's MTU) when the network allows it,
    /// else this fails naming the bridge. Returns whether it was created.
    ///
    /// Several link owners start at once: the check and the creation run under one lock.
    /// The marker that says Volt made the bridge is written first, so a crash half-way
    /// leaves a bridge Volt knows it made: the next call gives it its gateway address (and
    /// `volt net down` deletes it). A bridge somebody else (networkd) made meanwhile is
    /// used as it is, never deleted.
    pub fn ensure_bridge(&self, net: &Network) -> Result<bool, ManagerError> {
        let _lock = self.bridges_lock()?;
        let nl = Netlink::new()?;
        match nl.link(&net.bridge)? {
            Some(l) if l.kind.as_deref() == Some("bridge") => {
                self.finish_bridge(&nl, net, l.up)?;
                Ok(false)
            }
            Some(l) => Err(ManagerError::NotABridge {
                name: net.bridge.clone(),
                kind: l.kind.unwrap_or_else(|| "physical".into()),
            }),
            None if !net.create_bridge => Err(ManagerError::BridgeMissing {
                bridge: net.bridge.clone(),
                hint: Some(format!("network {} has create_bridge = false", net.name)),
            }),
            None => {
                let marker = self.bridge_marker(&net.bridge);
                if let Some(d) = marker.parent() {
                    std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
                }
                // Whole or not at all (a runtime file: no fsync).
                let tmp =
                    marker.with_file_name(format!(".{}.{}.tmp", net.bridge, std::process::id()));
                std::fs::write(&tmp, format!("{}\n", net.name))
                    .and_then(|()| std::fs::rename(&tmp, &marker))
                    .map_err(io(format!("write {}", marker.display())))?;
                let mtu = (net.mtu != 1500).then_some(net.mtu);
                if let Err(e) = nl.create_bridge(&net.bridge, None, mtu) {
                    let _ = std::fs::remove_file(&marker);
                    // networkd made it meanwhile (from the generator's .netdev): its bridge.
                    return match nl.link(&net.bridge)? {
                        Some(l) if l.kind.as_deref() == Some("bridge") => {
                            self.finish_bridge(&nl, net, l.up)?;
                            Ok(false)
                        }
                        _ => Err(e.into()),
                    };
                }
                let r = nl
                    .add_ipv4(&net.bridge, net.gateway, net.subnet.prefix_len())
                    .and_then(|()| nl.set_up(&net.bridge));
                if let Err(e) = r {
                    // Ours: made just now.
                    let _ = nl.delete(&net.bridge);
                    let _ = std::fs::remove_file(&marker);
                    return Err(e.into());
                }
                log::info!(
                    "created bridge {} ({}/{}) for network {}",
                    net.bridge,
                    net.gateway,
                    net.subnet.prefix_len(),
                    net.name
                );
                Ok(true)
            }
        }
    }

    /// An existing bridge of `net`: up, and, when Volt made it, with its gateway address (a
    /// start cut short after creating it left none).
    fn finish_bridge(&self, nl: &Netlink, net: &Network, up: bool) -> Result<(), ManagerError> {
        if self.created_bridge(&net.bridge)
            && !nl
                .ipv4_addrs(&net.bridge)?
                .iter()
                .any(|(a, _)| *a == net.gateway)
        {
            log::warn!(
                "bridge {} that Volt made for network {} has no gateway address (a start cut short?): adding {}/{}",
                net.bridge,
                net.name,
                net.gateway,
                net.subnet.prefix_len()
            );
            nl.add_ipv4(&net.bridge, net.gateway, net.subnet.prefix_len())?;
        }
        if !up {
            nl.set_up(&net.bridge)?;
        }
        Ok(())
    }

    /// Whether Volt created `bridge` (and so may delete it on `net down`).
    pub fn created_bridge(&self, bridge: &str) -> bool {
        self.bridge_marker(bridge).exists()
    }

    /// Bring network `net` up: its bridge, and for host-only networks forwarding on the
    /// bridge and uplink plus the NAT rules with the resolved port-map `targets`.
    pub fn net_up(&self, net: &Network, targets: &[PortTarget]) -> Result<NetUp, ManagerError> {
        let mut report = NetUp {
            bridge_created: self.ensure_bridge(net)?,
            ..NetUp::default()
        };
        if net.kind == NetworkType::HostOnly {
            apply_nat(&Netlink::new()?, net, targets)?;
            report.nat = true;
            report.port_maps = targets.len();
        }
        Ok(report)
    }

    /// Take network `net` down: remove its NAT, and its bridge if Volt created it. Every
    /// step runs; the errors are collected.
    pub fn net_down(&self, net: &Network) -> Result<(), ManagerError> {
        let mut c = Collect::default();
        c.step("remove NAT rules", nat::apply_down(&net.name));
        // Not while a link owner checks or makes the bridge.
        let _lock = c.step("lock the bridges", self.bridges_lock());
        if self.created_bridge(&net.bridge) {
            let deleted = Netlink::new()
                .and_then(|nl| nl.delete(&net.bridge))
                .map_err(ManagerError::from);
            if c.step(format!("delete bridge {}", net.bridge), deleted)
                .is_some()
            {
                let m = self.bridge_marker(&net.bridge);
                c.step(
                    format!("remove {}", m.display()),
                    std::fs::remove_file(&m).map_err(io(format!("remove {}", m.display()))),
                );
            }
        }
        c.finish()
    }

    /// The markers of the bridges Volt may delete: those it created (in its state directory)
    /// and those networkd made from a file the generator removed (in `left_dir`), sorted by
    /// bridge. Both are named after the bridge and hold the network's name.
    pub fn bridge_markers(&self, left_dir: &Path) -> Vec<BridgeMarker> {
        let mut markers: Vec<BridgeMarker> = [self.state_dir.join("bridges"), left_dir.into()]
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
            .filter_map(|e| {
                let bridge = e.file_name().to_str()?.to_string();
                // The lock, and a marker being written.
                if bridge.starts_with('.') {
                    return None;
                }
                let network = std::fs::read_to_string(e.path()).unwrap_or_default();
                Some(BridgeMarker {
                    bridge,
                    network: network.trim().to_string(),
                    path: e.path(),
                })
            })
            .collect();
        markers.sort_by(|a, b| a.bridge.cmp(&b.bridge).then(a.path.cmp(&b.path)));
        markers
    }

    /// Host-only `net`'s NAT made again with `targets`, on the bridge as it is: never creates
    /// the bridge. With `only_if_present`, only when its chains are there already (a network
    /// an admin took down with `volt net down` stays down). Returns whether it was applied.
    pub fn nat_refresh(
        &self,
        net: &Network,
        targets: &[PortTarget],
        only_if_present: bool,
    ) -> Result<bool, ManagerError> {
        let nl = Netlink::new()?;
        if nl.link(&net.bridge)?.is_none() {
            return Ok(false);
        }
        if only_if_present && !nat::is_up(&net.name)? {
            return Ok(false);
        }
        apply_nat(&nl, net, targets)?;
        Ok(true)
    }

    /// Serialises changes to Volt's NAT table (`volt net up|down`, the link owners' refreshes):
    /// `volt net down` of one network deletes the table once it holds no other chains, and
    /// must not do so between another's read and apply. Held until the file is dropped.
    pub fn lock_nat(&self) -> Result<std::fs::File, ManagerError> {
        let path = self.state_dir.join("nat.lock");
        std::fs::create_dir_all(&self.state_dir)
            .and_then(|()| {
                std::fs::File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
            })
            .and_then(|f| f.lock().map(|()| f))
            .map_err(io(format!("lock {}", path.display())))
    }

    /// Put `link` on `bridge`, under the bridges lock: `net down` of a bridge Volt left (see
    /// [`Manager::net_down_leftovers`]) either sees the link on it and keeps it, or deleted it
    /// before, and this fails naming the bridge. (A link networkd puts on a bridge is not
    /// under Volt's lock.)
    pub fn enslave(&self, link: &str, bridge: &str) -> Result<(), ManagerError> {
        self.put_on_bridge(&Netlink::new()?, link, bridge)
    }

    pub(super) fn put_on_bridge(
        &self,
        nl: &Netlink,
        link: &str,
        bridge: &str,
    ) -> Result<(), ManagerError> {
        let _lock = self.bridges_lock()?;
        Self::bridge_present(nl, bridge)?;
        Ok(nl.set_master(link, bridge)?)
    }

    pub(super) fn bridge_present(nl: &Netlink, bridge: &str) -> Result<u32, ManagerError> {
        match nl.link(bridge)? {
            Some(l) if l.kind.as_deref() == Some("bridge") => Ok(l.mtu),
            Some(l) => Err(ManagerError::NotABridge {
                name: bridge.into(),
                kind: l.kind.unwrap_or_else(|| "physical".into()),
            }),
            None => Err(ManagerError::BridgeMissing {
                bridge: bridge.into(),
                hint: Some("run `volt net up` for its network".into()),
            }),
        }
    }
}

/// A bridge Volt may delete on `net down`, and the network it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeMarker {
    pub bridge: String,
    pub network: String,
    pub path: PathBuf,
}

/// Host-only `net`'s forwarding on its bridge and uplink, and its NAT chains with `targets`.
fn apply_nat(nl: &Netlink, net: &Network, targets: &[PortTarget]) -> Result<(), ManagerError> {
    let uplink = net.uplink.as_deref().unwrap_or_default();
    if nl.link(uplink)?.is_none() {
        return Err(ManagerError::MissingLink {
            what: "uplink",
            name: uplink.into(),
        });
    }
    set_forwarding(&net.bridge)?;
    set_forwarding(uplink)?;
    Ok(nat::apply_up(net, targets)?)
}
