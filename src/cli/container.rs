//! `volt container ...`: list and show containers, and what `volt-container@.service` runs:
//! `run` (make sure the veth pair is whole, then exec systemd-nspawn) and `net-up`
//! (address and default route inside the container's network namespace, the lease in IPAM).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::output::OutputArgs;
use super::Outcome;
use crate::attach::Attach;
use crate::config::{ConfigSet, ContainerConfig, NetworkLookup};
use crate::net::ipam::{Lease, Owner};
use crate::net::link;
use crate::plan::{self, Kind, Paths, Plan, Workload};

/// The container `name`, or its errors logged and `Err(Outcome::Config)`.
fn load<'a>(set: &ConfigSet, plan: &'a Plan, name: &str) -> Result<&'a Workload, Outcome> {
    if let Some(w) = plan.workload(Kind::Container, name) {
        return Ok(w);
    }
    let errs = set.container(name).err().unwrap_or_default();
    if errs.is_empty() {
        log::error!(
            "no container {name}: /{}/{name}.toml does not exist",
            crate::config::CONTAINERS_DIR
        );
    }
    for e in errs {
        log::error!("{}", e.report());
    }
    Err(Outcome::Config)
}

/// A container's links and leases as they are now, for `show`.
#[derive(Debug, Serialize)]
struct NicState {
    id: String,
    host_link: String,
    /// Whether the host end exists (in this namespace).
    host_link_present: bool,
    master: Option<String>,
    lease: Option<Lease>,
}

fn nic_states(root: &Path, set: &ConfigSet, ct: &ContainerConfig) -> Vec<NicState> {
    ct.nics
        .iter()
        .map(|n| {
            let owner = Owner::container(&ct.name, &n.id);
            let lease = n
                .network
                .as_deref()
                .and_then(|net| set.networks.by_name(net))
                .and_then(|net| {
                    super::ipam::leases_for_view(root, &net.name)
                        .into_iter()
                        .find(|l| l.owner == owner)
                });
            NicState {
                id: n.id.clone(),
                host_link: n.host_link.clone(),
                host_link_present: link::index(&n.host_link).is_some(),
                master: link::master(&n.host_link),
                lease,
            }
        })
        .collect()
}

fn root_text(ct: &ContainerConfig) -> String {
    let kind = serde_json::to_value(ct.root_kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{kind}:{}", ct.root.display())
}

fn mode_text(ct: &ContainerConfig) -> String {
    if ct.boot {
        "boot".into()
    } else {
        format!("command: {}", ct.command.join(" "))
    }
}

pub fn show(root: &Path, name: &str, out: &OutputArgs) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let plan = Plan::build(&set);
    // An unknown name is a plain failure here (exit 1); only the unit's commands exit 78.
    let Ok(w) = load(&set, &plan, name) else {
        return Ok(Outcome::Failed);
    };
    let Some(ct) = w.container() else {
        return Ok(Outcome::Failed);
    };
    let nspawn = plan::nspawn_args(w, &Paths::new(Path::new("/")), true);
    let state = nic_states(root, &set, ct);
    let json = serde_json::json!({
        "container": ct,
        "unit": w.unit,
        "nspawn": nspawn,
        "nics": state,
    });
    if out.print_json(&json)? {
        return Ok(Outcome::Ok);
    }
    println!("{} ({})", ct.name, ct.path.display());
    println!("  unit       {}", w.unit);
    println!("  root       {}", root_text(ct));
    println!("  volatile   {}", ct.volatile.as_str());
    println!("  mode       {}", mode_text(ct));
    println!("  autostart  {}", if ct.autostart { "yes" } else { "no" });
    for (n, s) in ct.nics.iter().zip(&state) {
        println!(
            "  nic {}: {} (host, {}{}) / {} (inside), MAC {}, network {}",
            n.id,
            n.host_link,
            if s.host_link_present {
                "present"
            } else {
                "absent"
            },
            s.master
                .as_deref()
                .map(|m| format!(", on {m}"))
                .unwrap_or_default(),
            n.container_link,
            n.mac,
            n.network.as_deref().unwrap_or("-")
        );
        // Its file's ipv4, or the network's reservation ct-<name> (as `list` tells them).
        let reserved = n
            .network
            .as_deref()
            .and_then(|net| set.networks.by_name(net))
            .and_then(|net| net.reservations.get(&format!("ct-{}", ct.name)))
            .is_some_and(|r| n.ipv4.is_some_and(|a| a.addr() == *r));
        let addr = match (n.ipv4, &s.lease) {
            (Some(a), _) if reserved => format!("{a} (reserved)"),
            (Some(a), _) => format!("{a} (static)"),
            (None, Some(l)) => format!("{} (DHCP lease)", l.ip),
            (None, None) if n.dhcp => "DHCP (no lease recorded)".into(),
            (None, None) => "none".into(),
        };
        println!("    address  {addr}");
    }
    println!("  nspawn     systemd-nspawn {}", shell_words(&nspawn));
    Ok(Outcome::Ok)
}

/// `volt container run <name>` (the unit's ExecStart=): check the config and the root file
/// system, make sure each veth pair is whole (recreated when a crash took it), then replace
/// this process with systemd-nspawn, so the unit's main process is nspawn itself.
pub fn run(root: &Path, name: &str) -> Result<Outcome> {
    let at = Attach::load(root);
    let w = match load(&at.set, &at.plan, name) {
        Ok(w) => w,
        Err(o) => return Ok(o),
    };
    let Some(ct) = w.container() else {
        return Ok(Outcome::Config);
    };
    let errs = ct.check_root(root);
    if !errs.is_empty() {
        for e in errs {
            log::error!("{}", e.report());
        }
        return Ok(Outcome::Config);
    }
    at.claim_name(w)?;
    crate::generator::keep::keep_claims(root);
    for a in &w.attachments {
        at.up(&a.link)?;
    }
    // Files bound into the container are the real host paths nspawn sees.
    let host = Paths::new(Path::new("/"));
    for f in plan::boot_network(w, &host) {
        let real = root.join(f.host.strip_prefix("/").unwrap_or(&f.host));
        crate::fsutil::write_atomic_if_changed(&real, &f.text)?;
    }
    let args = plan::nspawn_args(w, &host, machined_available(name));
    let nspawn = std::env::var_os("VOLT_NSPAWN").unwrap_or_else(|| "systemd-nspawn".into());
    log::info!(
        "container {name}: {} {}",
        PathBuf::from(&nspawn).display(),
        shell_words(&args)
    );
    let err = std::process::Command::new(&nspawn).args(&args).exec();
    bail!("cannot run {}: {err}", PathBuf::from(&nspawn).display())
}

/// Whether nspawn should register the container with systemd-machined: under systemd, with
/// machined running or activatable. Otherwise say once that it runs unregistered.
fn machined_available(name: &str) -> bool {
    if std::env::var_os("INVOCATION_ID").is_none() {
        return false;
    }
    let conn = crate::sd::system_bus();
    let reachable = conn
        .as_ref()
        .ok()
        .is_some_and(|c| crate::sd::machined::reachable(c).unwrap_or(false));
    if let (true, Ok(c)) = (reachable, &conn) {
        // A crash of nspawn leaves its registration while the unit restarts: drop it, or the
        // new nspawn's registration fails.
        let unit = crate::plan::names::container_unit(name);
        if let Ok(true) = crate::sd::machined::unregister_leftover(c, name, &unit) {
            log::info!("container {name}: dropped the registration of its previous run");
        }
    }
    if !reachable {
        log::info!(
            "systemd-machined is not available: container {name} runs without a registration (machinectl will not list it)"
        );
    }
    reachable
}

/// `volt container net-up <name>` (the unit's ExecStartPost=): see
/// [`crate::attach::container_net_up`]; nspawn's PID from `--pid`, default `$MAINPID`.
pub fn net_up(root: &Path, name: &str, pid: Option<u32>) -> Result<Outcome> {
    let at = Attach::load(root);
    let w = match load(&at.set, &at.plan, name) {
        Ok(w) => w,
        Err(o) => return Ok(o),
    };
    let main = match pid {
        Some(p) => p,
        None => std::env::var("MAINPID")
            .ok()
            .and_then(|s| s.parse().ok())
            .context("no --pid given and $MAINPID is not set")?,
    };
    crate::attach::container_net_up(&at, w, main)?;
    Ok(Outcome::Ok)
}

/// `args` as a shell would read them back: a word with anything but letters, digits and
/// `_@%+=:,./-` in single quotes (a `'` as `'\''`).
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_words_read_back_as_the_arguments() {
        let args = [
            "-D",
            "/ct/sp ace%n",
            "--",
            "/bin/sh",
            "-c",
            "echo \"hi\"; it's $HOME",
            "",
        ]
        .map(String::from);
        assert_eq!(
            super::shell_words(&args),
            r#"-D '/ct/sp ace%n' -- /bin/sh -c 'echo "hi"; it'\''s $HOME' ''"#
        );
    }
}
