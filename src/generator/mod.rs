//! The systemd generator: turns `/etc/volt/vms/*.toml` and `/etc/volt/containers/*.toml`
//! into unit drop-ins, autostart links and networkd runtime files.
//!
//! Follows systemd.generator(7): writes only into its output directories (plus the networkd
//! runtime files it owns), talks to no other process, never stops at a bad file: each bad
//! file is logged with file:line and skipped, the rest are generated, and the run reports
//! failure at the end.

pub mod render;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{ConfigSet, NetworkLookup, NetworkType, NicMode};
use render::{HEADER, NETWORKD_PREFIX};

/// Where the generator writes networkd runtime files, relative to the root.
pub const NETWORKD_RUNTIME_DIR: &str = "run/systemd/network";

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the stale file {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{count} configuration file(s) had errors and were skipped")]
    BadConfig { count: usize },
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub vms: usize,
    pub containers: usize,
    pub links: usize,
    pub skipped_files: usize,
    pub removed_stale: Vec<PathBuf>,
    /// Everything that went wrong, in order; the run failed if this is not empty.
    pub errors: Vec<GeneratorError>,
}

/// Output directories as systemd passes them.
#[derive(Debug, Clone)]
pub struct OutputDirs {
    pub normal: PathBuf,
    pub early: PathBuf,
    pub late: PathBuf,
}

impl OutputDirs {
    /// From argv (without argv[0]): one directory (used for all three) or three.
    pub fn from_args(args: &[PathBuf]) -> Option<OutputDirs> {
        match args {
            [n] => Some(OutputDirs {
                normal: n.clone(),
                early: n.clone(),
                late: n.clone(),
            }),
            [n, e, l] => Some(OutputDirs {
                normal: n.clone(),
                early: e.clone(),
                late: l.clone(),
            }),
            _ => None,
        }
    }
}

/// Create `path` exclusively (generator output directories start empty) with `content`.
fn write_new(path: &Path, content: &str) -> Result<(), GeneratorError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| GeneratorError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| GeneratorError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    f.write_all(content.as_bytes())
        .map_err(|source| GeneratorError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Replace `path` atomically with `content` unless it already has exactly that content
/// (networkd compares files on reload; an unchanged file must stay untouched).
pub fn write_atomic_if_changed(path: &Path, content: &str) -> Result<bool, GeneratorError> {
    if std::fs::read(path).ok().as_deref() == Some(content.as_bytes()) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| GeneratorError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(GeneratorError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(true)
}

fn symlink(target: &Path, link: &Path) -> Result<(), GeneratorError> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(|source| GeneratorError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::os::unix::fs::symlink(target, link).map_err(|source| GeneratorError::Create {
        path: link.to_path_buf(),
        source,
    })
}

/// Whether `path` is a networkd runtime file Volt owns: our name prefix and our header.
pub fn is_owned_networkd_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ours = (name.starts_with(NETWORKD_PREFIX)
        && (name.ends_with(".netdev") || name.ends_with(".network")))
        || (name == render::STATIC_LEASES_NAME
            && path
                .parent()
                .and_then(|d| d.file_name())
                .and_then(|d| d.to_str())
                .is_some_and(|d| d.ends_with(".network.d")));
    ours && std::fs::read_to_string(path).is_ok_and(|t| t.lines().next() == Some(HEADER))
}

/// Run the generator on `root` (usually `/`), writing into `out`.
pub fn run(root: &Path, out: &OutputDirs) -> Report {
    let set = ConfigSet::load(root);
    let mut report = Report::default();

    for (file, errs) in set.errors_by_file() {
        for e in &errs {
            log::error!("{}; skipping {}", e.report(), file.display());
        }
        report.skipped_files += 1;
    }

    let runtime_dir = root.join(NETWORKD_RUNTIME_DIR);
    // A set: with 1000 VMs a list made the stale-file sweep below quadratic (~100 ms).
    let mut wanted_runtime: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    let mut any_autostart = false;
    for vm in &set.vms {
        let unit = vm.unit_name();
        let result = (|| -> Result<(), GeneratorError> {
            write_new(
                &out.normal
                    .join(format!("{unit}.d"))
                    .join(render::DROPIN_NAME),
                &render::vm_dropin(vm),
            )?;
            for nic in &vm.nics {
                let Some(owner) = nic.owner_unit() else {
                    continue;
                };
                write_new(
                    &out.normal
                        .join(format!("{owner}.d"))
                        .join(render::DROPIN_NAME),
                    &render::link_dropin(vm, nic),
                )?;
                report.links += 1;
                let isolated = nic
                    .network
                    .as_deref()
                    .and_then(|n| set.networks.by_name(n))
                    .is_some_and(|n| n.kind == NetworkType::Isolated);
                // An isolated NIC's TAP lives in its VM's own namespace: `volt link up`
                // makes it there; networkd must not make it on the bridge.
                if nic.mode == NicMode::Networkd && !isolated {
                    let netdev = runtime_dir.join(render::netdev_file_name(nic));
                    let network = runtime_dir.join(render::network_file_name(nic));
                    write_atomic_if_changed(&netdev, &render::netdev(vm, nic))?;
                    write_atomic_if_changed(&network, &render::network(vm, nic))?;
                    wanted_runtime.insert(netdev);
                    wanted_runtime.insert(network);
                }
            }
            if vm.autostart {
                let target = Path::new(render::SYSTEM_UNIT_DIR).join(render::VM_TEMPLATE);
                symlink(
                    &target,
                    &out.normal.join("machines.target.wants").join(&unit),
                )?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                report.vms += 1;
                any_autostart |= vm.autostart;
                log::debug!("generated {unit} from {}", vm.path.display());
            }
            Err(e) => {
                log::error!(
                    "{}: cannot generate {unit}: {}",
                    vm.path.display(),
                    crate::error_chain(&e)
                );
                report.errors.push(e);
            }
        }
    }
    for ct in &set.containers {
        let unit = ct.unit_name();
        let result = (|| -> Result<(), GeneratorError> {
            write_new(
                &out.normal
                    .join(format!("{unit}.d"))
                    .join(render::DROPIN_NAME),
                &render::container_dropin(ct),
            )?;
            for nic in &ct.nics {
                write_new(
                    &out.normal
                        .join(format!("{}.d", nic.owner_unit()))
                        .join(render::DROPIN_NAME),
                    &render::veth_dropin(ct, nic),
                )?;
                report.links += 1;
            }
            if ct.autostart {
                let target = Path::new(render::SYSTEM_UNIT_DIR).join(render::CONTAINER_TEMPLATE);
                symlink(
                    &target,
                    &out.normal.join("machines.target.wants").join(&unit),
                )?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                report.containers += 1;
                any_autostart |= ct.autostart;
                log::debug!("generated {unit} from {}", ct.path.display());
            }
            Err(e) => {
                log::error!(
                    "{}: cannot generate {unit}: {}",
                    ct.path.display(),
                    crate::error_chain(&e)
                );
                report.errors.push(e);
            }
        }
    }
    // DHCP static leases for reservations and static containers whose MAC is known.
    for net in set.networks.list.iter().filter(|n| n.dhcp) {
        let leases = render::static_leases(net, &set.vms, &set.containers);
        if leases.is_empty() {
            continue;
        }
        let path = runtime_dir
            .join(render::bridge_network_dropin_dir(&net.bridge))
            .join(render::STATIC_LEASES_NAME);
        match write_atomic_if_changed(&path, &render::static_leases_dropin(net, &leases)) {
            Ok(_) => {
                wanted_runtime.insert(path);
            }
            Err(e) => {
                log::error!("{}", crate::error_chain(&e));
                report.errors.push(e);
            }
        }
    }

    if any_autostart {
        // Autostarted VMs hang off machines.target; make sure boot reaches it.
        let target = Path::new(render::SYSTEM_UNIT_DIR).join("machines.target");
        if let Err(e) = symlink(
            &target,
            &out.normal
                .join("multi-user.target.wants")
                .join("machines.target"),
        ) {
            log::error!("{}", crate::error_chain(&e));
            report.errors.push(e);
        }
    }

    // Files we wrote on an earlier run for VMs, NICs or leases that are gone.
    match std::fs::read_dir(&runtime_dir) {
        Ok(entries) => {
            let mut stale: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .flat_map(|p| {
                    let dropin = p.join(render::STATIC_LEASES_NAME);
                    if p.is_dir() && dropin.exists() {
                        vec![dropin]
                    } else {
                        vec![p]
                    }
                })
                .filter(|p| !wanted_runtime.contains(p) && is_owned_networkd_file(p))
                .collect();
            stale.sort();
            for path in stale {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        log::info!("removed stale {}", path.display());
                        if path.ends_with(render::STATIC_LEASES_NAME) {
                            // Its drop-in directory, if nothing else is in it.
                            if let Some(d) = path.parent() {
                                let _ = std::fs::remove_dir(d);
                            }
                        }
                        report.removed_stale.push(path);
                    }
                    Err(source) => {
                        let e = GeneratorError::Remove { path, source };
                        log::error!("{}", crate::error_chain(&e));
                        report.errors.push(e);
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => report.errors.push(GeneratorError::List {
            path: runtime_dir.clone(),
            source,
        }),
    }

    if report.skipped_files > 0 {
        report.errors.push(GeneratorError::BadConfig {
            count: report.skipped_files,
        });
    }
    log::debug!(
        "{} VM(s), {} container(s), {} link unit(s), {} file(s) skipped",
        report.vms,
        report.containers,
        report.links,
        report.skipped_files
    );
    report
}
