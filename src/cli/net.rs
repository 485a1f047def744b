//! `volt net ...`.

use std::path::Path;

use anyhow::{bail, Result};

use serde::Serialize;

use super::output::OutputArgs;
use super::Outcome;
use crate::attach::Attach;
use crate::config::{ConfigSet, Network, NetworkLookup, NetworkType};
use crate::net::ipam::Lease;
use crate::net::manager::{LeftBridges, Manager};
use crate::net::nat;
use crate::net::netlink::Netlink;
use crate::plan::Paths;

fn kind_text(n: &Network) -> String {
    serde_json::to_value(n.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn source_text(n: &Network) -> String {
    n.source
        .as_ref()
        .map_or_else(|| "built-in".to_string(), |p| p.display().to_string())
}

/// A network with its leases and what this host has of it now: the same in `list` and
/// `show` (JSON keys in this order).
#[derive(Serialize)]
struct NetworkView<'a> {
    #[serde(flatten)]
    network: &'a Network,
    leases: Vec<Lease>,
    state: LiveState,
}

/// The network as this host has it now.
#[derive(Serialize, Default)]
struct LiveState {
    /// `absent`, or the bridge's operational state (`up`, `down`, `no-carrier`, ...).
    bridge: String,
    bridge_mtu: Option<u32>,
    /// The links on the bridge (TAPs, veths, VXLAN ports, ...).
    ports: Vec<Port>,
    /// Host-only networks: whether their NAT chains are in table `ip volt`; `null` for other
    /// types, or when that cannot be read (it needs root).
    nat: Option<bool>,
}

#[derive(Serialize)]
struct Port {
    link: String,
    /// Its altnames: `<vm>-<nic>` for a TAP, the container's name for a veth.
    altnames: Vec<String>,
    state: String,
}

/// What the host has now, read once for every network shown: its links, and the chains of
/// table `ip volt` (`None`: could not be read; nftables needs root).
struct HostNow {
    links: Option<Vec<crate::net::netlink::Link>>,
    chains: Option<Vec<String>>,
}

impl HostNow {
    fn read(networks: &[&Network]) -> HostNow {
        let links = Netlink::new()
            .and_then(|nl| nl.links())
            .map_err(|e| log::warn!("{}", crate::error_chain(&e)))
            .ok();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let chains = (root && networks.iter().any(|n| n.kind == NetworkType::HostOnly))
            .then(nat::existing_chains)
            .and_then(|r| r.map_err(|e| log::warn!("{}", crate::error_chain(&e))).ok());
        HostNow { links, chains }
    }

    fn state_of(&self, net: &Network) -> LiveState {
        let mut st = LiveState {
            bridge: "absent".into(),
            ..LiveState::default()
        };
        let links = self.links.as_deref().unwrap_or_default();
        if self.links.is_none() {
            st.bridge = "unknown".into();
        }
        if let Some(b) = links.iter().find(|l| l.name == net.bridge) {
            st.bridge.clone_from(&b.operstate);
            st.bridge_mtu = Some(b.mtu);
            st.ports = links
                .iter()
                .filter(|l| l.master == Some(b.index))
                .map(|l| Port {
                    link: l.name.clone(),
                    altnames: l.altnames.clone(),
                    state: l.operstate.clone(),
                })
                .collect();
        }
        if net.kind == NetworkType::HostOnly {
            st.nat = self.chains.as_ref().map(|c| nat::is_up_in(c, &net.name));
        }
        st
    }
}

fn view<'a>(root: &Path, net: &'a Network, now: &HostNow) -> NetworkView<'a> {
    NetworkView {
        network: net,
        leases: super::ipam::leases_for_view(root, &net.name),
        state: now.state_of(net),
    }
}

pub fn list(root: &Path, out: &OutputArgs) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    for e in &set.errors {
        log::warn!("{}", e.report());
    }
    let all: Vec<&Network> = set.networks.list.iter().collect();
    let now = HostNow::read(&all);
    let views: Vec<NetworkView> = all.iter().map(|n| view(root, n, &now)).collect();
    if out.print_json(&views)? {
        return Ok(Outcome::Ok);
    }
    let rows = views
        .iter()
        .map(|v| {
            let n = v.network;
            vec![
                n.name.clone(),
                kind_text(n),
                n.bridge.clone(),
                v.state.bridge.clone(),
                v.state.ports.len().to_string(),
                n.subnet.to_string(),
                n.gateway.to_string(),
                n.vm_range.to_string(),
                n.container_range.to_string(),
                source_text(n),
            ]
        })
        .collect();
    out.print_table(
        &[
            "NAME",
            "TYPE",
            "BRIDGE",
            "STATE",
            "PORTS",
            "SUBNET",
            "GATEWAY",
            "VM POOL",
            "CONTAINER POOL",
            "SOURCE",
        ],
        rows,
    );
    // Bridges Volt may delete that no configured network uses any more (its file is gone, or
    // names another bridge now): still on the host until `volt net down`.
    let configured: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
    let bridges: Vec<&str> = all.iter().map(|n| n.bridge.as_str()).collect();
    let on_host = |b: &str| {
        now.links
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|l| l.is_bridge_named(b))
    };
    let mgr = Manager::new(Paths::new(root).runtime_dir());
    let mut noted: Vec<String> = Vec::new();
    for m in mgr.bridge_markers(&Paths::new(root).left_bridges_dir()) {
        if bridges.contains(&m.bridge.as_str()) || !on_host(&m.bridge) || noted.contains(&m.bridge)
        {
            continue;
        }
        // By the network's name when no file defines it (that also takes its NAT down), else
        // by the bridge's.
        let gone = !m.network.is_empty() && !configured.contains(&m.network.as_str());
        let by = if gone { &m.network } else { &m.bridge };
        let of = if m.network.is_empty() {
            String::new()
        } else {
            format!(" of network {}", m.network)
        };
        println!(
            "note: bridge {}{of} is still here though no network file uses it any more; `volt net down {by}` removes it",
            m.bridge
        );
        noted.push(m.bridge);
    }
    Ok(Outcome::Ok)
}

pub fn show(root: &Path, name: &str, out: &OutputArgs) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let net = find_net(&set, name)?;
    let v = view(root, net, &HostNow::read(&[net]));
    if out.print_json(&v)? {
        return Ok(Outcome::Ok);
    }
    println!("{} ({})", net.name, source_text(net));
    println!("  type         {}", kind_text(net));
    let st = &v.state;
    println!(
        "  bridge       {} ({}{})",
        net.bridge,
        st.bridge,
        st.bridge_mtu
            .map(|m| format!(", MTU {m}"))
            .unwrap_or_default()
    );
    for p in &st.ports {
        println!(
            "  port         {}{} ({})",
            p.link,
            if p.altnames.is_empty() {
                String::new()
            } else {
                format!(" [{}]", p.altnames.join(", "))
            },
            p.state
        );
    }
    if net.kind == NetworkType::HostOnly {
        println!(
            "  NAT          {}",
            match st.nat {
                Some(true) => "in table ip volt",
                Some(false) => "absent (volt net up, or a workload's link coming up, makes it)",
                None => "unknown (reading nftables needs root and the nft command)",
            }
        );
    }
    println!("  subnet       {} (gateway {})", net.subnet, net.gateway);
    println!("  VM pool      {}", net.vm_range);
    println!("  container    {}", net.container_range);
    println!(
        "  DHCP         {}",
        match (net.volt_serves_dhcp(), net.offers_dhcp(), net.dhcp) {
            (true, ..) => "on",
            (false, true, _) =>
                "the bridge's own (create_bridge = false: Volt configures no DHCP server there)",
            (false, false, true) => "off (isolated: each workload has a namespace of its own)",
            (false, false, false) => "off",
        }
    );
    println!("  MTU          {}", net.mtu);
    if net.kind != NetworkType::Isolated {
        println!(
            "  broadcast    {} frames/s per workload port",
            net.broadcast_limit
        );
    }
    if let Some(u) = &net.uplink {
        println!("  uplink       {u}");
    }
    for pm in &net.port_maps {
        println!("  port map     {pm}");
    }
    for (k, ip) in &net.reservations {
        println!("  reservation  {k} = {ip}");
    }
    for l in &v.leases {
        println!(
            "  lease        {} {}{}",
            l.ip,
            l.owner,
            if l.fixed { " (static)" } else { "" }
        );
    }
    Ok(Outcome::Ok)
}

/// The network named `name` (or with bridge `name`). When there is none, an error that says
/// whether a file of that name (or one naming that bridge) has errors.
fn find_net<'a>(set: &'a ConfigSet, name: &str) -> Result<&'a crate::config::Network> {
    if let Some(n) = set
        .networks
        .by_name(name)
        .or_else(|| set.networks.by_bridge(name))
    {
        return Ok(n);
    }
    if let Some(bad) = broken_file(set, name) {
        bail!(
            "network {name:?} has errors in {}: fix them (volt validate) first",
            bad.display()
        );
    }
    bail!("no network named {name:?} (see volt net list)")
}

/// The network file (TOML or zone YAML) for `name` that has errors, if any: by its name, or
/// by the bridge it names when that much can be read.
fn broken_file<'a>(set: &'a ConfigSet, name: &str) -> Option<&'a Path> {
    set.networks.broken(Some(name), Some(name)).or_else(|| {
        set.errors.iter().map(|e| e.file()).find(|f| {
            f.parent().is_some_and(|d| {
                d.ends_with(crate::config::NETWORKS_DIR) || d.ends_with(crate::config::ZONES_DIR)
            }) && crate::config::file_stem(f) == name
        })
    })
}

/// `volt net up`: the bridge, and for host-only networks forwarding and the NAT rules with
/// the declared port maps whose workloads have an address (the others are listed; each is
/// made when its workload's link comes up).
pub fn up(root: &Path, name: &str) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let net = find_net(&set, name)?;
    let mgr = Manager::new(Paths::new(root).runtime_dir());
    // The leases are read under the NAT lock, as the link owners read them.
    let _lock = mgr.lock_nat()?;
    let targets = Attach::load(root).port_map_targets(net)?;
    let r = mgr.net_up(net, &targets.ready)?;
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
    // Made when the target gets its address: its link owner refreshes the NAT then.
    for w in &targets.waiting {
        println!("  {w}");
    }
    Ok(Outcome::Ok)
}

/// `volt net down`: the NAT rules, and the bridge if Volt created it. For a name no file
/// defines any more, what Volt left under it (NAT chains, a bridge it created or networkd
/// made from a file Volt rendered).
pub fn down(root: &Path, name: &str) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    let mgr = Manager::new(Paths::new(root).runtime_dir());
    let _lock = mgr.lock_nat()?;
    let net = match find_net(&set, name) {
        Ok(net) => net,
        Err(e) => {
            // A file of that name that is broken or collides is not gone: fix it first.
            if broken_file(&set, name).is_some() {
                return Err(e);
            }
            // Which bridges are in use is known only when every network file could be read.
            if let Some(bad) = set.errors.iter().find(|er| {
                matches!(er, crate::config::ConfigError::ReadDir { path, .. }
                    if path.ends_with(crate::config::NETWORKS_DIR)
                        || path.ends_with(crate::config::ZONES_DIR))
            }) {
                bail!(
                    "{}; which bridges networks use is not known, so nothing of {name:?} is removed",
                    bad.report()
                );
            }
            let in_use: Vec<&str> = set
                .networks
                .list
                .iter()
                .map(|n| n.bridge.as_str())
                .collect();
            if let Some(bridge) = not_yet_swept(root, name) {
                bail!(
                    "{name}: its file is gone, but the generator has not run since, so bridge {bridge} is still networkd's: run `systemctl daemon-reload`, then `volt net down {name}` again"
                );
            }
            let left = Paths::new(root).left_bridges_dir();
            let others = |bridge: &str| super::teardown::defined_elsewhere(root, bridge);
            let done = mgr.net_down_leftovers(
                name,
                &LeftBridges {
                    left_dir: &left,
                    in_use: &in_use,
                    defined_elsewhere: &others,
                },
            )?;
            for (bridge, why) in &done.kept {
                println!("bridge {bridge} stays: {why}");
            }
            if done.removed.is_empty() {
                // A bridge that stays was said above (as `--all` does): that is the answer,
                // not "no network".
                return if done.kept.is_empty() {
                    Err(e)
                } else {
                    Ok(Outcome::Ok)
                };
            }
            println!(
                "{name}: no file defines it any more; removed {}",
                done.removed.join(" and ")
            );
            return Ok(Outcome::Ok);
        }
    };
    mgr.net_down(net)?;
    println!("{}: down", net.name);
    Ok(Outcome::Ok)
}

/// The bridge of network `name` (or bridge `name`) whose `.netdev` Volt rendered is still in
/// networkd's runtime directory though the file it came from is gone: the generator has not
/// run since.
fn not_yet_swept(root: &Path, name: &str) -> Option<String> {
    let dir = Paths::new(root).networkd_dir();
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let file = e.file_name().to_str()?.to_string();
        let text = std::fs::read_to_string(e.path()).ok()?;
        if !crate::plan::names::is_owned_networkd_file(&file, false, &text) {
            return None;
        }
        let (bridge, network) = crate::plan::names::left_bridge(&file, &text)?;
        let source = crate::plan::names::networkd_source(&text)?;
        let gone = !root
            .join(source.strip_prefix("/").unwrap_or(&source))
            .exists();
        (gone && (network == name || bridge == name)).then_some(bridge)
    })
}
