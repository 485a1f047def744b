//! How a container runs: the systemd-nspawn command line and, in boot mode with DHCP, the
//! networkd `.network` bound into the container. Pure.

use std::path::PathBuf;

use super::names::{Paths, NETWORKD_PREFIX};
use super::{Addressing, Kind, LinkKind, Workload};
use crate::config::Volatile;

/// A file Volt writes for a container before it starts and binds into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundFile {
    /// Where it is written on the host.
    pub host: PathBuf,
    /// Where it appears inside the container.
    pub inside: String,
    pub text: String,
}

/// Boot mode with DHCP: for each DHCP NIC, a `.network` that makes the container's own
/// systemd-networkd run a DHCP client on the container end, bound read-only into the
/// container's `/run/systemd/network/`.
pub fn boot_network(w: &Workload, paths: &Paths) -> Vec<BoundFile> {
    let Some(ct) = w.container() else {
        return Vec::new();
    };
    if !ct.boot {
        return Vec::new();
    }
    w.attachments
        .iter()
        .filter(|a| a.addressing == Addressing::Dhcp)
        .filter_map(|a| match &a.kind {
            LinkKind::Veth { peer } => Some(BoundFile {
                host: paths.container_dir(&w.name).join(format!("{peer}.network")),
                inside: format!("/run/systemd/network/{NETWORKD_PREFIX}{peer}.network"),
                text: format!(
                    "# Written by volt for container {} ({}), NIC {}\n[Match]\nName={peer}\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
                    w.name,
                    w.source.display(),
                    a.nic
                ),
            }),
            _ => None,
        })
        .collect()
}

/// The systemd-nspawn command line (without the program name) that runs container `w` as a
/// unit of systemd: `--keep-unit` (the unit's own cgroup), registered with systemd-machined
/// when `register` (machined then tracks the unit),
/// each NIC's container end moved in with `--network-interface=`. Boot mode runs the tree's
/// init (with [`boot_network`] files bound in); otherwise the command runs as PID 2 and a stop
/// is SIGRTMIN+3 to nspawn's stub init, which ends it cleanly. Empty for a VM.
pub fn nspawn_args(w: &Workload, paths: &Paths, register: bool) -> Vec<String> {
    let Some(ct) = w.container() else {
        return Vec::new();
    };
    debug_assert_eq!(w.kind, Kind::Container);
    let mut a = vec![
        "--quiet".to_string(),
        "--keep-unit".into(),
        format!("--register={}", if register { "yes" } else { "no" }),
        format!("--machine={}", ct.name),
        "-D".into(),
        ct.root.display().to_string(),
    ];
    if ct.volatile != Volatile::No {
        a.push(format!("--volatile={}", ct.volatile.as_str()));
    }
    let peers: Vec<&str> = w
        .attachments
        .iter()
        .filter_map(|at| match &at.kind {
            LinkKind::Veth { peer } => Some(peer.as_str()),
            _ => None,
        })
        .collect();
    if peers.is_empty() {
        a.push("--private-network".into());
    }
    for p in &peers {
        a.push(format!("--network-interface={p}"));
    }
    a.push(format!("--setenv=VOLT_CONTAINER={}", ct.name));
    if let Some(p) = peers.first() {
        a.push(format!("--setenv=VOLT_IFACE={p}"));
    }
    if ct.boot {
        for f in boot_network(w, paths) {
            a.push(format!("--bind-ro={}:{}", f.host.display(), f.inside));
        }
        a.push("--boot".into());
        if !ct.init_args.is_empty() {
            a.push("--".into());
            a.extend(ct.init_args.iter().cloned());
        }
    } else {
        a.push("--as-pid2".into());
        a.push("--kill-signal=SIGRTMIN+3".into());
        a.push("--".into());
        a.extend(ct.command.iter().cloned());
    }
    a
}
