//! Shell completion of the names `volt` takes: VMs, containers and networks, read from the
//! configuration directories when the shell asks (the installed completion scripts call
//! `COMPLETE=<shell> volt -- <words>`), so a file dropped into /etc/volt completes at once.

use clap_complete::engine::CompletionCandidate;

use crate::config::{ConfigSet, CONTAINERS_DIR, VMS_DIR};

/// The `.toml` stems of `<root>/<rel>`.
fn stems(rel: &str) -> Vec<String> {
    let dir = crate::config::root_from_env().join(rel);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".toml")
                        .filter(|s| !s.is_empty() && !s.starts_with('.'))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every VM and container name (one namespace: a container may not share a VM's name).
pub fn workloads() -> Vec<CompletionCandidate> {
    let vms = stems(VMS_DIR)
        .into_iter()
        .map(|n| CompletionCandidate::new(n).help(Some("VM".into())));
    let cts = stems(CONTAINERS_DIR)
        .into_iter()
        .map(|n| CompletionCandidate::new(n).help(Some("container".into())));
    vms.chain(cts).collect()
}

/// Every network name (files, zones and the built-in volt0).
pub fn networks() -> Vec<CompletionCandidate> {
    ConfigSet::load(&crate::config::root_from_env())
        .networks
        .list
        .into_iter()
        .map(|n| CompletionCandidate::new(n.name).help(Some(n.bridge.into())))
        .collect()
}
