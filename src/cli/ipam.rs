//! `volt ipam ...`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{IpamCommand, Outcome, Output};
use crate::attach::Attach;
use crate::config::NetworkLookup;
use crate::net::ipam::{Ipam, Lease, Owner, Request};
use crate::plan::Paths;

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
    let ipam = Ipam::new(Paths::new(root).ipam_dir());
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
            let at = Attach::load(root);
            let Some(net) = at.plan.networks.by_name(&network) else {
                bail!("no network named {network:?}")
            };
            let request = ip.map_or(Request::Any, Request::Static);
            let configured = at
                .configured_addresses(&net.name, Some(&owner))
                .into_iter()
                .collect();
            let lease = at
                .book(&net.name)?
                .allocate(net, &owner, request, &configured, None)
                .with_context(|| format!("cannot lease an address to {owner}"))?;
            println!("{}/{}", lease.ip, net.subnet.prefix_len());
        }
        IpamCommand::Release { network, owner } => {
            let owner: Owner = owner.parse().map_err(anyhow::Error::msg)?;
            let book = Attach::load(root).book(&network)?;
            match book.release(&network, &owner)? {
                Some(l) => println!("released {} from {owner}", l.ip),
                None => println!("{owner} had no lease on {network}"),
            }
        }
        IpamCommand::Reconcile => {
            let at = Attach::load(root);
            let alive = |o: &Owner| {
                at.plan.workloads.iter().any(|w| {
                    w.attachments
                        .iter()
                        .any(|a| crate::attach::owner_of(w, a) == *o)
                })
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
