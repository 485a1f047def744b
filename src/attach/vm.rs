//! A VM NIC's host link: a TAP through networkd (falling back to creating it directly), a
//! TAP created directly, a TAP alone in an isolated namespace, or a macvtap; then the MAC the
//! guest may use on the bridge, its address, and the anti-spoofing rules of its port.

use std::time::Duration;

use super::{book_error, link_params, volt_user, Attach, AttachError, LinkRecord};
use crate::config::{nic_mac, NetworkLookup};
use crate::fsutil::write_atomic_if_changed;
use crate::net::ipam::{Ask, Owner, Request};
use crate::net::link;
use crate::net::manager::TapOptions;
use crate::net::netlink::Netlink;
use crate::net::networkd::{self, Networkd, NetworkdError};
use crate::plan::{Addressing, Attachment, Creation, LinkKind, Workload};
use crate::sys::netns;

/// How long networkd gets to create and enslave a TAP before Volt does it itself.
const NETWORKD_TIMEOUT: Duration = Duration::from_secs(5);

/// Persistent (a restarted VMM finds it again; the owner's stop removes it) and owned by the
/// user the VMM drops to, so it can still attach queues after the drop.
fn tap_options() -> TapOptions {
    TapOptions {
        persist: true,
        owner: volt_user(),
    }
}

/// networkd's way: reload over D-Bus and wait. `Err` carries why it did not work out.
fn via_networkd(name: &str, bridge: &str) -> Result<u32, NetworkdError> {
    match Networkd::connect() {
        Ok(n) => {
            n.reload()?;
            n.wait_for_link(name, Some(bridge), NETWORKD_TIMEOUT)
        }
        Err(NetworkdError::Bus(e)) => {
            log::debug!("system bus not reachable ({e}); using networkctl");
            networkd::networkctl_reload()?;
            networkd::wait_for_link(name, Some(bridge), NETWORKD_TIMEOUT)
        }
        Err(e) => Err(e),
    }
}

/// Bring `a`'s link up and its port's policy in place. The two run at once: the rules name
/// the port (`iifname`), not its index, and the MAC check and the lease need nothing of the
/// new link, so the anti-spoofing rules (one `nft` process, ~20 ms) go in while networkd
/// creates and enslaves the TAP (~15 ms). The VM starts only after both (`After=` its owner).
pub(super) fn up(at: &Attach, w: &Workload, a: &Attachment) -> Result<LinkRecord, AttachError> {
    let (created_by, port) = std::thread::scope(|s| {
        let port = s.spawn(|| port_policy(at, w, a));
        (create(at, a), port.join())
    });
    let created_by = created_by?;
    let (mac, ipv4) = match port {
        Ok(r) => r?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    // Both done: the link is on its bridge, and the MAC its guest may use is known.
    super::pin(at, a, mac)?;
    Ok(LinkRecord {
        link: a.link.clone(),
        kind: w.kind.as_str().into(),
        workload: w.name.clone(),
        nic: a.nic.clone(),
        mac: mac.to_string(),
        ipv4,
        gateway: a.gateway,
        netns: a.netns.clone(),
        created_by: created_by.into(),
        dhcp: None,
    })
}

/// The MAC the guest may use on the bridge, its address, and the rules that allow only them
/// out of the port.
fn port_policy(
    at: &Attach,
    w: &Workload,
    a: &Attachment,
) -> Result<(crate::config::MacAddr, Option<ipnet::Ipv4Net>), AttachError> {
    let mac = resolve_mac(at, a)?;
    let ipv4 = address(at, w, a, mac)?;
    // Only this NIC's MAC (and address, when known) may leave its port on the bridge.
    let source = super::ipv4_source(at, a, ipv4.map(|n| n.addr()));
    super::protect(at, a, mac, source)?;
    Ok((mac, ipv4))
}

/// Create (or find) `a`'s host link as the plan says; returns who created it.
fn create(at: &Attach, a: &Attachment) -> Result<&'static str, AttachError> {
    let what = a.describe();
    let created_by = match (&a.kind, &a.netns, a.creation) {
        (LinkKind::Macvtap { parent, mode }, _, _) => {
            if parent.is_empty() {
                return Err(AttachError::NoParent { what });
            }
            let m = at
                .manager()
                .create_macvtap(parent, &link_params(a), *mode, volt_user())
                .map_err(AttachError::manager(format!(
                    "{what}: cannot create macvtap {}",
                    a.link
                )))?;
            log::info!(
                "{} (ifindex {}) is up on {parent} for {what}; the VMM opens {}",
                a.link,
                m.index,
                m.device.display()
            );
            "direct"
        }
        (_, Some(ns), _) => {
            isolated(at, a, ns)?;
            "direct"
        }
        (_, None, Creation::Networkd) => {
            let bridge = a
                .bridge
                .as_deref()
                .ok_or(AttachError::NoBridge { what: what.clone() })?;
            for f in &a.networkd {
                write_atomic_if_changed(&at.paths.networkd_dir().join(&f.name), &f.text)?;
            }
            match via_networkd(&a.link, bridge) {
                Ok(index) => {
                    add_altname(a);
                    log::info!(
                        "{} (ifindex {index}) is up on {bridge} for {what} (networkd)",
                        a.link
                    );
                    "networkd"
                }
                Err(why) => {
                    log::warn!(
                        "{}: {}; falling back to creating the TAP directly",
                        a.link,
                        crate::error_chain(&why)
                    );
                    direct(at, a, bridge)?;
                    "direct"
                }
            }
        }
        (_, None, Creation::Direct) => {
            let bridge = a
                .bridge
                .as_deref()
                .ok_or(AttachError::NoBridge { what: what.clone() })?;
            direct(at, a, bridge)?;
            "direct"
        }
    };
    Ok(created_by)
}

fn add_altname(a: &Attachment) {
    let r = Netlink::new().and_then(|nl| nl.add_altname(&a.link, &a.altname));
    if let Err(e) = r {
        log::warn!("{}: {}", a.link, crate::error_chain(&e));
    }
}

/// Without networkd: the bridge (when the network allows creating it), then the TAP
/// (persistent, owned by `volt`), or, if networkd made the TAP but never enslaved it, the
/// enslavement.
fn direct(at: &Attach, a: &Attachment, bridge: &str) -> Result<(), AttachError> {
    let name = a.link.as_str();
    if let Some(net) = at.plan.networks.by_bridge(bridge) {
        let created = at
            .manager()
            .ensure_bridge(net)
            .map_err(AttachError::manager(format!(
                "{}: bridge {bridge}",
                a.describe()
            )))?;
        if created {
            log::info!("created bridge {bridge} for network {} directly", net.name);
        }
    }
    let nl_err = |what: String| move |source| AttachError::Netlink { what, source };
    let nl = Netlink::new().map_err(nl_err("cannot open rtnetlink".into()))?;
    let exists = nl
        .link(name)
        .map_err(nl_err(format!("cannot look up {name}")))?
        .is_some();
    if exists {
        let enslave = format!("{name}: cannot enslave it to {bridge}");
        nl.set_mtu(name, a.mtu).map_err(nl_err(enslave.clone()))?;
        // Under the bridges lock, as a TAP the manager creates (see Manager::enslave).
        at.manager()
            .enslave(name, bridge)
            .map_err(AttachError::manager(enslave.clone()))?;
        nl.set_up(name).map_err(nl_err(enslave))?;
        add_altname(a);
        log::info!("{name}: enslaved to {bridge} directly");
    } else {
        let opts = tap_options();
        at.manager()
            .create_tap_with(bridge, &link_params(a), &opts)
            .map_err(AttachError::manager(format!(
                "{}: cannot create TAP {name}",
                a.describe()
            )))?;
        log::info!(
            "{name}: created directly on {bridge} (persistent{}) for {}",
            if opts.owner.is_some() {
                ", owned by volt"
            } else {
                ""
            },
            a.describe()
        );
    }
    Ok(())
}

/// An isolated network's TAP: alone in the VM's own namespace, kept when it is already there.
fn isolated(at: &Attach, a: &Attachment, ns: &str) -> Result<(), AttachError> {
    if netns::exists(ns) {
        let name = a.link.clone();
        let present = netns::run_in(&netns::path_of(ns), move || link::index(&name).is_some())
            .unwrap_or(false);
        if present {
            log::info!(
                "{} is up alone in namespace {ns} for {} (kept)",
                a.link,
                a.describe()
            );
            return Ok(());
        }
    }
    at.manager()
        .create_isolated_tap(&link_params(a), ns, &tap_options())
        .map_err(AttachError::manager(format!(
            "{}: cannot create TAP {} in {ns}",
            a.describe(),
            a.link
        )))?;
    log::info!(
        "{} is up alone in namespace {ns} for {} (isolated network)",
        a.link,
        a.describe()
    );
    Ok(())
}

/// The MAC the guest uses: the configured one unless the bridge already has it on another
/// port; a derived MAC is then replaced by the next stable candidate, an explicit one is an
/// error.
fn resolve_mac(at: &Attach, a: &Attachment) -> Result<crate::config::MacAddr, AttachError> {
    let Some(bridge) = a.bridge.as_deref().filter(|b| link::index(b).is_some()) else {
        return Ok(a.mac);
    };
    let Some(w) = at
        .plan
        .workloads
        .iter()
        .find(|w| w.name == a.workload && w.kind == a.workload_kind)
    else {
        return Ok(a.mac);
    };
    let uuid = w.uuid;
    let nic = a.nic.clone();
    let next = move |attempt: u32| nic_mac(&uuid, &nic, attempt);
    let (mac, _) = at
        .manager()
        .resolve_mac(bridge, &link_params(a), a.mac_explicit, &next)
        .map_err(AttachError::manager(format!(
            "{}: cannot choose a MAC on {bridge}",
            a.describe()
        )))?;
    Ok(mac)
}

/// The guest's address: the planned one (claimed in the lease file, or cluster-wide on a
/// shared network), else a lease from the network's pool (the same lease again while it
/// lasts).
fn address(
    at: &Attach,
    w: &Workload,
    a: &Attachment,
    mac: crate::config::MacAddr,
) -> Result<Option<ipnet::Ipv4Net>, AttachError> {
    let Some(net) = at.network(a) else {
        return Ok(a.addressing.known());
    };
    let book = at.book(&net.name)?;
    let owner = Owner::vm(&w.name, &a.nic);
    let configured = at
        .configured_addresses(&net.name, Some(&owner))
        .into_iter()
        .collect();
    let ask = Ask {
        net,
        owner: &owner,
        request: Request::Any,
        configured: &configured,
        mac: Some(mac),
    };
    if let Some(known) = a.addressing.known() {
        // Claimed like any lease: refused while another workload holds it (a pool lease
        // given out before this file named the address).
        let request = Request::Static(known.addr());
        book.allocate(Ask { request, ..ask })
            .map_err(book_error(a.describe()))?;
        return Ok(Some(known));
    }
    if a.addressing != Addressing::Pool {
        return Ok(None);
    }
    let lease = book.allocate(ask).map_err(book_error(a.describe()))?;
    Ok(ipnet::Ipv4Net::new(lease.ip, net.subnet.prefix_len()).ok())
}
