//! `volt ipam ...`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{IpamCommand, Outcome, Output};
use crate::config::{ConfigSet, NetworkLookup};
use crate::net::ipam::{Ipam, Kind, Lease, Owner, Request};

/// Lease directory under a root.
pub fn ipam_dir(root: &Path) -> PathBuf {
    root.join("var/lib/volt/ipam")
}

/// Static addresses configured for VMs on `network`, except `owner`'s own.
fn configured_statics(set: &ConfigSet, network: &str, owner: &Owner) -> BTreeSet<Ipv4Addr> {
    let vms = set
        .vms
        .iter()
        .flat_map(|vm| vm.nics.iter().map(move |n| (vm, n)))
        .filter(|(vm, n)| {
            n.network.as_deref() == Some(network)
                && !(owner.kind == Kind::Vm && owner.name == vm.name && owner.nic == n.id)
        })
        .filter_map(|(_, n)| n.ipv4.map(|i| i.addr()));
    let containers = set
        .containers
        .iter()
        .flat_map(|c| c.nics.iter().map(move |n| (c, n)))
        .filter(|(c, n)| {
            n.network.as_deref() == Some(network)
                && !(owner.kind == Kind::Container && owner.name == c.name && owner.nic == n.id)
        })
        .filter_map(|(_, n)| n.ipv4.map(|i| i.addr()));
    vms.chain(containers).collect()
}

fn print_leases(rows: &[(String, Lease)], output: Output) -> Result<()> {
    match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(net, l)| serde_json::json!({"network": net, "ip": l.ip, "owner": l.owner.to_string(), "kind": l.owner.kind, "static": l.fixed, "since": l.since}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => {
            println!("{:<12} {:<16} {:<32} STATIC", "NETWORK", "ADDRESS", "OWNER");
            for (net, l) in rows {
                println!(
                    "{:<12} {:<16} {:<32} {}",
                    net,
                    l.ip,
                    l.owner,
                    if l.fixed { "yes" } else { "no" }
                );
            }
        }
    }
    Ok(())
}

pub fn exec(root: &Path, command: IpamCommand) -> Result<Outcome> {
    let ipam = Ipam::new(ipam_dir(root));
    match command {
        IpamCommand::List { network, output } => {
            let nets = match network {
                Some(n) => vec![n],
                None => ipam.networks(),
            };
            let mut rows = Vec::new();
            for n in nets {
                for l in ipam.list(&n)? {
                    rows.push((n.clone(), l));
                }
            }
            print_leases(&rows, output)?;
        }
        IpamCommand::Allocate { network, owner, ip } => {
            let owner: Owner = owner.parse().map_err(anyhow::Error::msg)?;
            let set = ConfigSet::load(root);
            let Some(net) = set.networks.by_name(&network) else {
                bail!("no network named {network:?}")
            };
            let request = ip.map_or(Request::Any, Request::Static);
            let lease = ipam
                .allocate(
                    net,
                    &owner,
                    request,
                    &configured_statics(&set, &net.name, &owner),
                )
                .with_context(|| format!("cannot lease an address to {owner}"))?;
            println!("{}/{}", lease.ip, net.subnet.prefix_len());
        }
        IpamCommand::Release { network, owner } => {
            let owner: Owner = owner.parse().map_err(anyhow::Error::msg)?;
            match ipam.release(&network, &owner)? {
                Some(l) => println!("released {} from {owner}", l.ip),
                None => println!("{owner} had no lease on {network}"),
            }
        }
        IpamCommand::Reconcile => {
            let set = ConfigSet::load(root);
            let alive = |o: &Owner| match o.kind {
                Kind::Vm => set
                    .vms
                    .iter()
                    .any(|v| v.name == o.name && v.nics.iter().any(|n| n.id == o.nic)),
                Kind::Container => set
                    .containers
                    .iter()
                    .any(|c| c.name == o.name && c.nics.iter().any(|n| n.id == o.nic)),
            };
            let mut released = 0;
            for n in ipam.networks() {
                for l in ipam.reconcile(&n, &alive)? {
                    println!("released {} on {n} from {} (gone)", l.ip, l.owner);
                    released += 1;
                }
            }
            println!("{released} lease(s) released");
        }
    }
    Ok(Outcome::Ok)
}
