//! `volt net ...`.

use std::path::Path;

use anyhow::{bail, Result};

use super::{Outcome, Output};
use crate::attach::Attach;
use crate::config::{ConfigSet, NetworkLookup};
use crate::net::ipam::Ipam;
use crate::net::manager::Manager;
use crate::plan::Paths;

pub fn list(root: &Path, output: Output) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&set.networks.list)?),
        Output::Table => {
            println!(
                "{:<12} {:<10} {:<16} {:<15} {:<30} {:<32} SOURCE",
                "NAME", "TYPE", "SUBNET", "GATEWAY", "VM POOL", "CONTAINER POOL"
            );
            for n in &set.networks.list {
                let kind = serde_json::to_value(n.kind)?
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                let source = n
                    .source
                    .as_ref()
                    .map_or_else(|| "built-in".to_string(), |p| p.display().to_string());
                println!(
                    "{:<12} {:<10} {:<16} {:<15} {:<30} {:<32} {}",
                    n.name,
                    kind,
                    n.subnet.to_string(),
                    n.gateway.to_string(),
                    n.vm_range.to_string(),
                    n.container_range.to_string(),
                    source
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

pub fn show(root: &Path, name: &str, output: Output) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let Some(net) = set
        .networks
        .by_name(name)
        .or_else(|| set.networks.by_bridge(name))
    else {
        bail!("no network named {name:?} (see volt net list)")
    };
    let leases = Ipam::new(Paths::new(root).ipam_dir()).list(&net.name)?;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"network": net, "leases": leases}))?
        ),
        Output::Table => {
            println!(
                "{}: bridge {} {} gateway {} ({:?})",
                net.name, net.bridge, net.subnet, net.gateway, net.kind
            );
            println!(
                "  VM pool {}  container pool {}  DHCP {}  MTU {}",
                net.vm_range,
                net.container_range,
                if net.dhcp { "on" } else { "off" },
                net.mtu
            );
            for (k, v) in &net.reservations {
                println!("  reservation {k} = {v}");
            }
            for l in &leases {
                println!(
                    "  lease {} {}{}",
                    l.ip,
                    l.owner,
                    if l.fixed { " (static)" } else { "" }
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

fn find_net<'a>(set: &'a ConfigSet, name: &str) -> Result<&'a crate::config::Network> {
    match set
        .networks
        .by_name(name)
        .or_else(|| set.networks.by_bridge(name))
    {
        Some(n) => Ok(n),
        None => bail!("no network named {name:?} (see volt net list)"),
    }
}

/// `volt net up`: the bridge, and for host-only networks forwarding and the NAT rules with
/// every declared port map resolved to its workload's address.
pub fn up(root: &Path, name: &str) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let net = find_net(&set, name)?;
    let targets = Attach::load(root).port_map_targets(net)?;
    let mgr = Manager::new(Paths::new(root).runtime_dir());
    let r = mgr.net_up(net, &targets)?;
    println!(
        "{}: bridge {} {}{}",
        net.name,
        net.bridge,
        if r.bridge_created {
            "created"
        } else {
            "present"
        },
        if r.nat {
            format!(
                ", NAT to {} with {} port map(s) in table ip {}",
                net.uplink.as_deref().unwrap_or("-"),
                r.port_maps,
                crate::net::nat::TABLE
            )
        } else {
            String::new()
        }
    );
    Ok(Outcome::Ok)
}

/// `volt net down`: the NAT rules, and the bridge if Volt created it.
pub fn down(root: &Path, name: &str) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let net = find_net(&set, name)?;
    let mgr = Manager::new(Paths::new(root).runtime_dir());
    mgr.net_down(net)?;
    println!("{}: down", net.name);
    Ok(Outcome::Ok)
}
