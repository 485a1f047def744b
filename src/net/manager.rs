//! The unified network manager: bridges, TAPs, veths and macvtaps for VMs and containers,
//! per-workload namespaces for isolated networks, and host-only NAT.
//!
//! Every verb acts in the calling thread's network namespace (a fresh [`Netlink`] per call).
//! Teardown collects every error instead of stopping at the first.

use std::path::PathBuf;

use crate::config::MacAddr;

use super::nat::NatError;
use super::netlink::{Netlink, NetlinkError, NetnsTarget};
use crate::sys::netns::{self, NetnsError};
use crate::sys::tap::{Tap, TapError};

mod bridge;
mod leftovers;
mod macvtap;
mod veth;

pub use bridge::BridgeMarker;
pub use leftovers::{LeftBridge, LeftBridges, Leftovers};
pub use macvtap::macvtap_device;

/// How many MAC candidates [`Manager::resolve_mac`] tries before giving up.
pub const MAC_ATTEMPTS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Nat(#[from] NatError),
    #[error("bridge {bridge} does not exist{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    BridgeMissing {
        bridge: String,
        hint: Option<String>,
    },
    #[error("{name} exists but is a {kind} link, not a bridge")]
    NotABridge { name: String, kind: String },
    #[error("{what} {name} does not exist")]
    MissingLink { what: &'static str, name: String },
    #[error("MAC {mac} of {nic} is already on bridge {bridge} (port {port}) and was set explicitly; change `mac` in its file")]
    MacConflict {
        mac: MacAddr,
        nic: String,
        bridge: String,
        port: String,
    },
    #[error("no free MAC for {nic} on bridge {bridge} after {attempts} attempts")]
    MacExhausted {
        nic: String,
        bridge: String,
        attempts: u32,
    },
    #[error("cannot find the character device of macvtap {name} ({})", path.display())]
    MacvtapDevice {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SR-IOV VF passthrough is not supported on this host: {reason}")]
    SriovUnsupported { reason: String },
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} teardown step(s) failed: {}", .0.len(), .0.iter().map(|(w, e)| format!("{w}: {}", crate::error_chain(e))).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<(String, ManagerError)>),
}

/// How to create a TAP directly.
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    /// Keep the TAP after the last fd closes (TUNSETPERSIST): for a TAP made by a unit
    /// on behalf of a VMM that opens it later.
    pub persist: bool,
    /// Let this user (and group) attach to it (TUNSETOWNER / TUNSETGROUP).
    pub owner: Option<(u32, Option<u32>)>,
}

/// What a host link is to be: the mechanism-level description the policy layer (`attach`)
/// derives from a workload's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkParams {
    /// Kernel name (at most 15 bytes).
    pub name: String,
    /// Altname (`<vm>-<nic>`, or the container's name) so `ip link show <altname>` works.
    pub altname: String,
    pub mtu: u32,
    /// TAP queue pairs (1 = single queue).
    pub queues: u32,
    /// The guest's MAC (a macvtap's own address; a veth's container end).
    pub mac: MacAddr,
}

/// A container's veth pair: the host end (on the bridge, or in the workload's isolated
/// namespace) and the end that goes into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub host_end: String,
    pub container_end: String,
}

/// A macvtap and the character device the VMM opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macvtap {
    pub name: String,
    pub index: u32,
    pub device: PathBuf,
}

/// What [`Manager::net_up`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetUp {
    pub bridge_created: bool,
    pub nat: bool,
    pub port_maps: usize,
}

/// The uid and gid of `user`, if it exists.
pub fn lookup_user(user: &str) -> Option<(u32, Option<u32>)> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage valid until the next
    // call; we copy the two ids out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and points to a valid struct passwd.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some((uid, Some(gid)))
}

pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ManagerError {
    let what = what.into();
    move |source| ManagerError::Io { what, source }
}

/// Set IPv4 forwarding on one interface of the calling thread's namespace.
pub(super) fn set_forwarding(ifname: &str) -> Result<(), ManagerError> {
    let p = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    std::fs::write(&p, "1").map_err(io(format!("enable forwarding on {ifname} ({p})")))
}

/// Collects teardown failures and keeps going.
#[derive(Default)]
pub(super) struct Collect(Vec<(String, ManagerError)>);

impl Collect {
    pub(super) fn step<T>(
        &mut self,
        what: impl Into<String>,
        r: Result<T, impl Into<ManagerError>>,
    ) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push((what.into(), e.into()));
                None
            }
        }
    }

    pub(super) fn finish(self) -> Result<(), ManagerError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ManagerError::Teardown(self.0))
        }
    }
}

/// The network manager. `state_dir` (e.g. `/run/volt`) remembers which bridges Volt created.
pub struct Manager {
    state_dir: PathBuf,
    dev_dir: PathBuf,
}

impl Manager {
    pub fn new(state_dir: impl Into<PathBuf>) -> Manager {
        Manager {
            state_dir: state_dir.into(),
            dev_dir: PathBuf::from("/dev"),
        }
    }

    /// Where macvtap device nodes are made (`/dev`; tests use a scratch directory).
    pub fn with_dev_dir(mut self, dir: impl Into<PathBuf>) -> Manager {
        self.dev_dir = dir.into();
        self
    }

    /// Create a TAP directly (TUNSETIFF), with its MTU, on `bridge`, with its altname, up.
    /// Not persistent: it goes away with the returned fds.
    pub fn create_tap(&self, bridge: &str, link: &LinkParams) -> Result<Tap, ManagerError> {
        self.create_tap_with(bridge, link, &TapOptions::default())
    }

    /// [`Manager::create_tap`] with options (persistent, owned by a user).
    pub fn create_tap_with(
        &self,
        bridge: &str,
        link: &LinkParams,
        opts: &TapOptions,
    ) -> Result<Tap, ManagerError> {
        let nl = Netlink::new()?;
        Self::bridge_present(&nl, bridge)?;
        let tap = Self::new_tap(link, opts)?;
        let r = (|| -> Result<(), ManagerError> {
            nl.set_mtu(&tap.name, link.mtu)?;
            self.put_on_bridge(&nl, &tap.name, bridge)?;
            Self::altname(&nl, &tap.name, &link.altname);
            nl.set_up(&tap.name)?;
            Ok(())
        })();
        if let Err(e) = r {
            if opts.persist {
                let _ = nl.delete(&tap.name);
            }
            return Err(e);
        }
        log::info!("created TAP {} ({}) on {bridge}", tap.name, link.altname);
        Ok(tap)
    }

    fn new_tap(link: &LinkParams, opts: &TapOptions) -> Result<Tap, ManagerError> {
        let tap = Tap::create(&link.name, link.queues.max(1) as usize)?;
        if let Some((uid, gid)) = opts.owner {
            tap.set_owner(uid, gid)?;
        }
        if opts.persist {
            tap.set_persist(true)?;
        }
        Ok(tap)
    }

    pub(super) fn altname(nl: &Netlink, link: &str, alt: &str) {
        if let Err(e) = nl.add_altname(link, alt) {
            log::warn!("{link}: no altname {alt}: {}", crate::error_chain(&e));
        }
    }

    /// An isolated network's TAP: created in the host namespace (replacing a stale one there),
    /// then moved alone into the named namespace `ns` (created when missing) and set up there.
    /// No bridge, no route: the workload reaches nothing. TAP fds stay valid across the move.
    pub fn create_isolated_tap(
        &self,
        link: &LinkParams,
        ns: &str,
        opts: &TapOptions,
    ) -> Result<Tap, ManagerError> {
        let nl = Netlink::new()?;
        if nl.delete(&link.name)? {
            log::info!("replaced {} in the host namespace", link.name);
        }
        let tap = Self::new_tap(link, opts)?;
        let r = (|| -> Result<(), ManagerError> {
            nl.set_mtu(&tap.name, link.mtu)?;
            Self::altname(&nl, &tap.name, &link.altname);
            self.move_into_isolated(&nl, &tap.name, ns)
        })();
        if let Err(e) = r {
            if opts.persist {
                let _ = nl.delete(&tap.name);
            }
            return Err(e);
        }
        log::info!(
            "created isolated TAP {} ({}) in namespace {ns}",
            tap.name,
            link.altname
        );
        Ok(tap)
    }

    pub(super) fn move_into_isolated(
        &self,
        nl: &Netlink,
        link: &str,
        ns: &str,
    ) -> Result<(), ManagerError> {
        netns::ensure(ns)?;
        let f = netns::open(&netns::path_of(ns))?;
        nl.move_to_netns(link, NetnsTarget::Fd(std::os::fd::AsFd::as_fd(&f)), None)?;
        let name = link.to_string();
        netns::run_in(&netns::path_of(ns), move || {
            let nl = Netlink::new()?;
            nl.set_up(&name)
        })??;
        Ok(())
    }

    /// Move a link into another namespace (optionally renaming it).
    pub fn move_link(
        &self,
        name: &str,
        target: NetnsTarget<'_>,
        new_name: Option<&str>,
    ) -> Result<(), ManagerError> {
        Ok(Netlink::new()?.move_to_netns(name, target, new_name)?)
    }

    /// The MAC `link` should use on `bridge`: its own unless the bridge's FDB has it on
    /// another port (another workload, a stale TAP), then the first candidate `next(attempt)`
    /// that is free. Returns the MAC and whether it changed (logged with old and new). An
    /// explicit MAC is never changed: that is an error naming the port.
    pub fn resolve_mac(
        &self,
        bridge: &str,
        link: &LinkParams,
        explicit: bool,
        next: &dyn Fn(u32) -> MacAddr,
    ) -> Result<(MacAddr, bool), ManagerError> {
        let nl = Netlink::new()?;
        let own = Some(link.name.as_str());
        let wanted = link.mac;
        let Some(port) = nl.mac_elsewhere_on(bridge, wanted, own)? else {
            return Ok((wanted, false));
        };
        if explicit {
            return Err(ManagerError::MacConflict {
                mac: wanted,
                nic: link.altname.clone(),
                bridge: bridge.into(),
                port,
            });
        }
        for attempt in 1..MAC_ATTEMPTS {
            let candidate = next(attempt);
            if nl.mac_elsewhere_on(bridge, candidate, own)?.is_none() {
                log::warn!(
                    "{}: MAC {wanted} is already on {bridge} (port {port}); using {candidate} instead",
                    link.altname
                );
                return Ok((candidate, true));
            }
        }
        Err(ManagerError::MacExhausted {
            nic: link.altname.clone(),
            bridge: bridge.into(),
            attempts: MAC_ATTEMPTS,
        })
    }

    /// Delete links by name, all of them, collecting failures.
    pub fn delete_links(&self, names: &[&str]) -> Result<Vec<String>, ManagerError> {
        let mut c = Collect::default();
        let mut deleted = Vec::new();
        match Netlink::new() {
            Ok(nl) => {
                for n in names {
                    if let Some(true) = c.step(format!("delete {n}"), nl.delete(n)) {
                        deleted.push((*n).to_string());
                    }
                }
            }
            Err(e) => {
                c.step("open netlink", Err::<(), _>(e));
            }
        }
        c.finish().map(|_| deleted)
    }

    /// Delete `links` in the host namespace, and inside isolated namespace `ns` (then the
    /// namespace itself) if it exists. Every step runs; every failure is reported.
    pub fn teardown_links(&self, links: &[&str], ns: &str) -> Result<(), ManagerError> {
        let mut c = Collect::default();
        c.step("delete links", self.delete_links(links));
        if netns::exists(ns) {
            let owned: Vec<String> = links.iter().map(|s| s.to_string()).collect();
            let inside = netns::run_in(&netns::path_of(ns), move || {
                let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
                Manager::new("/nonexistent").delete_links(&refs)
            });
            match inside {
                Ok(r) => {
                    c.step(format!("delete links in {ns}"), r);
                }
                Err(e) => {
                    c.step(format!("enter {ns}"), Err::<(), _>(e));
                }
            }
            c.step(format!("delete namespace {ns}"), netns::delete(ns));
        }
        c.finish()
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
