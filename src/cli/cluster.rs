//! `volt cluster run|status|release`: what volt-cluster.service runs, and the view of the
//! cluster from any host. Thin: the policy is `crate::cluster`.

use std::path::Path;

use anyhow::{bail, Result};

use super::{Outcome, Output};
use crate::cluster::{daemon, status, Cluster};
use crate::config::ConfigSet;
use crate::plan::Paths;

fn cluster(root: &Path) -> Result<Cluster> {
    cluster_of(&ConfigSet::load(root))
}

/// Log the errors of `set`'s cluster file.
fn log_cluster_errors(set: &ConfigSet) {
    for e in set
        .errors
        .iter()
        .filter(|e| e.file().ends_with("cluster.toml"))
    {
        log::error!("{}", e.report());
    }
}

/// The cluster client of `set` (its cluster file's errors logged).
fn cluster_of(set: &ConfigSet) -> Result<Cluster> {
    log_cluster_errors(set);
    let Some(c) = &set.cluster else {
        bail!(
            "/{} does not exist or is invalid: this host is not in a cluster",
            crate::config::CLUSTER_FILE
        );
    };
    Ok(Cluster::new(c)?)
}

/// `volt cluster run`: the daemon, until SIGTERM.
pub fn run(root: &Path) -> Result<Outcome> {
    let notify = |ready: bool, status: &str| {
        let mut states = vec![sd_notify::NotifyState::Status(status)];
        if ready {
            states.push(sd_notify::NotifyState::Ready);
        }
        let _ = sd_notify::notify(&states);
    };
    match daemon::run(root, &notify) {
        Ok(()) => Ok(Outcome::Ok),
        Err(e) => {
            log::error!("{}", crate::error_chain(&e));
            Ok(Outcome::Failed)
        }
    }
}

/// `volt cluster status`: hosts, their lease ages, their workloads.
pub fn show(root: &Path, output: Output) -> Result<Outcome> {
    let c = cluster(root)?;
    let hosts = status::read(&c)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&hosts)?),
        Output::Table => {
            println!(
                "{:<16} {:<16} {:>8} {:>9} WORKLOADS",
                "HOST", "UNDERLAY", "AGE", "LEASE-TTL"
            );
            for h in &hosts {
                let w: Vec<String> = h
                    .workloads
                    .iter()
                    .map(|w| {
                        if w.addresses.is_empty() {
                            format!("{} ({})", w.name, w.kind)
                        } else {
                            format!("{} ({} {})", w.name, w.kind, w.addresses.join(" "))
                        }
                    })
                    .collect();
                println!(
                    "{:<16} {:<16} {:>7}s {:>8}s {}",
                    h.name,
                    h.underlay,
                    h.age_s,
                    h.lease_ttl_left_s,
                    w.join(", ")
                );
            }
            for line in hosts.iter().flat_map(status::HostStatus::conflict_lines) {
                println!("{line}");
            }
        }
    }
    Ok(Outcome::Ok)
}

/// Only a workload name makes a name key (`/volt/names/<name>`): never an empty one, or one
/// with `/` or `..` that would write elsewhere in the store.
fn check_name(name: &str) -> Result<()> {
    if let Err(m) = crate::config::check_workload_name(name) {
        bail!("not a workload name, so no cluster name: {m}");
    }
    Ok(())
}

/// `volt cluster claim NAME`: claim a workload name for this host before it starts (without
/// a cluster: nothing to do). A clustered VM's unit runs it (the generator's drop-in) outside
/// the VMM's sandbox, which has no IP sockets.
pub fn claim(root: &Path, name: &str, kind: &str) -> Result<Outcome> {
    check_name(name)?;
    // Networks and cluster.toml only: a start does not parse every workload file for this.
    let set = ConfigSet::load_cluster(root);
    if set.cluster_broken {
        // Fail closed: without the claim the same VM could run on two hosts (and write one
        // disk image from both).
        log_cluster_errors(&set);
        log::error!(
            "cannot start {kind} {name}: /{} has errors (above; `volt validate` lists them): this host is meant to be in a cluster, and the name cannot be claimed until the file is fixed",
            crate::config::CLUSTER_FILE
        );
        return Ok(Outcome::Failed);
    }
    if set.cluster.is_none() {
        return Ok(Outcome::Ok);
    }
    let c = cluster_of(&set)?;
    match c.claim_name(name, kind) {
        Ok(()) => Ok(Outcome::Ok),
        Err(e) => {
            log::error!("cannot start {kind} {name}: {}", crate::error_chain(&e));
            Ok(Outcome::Failed)
        }
    }
}

/// `volt cluster release NAME`: give up this host's claim on a workload name (without a
/// cluster: nothing to do). `after_stop`: run as a unit's ExecStopPost=, where systemd sets
/// $SERVICE_RESULT; only a clean stop ("success") gives the name up, since after a failure
/// systemd may restart the unit (`Restart=on-failure`), which must find its name still held;
/// so does a container's reboot (nspawn's status 133). A unit that is not restarted (it
/// failed for good) is then neither active nor activating, and volt-cluster gives its name
/// up (`cluster::orphans`).
pub fn release(root: &Path, name: &str, after_stop: bool) -> Result<Outcome> {
    check_name(name)?;
    let set = ConfigSet::load_cluster(root);
    if set.cluster_broken {
        log_cluster_errors(&set);
        log::warn!(
            "cannot release the cluster name {name}: /{} has errors (above); the claim ends with this host's lease, or at the next release once the file is fixed",
            crate::config::CLUSTER_FILE
        );
        return Ok(if after_stop {
            Outcome::Ok
        } else {
            Outcome::Failed
        });
    }
    if set.cluster.is_none() {
        return Ok(Outcome::Ok);
    }
    if after_stop {
        let result = std::env::var("SERVICE_RESULT").unwrap_or_else(|_| "(unset)".into());
        if result != "success" {
            println!(
                "keeping the cluster name {name}: the unit ended with result {result} and may be restarted (if it is not, volt-cluster gives the name up)"
            );
            return Ok(Outcome::Ok);
        }
        // systemd-nspawn's status for a reboot from inside the container: a success, and the
        // container unit's RestartForceExitStatus= starts it again.
        if std::env::var("EXIT_STATUS").is_ok_and(|s| s == "133") {
            println!("keeping the cluster name {name}: it rebooted and is starting again");
            return Ok(Outcome::Ok);
        }
        // A link of it is up: its owner holds the claims (a restart keeps the owner) and gives
        // the name up after the last link goes down.
        if crate::attach::LinkRecord::any_of(&Paths::new(root), name) {
            println!(
                "keeping the cluster name {name}: its link owner gives it up after its last link"
            );
            return Ok(Outcome::Ok);
        }
    }
    let released = cluster_of(&set).and_then(|c| {
        let done = c.release_name(name)?;
        Ok((done, c.host().to_string()))
    });
    match released {
        Ok((true, _)) => println!("released {name}"),
        Ok((false, host)) => println!("{name} was not claimed by host {host}"),
        // After a stop, a failure here would fail the unit (and restart a container that ended
        // by itself): the claim ends with this host's lease, or at the next release.
        Err(e) if after_stop => log::warn!(
            "cannot release the cluster name {name} (it stays claimed until this host's lease ends or the next release): {e:#}"
        ),
        Err(e) => return Err(e),
    }
    Ok(Outcome::Ok)
}
