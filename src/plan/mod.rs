//! The plan: what Volt should make of the configuration, as plain data. Pure (no I/O): it
//! turns a loaded [`ConfigSet`] into [`Workload`]s (a VM or a container) with one
//! [`Attachment`] per NIC: the host link, its owner unit, where it lives, its MAC, MTU, queues
//! and addressing, and the networkd files it needs. The generator renders a plan; `attach`
//! brings an attachment's link up or down; `volt vm run` turns a VM's plan into the VMM's spec.
//!
//! Every name and path rule lives in [`names`].

pub mod names;
mod networkd;
mod nspawn;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use uuid::Uuid;

use crate::config::{
    short_id, ConfigSet, ContainerConfig, ContainerNic, MacAddr, MacvtapMode, Network,
    NetworkLookup, NetworkType, Networks, NicConfig, NicMode, VmConfig,
};

pub use names::Paths;
pub use networkd::{bridge_files, parse_networkd_file, static_leases_dropin, NetworkdFile};
pub use nspawn::{boot_network, nspawn_args, BoundFile};

/// A VM or a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Vm,
    Container,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Vm => "vm",
            Kind::Container => "container",
        }
    }

    /// "VM" / "container", for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Kind::Vm => "VM",
            Kind::Container => "container",
        }
    }
}

/// What runs: the checked configuration of a VM or a container.
#[derive(Debug, Clone)]
pub enum Config {
    Vm(Box<VmConfig>),
    Container(Box<ContainerConfig>),
}

/// One workload and everything that hangs off it.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: Kind,
    pub name: String,
    pub uuid: Uuid,
    /// The configuration file as systemd sees it (`SourcePath=`).
    pub source: PathBuf,
    /// `volt-vm@<name>.service` or `volt-container@<name>.service`.
    pub unit: String,
    /// The template unit `unit` instantiates.
    pub template: &'static str,
    pub autostart: bool,
    /// A cluster is configured: the workload's name is claimed cluster-wide before it starts.
    pub clustered: bool,
    pub attachments: Vec<Attachment>,
    pub config: Config,
}

impl Workload {
    /// The owner units of its host links (`BindsTo=`/`After=` of the workload's unit).
    pub fn owner_units(&self) -> Vec<String> {
        self.attachments
            .iter()
            .map(|a| a.owner_unit.clone())
            .collect()
    }

    pub fn vm(&self) -> Option<&VmConfig> {
        match &self.config {
            Config::Vm(v) => Some(v),
            Config::Container(_) => None,
        }
    }

    pub fn container(&self) -> Option<&ContainerConfig> {
        match &self.config {
            Config::Container(c) => Some(c),
            Config::Vm(_) => None,
        }
    }

    /// Whether any NIC's link lives in an isolated namespace (the VMM then opens its TAP
    /// there, which needs CAP_SYS_ADMIN during setup).
    pub fn has_isolated_nic(&self) -> bool {
        self.attachments.iter().any(|a| a.netns.is_some())
    }
}

/// What kind of host link an attachment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A TAP the VMM opens, `queues` queue pairs.
    Tap { queues: u32 },
    /// A macvtap on `parent`; the VMM opens `/dev/tap<ifindex>`.
    Macvtap { parent: String, mode: MacvtapMode },
    /// A veth pair: the host end is the link, `peer` goes into the container.
    Veth { peer: String },
}

/// Who creates the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// systemd-networkd from runtime `.netdev`/`.network` files; Volt creates it directly
    /// only when networkd is absent or too slow.
    Networkd,
    /// Volt creates it directly (TUNSETIFF + netlink, veth and macvtap over netlink).
    Direct,
}

/// Where a workload's address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// Written in the workload's file.
    Static(Ipv4Net),
    /// The network's reservation `vm-<name>` / `ct-<name>`.
    Reserved(Ipv4Net),
    /// Leased from the network's pool when the link comes up (VMs).
    Pool,
    /// From networkd's DHCP server on the bridge (containers).
    Dhcp,
    /// No address (a macvtap outside any network, an isolated container without one).
    None,
}

impl Addressing {
    /// The address when the plan knows it.
    pub fn known(&self) -> Option<Ipv4Net> {
        match self {
            Addressing::Static(a) | Addressing::Reserved(a) => Some(*a),
            _ => None,
        }
    }
}

/// One NIC of one workload: its host link and everything needed to bring it up.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub workload_kind: Kind,
    pub workload: String,
    /// The workload's config file.
    pub source: PathBuf,
    pub nic: String,
    pub index: usize,
    /// The host link: `tap-<id>[-N]`, `mvt-<id>[-N]` or `veth-<id>-h`.
    pub link: String,
    /// `<workload>-<nic>` for VMs, the container's name for containers.
    pub altname: String,
    pub kind: LinkKind,
    pub creation: Creation,
    /// The isolated namespace the host link lives in (`volt-iso-<id>`).
    pub netns: Option<String>,
    pub network: Option<String>,
    pub bridge: Option<String>,
    pub mtu: u32,
    pub mac: MacAddr,
    /// Written in the file: never rewritten on a conflict.
    pub mac_explicit: bool,
    pub addressing: Addressing,
    pub gateway: Option<Ipv4Addr>,
    /// Try vhost-net (VM TAPs).
    pub vhost: bool,
    /// `volt-tap@<link>.service` or `volt-veth@<link>.service`.
    pub owner_unit: String,
    /// networkd files for `/run/systemd/network` (empty unless `creation` is networkd and the
    /// link is on a bridge in the host namespace).
    pub networkd: Vec<NetworkdFile>,
}

impl Attachment {
    /// "VM web NIC eth0", for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {} NIC {}",
            self.workload_kind.noun(),
            self.workload,
            self.nic
        )
    }

    pub fn queues(&self) -> u32 {
        match self.kind {
            LinkKind::Tap { queues } => queues,
            _ => 1,
        }
    }
}

/// Everything the configuration asks for.
#[derive(Debug, Default)]
pub struct Plan {
    pub networks: Networks,
    pub workloads: Vec<Workload>,
}

impl Plan {
    /// The plan of a checked configuration (files with errors are already left out).
    pub fn build(set: &ConfigSet) -> Plan {
        let mut workloads: Vec<Workload> = set
            .vms
            .iter()
            .map(|vm| vm_workload(vm, &set.networks))
            .collect();
        workloads.extend(
            set.containers
                .iter()
                .map(|c| container_workload(c, &set.networks)),
        );
        // A broken cluster.toml counts: the claim then fails and the VM does not start.
        let clustered = set.cluster.is_some() || set.cluster_broken;
        for w in &mut workloads {
            w.clustered = clustered;
        }
        Plan {
            networks: set.networks.clone(),
            workloads,
        }
    }

    pub fn workload(&self, kind: Kind, name: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.kind == kind && w.name == name)
    }

    /// The attachment whose host link is `link`, with its workload.
    pub fn attachment(&self, link: &str) -> Option<(&Workload, &Attachment)> {
        self.workloads.iter().find_map(|w| {
            w.attachments
                .iter()
                .find(|a| a.link == link)
                .map(|a| (w, a))
        })
    }

    /// The DHCP static leases networkd's server hands out on `net`'s bridge: every
    /// reservation whose owner's MAC is known, and every static container address
    /// (containers share the DHCP pool's range), sorted by address.
    pub fn static_leases(&self, net: &Network) -> Vec<(MacAddr, Ipv4Addr)> {
        let mut out: Vec<(MacAddr, Ipv4Addr)> = Vec::new();
        for (network, mac, ip) in self.workloads.iter().flat_map(Workload::static_leases) {
            if network == net.name && !out.contains(&(mac, ip)) {
                out.push((mac, ip));
            }
        }
        out.sort_by_key(|(_, ip)| *ip);
        out
    }
}

impl Workload {
    /// This workload's DHCP static leases (see [`Plan::static_leases`]), by network name.
    pub fn static_leases(&self) -> Vec<(String, MacAddr, Ipv4Addr)> {
        self.attachments
            .iter()
            .filter_map(|a| {
                let ip = match (a.addressing, self.kind) {
                    (Addressing::Reserved(ip), _) => ip.addr(),
                    (Addressing::Static(ip), Kind::Container) => ip.addr(),
                    _ => return None,
                };
                Some((a.network.clone()?, a.mac, ip))
            })
            .collect()
    }
}

fn network_of<'a>(nets: &'a Networks, name: &Option<String>) -> Option<&'a Network> {
    name.as_deref().and_then(|n| nets.by_name(n))
}

fn addressing(
    ipv4: Option<Ipv4Net>,
    net: Option<&Network>,
    key: &str,
    otherwise: Addressing,
) -> Addressing {
    match ipv4 {
        Some(a) if net.and_then(|n| n.reservations.get(key)) == Some(&a.addr()) => {
            Addressing::Reserved(a)
        }
        Some(a) => Addressing::Static(a),
        None => otherwise,
    }
}

fn vm_workload(vm: &VmConfig, nets: &Networks) -> Workload {
    let attachments = vm
        .nics
        .iter()
        .map(|nic| vm_attachment(vm, nic, nets))
        .collect();
    Workload {
        kind: Kind::Vm,
        name: vm.name.clone(),
        uuid: vm.uuid,
        source: vm.path.clone(),
        unit: names::vm_unit(&vm.name),
        template: names::VM_TEMPLATE,
        autostart: vm.autostart,
        clustered: false,
        attachments,
        config: Config::Vm(Box::new(vm.clone())),
    }
}

fn vm_attachment(vm: &VmConfig, nic: &NicConfig, nets: &Networks) -> Attachment {
    let net = network_of(nets, &nic.network);
    let isolated = net.is_some_and(|n| n.kind == NetworkType::Isolated);
    let (kind, creation) = match nic.mode {
        NicMode::Macvtap => (
            LinkKind::Macvtap {
                parent: nic.parent.clone().unwrap_or_default(),
                mode: nic.macvtap_mode.unwrap_or_default(),
            },
            Creation::Direct,
        ),
        NicMode::Direct => (LinkKind::Tap { queues: nic.queues }, Creation::Direct),
        NicMode::Networkd => (LinkKind::Tap { queues: nic.queues }, Creation::Networkd),
    };
    let otherwise = if net.is_some() {
        Addressing::Pool
    } else {
        Addressing::None
    };
    let mut a = Attachment {
        workload_kind: Kind::Vm,
        workload: vm.name.clone(),
        source: vm.path.clone(),
        nic: nic.id.clone(),
        index: nic.index,
        link: nic.link.clone(),
        altname: names::altname(&vm.name, &nic.id),
        kind,
        creation,
        netns: isolated.then(|| names::isolated_netns(&short_id(&vm.uuid))),
        network: nic.network.clone(),
        bridge: if isolated { None } else { nic.bridge.clone() },
        mtu: nic.mtu,
        mac: nic.mac,
        mac_explicit: nic.mac_explicit,
        addressing: addressing(nic.ipv4, net, &format!("vm-{}", vm.name), otherwise),
        gateway: nic.gateway,
        vhost: nic.vhost,
        owner_unit: names::link_unit(&nic.link),
        networkd: Vec::new(),
    };
    if a.creation == Creation::Networkd && a.netns.is_none() && a.bridge.is_some() {
        a.networkd = networkd::tap_files(&a);
    }
    a
}

fn container_workload(ct: &ContainerConfig, nets: &Networks) -> Workload {
    let attachments = ct
        .nics
        .iter()
        .map(|nic| container_attachment(ct, nic, nets))
        .collect();
    Workload {
        kind: Kind::Container,
        name: ct.name.clone(),
        uuid: ct.uuid,
        source: ct.path.clone(),
        unit: names::container_unit(&ct.name),
        template: names::CONTAINER_TEMPLATE,
        autostart: ct.autostart,
        clustered: false,
        attachments,
        config: Config::Container(Box::new(ct.clone())),
    }
}

fn container_attachment(ct: &ContainerConfig, nic: &ContainerNic, nets: &Networks) -> Attachment {
    let net = network_of(nets, &nic.network);
    let otherwise = if nic.dhcp {
        Addressing::Dhcp
    } else {
        Addressing::None
    };
    Attachment {
        workload_kind: Kind::Container,
        workload: ct.name.clone(),
        source: ct.path.clone(),
        nic: nic.id.clone(),
        index: nic.index,
        link: nic.host_link.clone(),
        altname: ct.name.clone(),
        kind: LinkKind::Veth {
            peer: nic.container_link.clone(),
        },
        creation: Creation::Direct,
        netns: nic
            .isolated
            .then(|| names::isolated_netns(&short_id(&ct.uuid))),
        network: nic.network.clone(),
        bridge: if nic.isolated {
            None
        } else {
            nic.bridge.clone()
        },
        mtu: net.map_or(1500, |n| n.mtu),
        mac: nic.mac,
        mac_explicit: nic.mac_explicit,
        addressing: addressing(nic.ipv4, net, &format!("ct-{}", ct.name), otherwise),
        gateway: nic.gateway,
        vhost: false,
        owner_unit: names::veth_unit(&nic.host_link),
        networkd: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
