//! systemd-networkd over D-Bus (`org.freedesktop.network1`): reload its configuration, find
//! a link, wait with a bound and backoff until it has configured one, and read the leases
//! its DHCP server on a link has handed out ([`leases`]).
//!
//! [`Networkd::connect`] says clearly when networkd is not running (its bus name has no
//! owner) instead of bus-activating it. When the system bus itself is not reachable,
//! [`reload`] falls back to `networkctl reload`.

use std::time::{Duration, Instant};

use zbus::OwnedObjectPath;
use zbus_systemd::network1::{LinkProxy, ManagerProxy};

use super::netlink::Netlink;

#[path = "networkd_leases.rs"]
pub mod leases;

/// networkd's bus name.
pub const BUS_NAME: &str = "org.freedesktop.network1";

#[derive(Debug, thiserror::Error)]
pub enum NetworkdError {
    #[error("cannot connect to the system bus")]
    Bus(#[source] zbus::Error),
    #[error("systemd-networkd is not running ({BUS_NAME} has no owner on the system bus)")]
    NotRunning,
    #[error("networkd refused {what}")]
    Call {
        what: String,
        #[source]
        source: zbus::Error,
    },
    #[error("cannot run networkctl reload")]
    Spawn(#[source] std::io::Error),
    #[error("networkctl reload failed ({status}): {stderr}")]
    Reload {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("networkd did not create {link} within {timeout:?}")]
    LinkTimeout { link: String, timeout: Duration },
    #[error("networkd created {link} but did not enslave it to {bridge} within {timeout:?} (master: {master}, administrative state: {state})")]
    EnslaveTimeout {
        link: String,
        bridge: String,
        master: String,
        state: String,
        timeout: Duration,
    },
    #[error("networkd failed to configure {link} (administrative state {state}); see journalctl -u systemd-networkd")]
    LinkFailed { link: String, state: String },
    #[error("networkd does not know {link}")]
    UnknownLink { link: String },
    #[error("networkd's DHCP server reported a lease Volt cannot read: {message}")]
    Lease { message: String },
    #[error("cannot read CLOCK_BOOTTIME")]
    Clock(#[source] std::io::Error),
}

/// A link's states as networkd reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub ifindex: i32,
    /// `OperationalState`: off, no-carrier, dormant, degraded-carrier, carrier, degraded,
    /// enslaved, routable.
    pub operational: String,
    /// `AdministrativeState`: pending, initialized, configuring, configured, unmanaged,
    /// failed, linger.
    pub administrative: String,
}

/// A connection to networkd on the system bus.
pub struct Networkd {
    conn: zbus::Connection,
}

impl Networkd {
    /// Connect to the system bus and check that networkd is running. Never bus-activates
    /// networkd.
    pub fn connect() -> Result<Networkd, NetworkdError> {
        zbus::block_on(async {
            let conn = zbus::Connection::system()
                .await
                .map_err(NetworkdError::Bus)?;
            let dbus = zbus::fdo::DBusProxy::new(&conn)
                .await
                .map_err(NetworkdError::Bus)?;
            let name = zbus::names::BusName::try_from(BUS_NAME).map_err(NetworkdError::Bus)?;
            let owned = dbus
                .name_has_owner(name)
                .await
                .map_err(|e| NetworkdError::Bus(zbus::Error::from(e)))?;
            if !owned {
                return Err(NetworkdError::NotRunning);
            }
            Ok(Networkd { conn })
        })
    }

    fn call(what: &str, e: zbus::Error) -> NetworkdError {
        NetworkdError::Call {
            what: what.into(),
            source: e,
        }
    }

    /// `Manager.Reload`: networkd rereads its files; new netdevs exist when it returns.
    pub fn reload(&self) -> Result<(), NetworkdError> {
        zbus::block_on(async {
            let m = ManagerProxy::new(&self.conn)
                .await
                .map_err(|e| Self::call("Reload", e))?;
            m.reload().await.map_err(|e| Self::call("Reload", e))
        })
    }

    /// `Manager.GetLinkByName`: the link's index and object path, `None` if networkd does not
    /// know it.
    pub fn link_by_name(
        &self,
        name: &str,
    ) -> Result<Option<(i32, OwnedObjectPath)>, NetworkdError> {
        zbus::block_on(async {
            let m = ManagerProxy::new(&self.conn)
                .await
                .map_err(|e| Self::call("GetLinkByName", e))?;
            match m.get_link_by_name(name.to_string()).await {
                Ok(v) => Ok(Some(v)),
                // networkd answers an unknown name with a method error (NoSuchLink).
                Err(zbus::Error::MethodError(..)) | Err(zbus::Error::FDO(_)) => Ok(None),
                Err(e) => Err(Self::call(&format!("GetLinkByName({name})"), e)),
            }
        })
    }

    /// Operational and administrative state of link `name`, `None` if unknown.
    pub fn link_state(&self, name: &str) -> Result<Option<LinkState>, NetworkdError> {
        let Some((ifindex, path)) = self.link_by_name(name)? else {
            return Ok(None);
        };
        zbus::block_on(async {
            let what = format!("the state of {name}");
            let l = LinkProxy::builder(&self.conn)
                .path(path)
                .build()
                .await
                .map_err(|e| Self::call(&what, e))?;
            let operational = l
                .operational_state()
                .await
                .map_err(|e| Self::call(&what, e))?;
            let administrative = l
                .administrative_state()
                .await
                .map_err(|e| Self::call(&what, e))?;
            Ok(Some(LinkState {
                ifindex,
                operational,
                administrative,
            }))
        })
    }

    /// Wait, with backoff up to `timeout`, until networkd knows `link`, has configured it
    /// (`AdministrativeState` configured) and (if given) it is enslaved to `bridge`.
    /// Returns the ifindex.
    pub fn wait_for_link(
        &self,
        link: &str,
        bridge: Option<&str>,
        timeout: Duration,
    ) -> Result<u32, NetworkdError> {
        let nl = Netlink::new().ok();
        wait_with_backoff(link, bridge, timeout, || {
            let state = self.link_state(link)?;
            let master = nl.as_ref().and_then(|n| n.master(link).ok().flatten());
            if let Some(s) = &state {
                if matches!(s.administrative.as_str(), "failed" | "linger") {
                    return Err(NetworkdError::LinkFailed {
                        link: link.into(),
                        state: s.administrative.clone(),
                    });
                }
                let configured = s.administrative == "configured";
                let enslaved = bridge.is_none_or(|b| master.as_deref() == Some(b));
                if configured && enslaved {
                    return Ok(Probe::Ready(s.ifindex as u32));
                }
            }
            Ok(Probe::Waiting {
                master,
                state: state.map(|s| s.administrative),
            })
        })
    }
}

/// One look at a link being waited for.
enum Probe {
    /// Up as wanted: its ifindex.
    Ready(u32),
    /// Not yet: its master and administrative state so far, for the timeout's message.
    Waiting {
        master: Option<String>,
        state: Option<String>,
    },
}

/// Call `probe` with backoff (5 ms doubling up to 200 ms) until it is ready, fails, or
/// `timeout` has passed.
fn wait_with_backoff(
    link: &str,
    bridge: Option<&str>,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Probe, NetworkdError>,
) -> Result<u32, NetworkdError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        let (master, state) = match probe()? {
            Probe::Ready(i) => return Ok(i),
            Probe::Waiting { master, state } => (master, state),
        };
        if start.elapsed() >= timeout {
            return Err(wait_error(link, bridge, master, state, timeout));
        }
        std::thread::sleep(delay.min(timeout.saturating_sub(start.elapsed())));
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Why a wait for `link` timed out: it never appeared (`state` is `None`), or it did but is not
/// configured and enslaved to `bridge` (its administrative `state`, its `master`).
fn wait_error(
    link: &str,
    bridge: Option<&str>,
    master: Option<String>,
    state: Option<String>,
    timeout: Duration,
) -> NetworkdError {
    match state {
        None => NetworkdError::LinkTimeout {
            link: link.into(),
            timeout,
        },
        Some(state) => NetworkdError::EnslaveTimeout {
            link: link.into(),
            bridge: bridge.unwrap_or("-").into(),
            master: master.unwrap_or_else(|| "none".into()),
            state,
            timeout,
        },
    }
}

/// Ask networkd to reload: over D-Bus, or with `networkctl reload` when the system bus is
/// not reachable. Fails with [`NetworkdError::NotRunning`] when networkd is not running.
pub fn reload() -> Result<(), NetworkdError> {
    match Networkd::connect() {
        Ok(n) => n.reload(),
        Err(NetworkdError::Bus(e)) => {
            log::debug!("system bus not reachable ({e}); using networkctl reload");
            networkctl_reload()
        }
        Err(e) => Err(e),
    }
}

/// `networkctl reload`.
pub fn networkctl_reload() -> Result<(), NetworkdError> {
    let out = std::process::Command::new("networkctl")
        .arg("reload")
        .output()
        .map_err(NetworkdError::Spawn)?;
    if !out.status.success() {
        return Err(NetworkdError::Reload {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Wait, with backoff, until `link` exists and (if given) is enslaved to `bridge`, watching
/// the kernel over netlink only (for callers without the bus).
pub fn wait_for_link(
    link: &str,
    bridge: Option<&str>,
    timeout: Duration,
) -> Result<u32, NetworkdError> {
    wait_with_backoff(link, bridge, timeout, || {
        let index = super::link::index(link);
        let master = super::link::master(link);
        match (index, bridge) {
            (Some(i), None) => return Ok(Probe::Ready(i)),
            (Some(i), Some(b)) if master.as_deref() == Some(b) => return Ok(Probe::Ready(i)),
            _ => {}
        }
        Ok(Probe::Waiting {
            master,
            state: index.map(|_| "unknown".to_string()),
        })
    })
}
