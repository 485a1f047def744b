//! The manager's veth pairs: a container's host end on a bridge (or alone in its isolated
//! namespace) and the end nspawn moves into the container.

use super::{Manager, ManagerError, Veth};
use crate::config::MacAddr;
use crate::net::netlink::Netlink;
use crate::sys::netns;

impl Manager {
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
            self.put_on_bridge(&nl, &v.host_end, bridge)?;
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
                    self.put_on_bridge(&nl, &v.host_end, bridge)?;
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
}
