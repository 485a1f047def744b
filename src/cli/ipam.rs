//! `volt ipam ...`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::output::OutputArgs;
use super::{IpamCommand, Outcome};
use crate::attach::Attach;
use crate::config::NetworkLookup;
use crate::net::ipam::{Ask, Lease, Owner, Request};

fn print_leases(rows: &[(String, Lease)], out: &OutputArgs) -> Result<()> {
    let v: Vec<serde_json::Value> = rows
        .iter()
        .map(|(net, l)| serde_json::json!({"network": net, "ip": l.ip, "owner": l.owner.to_string(), "kind": l.owner.kind, "static": l.fixed, "since": l.since}))
        .collect();
    if out.print_json(&v)? {
        return Ok(());
    }
    let table = rows
        .iter()
        .map(|(net, l)| {
            vec![
                net.clone(),
                l.ip.to_string(),
                l.owner.to_string(),
                if l.fixed { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    out.print_table(&["NETWORK", "ADDRESS", "OWNER", "STATIC"], table);
    Ok(())
}

/// The attachment `owner` names on `network`, or why there is none.
fn attachment_of<'a>(
    at: &'a Attach,
    owner: &Owner,
    network: &str,
) -> std::result::Result<&'a crate::plan::Attachment, String> {
    let kind = match owner.kind {
        crate::net::ipam::Kind::Vm => crate::plan::Kind::Vm,
        crate::net::ipam::Kind::Container => crate::plan::Kind::Container,
    };
    let Some(w) = at.plan.workload(kind, &owner.name) else {
        return Err(format!(
            "{owner}: no {} named {} is configured",
            kind.noun(),
            owner.name
        ));
    };
    let Some(a) = w.attachments.iter().find(|a| a.nic == owner.nic) else {
        return Err(format!(
            "{owner}: {} {} has no NIC {}",
            kind.noun(),
            owner.name,
            owner.nic
        ));
    };
    if a.network.as_deref() != Some(network) {
        return Err(format!(
            "{owner}: that NIC is on {}, not on {network}",
            a.network.as_deref().unwrap_or("no network")
        ));
    }
    Ok(a)
}

/// The owner whose planned address is `ip` on `network`, other than `except`.
fn planned_owner_of(
    at: &Attach,
    network: &str,
    ip: std::net::Ipv4Addr,
    except: &Owner,
) -> Option<Owner> {
    at.plan.workloads.iter().find_map(|w| {
        w.attachments
            .iter()
            .filter(|a| a.network.as_deref() == Some(network))
            .filter(|a| a.addressing.known().map(|n| n.addr()) == Some(ip))
            .map(|a| crate::attach::owner_of(w, a))
            .find(|o| o != except)
    })
}

pub fn exec(root: &Path, command: IpamCommand) -> Result<Outcome> {
    let ipam = Attach::load(root).ipam();
    match command {
        IpamCommand::List { network, out } => {
            let named = network.is_some();
            let nets = match network {
                Some(n) => {
                    let set = crate::config::ConfigSet::load(root);
                    if set.networks.by_name(&n).is_none() {
                        bail!("no network named {n:?} (see volt net list)");
                    }
                    vec![n]
                }
                None => ipam.networks(),
            };
            // A network whose file cannot be read is said and passed over: the others are
            // still listed, and the exit status says that something was not.
            let mut rows = Vec::new();
            let mut failed = false;
            for n in nets {
                match ipam.list(&n) {
                    Ok(leases) => rows.extend(leases.into_iter().map(|l| (n.clone(), l))),
                    // The one network asked for: no listing (an empty one reads as no leases).
                    Err(e) if named => return Err(e.into()),
                    Err(e) => {
                        log::error!("network {n}: {}", crate::error_chain(&e));
                        failed = true;
                    }
                }
            }
            print_leases(&rows, &out)?;
            if failed {
                return Ok(Outcome::Failed);
            }
        }
        IpamCommand::Allocate { network, owner, ip } => {
            let owner: Owner = owner.parse().map_err(anyhow::Error::msg)?;
            let at = Attach::load(root);
            let Some(net) = at.plan.networks.by_name(&network) else {
                bail!("no network named {network:?}")
            };
            let a = attachment_of(&at, &owner, &net.name).map_err(anyhow::Error::msg)?;
            // A configured address is the owner's; nobody else's may be asked for.
            let request = match (a.addressing.known().map(|n| n.addr()), ip) {
                (Some(mine), Some(asked)) if mine != asked => bail!(
                    "{owner}: its configured address is {mine} ({}); {asked} cannot be leased to it",
                    a.source.display()
                ),
                (Some(mine), _) => Request::Static(mine),
                (None, Some(asked)) => {
                    if let Some(other) = planned_owner_of(&at, &net.name, asked, &owner) {
                        bail!("{asked} is the configured address of {other}");
                    }
                    // The rules a file's address follows: a VM's in the VM range (in the
                    // DHCP range networkd could hand it to a container), a container's in the
                    // container range.
                    let (range, what) = match owner.kind {
                        crate::net::ipam::Kind::Vm => (&net.vm_range, "VM"),
                        crate::net::ipam::Kind::Container => (&net.container_range, "container"),
                    };
                    if !range.contains(asked) {
                        bail!(
                            "{asked} is outside {}'s {what} range {range}: a {what}'s address is there",
                            net.name
                        );
                    }
                    Request::Static(asked)
                }
                (None, None) => Request::Any,
            };
            let configured = at
                .configured_addresses(&net.name, Some(&owner))
                .into_iter()
                .collect();
            let lease = at
                .book(&net.name)?
                .allocate(Ask {
                    net,
                    owner: &owner,
                    request,
                    configured: &configured,
                    mac: None,
                })
                .with_context(|| format!("cannot lease an address to {owner}"))?;
            println!("{}/{}", lease.ip, net.subnet.prefix_len());
        }
        IpamCommand::Release { network, owner } => {
            let owner: Owner = owner.parse().map_err(anyhow::Error::msg)?;
            let set = crate::config::ConfigSet::load(root);
            if set.networks.by_name(&network).is_none() {
                bail!("no network named {network:?} (see volt net list)");
            }
            let book = Attach::load(root).book(&network)?;
            match book.release(&network, &owner)? {
                Some(l) => println!("released {} from {owner}", l.ip),
                None => {
                    let elsewhere =
                        ipam.networks()
                            .into_iter()
                            .filter(|n| *n != network)
                            .find(|n| {
                                ipam.list(n)
                                    .is_ok_and(|ls| ls.iter().any(|l| l.owner == owner))
                            });
                    match elsewhere {
                        Some(n) => bail!("{owner} has no lease on {network} (its lease is on {n}: --network {n})"),
                        None => bail!("{owner} has no lease on {network}"),
                    }
                }
            }
        }
        IpamCommand::Reconcile => {
            let at = Attach::load(root);
            let (mut released, mut failed) = (0, false);
            for n in ipam.networks() {
                match ipam.reconcile(&n, &|o: &Owner| at.lease_alive(&n, o)) {
                    Ok(gone) => {
                        for l in gone {
                            println!("released {} on {n} from {} (gone)", l.ip, l.owner);
                            released += 1;
                        }
                    }
                    Err(e) => {
                        log::error!("network {n}: {}", crate::error_chain(&e));
                        failed = true;
                    }
                }
            }
            println!("{released} lease(s) released");
            if failed {
                return Ok(Outcome::Failed);
            }
        }
    }
    Ok(Outcome::Ok)
}

/// The leases of `network` for a listing: none when the lease file cannot be read. A corrupt
/// file is said once per network and process (a listing of many workloads asks for each);
/// one this user may not read (leases need root or the volt group) is not a warning.
pub(super) fn leases_for_view(root: &Path, network: &str) -> Vec<Lease> {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    match crate::net::ipam::Ipam::new(crate::plan::Paths::new(root).ipam_dir()).peek(network) {
        Ok(l) => l,
        Err(e @ crate::net::ipam::IpamError::Corrupt { .. }) => {
            let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
            if !warned.iter().any(|n| n == network) {
                log::warn!(
                    "the leases of network {network} are not shown: {} (`volt ipam list --network {network}` as root rebuilds it from the running workloads and the entries that still read, and keeps the bad file aside)",
                    crate::error_chain(&e)
                );
                warned.push(network.to_string());
            }
            Vec::new()
        }
        Err(e) => {
            log::debug!("{}", crate::error_chain(&e));
            Vec::new()
        }
    }
}
