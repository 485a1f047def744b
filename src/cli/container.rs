//! `volt container ...`: list and show containers, and what `volt-container@.service` runs:
//! `run` (make sure the veth pair is whole, then exec systemd-nspawn) and `net-up`
//! (address and default route inside the container's network namespace, the lease in IPAM).

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Outcome, Output};
use crate::config::{ConfigSet, ContainerConfig, NetworkLookup};
use crate::net::ipam::{Ipam, Lease, Owner};
use crate::net::netlink::Netlink;
use crate::net::{link, netns};

/// How long `net-up` waits for a DHCP address inside the container (`$VOLT_DHCP_WAIT_SECS`).
const DHCP_WAIT: Duration = Duration::from_secs(20);
/// How long `net-up` waits for nspawn's container process to appear.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// The container `name`, or its errors logged and `Err(Outcome::Config)`.
fn load<'a>(set: &'a ConfigSet, name: &str) -> Result<&'a ContainerConfig, Outcome> {
    match set.container(name) {
        Ok(c) => Ok(c),
        Err(errs) => {
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
    }
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
    let ipam = Ipam::new(super::ipam::ipam_dir(root));
    ct.nics
        .iter()
        .map(|n| {
            let owner = Owner::container(&ct.name, &n.id);
            let lease = n
                .network
                .as_deref()
                .and_then(|net| set.networks.by_name(net))
                .and_then(|net| ipam.list(&net.name).ok())
                .and_then(|ls| ls.into_iter().find(|l| l.owner == owner));
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

pub fn list(root: &Path, output: Output) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    for e in &set.errors {
        log::warn!("{}", e.report());
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&set.containers)?),
        Output::Table => {
            println!(
                "{:<20} {:<6} {:<40} {:<9} NICS",
                "NAME", "MODE", "ROOT", "AUTOSTART"
            );
            for ct in &set.containers {
                let nics: Vec<String> = ct
                    .nics
                    .iter()
                    .map(|n| {
                        let ip = n.ipv4.map_or_else(
                            || if n.dhcp { "dhcp" } else { "none" }.to_string(),
                            |i| i.to_string(),
                        );
                        format!(
                            "{}={}@{} {} {}",
                            n.id,
                            n.host_link,
                            n.bridge.as_deref().unwrap_or("-"),
                            n.mac,
                            ip
                        )
                    })
                    .collect();
                println!(
                    "{:<20} {:<6} {:<40} {:<9} {}",
                    ct.name,
                    if ct.boot { "boot" } else { "cmd" },
                    root_text(ct),
                    if ct.autostart { "yes" } else { "no" },
                    nics.join(", ")
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

pub fn show(root: &Path, name: &str, output: Output) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let ct = match load(&set, name) {
        Ok(c) => c,
        Err(o) => return Ok(o),
    };
    let state = nic_states(root, &set, ct);
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "container": ct,
                "unit": ct.unit_name(),
                "nspawn": ct.nspawn_args(),
                "nics": state,
            }))?
        ),
        Output::Table => {
            println!("{} ({})", ct.name, ct.path.display());
            println!("  unit       {}", ct.unit_name());
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
                let addr = match (n.ipv4, &s.lease) {
                    (Some(a), _) => format!("{a} (static)"),
                    (None, Some(l)) => format!("{} (DHCP lease)", l.ip),
                    (None, None) if n.dhcp => "DHCP (no lease recorded)".into(),
                    (None, None) => "none".into(),
                };
                println!("    address  {addr}");
            }
            println!("  nspawn     systemd-nspawn {}", ct.nspawn_args().join(" "));
        }
    }
    Ok(Outcome::Ok)
}

/// `volt container run <name>` (the unit's ExecStart=): check the config and the root file
/// system, make sure each veth pair is whole (recreated when a crash took it), then replace
/// this process with systemd-nspawn, so the unit's main process is nspawn itself.
pub fn run(root: &Path, name: &str) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let ct = match load(&set, name) {
        Ok(c) => c,
        Err(o) => return Ok(o),
    };
    let errs = ct.check_root(root);
    if !errs.is_empty() {
        for e in errs {
            log::error!("{}", e.report());
        }
        return Ok(Outcome::Config);
    }
    for nic in &ct.nics {
        super::link::veth_up(root, &set, ct, nic)?;
    }
    if ct.boot {
        for nic in ct.nics.iter().filter(|n| n.dhcp) {
            let file = ct.boot_network_file(nic);
            crate::generator::write_atomic_if_changed(&file, &ct.boot_network(nic))?;
        }
    }
    let args = ct.nspawn_args();
    let nspawn = std::env::var_os("VOLT_NSPAWN").unwrap_or_else(|| "systemd-nspawn".into());
    log::info!(
        "container {name}: {} {}",
        PathBuf::from(&nspawn).display(),
        args.join(" ")
    );
    let err = std::process::Command::new(&nspawn).args(&args).exec();
    bail!("cannot run {}: {err}", PathBuf::from(&nspawn).display())
}

/// The parent PID of `pid` from `/proc/<pid>/stat`.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn netns_id(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// The container's leader: the child of nspawn (`main`) in another network namespace.
fn find_leader(main: u32) -> Result<u32> {
    let ours = netns_id("self");
    let start = Instant::now();
    loop {
        if !Path::new(&format!("/proc/{main}")).exists() {
            bail!("systemd-nspawn (PID {main}) is gone");
        }
        let found = std::fs::read_dir("/proc")
            .context("cannot list /proc")?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .find(|pid| ppid(*pid) == Some(main) && netns_id(&pid.to_string()) != ours);
        if let Some(pid) = found {
            return Ok(pid);
        }
        if start.elapsed() > LEADER_WAIT {
            bail!(
                "systemd-nspawn (PID {main}) has no child in its own network namespace after {LEADER_WAIT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The IPv4 addresses of `link` inside the namespace of process `pid`.
fn addrs_in(pid: u32, link: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let l = link.to_string();
    let r = netns::run_in(Path::new(&format!("/proc/{pid}/ns/net")), move || {
        Netlink::new()?.ipv4_addrs(&l)
    })??;
    Ok(r)
}

/// `volt container net-up <name>` (the unit's ExecStartPost=): inside the network namespace
/// of nspawn's container process (found from `--pid`, default `$MAINPID`), bring `lo` and
/// each NIC's container end up; for a static address add it and the default route. The
/// address goes into IPAM as the container's lease: a static one at once, a DHCP one once
/// the container's DHCP client has configured it (bounded wait; a warning if it never comes).
pub fn net_up(root: &Path, name: &str, pid: Option<u32>) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let ct = match load(&set, name) {
        Ok(c) => c,
        Err(o) => return Ok(o),
    };
    if ct.nics.is_empty() {
        return Ok(Outcome::Ok);
    }
    let main = match pid {
        Some(p) => p,
        None => std::env::var("MAINPID")
            .ok()
            .and_then(|s| s.parse().ok())
            .context("no --pid given and $MAINPID is not set")?,
    };
    let leader = find_leader(main)?;
    let ns = PathBuf::from(format!("/proc/{leader}/ns/net"));
    let ipam = Ipam::new(super::ipam::ipam_dir(root));
    let dhcp_wait = std::env::var("VOLT_DHCP_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DHCP_WAIT, Duration::from_secs);
    for nic in &ct.nics {
        let (l, addr, gw) = (nic.container_link.clone(), nic.ipv4, nic.gateway);
        netns::run_in(
            &ns,
            move || -> Result<(), crate::net::netlink::NetlinkError> {
                let nl = Netlink::new()?;
                if nl.link("lo")?.is_some_and(|lo| !lo.up) {
                    nl.set_up("lo")?;
                }
                nl.set_up(&l)?;
                if let Some(a) = addr {
                    nl.add_ipv4(&l, a.addr(), a.prefix_len())?;
                    if let Some(g) = gw {
                        nl.set_default_route(&l, g)?;
                    }
                }
                Ok(())
            },
        )
        .context("cannot enter the container's network namespace")?
        .with_context(|| format!("cannot configure {} in the container", nic.container_link))?;
        let net = nic.network.as_deref().and_then(|n| set.networks.by_name(n));
        let owner = Owner::container(&ct.name, &nic.id);
        if let Some(a) = addr {
            log::info!(
                "container {name}: {} is up inside with {a}{}",
                nic.container_link,
                gw.map(|g| format!(", default route via {g}"))
                    .unwrap_or_default()
            );
            if let Some(net) = net {
                if let Err(e) = ipam.record(net, &owner, a.addr(), true) {
                    log::warn!(
                        "container {name}: lease not recorded: {}",
                        crate::error_chain(&e)
                    );
                }
            }
            continue;
        }
        if !nic.dhcp {
            continue;
        }
        log::info!(
            "container {name}: {} is up inside; waiting up to {dhcp_wait:?} for its DHCP address",
            nic.container_link
        );
        let start = Instant::now();
        let got = loop {
            let now = addrs_in(leader, &nic.container_link)?;
            let hit = now
                .into_iter()
                .find(|(ip, _)| net.is_none_or(|n| n.subnet.contains(ip)));
            if hit.is_some() || start.elapsed() > dhcp_wait {
                break hit;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        match (got, net) {
            (Some((ip, prefix)), Some(net)) => {
                log::info!(
                    "container {name}: {} has {ip}/{prefix} from DHCP",
                    nic.container_link
                );
                if let Err(e) = ipam.record(net, &owner, ip, false) {
                    log::warn!("container {name}: lease not recorded: {}", crate::error_chain(&e));
                }
            }
            (Some((ip, prefix)), None) => log::info!(
                "container {name}: {} has {ip}/{prefix} from DHCP",
                nic.container_link
            ),
            (None, _) => log::warn!(
                "container {name}: {} got no DHCP address within {dhcp_wait:?} (is a DHCP client running inside?); no lease recorded",
                nic.container_link
            ),
        }
    }
    Ok(Outcome::Ok)
}
