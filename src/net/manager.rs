//! The unified network manager: bridges, TAPs, veths and macvtaps for VMs and containers,
//! per-workload namespaces for isolated networks, and host-only NAT.
//!
//! Every verb acts in the calling thread's network namespace (a fresh [`Netlink`] per call).
//! Teardown collects every error instead of stopping at the first.

use std::path::{Path, PathBuf};

use crate::config::{MacAddr, MacvtapMode, Network, NetworkType};

use super::nat::{self, NatError, PortTarget};
use super::netlink::{Netlink, NetlinkError, NetnsTarget};
use crate::sys::netns::{self, NetnsError};
use crate::sys::tap::{Tap, TapError};

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

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ManagerError {
    let what = what.into();
    move |source| ManagerError::Io { what, source }
}

/// Set IPv4 forwarding on one interface of the calling thread's namespace.
fn set_forwarding(ifname: &str) -> Result<(), ManagerError> {
    let p = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    std::fs::write(&p, "1").map_err(io(format!("enable forwarding on {ifname} ({p})")))
}

/// Collects teardown failures and keeps going.
#[derive(Default)]
struct Collect(Vec<(String, ManagerError)>);

impl Collect {
    fn step<T>(
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

    fn finish(self) -> Result<(), ManagerError> {
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

    fn bridge_marker(&self, bridge: &str) -> PathBuf {
        self.state_dir.join("bridges").join(bridge)
    }

    /// Make sure `net`'s bridge exists and is up. A missing bridge is created (STP off,
    /// forward delay 0, the gateway address, the network's MTU) when the network allows it,
    /// else this fails naming the bridge. Returns whether it was created.
    pub fn ensure_bridge(&self, net: &Network) -> Result<bool, ManagerError> {
        let nl = Netlink::new()?;
        match nl.link(&net.bridge)? {
            Some(l) if l.kind.as_deref() == Some("bridge") => {
                if !l.up {
                    nl.set_up(&net.bridge)?;
                }
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
                let mtu = (net.mtu != 1500).then_some(net.mtu);
                nl.create_bridge(&net.bridge, None, mtu)?;
                let r = (|| -> Result<(), ManagerError> {
                    nl.add_ipv4(&net.bridge, net.gateway, net.subnet.prefix_len())?;
                    nl.set_up(&net.bridge)?;
                    let marker = self.bridge_marker(&net.bridge);
                    if let Some(d) = marker.parent() {
                        std::fs::create_dir_all(d)
                            .map_err(io(format!("create {}", d.display())))?;
                    }
                    std::fs::write(&marker, format!("{}\n", net.name))
                        .map_err(io(format!("write {}", marker.display())))
                })();
                if let Err(e) = r {
                    let _ = nl.delete(&net.bridge);
                    return Err(e);
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
            let uplink = net.uplink.as_deref().unwrap_or_default();
            let nl = Netlink::new()?;
            if nl.link(uplink)?.is_none() {
                return Err(ManagerError::MissingLink {
                    what: "uplink",
                    name: uplink.into(),
                });
            }
            set_forwarding(&net.bridge)?;
            set_forwarding(uplink)?;
            nat::apply_up(net, targets)?;
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

    fn bridge_present(nl: &Netlink, bridge: &str) -> Result<u32, ManagerError> {
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
            nl.set_master(&tap.name, bridge)?;
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

    fn altname(nl: &Netlink, link: &str, alt: &str) {
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

    fn move_into_isolated(&self, nl: &Netlink, link: &str, ns: &str) -> Result<(), ManagerError> {
        if !netns::exists(ns) {
            netns::create(ns)?;
        }
        let f = netns::open(&netns::path_of(ns))?;
        nl.move_to_netns(link, NetnsTarget::Fd(std::os::fd::AsFd::as_fd(&f)), None)?;
        let name = link.to_string();
        netns::run_in(&netns::path_of(ns), move || {
            let nl = Netlink::new()?;
            nl.set_up(&name)
        })??;
        Ok(())
    }

    /// A veth pair with its host end on `bridge` (with the bridge's MTU, the altname, up)
    /// and the other end left for the container, with `mac` when given.
    pub fn create_veth(
        &self,
        bridge: &str,
        v: &Veth,
        altname: &str,
        mac: Option<MacAddr>,
    ) -> Result<(), ManagerError> {
        let nl = Netlink::new()?;
        let mtu = Self::bridge_present(&nl, bridge)?;
        self.new_veth(&nl, v, mtu)?;
        let r = (|| -> Result<(), ManagerError> {
            if let Some(m) = mac {
                nl.set_mac(&v.container_end, m)?;
            }
            nl.set_master(&v.host_end, bridge)?;
            Self::altname(&nl, &v.host_end, altname);
            nl.set_up(&v.host_end)?;
            Ok(())
        })();
        if let Err(e) = r {
            let _ = nl.delete(&v.host_end);
            return Err(e);
        }
        log::info!(
            "created veth {} ({altname}) on {bridge} / {}",
            v.host_end,
            v.container_end
        );
        Ok(())
    }

    fn new_veth(&self, nl: &Netlink, v: &Veth, mtu: u32) -> Result<(), ManagerError> {
        if nl.delete(&v.host_end)? {
            log::info!("replaced a stale {}", v.host_end);
        }
        nl.create_veth(&v.host_end, &v.container_end)?;
        let r = nl
            .set_mtu(&v.host_end, mtu)
            .and_then(|_| nl.set_mtu(&v.container_end, mtu));
        if let Err(e) = r {
            let _ = nl.delete(&v.host_end);
            return Err(e.into());
        }
        Ok(())
    }

    /// The pair `v` on `bridge`: kept when both ends exist, are peers and the host end is
    /// on the bridge (re-enslaved and set up if needed, MAC corrected); otherwise replaced.
    /// Returns whether it was (re)created.
    pub fn ensure_veth(
        &self,
        bridge: &str,
        v: &Veth,
        altname: &str,
        mac: Option<MacAddr>,
    ) -> Result<bool, ManagerError> {
        let nl = Netlink::new()?;
        let host = nl.link(&v.host_end)?;
        let cend = nl.link(&v.container_end)?;
        if let (Some(h), Some(c)) = (&host, &cend) {
            let veths = h.kind.as_deref() == Some("veth") && c.kind.as_deref() == Some("veth");
            if veths && h.parent == Some(c.index) {
                Self::bridge_present(&nl, bridge)?;
                let br = nl.index(bridge)?;
                if h.master != Some(br) {
                    nl.set_master(&v.host_end, bridge)?;
                }
                if !h.up {
                    nl.set_up(&v.host_end)?;
                }
                if let Some(m) = mac.filter(|m| c.mac != Some(*m)) {
                    nl.set_mac(&v.container_end, m)?;
                }
                return Ok(false);
            }
        }
        if host.is_none() && nl.delete(&v.container_end)? {
            log::info!("removed a stray {}", v.container_end);
        }
        self.create_veth(bridge, v, altname, mac)?;
        Ok(true)
    }

    /// The pair `v` of a container on an isolated network: the host end alone in namespace
    /// `ns`. Kept when the container end and the namespace exist; else rebuilt.
    pub fn ensure_isolated_veth(
        &self,
        v: &Veth,
        altname: &str,
        ns: &str,
        mac: Option<MacAddr>,
    ) -> Result<bool, ManagerError> {
        let nl = Netlink::new()?;
        if nl
            .link(&v.container_end)?
            .is_some_and(|c| c.kind.as_deref() == Some("veth"))
            && netns::exists(ns)
        {
            return Ok(false);
        }
        if let Err(e) = self.teardown_links(&[&v.host_end], ns) {
            log::warn!("{}", crate::error_chain(&e));
        }
        self.create_isolated_veth(v, altname, ns)?;
        if let Some(m) = mac {
            nl.set_mac(&v.container_end, m)?;
        }
        Ok(true)
    }

    /// A veth pair whose host end lives alone in namespace `ns` (the container end stays
    /// here for the container).
    pub fn create_isolated_veth(
        &self,
        v: &Veth,
        altname: &str,
        ns: &str,
    ) -> Result<(), ManagerError> {
        let nl = Netlink::new()?;
        self.new_veth(&nl, v, 1500)?;
        Self::altname(&nl, &v.host_end, altname);
        if let Err(e) = self.move_into_isolated(&nl, &v.host_end, ns) {
            let _ = nl.delete(&v.host_end);
            return Err(e);
        }
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

    /// A macvtap on `parent` in `mode` with the link's MAC and MTU, up, and its character
    /// device (made from sysfs when udev did not), owned by `owner` when given.
    pub fn create_macvtap(
        &self,
        parent: &str,
        link: &LinkParams,
        mode: MacvtapMode,
        owner: Option<(u32, Option<u32>)>,
    ) -> Result<Macvtap, ManagerError> {
        let nl = Netlink::new()?;
        if nl.link(parent)?.is_none() {
            return Err(ManagerError::MissingLink {
                what: "macvtap parent",
                name: parent.into(),
            });
        }
        if nl.delete(&link.name)? {
            log::info!("replaced a stale {}", link.name);
        }
        let index = nl.create_macvtap(&link.name, parent, mode, Some(link.mac), Some(link.mtu))?;
        let r = (|| -> Result<PathBuf, ManagerError> {
            Self::altname(&nl, &link.name, &link.altname);
            nl.set_up(&link.name)?;
            let dev = macvtap_device(&self.dev_dir, &link.name, index)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dev, Some(uid), gid)
                    .map_err(io(format!("chown {}", dev.display())))?;
            }
            Ok(dev)
        })();
        match r {
            Ok(device) => {
                log::info!(
                    "created macvtap {} ({mode:?}) on {parent} for {}: {}",
                    link.name,
                    link.altname,
                    device.display()
                );
                Ok(Macvtap {
                    name: link.name.clone(),
                    index,
                    device,
                })
            }
            Err(e) => {
                let _ = nl.delete(&link.name);
                Err(e)
            }
        }
    }

    /// SR-IOV VF passthrough: designed, not implemented (ARCHITECTURE.md "SR-IOV"). Says why
    /// this host cannot do it.
    pub fn sriov_vf(&self, parent: &str) -> Result<PathBuf, ManagerError> {
        let p = Path::new("/sys/class/net")
            .join(parent)
            .join("device/sriov_numvfs");
        let reason = match std::fs::read_to_string(&p) {
            Ok(n) if n.trim() != "0" => format!(
                "{parent} has {} VF(s), but Volt does not implement VF assignment (VFIO) yet",
                n.trim()
            ),
            Ok(_) => format!("{parent} has no virtual functions enabled (sriov_numvfs is 0)"),
            Err(_) => format!(
                "{parent} has no SR-IOV capability ({} is missing)",
                p.display()
            ),
        };
        Err(ManagerError::SriovUnsupported { reason })
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

/// The character device of macvtap `name` (ifindex `index`): `<dev_dir>/tap<index>`,
/// created from sysfs (`/sys/class/net/<name>/macvtap/tap<index>/dev`) when udev did not.
/// sysfs shows the namespace it was mounted in: call this where it matches.
pub fn macvtap_device(dev_dir: &Path, name: &str, index: u32) -> Result<PathBuf, ManagerError> {
    let dev = dev_dir.join(format!("tap{index}"));
    let sys = Path::new("/sys/class/net")
        .join(name)
        .join(format!("macvtap/tap{index}/dev"));
    let err = |source| ManagerError::MacvtapDevice {
        name: name.into(),
        path: sys.clone(),
        source,
    };
    let text = match std::fs::read_to_string(&sys) {
        Ok(t) => t,
        Err(_) if dev.exists() => return Ok(dev),
        Err(e) => return Err(err(e)),
    };
    let (maj, min) = text
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| err(std::io::Error::other(format!("bad dev {text:?}"))))?;
    let want = libc::makedev(maj, min);
    if let Ok(m) = std::fs::metadata(&dev) {
        use std::os::unix::fs::MetadataExt;
        if m.rdev() == want {
            return Ok(dev);
        }
        std::fs::remove_file(&dev).map_err(io(format!("remove stale {}", dev.display())))?;
    }
    let c = std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: c is a valid path; mknod creates a device node and touches nothing else.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, want) } != 0 {
        return Err(ManagerError::Io {
            what: format!("create {} ({maj}:{min})", dev.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(dev)
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
