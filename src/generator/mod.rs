//! The systemd generator: renders the plan of `/etc/volt/vms/*.toml` and
//! `/etc/volt/containers/*.toml` into unit drop-ins, autostart links and networkd runtime
//! files. A link's `.netdev`/`.network` are the link owner's to create (at `volt link up`)
//! and remove (at `volt link down`); the generator refreshes the ones that are there (a
//! changed file of a running workload), so a workload that does not run has no link, even
//! after networkd reloads for another. `volt generate` renders them all into OUTDIR.
//!
//! Follows systemd.generator(7): writes only into its output directories and the networkd
//! directory it is given (the real generator: `/run/systemd/network`; `volt generate`: below its
//! OUTDIR), talks to no other process, never stops at a bad file: each bad file is logged with
//! file:line and skipped, the rest are generated, and the run reports failure at the end.
//!
//! A broken file: its workload keeps what it had (it may be running). Its networkd files are
//! not swept as stale, and its unit drop-ins are written again from the last good run (see
//! [`keep`]), so the `BindsTo=` on its link owners stays and systemd does not stop them. A
//! networkd file is stale only when no workload wants it and the config file it came from is
//! gone or valid; a file this run failed to write is never counted as stale.

pub mod keep;
pub mod render;
pub mod sweep;

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::ConfigSet;
use crate::fsutil::{write_runtime_if_changed, FsError};
use crate::plan::names::{DROPIN_NAME, MACHINES_TARGET, SYSTEM_UNIT_DIR};
use crate::plan::{bridge_files, static_leases_dropin, Plan, Workload};

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] FsError),
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

/// Where the generator writes besides its output directories: runtime files (`/run` under
/// systemd, below OUTDIR for `volt generate`), written atomically but not fsynced.
#[derive(Debug, Clone)]
pub struct Targets {
    /// networkd runtime files (`/run/systemd/network`).
    pub networkd: PathBuf,
    /// The last good units of each workload (`/run/volt/generator`).
    pub keep: PathBuf,
    /// Where a bridge networkd made from a file this run removes is remembered for `volt net
    /// down` (`/run/volt/bridges-left`).
    pub left_bridges: PathBuf,
    /// Which workloads got units, kept across reboots (`/var/lib/volt/generator/claims.json`,
    /// see [`crate::config::CLAIMS_RECORD`]).
    pub claims: PathBuf,
    /// Write every link's networkd files (`volt generate`, to look at them), or refresh only
    /// those that are there (the real generator): a link's owner writes them when it brings
    /// the link up and removes them when it takes it down, and a `.netdev` for a workload
    /// that does not run would make networkd create its link at the next reload.
    pub every_link: bool,
}

/// The units the generator last wrote for each workload under `root` (see [`keep`]).
pub fn kept_units(root: &Path) -> keep::Record {
    keep::Record::load(&Targets::under_root(root).keep)
}

impl Targets {
    /// What the real generator uses under `root`.
    pub fn under_root(root: &Path) -> Targets {
        let paths = crate::plan::Paths::new(root);
        Targets {
            networkd: paths.networkd_dir(),
            keep: paths.runtime_dir().join("generator"),
            left_bridges: paths.left_bridges_dir(),
            claims: root.join(crate::config::CLAIMS_RECORD),
            every_link: false,
        }
    }
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
            [n] => Some(OutputDirs::single(n)),
            [n, e, l] => Some(OutputDirs {
                normal: n.clone(),
                early: e.clone(),
                late: l.clone(),
            }),
            _ => None,
        }
    }

    /// One directory for all three.
    pub fn single(dir: &Path) -> OutputDirs {
        OutputDirs {
            normal: dir.to_path_buf(),
            early: dir.to_path_buf(),
            late: dir.to_path_buf(),
        }
    }
}

fn create_dir(dir: &Path) -> Result<(), GeneratorError> {
    // One mkdir for the usual case (a new drop-in directory in an existing output directory);
    // create_dir_all parses the path first.
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) => std::fs::create_dir_all(dir),
    }
    .map_err(|source| GeneratorError::Create {
        path: dir.to_path_buf(),
        source,
    })
}

/// Create `path` exclusively (generator output directories start empty) with `content`.
fn write_new(path: &Path, content: &str) -> Result<(), GeneratorError> {
    if let Some(dir) = path.parent() {
        create_dir(dir)?;
    }
    let create = |source| GeneratorError::Create {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(create)?;
    f.write_all(content.as_bytes()).map_err(create)
}

fn symlink(target: &Path, link: &Path) -> Result<(), GeneratorError> {
    if let Some(dir) = link.parent() {
        create_dir(dir)?;
    }
    std::os::unix::fs::symlink(target, link).map_err(|source| GeneratorError::Create {
        path: link.to_path_buf(),
        source,
    })
}

/// Write what `kept` holds into the output directory.
fn write_kept(out: &OutputDirs, kept: &keep::Kept) -> Result<(), GeneratorError> {
    for (rel, text) in &kept.files {
        write_new(&out.normal.join(rel), text)?;
    }
    for (rel, target) in &kept.links {
        symlink(target, &out.normal.join(rel))?;
    }
    Ok(())
}

/// Write one workload's drop-ins, owner drop-ins, networkd files and autostart link, and
/// record them in `record` as its last good units. Every networkd file it should have goes
/// into `wanted`, written or not.
fn generate_workload(
    w: &Workload,
    out: &OutputDirs,
    targets: &Targets,
    wanted: &mut Vec<OsString>,
    record: &mut keep::Record,
) -> Result<usize, GeneratorError> {
    for a in &w.attachments {
        for f in &a.networkd {
            wanted.push(targets.networkd.join(&f.name).into_os_string());
        }
    }
    let dropin = |unit: &str| PathBuf::from(format!("{unit}.d")).join(DROPIN_NAME);
    let mut kept = keep::Kept {
        leases: w
            .static_leases()
            .into_iter()
            .map(|(net, mac, ip)| (net, mac.to_string(), ip))
            .collect(),
        ..keep::Kept::default()
    };
    kept.files
        .push((dropin(&w.unit), render::workload_dropin(w)));
    for a in &w.attachments {
        kept.files
            .push((dropin(&a.owner_unit), render::owner_dropin(w, a)));
    }
    if w.autostart {
        kept.links.push((
            PathBuf::from(format!("{MACHINES_TARGET}.wants")).join(&w.unit),
            Path::new(SYSTEM_UNIT_DIR).join(w.template),
        ));
    }
    write_kept(out, &kept)?;
    for a in &w.attachments {
        for f in &a.networkd {
            let path = targets.networkd.join(&f.name);
            if targets.every_link {
                write_runtime_if_changed(&path, &f.text)?;
            } else {
                // Only while the link is up: its owner may take it down (and remove the
                // file) at any moment, and a file brought back would make networkd create
                // the link again.
                crate::fsutil::refresh_runtime_if_changed(&path, &f.text)?;
            }
        }
    }
    record.insert(w.kind.as_str(), &w.name, kept);
    Ok(w.attachments.len())
}

/// Remove from `out` exactly the units an earlier run recorded in `keep` (drop-ins, their
/// directories once empty, links) and its `multi-user.target.wants/machines.target`: what
/// systemd does for a real generator by handing it empty directories, for `volt generate`
/// run again into the same OUTDIR. Nothing else in `out` is touched.
pub fn clear_previous(out: &Path, keep: &Path) {
    let record = keep::Record::load(keep);
    let mut dirs = Vec::new();
    for k in record.all() {
        for rel in k
            .files
            .iter()
            .map(|f| &f.0)
            .chain(k.links.iter().map(|l| &l.0))
        {
            let _ = std::fs::remove_file(out.join(rel));
            if let Some(d) = rel.parent().filter(|d| !d.as_os_str().is_empty()) {
                dirs.push(out.join(d));
            }
        }
    }
    let boot = out.join("multi-user.target.wants").join(MACHINES_TARGET);
    if std::fs::read_link(&boot)
        .is_ok_and(|t| t == Path::new(SYSTEM_UNIT_DIR).join(MACHINES_TARGET))
    {
        let _ = std::fs::remove_file(&boot);
        dirs.extend(boot.parent().map(Path::to_path_buf));
    }
    // Only directories left empty (remove_dir fails on any other).
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// Run the generator on `root` (usually `/`), writing units into `out` and networkd files
/// and the last good units into `targets`.
pub fn run(root: &Path, out: &OutputDirs, targets: &Targets) -> Report {
    let networkd_dir = targets.networkd.as_path();
    let set = ConfigSet::load(root);
    for w in &set.warnings {
        log::warn!("{w}");
    }
    let mut report = Report::default();
    let broken = set.errors_by_file();
    // The record of the last run: read only when some workload needs it.
    let mut last: Option<keep::Record> = None;
    // Whether any workload starts at boot (machines.target), kept ones included.
    let mut any_autostart = false;
    // The DHCP static leases of workloads that run on kept units.
    let mut kept_leases: Vec<(String, String, std::net::Ipv4Addr)> = Vec::new();
    for (file, errs) in &broken {
        for e in errs {
            log::error!("{}; skipping {}", e.report(), file.display());
        }
        report.skipped_files += 1;
        // A broken file whose workload ran before: its last good units again.
        let kept = keep::workload_of(file).and_then(|(kind, name)| {
            last.get_or_insert_with(|| keep::Record::load(&targets.keep))
                .get(kind, &name)
                .map(|k| (name, k))
        });
        if let Some((name, kept)) = kept {
            any_autostart |= kept.autostarts();
            kept_leases.extend(kept.leases.iter().cloned());
            match write_kept(out, kept) {
                Ok(()) => log::warn!(
                    "{}: keeping the units of {name} from its last good version until the file is fixed",
                    file.display()
                ),
                Err(e) => {
                    log::error!("{}", crate::error_chain(&e));
                    report.errors.push(e);
                }
            }
        }
    }
    // A workload directory that cannot be listed (an I/O error, a denial, not a directory):
    // every workload it held is as good as a broken file. Their last good units again, their
    // networkd files and records kept; without this, one unreadable directory stopped every
    // running workload of its kind (their link owners lost their BindsTo=).
    let unlisted: Vec<(&'static str, PathBuf)> = [
        ("vm", crate::config::VMS_DIR),
        ("container", crate::config::CONTAINERS_DIR),
    ]
    .into_iter()
    .map(|(kind, dir)| (kind, Path::new("/").join(dir)))
    .filter(|(_, dir)| {
        set.errors
            .iter()
            .any(|e| matches!(e, crate::config::ConfigError::ReadDir { path, .. } if path == dir))
    })
    .collect();
    for (kind, dir) in &unlisted {
        let last = last.get_or_insert_with(|| keep::Record::load(&targets.keep));
        for (name, kept) in last.of_kind(kind) {
            any_autostart |= kept.autostarts();
            kept_leases.extend(kept.leases.iter().cloned());
            match write_kept(out, kept) {
                Ok(()) => log::warn!(
                    "{}: cannot be listed; keeping the units of {kind} {name} from its last good version",
                    dir.display()
                ),
                Err(e) => {
                    log::error!("{}", crate::error_chain(&e));
                    report.errors.push(e);
                }
            }
        }
    }
    let unlisted_kind = |kind: &str| unlisted.iter().any(|(k, _)| *k == kind);
    let plan = Plan::build(&set);

    // A set: with 1000 VMs a list made the stale-file sweep below quadratic (~100 ms). Of
    // plain strings: hashing a `Path` walks its components (~10x the cost).
    let mut wanted: HashSet<OsString> = HashSet::with_capacity(2 * plan.workloads.len());
    let mut record = keep::Record::default();
    // Each workload's files on all cores (mostly mkdir, create and compare system calls).
    let results = crate::par_map(&plan.workloads, |w| {
        let mut wanted = Vec::new();
        let mut record = keep::Record::default();
        let r = generate_workload(w, out, targets, &mut wanted, &mut record);
        (r, wanted, record)
    });
    for (w, (result, w_wanted, w_record)) in plan.workloads.iter().zip(results) {
        wanted.extend(w_wanted);
        record.extend(w_record);
        match result {
            Ok(links) => {
                match w.kind {
                    crate::plan::Kind::Vm => report.vms += 1,
                    crate::plan::Kind::Container => report.containers += 1,
                }
                report.links += links;
                any_autostart |= w.autostart;
                log::debug!("generated {} from {}", w.unit, w.source.display());
            }
            Err(e) => {
                log::error!(
                    "{}: cannot generate {}: {}",
                    w.source.display(),
                    w.unit,
                    crate::error_chain(&e)
                );
                report.errors.push(e);
            }
        }
    }
    // The bridges of networks files define (networkd creates them, with their address and
    // DHCP server): written whether or not a workload runs, as the packaged volt0's are.
    for f in plan.networks.list.iter().filter_map(bridge_files).flatten() {
        let path = networkd_dir.join(&f.name);
        wanted.insert(path.clone().into_os_string());
        if let Err(e) = write_runtime_if_changed(&path, &f.text) {
            log::error!("{}", crate::error_chain(&e));
            report.errors.push(e.into());
        }
    }
    // DHCP static leases for reservations and static containers whose MAC is known, where
    // the DHCP server is Volt's (a drop-in of an admin's bridge's `.network` is none of Volt's).
    for net in plan.networks.list.iter().filter(|n| n.volt_serves_dhcp()) {
        let mut leases = plan.static_leases(net);
        // Those of workloads on kept units too, unless a valid file took the address since.
        for (n, mac, ip) in &kept_leases {
            let Ok(mac) = mac.parse() else { continue };
            let taken = leases.iter().any(|(m, l)| l == ip || *m == mac);
            if *n == net.name && net.is_host_addr(*ip) && !taken {
                leases.push((mac, *ip));
            }
        }
        leases.sort_by_key(|(_, ip)| *ip);
        if leases.is_empty() {
            continue;
        }
        let f = static_leases_dropin(net, &leases);
        let path = networkd_dir.join(&f.name);
        wanted.insert(path.clone().into_os_string());
        if let Err(e) = write_runtime_if_changed(&path, &f.text) {
            log::error!("{}", crate::error_chain(&e));
            report.errors.push(e.into());
        }
    }
    if any_autostart {
        // Autostarted workloads hang off machines.target; make sure boot reaches it.
        let target = Path::new(SYSTEM_UNIT_DIR).join(MACHINES_TARGET);
        let link = out
            .normal
            .join("multi-user.target.wants")
            .join(MACHINES_TARGET);
        if let Err(e) = symlink(&target, &link) {
            log::error!("{}", crate::error_chain(&e));
            report.errors.push(e);
        }
    }
    // Network directories that cannot be listed: their networks' files are kept as they are.
    let unlisted_networks: Vec<PathBuf> = [crate::config::NETWORKS_DIR, crate::config::ZONES_DIR]
        .into_iter()
        .map(|dir| Path::new("/").join(dir))
        .filter(|dir| {
            set.errors.iter().any(
                |e| matches!(e, crate::config::ConfigError::ReadDir { path, .. } if path == dir),
            )
        })
        .collect();
    let keep = |source: &Path| {
        // The source of a file Volt wrote: kept while that config file exists but is broken,
        // or its directory cannot be listed.
        (broken.contains_key(source)
            && root
                .join(source.strip_prefix("/").unwrap_or(source))
                .exists())
            || source.parent().is_some_and(|d| {
                unlisted.iter().any(|(_, u)| u == d) || unlisted_networks.iter().any(|u| u == d)
            })
    };
    let bridges: HashSet<String> = plan
        .networks
        .list
        .iter()
        .map(|n| n.bridge.clone())
        .collect();
    let sweep = sweep::Sweep {
        wanted: &wanted,
        keep: &keep,
        bridges: &bridges,
        left_bridges: &targets.left_bridges,
    };
    sweep.forget_configured();
    sweep.run(networkd_dir, &mut report);
    // One listing per directory instead of a stat per kept workload.
    let vm_files = toml_stems(&root.join(crate::config::VMS_DIR));
    let container_files = toml_stems(&root.join(crate::config::CONTAINERS_DIR));
    let exists = |kind: &str, name: &str| {
        if unlisted_kind(kind) {
            true
        } else if kind == "vm" {
            vm_files.contains(name)
        } else {
            container_files.contains(name)
        }
    };
    // Workloads that exist but got no units this run (a broken file, a failed write) keep
    // their last good ones; the others' records go with their files.
    let missing =
        |kind: &str, names: &HashSet<String>| names.iter().any(|n| record.get(kind, n).is_none());
    if missing("vm", &vm_files) || missing("container", &container_files) || !unlisted.is_empty() {
        let last = last.unwrap_or_else(|| keep::Record::load(&targets.keep));
        record.carry_over(last, &exists);
    }
    if let Err(e) = record.save(&targets.keep) {
        log::warn!("{}", crate::error_chain(&e));
    }
    keep::save_claims_from_generator(&record, &targets.claims);

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

/// The stems of the `*.toml` files in `dir` that exist (a symlink counts when its target
/// exists); empty when `dir` cannot be listed.
fn toml_stems(dir: &Path) -> HashSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_type()
                .is_ok_and(|t| !t.is_symlink() || e.path().exists())
        })
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(str::to_owned)
        })
        .collect()
}
