//! What `volt net down` removes of a network whose file is gone, and `volt net down --all` of
//! the bridges networkd made from files Volt rendered: a left bridge goes unless it is not
//! Volt's alone any more (links on it, or another networkd file defines it). The look and the
//! deletion run under the bridges lock, which creating a bridge and putting a link on it
//! take too ([`Manager::ensure_bridge`], [`Manager::enslave`]): no link owner puts its TAP or
//! veth on a bridge between the look at its ports and its deletion.

use std::path::{Path, PathBuf};

use super::{io, BridgeMarker, Collect, Manager, ManagerError};
use crate::net::nat;
use crate::net::netlink::Netlink;

/// What the caller's policy says of left bridges.
pub struct LeftBridges<'a> {
    /// Where the generator remembers the bridges networkd made from files it removed.
    pub left_dir: &'a Path,
    /// Bridges configured networks use now: no leftovers, passed over.
    pub in_use: &'a [&'a str],
    /// A networkd file other than Volt's that defines the bridge (the admin's): the bridge
    /// stays, and its marker goes (it is not Volt's to remember).
    pub defined_elsewhere: &'a dyn Fn(&str) -> Option<PathBuf>,
}

/// What [`Manager::net_down_leftovers`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// What it removed: `its NAT chains in table ip volt`, `bridge <name>`.
    pub removed: Vec<String>,
    /// The bridges that stay, with why.
    pub kept: Vec<(String, String)>,
}

/// What became of one left bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftBridge {
    Deleted,
    /// Not there, or a link of another kind by that name (never Volt's to delete).
    Absent,
    /// It stays, because of this.
    Kept(String),
}

impl Manager {
    /// What Volt left under `name` of a network whose file is gone: NAT chains named after
    /// it, the bridge Volt created for it, and the bridge networkd made from the file Volt
    /// rendered for it (remembered in `left.left_dir` by the generator when it removed that
    /// file). `name`: the network's or the bridge's. Bridges in `left.in_use` are passed
    /// over; one with links on it or that another file defines stays (see [`LeftBridge`]).
    /// Every step runs; the errors are collected.
    pub fn net_down_leftovers(
        &self,
        name: &str,
        left: &LeftBridges,
    ) -> Result<Leftovers, ManagerError> {
        let mut out = Leftovers::default();
        let mut c = Collect::default();
        if c.step("remove NAT rules", nat::apply_down(name)) == Some(true) {
            out.removed
                .push(format!("its NAT chains in table ip {}", nat::TABLE));
        }
        // No bridge is looked at, let alone deleted, without the lock.
        let Some(_lock) = c.step("lock the bridges", self.bridges_lock()) else {
            return c.finish().map(|()| out);
        };
        let Some(nl) = c.step("open rtnetlink", Netlink::new()) else {
            return c.finish().map(|()| out);
        };
        let markers: Vec<BridgeMarker> = self
            .bridge_markers(left.left_dir)
            .into_iter()
            .filter(|m| m.bridge == name || m.network == name)
            .filter(|m| !left.in_use.contains(&m.bridge.as_str()))
            .collect();
        let mut bridges: Vec<&str> = markers.iter().map(|m| m.bridge.as_str()).collect();
        bridges.dedup();
        for bridge in bridges {
            let fate = left_bridge(&nl, bridge, left.defined_elsewhere);
            let Some(fate) = c.step(format!("delete bridge {bridge}"), fate) else {
                continue;
            };
            // A bridge that stays because of its links is remembered still (`net down` again
            // once they are gone); one another file defines is not Volt's to remember.
            let forget = match fate {
                LeftBridge::Deleted => {
                    out.removed.push(format!("bridge {bridge}"));
                    true
                }
                LeftBridge::Absent => true,
                LeftBridge::Kept(why) => {
                    out.kept.push((bridge.to_string(), why));
                    (left.defined_elsewhere)(bridge).is_some()
                }
            };
            for m in markers.iter().filter(|m| forget && m.bridge == bridge) {
                c.step(
                    format!("remove {}", m.path.display()),
                    std::fs::remove_file(&m.path)
                        .map_err(io(format!("remove {}", m.path.display()))),
                );
            }
        }
        c.finish().map(|()| out)
    }

    /// Delete `bridge`, which networkd made from a file Volt rendered and removed, unless it
    /// is not Volt's alone (see [`LeftBridge`]); under the bridges lock.
    pub fn delete_left_bridge(
        &self,
        bridge: &str,
        defined_elsewhere: &dyn Fn(&str) -> Option<PathBuf>,
    ) -> Result<LeftBridge, ManagerError> {
        let _lock = self.bridges_lock()?;
        left_bridge(&Netlink::new()?, bridge, defined_elsewhere)
    }
}

/// Delete `bridge` if it is a bridge of exactly that name (another kind of link is not
/// Volt's), no link is on it (an uplink of the admin's, a workload's), and no other networkd
/// file defines it. A bridge whose links cannot be listed stays: deleting it could take an
/// uplink along. The caller holds the bridges lock.
fn left_bridge(
    nl: &Netlink,
    bridge: &str,
    defined_elsewhere: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<LeftBridge, ManagerError> {
    let l = match nl.link(bridge)? {
        Some(l) if l.is_bridge_named(bridge) => l,
        Some(l) => {
            log::warn!(
                "{bridge}'s marker names a {} link, not Volt's bridge; left alone",
                l.kind.as_deref().unwrap_or("physical")
            );
            return Ok(LeftBridge::Absent);
        }
        None => return Ok(LeftBridge::Absent),
    };
    let ports = nl.links().map(|links| {
        links
            .into_iter()
            .filter(|p| p.master == Some(l.index))
            .map(|p| p.name)
            .collect::<Vec<String>>()
    });
    let why = match ports {
        Ok(p) if !p.is_empty() => Some(format!("{} on it", p.join(", "))),
        Ok(_) => defined_elsewhere(bridge).map(|f| format!("{} defines it too", f.display())),
        Err(e) => Some(format!("its links cannot be listed ({e})")),
    };
    if let Some(why) = why {
        return Ok(LeftBridge::Kept(why));
    }
    Ok(if nl.delete(bridge).map_err(ManagerError::from)? {
        LeftBridge::Deleted
    } else {
        LeftBridge::Absent
    })
}
