//! `volt vm ...`.

use std::path::Path;

use anyhow::Result;

use super::{Outcome, Output};
use crate::config::ConfigSet;

pub fn list(root: &Path, output: Output) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    for e in &set.errors {
        log::warn!("{}", e.report());
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&set.vms)?),
        Output::Table => {
            println!(
                "{:<20} {:<36} {:>5} {:>8} {:<9} NICS",
                "NAME", "UUID", "VCPUS", "MEMORY", "AUTOSTART"
            );
            for vm in &set.vms {
                let nics: Vec<String> = vm
                    .nics
                    .iter()
                    .map(|n| {
                        let place = n.bridge.as_deref().or(n.parent.as_deref()).unwrap_or("-");
                        let ip = n
                            .ipv4
                            .map_or_else(|| "dynamic".to_string(), |i| i.to_string());
                        format!("{}={}@{} {} {}", n.id, n.link, place, n.mac, ip)
                    })
                    .collect();
                println!(
                    "{:<20} {:<36} {:>5} {:>7}M {:<9} {}",
                    vm.name,
                    vm.uuid,
                    vm.vcpus,
                    vm.memory_mib,
                    if vm.autostart { "yes" } else { "no" },
                    nics.join(", ")
                );
            }
        }
    }
    Ok(Outcome::Ok)
}
