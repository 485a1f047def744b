//! `volt validate`: every configuration file under the root, or the files named, checked as
//! the generator and the units would check them; every error as `file:line:col: field:
//! message`, warnings for files in the configuration directories that are not read.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::ValueEnum;

use super::Outcome;
use crate::config::{self, ConfigError, ConfigSet};

/// What a named file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileType {
    /// A VM (`/etc/volt/vms/<name>.toml`).
    Vm,
    /// A container (`/etc/volt/containers/<name>.toml`).
    Container,
    /// A network (`/etc/volt/networks/<name>.toml`).
    Network,
    /// A Voltainer zone (`/etc/voltainer/network/<name>.yaml`).
    Zone,
}

/// The type of `path`: from its directory (`vms`, `containers`, `networks`, a `.yaml`), its
/// name (`*.network.toml`, `*.container.toml`, the shipped examples' convention), else what
/// it holds (a `subnet` key: a network; `directory` or `image`: a container; else a VM).
fn guess(path: &Path, text: &str) -> FileType {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|p| p.to_str())
        .unwrap_or("");
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        return FileType::Zone;
    }
    match parent {
        "vms" => return FileType::Vm,
        "containers" => return FileType::Container,
        "networks" => return FileType::Network,
        _ => {}
    }
    if name.ends_with(".network.toml") {
        return FileType::Network;
    }
    if name.ends_with(".container.toml") {
        return FileType::Container;
    }
    let has = |key: &str| {
        text.lines()
            .any(|l| l.trim_start().starts_with(key) && l.contains('='))
    };
    if has("subnet") {
        FileType::Network
    } else if has("directory") || has("image") {
        FileType::Container
    } else {
        FileType::Vm
    }
}

/// The VM and container files named, parsed: checked against the installed workloads and
/// each other once all are read.
#[derive(Default)]
struct Named {
    vms: Vec<config::VmConfig>,
    containers: Vec<config::ContainerConfig>,
}

/// Check one named file; its errors go into `errors`, a workload it defines into `named`.
fn check_file(
    root: &Path,
    set: &ConfigSet,
    path: &Path,
    kind: Option<FileType>,
    errors: &mut Vec<ConfigError>,
    named: &mut Named,
) {
    let text = match config::read(path, path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(e);
            return;
        }
    };
    if path.file_name().is_some_and(|n| n == "cluster.toml") {
        let host = config::default_host_name(root);
        match config::parse_cluster_toml(path, &text, &host, &set.networks.list) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("warning: {w}");
                }
                errors.extend(config::check_cluster_files(&c, root));
            }
            Err(e) => errors.extend(e),
        }
        return;
    }
    match kind.unwrap_or_else(|| guess(path, &text)) {
        FileType::Zone => {
            if let Err(e) = config::parse_zone_yaml(path, &text) {
                errors.push(e);
            }
        }
        FileType::Network => {
            if let Err(errs) = config::parse_network_toml(path, &text) {
                errors.extend(errs);
            }
        }
        FileType::Container => match config::parse_container_toml(path, &text, &set.networks) {
            Ok(ct) => {
                errors.extend(ct.check_root(root));
                named.containers.push(ct);
            }
            Err(errs) => errors.extend(errs),
        },
        FileType::Vm => match config::parse_vm_toml(path, &text, &set.networks) {
            Ok(vm) => {
                errors.extend(vm.check_boot_files(root));
                named.vms.push(vm);
            }
            Err(errs) => errors.extend(errs),
        },
    }
}

/// VM NICs on a bridge whose own MTU is larger than their network's: allowed (an admin may
/// raise the bridge's MTU outside Volt), but the bridge drops the larger frames otherwise.
fn mtu_warnings(set: &ConfigSet) -> Vec<String> {
    use crate::config::NetworkType;
    let mut out = Vec::new();
    for vm in &set.vms {
        for (i, n) in vm.nics.iter().enumerate() {
            let net = n
                .network
                .as_deref()
                .and_then(|x| set.networks.list.iter().find(|m| m.name == x));
            let Some(net) = net.filter(|m| n.bridge.is_some() && m.kind != NetworkType::Isolated)
            else {
                continue;
            };
            if n.mtu > net.mtu {
                let at = vm
                    .spans
                    .nics
                    .get(i)
                    .and_then(|s| s.mtu.clone())
                    .map_or_else(|| vm.path.display().to_string(), |l| l.to_string());
                out.push(format!(
                    "{at}: network[{i}].mtu: {} is larger than network {}'s MTU {}: the bridge {} drops larger frames unless its MTU is raised outside the network file (set mtu there to have Volt do it)",
                    n.mtu, net.name, net.mtu, net.bridge
                ));
            }
        }
    }
    out
}

/// Kernels, initrds and images under `/tmp` or `/var/tmp` (`volt vm run --attach` finds them,
/// but the VM's unit has its own, empty ones: PrivateTmp=yes), and images that start like
/// qcow2 ones.
fn file_warnings(root: &Path, vms: &[config::VmConfig]) -> Vec<String> {
    use crate::plan::names::PRIVATE_TMPS;
    let mut out = Vec::new();
    for vm in vms {
        for d in vm.disks.iter().filter(|d| d.looks_like_qcow2(root)) {
            let at =
                d.at.clone()
                    .map_or_else(|| vm.path.display().to_string(), |l| l.to_string());
            out.push(format!(
                "{at}: disk[{}].path: {} starts like a qcow2 image, and the guest gets it as a raw disk (if it is one: qemu-img convert -O raw)",
                d.index,
                d.path.display()
            ));
        }
        let disks = vm
            .disks
            .iter()
            .map(|d| (format!("disk[{}].path", d.index), &d.path, d.at.clone()));
        let boot = [
            Some(("kernel".to_string(), &vm.kernel, vm.spans.kernel.clone())),
            vm.initrd
                .as_ref()
                .map(|p| ("initrd".to_string(), p, vm.spans.initrd.clone())),
        ];
        for (field, path, at) in boot.into_iter().flatten().chain(disks) {
            if PRIVATE_TMPS.iter().any(|t| path.starts_with(t)) {
                let at = at.map_or_else(|| vm.path.display().to_string(), |l| l.to_string());
                out.push(format!(
                    "{at}: {field}: {} is under a temporary directory, which volt-vm@{}.service does not see (it has its own: PrivateTmp=yes); only `volt vm run --attach` would find it (keep it under /var/lib/volt)",
                    path.display(),
                    vm.name
                ));
            }
        }
    }
    out
}

/// Check everything under `root`, or just `paths` (of type `kind`, else guessed).
pub fn exec(root: &Path, paths: &[PathBuf], kind: Option<FileType>) -> Result<Outcome> {
    if !root.is_dir() {
        eprintln!(
            "{}: the root does not exist or is not a directory",
            root.display()
        );
        return Ok(Outcome::Failed);
    }
    let set = ConfigSet::load(root);
    let mut errors: Vec<ConfigError> = Vec::new();
    let checked = if paths.is_empty() {
        for w in &set.warnings {
            eprintln!("warning: {w}");
        }
        for w in mtu_warnings(&set)
            .into_iter()
            .chain(file_warnings(root, &set.vms))
        {
            eprintln!("warning: {w}");
        }
        errors.extend(set.errors.iter().map(clone_error));
        for vm in &set.vms {
            errors.extend(vm.check_boot_files(root));
        }
        for ct in &set.containers {
            errors.extend(ct.check_root(root));
        }
        let cluster = match &set.cluster {
            Some(c) => {
                for w in c.warnings() {
                    eprintln!("warning: {w}");
                }
                errors.extend(config::check_cluster_files(c, root));
                1
            }
            None => 0,
        };
        let nets = set.networks.list.iter().filter(|n| n.source.is_some());
        set.vms.len() + set.containers.len() + nets.count() + cluster
    } else {
        // Networks named on the command line count for the VMs and containers named with
        // them (`volt validate examples/*`).
        let mut set = set;
        for path in paths {
            let Ok(text) = config::read(path, path) else {
                continue;
            };
            let net = match kind.unwrap_or_else(|| guess(path, &text)) {
                FileType::Network => config::parse_network_toml(path, &text).ok(),
                FileType::Zone => config::parse_zone_yaml(path, &text).ok().flatten(),
                _ => None,
            };
            if let Some(n) = net {
                set.networks
                    .list
                    .retain(|o| o.name != n.name && o.bridge != n.bridge);
                set.networks.list.push(n);
            }
        }
        let mut named = Named::default();
        for path in paths {
            check_file(root, &set, path, kind, &mut errors, &mut named);
        }
        for w in file_warnings(root, &named.vms) {
            eprintln!("warning: {w}");
        }
        // The names, addresses, MACs, CIDs and disks they would take from the installed
        // workloads and from each other.
        errors.extend(config::collisions_with_installed(
            &set,
            root,
            named.vms,
            named.containers,
        ));
        paths.len()
    };
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

/// Errors are not `Clone` (they may hold an `io::Error`): the same message again.
fn clone_error(e: &ConfigError) -> ConfigError {
    match e {
        ConfigError::Syntax { at, message } => ConfigError::Syntax {
            at: at.clone(),
            message: message.clone(),
        },
        ConfigError::Invalid { at, field, message } => ConfigError::Invalid {
            at: at.clone(),
            field: field.clone(),
            message: message.clone(),
        },
        ConfigError::Unreadable {
            at,
            field,
            path,
            checked,
            source,
        } => ConfigError::Unreadable {
            at: at.clone(),
            field: field.clone(),
            path: path.clone(),
            checked: checked.clone(),
            source: source.raw_os_error().map_or_else(
                || std::io::Error::new(source.kind(), source.to_string()),
                std::io::Error::from_raw_os_error,
            ),
        },
        other => ConfigError::Syntax {
            at: config::Location::file(other.file()),
            message: crate::error_chain(other)
                .split_once(": ")
                .map_or_else(|| other.to_string(), |(_, m)| m.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_types_from_place_name_and_content() {
        let g = |p: &str, t: &str| guess(Path::new(p), t);
        assert_eq!(g("/etc/volt/vms/web.toml", ""), FileType::Vm);
        assert_eq!(g("/etc/volt/networks/lab.toml", ""), FileType::Network);
        assert_eq!(g("/x/shop.container.toml", ""), FileType::Container);
        assert_eq!(g("/x/lab.network.toml", ""), FileType::Network);
        assert_eq!(g("/x/dmz.zone.yaml", ""), FileType::Zone);
        assert_eq!(
            g("/x/a.toml", "subnet = \"10.1.0.0/24\"\n"),
            FileType::Network
        );
        assert_eq!(
            g("/x/a.toml", "directory = \"/srv\"\n"),
            FileType::Container
        );
        assert_eq!(g("/x/a.toml", "kernel = \"/k\"\n"), FileType::Vm);
    }
}
