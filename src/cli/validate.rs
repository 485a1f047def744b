//! `volt validate`.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::Outcome;
use crate::config::{self, ConfigError, ConfigSet};

/// Check everything under `root`, or just `paths` (VM files, container files under a
/// `containers/` directory, network files under a `networks/` directory, zone files ending
/// in .yaml/.yml).
pub fn exec(root: &Path, paths: &[PathBuf]) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut checked = 0usize;
    if paths.is_empty() {
        errors.extend(set.errors);
        for vm in &set.vms {
            errors.extend(vm.check_boot_files(root));
        }
        for ct in &set.containers {
            errors.extend(ct.check_root(root));
        }
        if let Some(c) = &set.cluster {
            errors.extend(config::check_cluster_files(c, root));
            checked += 1;
        }
        checked += set.vms.len()
            + set.containers.len()
            + set
                .networks
                .list
                .iter()
                .filter(|n| n.source.is_some())
                .count();
    } else {
        for path in paths {
            checked += 1;
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(source) => {
                    errors.push(ConfigError::Read {
                        path: path.clone(),
                        source,
                    });
                    continue;
                }
            };
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let parent = path.parent().and_then(|p| p.file_name());
            let in_networks = parent.is_some_and(|n| n == "networks");
            let in_containers = parent.is_some_and(|n| n == "containers");
            if path.file_name().is_some_and(|n| n == "cluster.toml") {
                let host = config::default_host_name(root);
                match config::parse_cluster_toml(path, &text, &host, &set.networks.list) {
                    Ok(c) => errors.extend(config::check_cluster_files(&c, root)),
                    Err(e) => errors.push(e),
                }
            } else if ext == "yaml" || ext == "yml" {
                if let Err(e) = config::parse_zone_yaml(path, &text) {
                    errors.push(e);
                }
            } else if in_containers {
                match config::parse_container_toml(path, &text, &set.networks) {
                    Ok(ct) => errors.extend(ct.check_root(root)),
                    Err(errs) => errors.extend(errs),
                }
            } else if in_networks {
                if let Err(e) = config::parse_network_toml(path, &text) {
                    errors.push(e);
                }
            } else {
                match config::parse_vm_toml(path, &text, &set.networks) {
                    Ok(vm) => errors.extend(vm.check_boot_files(root)),
                    Err(errs) => errors.extend(errs),
                }
            }
        }
    }
    for e in &errors {
        eprintln!("{}", e.report());
    }
    if errors.is_empty() {
        println!("{checked} file(s) valid");
        Ok(Outcome::Ok)
    } else {
        eprintln!("{} error(s)", errors.len());
        Ok(Outcome::Failed)
    }
}
