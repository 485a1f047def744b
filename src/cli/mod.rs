//! The `volt` command line: the one module that sees every other.

mod cluster;
mod complete;
mod console;
mod container;
mod demo;
mod docs;
mod generate;
mod ipam;
mod link;
mod manual;
mod net;
pub mod output;
mod teardown;
mod validate;
mod vm;
mod workload;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use output::{Output, OutputArgs};

#[derive(Debug, Parser)]
#[command(
    name = "volt",
    version,
    about = "Volt: KVM microVMs and containers as systemd citizens on one network"
)]
pub struct Opts {
    /// Read configuration under this root instead of / (also $VOLT_ROOT).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// More log output on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check VM, container, network and zone files; print every error; exit 1 if any.
    Validate {
        /// Files to check (default: everything under <root>/etc/volt and the zone directory).
        /// A VM or container file is also checked against the installed workloads (their
        /// names, addresses, MACs, vsock CIDs and disks), as if it were installed after them.
        #[arg(value_name = "FILE")]
        paths: Vec<PathBuf>,
        /// What the files are (default: from their directory or name, e.g. lab.network.toml,
        /// else from what they hold).
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        kind: Option<validate::FileType>,
    },
    /// VMs.
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// Containers (systemd-nspawn, /etc/volt/containers/<name>.toml).
    Container {
        #[command(subcommand)]
        command: ContainerCommand,
    },
    /// Attach to a VM's serial console (Ctrl-] leaves).
    Console(console::ConsoleArgs),
    /// Run the generator on a root and write into OUTDIR, for debugging.
    Generate {
        /// Output directory (used as normal, early and late directory).
        outdir: PathBuf,
    },
    /// Networks (built-in, /etc/volt/networks, Voltainer zones).
    Net {
        #[command(subcommand)]
        command: NetCommand,
    },
    /// Address leases.
    Ipam {
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Bring a VM NIC's or container's host link up or down (what volt-tap@.service and
    /// volt-veth@.service run).
    Link {
        #[command(subcommand)]
        command: LinkCommand,
    },
    /// The cluster (etcd): membership, the VXLAN overlay, claims (/etc/volt/cluster.toml).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Start the example VM hello on the default guest, ping it, show its console.
    ///
    /// Where systemd is PID 1: /etc/volt/vms/hello.toml (the example copied there when
    /// missing), daemon-reload, start volt-vm@hello, ping it on volt0, show this run's console
    /// lines from the journal; it keeps running and the last lines say how to stop it.
    /// Elsewhere (containers, CI machines): the same VM under `volt vm run --attach` in a
    /// private network namespace with its own volt0, pinged there, its console shown, then
    /// stopped and the namespace removed.
    Demo,
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenDocs {
        /// Output directory (man/, completions/{bash,zsh,fish}/ below it).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// A VM's or container's name: the stem of its file in /etc/volt/vms or /etc/volt/containers.
#[derive(Debug, Clone, clap::Args)]
pub struct NameArg {
    /// The workload's name (its file's stem).
    #[arg(value_name = "NAME", add = clap_complete::ArgValueCandidates::new(complete::workloads))]
    pub name: String,
}

/// The lifecycle verbs VMs and containers share.
#[derive(Debug, Subcommand)]
pub enum Lifecycle {
    /// Start it through systemd and wait for the start job (as systemctl start).
    Start(NameArg),
    /// Stop it through systemd and wait (as systemctl stop).
    Stop(NameArg),
    /// Restart it through systemd and wait (as systemctl restart).
    Restart(NameArg),
    /// Its state, links and addresses, and its last journal lines. Exit 0 when running, 3 when
    /// not, 4 when there is no such workload.
    Status {
        #[command(flatten)]
        name: NameArg,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Its console: a VM's serial console (Ctrl-] leaves; --force takes it over), a
    /// container's login (boot mode: machinectl login) or a shell in it (machinectl shell).
    Console(console::ConsoleArgs),
    /// Its journal: the unit's log (VMM or nspawn, the guest's console) and its links' owners.
    Logs {
        #[command(flatten)]
        name: NameArg,
        /// journalctl options, after `--` (e.g. -- -f, -- -n 100).
        #[arg(last = true, value_name = "JOURNALCTL-ARGS")]
        journalctl: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List the configured VMs with their state and addresses.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    #[command(flatten)]
    Lifecycle(Lifecycle),
    /// Run a VM in the foreground: write its spec from the config and the link owners'
    /// records, then exec volt-vmm (what volt-vm@.service runs).
    Run {
        /// The VM (file stem of /etc/volt/vms/NAME.toml).
        #[arg(required_unless_present = "config",
              add = clap_complete::ArgValueCandidates::new(complete::workloads))]
        name: Option<String>,
        /// A VM file outside /etc/volt/vms (development), checked against the root's networks.
        #[arg(long, value_name = "FILE", conflicts_with = "name")]
        config: Option<PathBuf>,
        /// Bring the VM's links up here instead of expecting their owner units to have done it
        /// (development and running without systemd).
        #[arg(long)]
        attach: bool,
        /// The VMM binary (default $VOLT_VMM, else /usr/libexec/volt/volt-vmm).
        #[arg(long, value_name = "PATH")]
        vmm: Option<PathBuf>,
        /// Extra volt-vmm options, after `--` (e.g. -- --shutdown-timeout 5s).
        #[arg(last = true, value_name = "VMM-ARGS")]
        vmm_args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// List the configured containers with their state and addresses.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show one container: config, nspawn command line, links and leases.
    Show {
        #[command(flatten)]
        name: NameArg,
        #[command(flatten)]
        out: OutputArgs,
    },
    #[command(flatten)]
    Lifecycle(Lifecycle),
    /// Make sure the container's veth pair is whole, then exec systemd-nspawn
    /// (what volt-container@.service runs).
    Run(NameArg),
    /// Configure the container's interfaces inside its network namespace and record its
    /// address in IPAM (volt-container@.service's ExecStartPost=).
    NetUp {
        #[command(flatten)]
        name: NameArg,
        /// systemd-nspawn's PID (default: $MAINPID).
        #[arg(long, value_name = "PID")]
        pid: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// List the networks.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show one network: its settings, port maps, reservations and leases.
    Show {
        /// The network's name or bridge.
        #[arg(value_name = "NETWORK", add = clap_complete::ArgValueCandidates::new(complete::networks))]
        name: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Bring a network up: create its bridge if missing (and allowed); for host-only
    /// networks enable forwarding and install masquerade + port-map DNAT in table `ip volt`
    /// (the link owners do this too as workloads come and go); lists port maps still waiting.
    Up {
        /// The network's name or bridge.
        #[arg(value_name = "NETWORK", add = clap_complete::ArgValueCandidates::new(complete::networks))]
        name: String,
    },
    /// Take a network down: remove its NAT rules, and its bridge if Volt created it. For a
    /// network whose file is gone, also the bridge networkd made from that file, unless links
    /// are on it or a networkd file of yours defines it (said).
    Down {
        /// The network's name or bridge.
        #[arg(value_name = "NETWORK", required_unless_present = "all", add = clap_complete::ArgValueCandidates::new(complete::networks))]
        name: Option<String>,
        /// Every network, and everything else Volt made on the host's network: the networkd
        /// files the generator wrote and the bridges networkd made from them (not one with
        /// ports, nor one another networkd file defines), a stopped cluster daemon's VXLAN
        /// ports, and Volt's nftables tables. Refused while a workload's link is up. The
        /// package's removal runs it after stopping the workloads; run by hand, the next
        /// `systemctl daemon-reload` renders the networks' files again.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// List leases of every network (or one).
    List {
        /// Only this network's leases.
        #[arg(long, value_name = "NETWORK", add = clap_complete::ArgValueCandidates::new(complete::networks))]
        network: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Lease an address to an owner (vm/<name>/<nic> or container/<name>/<nic>); prints it.
    Allocate {
        /// The network to lease from.
        #[arg(long, value_name = "NETWORK", default_value = "volt0",
              add = clap_complete::ArgValueCandidates::new(complete::networks))]
        network: String,
        /// Who gets the lease: vm/<name>/<nic> or container/<name>/<nic> of a configured
        /// workload.
        #[arg(long, value_name = "OWNER")]
        owner: String,
        /// Ask for this address instead of the owner's reservation or a free one.
        #[arg(long, value_name = "ADDRESS")]
        ip: Option<std::net::Ipv4Addr>,
    },
    /// Release an owner's lease.
    Release {
        /// The network the lease is on.
        #[arg(long, value_name = "NETWORK", default_value = "volt0",
              add = clap_complete::ArgValueCandidates::new(complete::networks))]
        network: String,
        /// Whose lease: vm/<name>/<nic> or container/<name>/<nic>.
        #[arg(long, value_name = "OWNER")]
        owner: String,
    },
    /// Release leases whose VM or container no longer exists.
    Reconcile,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register this host, keep its lease alive and keep the VXLAN ports in line with the
    /// store until SIGTERM (what volt-cluster.service runs).
    Run,
    /// Hosts, their lease ages and their workloads.
    Status {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Claim a workload name for this host (the ExecStartPre= the generator gives each VM
    /// while a cluster is configured; nothing without a cluster): fails naming the host that runs it already.
    Claim {
        name: String,
        #[arg(long, default_value = "vm")]
        kind: String,
    },
    /// Give up this host's claim on a workload name.
    Release {
        name: String,
        /// As a workload unit's ExecStopPost= (with a cluster): only after a clean stop, and
        /// not while a link of the workload is up (its owner gives the name up). When
        /// $SERVICE_RESULT says the unit failed, or $EXIT_STATUS is 133 (a container's
        /// reboot), systemd restarts it, and it keeps its claim; a store that does not answer
        /// is a warning then.
        #[arg(long)]
        after_stop: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Bring the link up, then stay until it is deleted (exit 1) or systemd stops us: what
    /// volt-tap@.service runs.
    Run {
        /// The host link (tap-<id>, mvt-<id>, veth-<id>-h).
        #[arg(value_name = "LINK")]
        link: String,
    },
    /// Create a workload's host link: through networkd (runtime files, D-Bus Reload, bounded
    /// wait), directly when networkd is absent or too slow; macvtaps and veths directly.
    Up {
        /// The host link (tap-<id>, mvt-<id>, veth-<id>-h).
        #[arg(value_name = "LINK")]
        link: String,
    },
    /// Remove the link's networkd files and rules, reload networkd, delete the link
    /// (collecting errors); refuses links Volt does not own.
    Down {
        /// The host link (tap-<id>, mvt-<id>, veth-<id>-h).
        #[arg(value_name = "LINK")]
        link: String,
    },
}

/// Exit status of a command that ran: success, or failure with the messages already printed.
pub enum Outcome {
    Ok,
    Failed,
    /// The configuration cannot work (exit 78, EX_CONFIG: restarting would not help).
    Config,
    /// Another status (the lifecycle verbs answer as systemctl does: 3, 4, 5).
    Code(u8),
}

/// Run the parsed command.
fn lifecycle(
    root: &std::path::Path,
    kind: crate::plan::Kind,
    l: Lifecycle,
) -> anyhow::Result<Outcome> {
    use crate::sd::units::Verb;
    match l {
        Lifecycle::Start(n) => workload::lifecycle(root, kind, &n.name, Verb::Start),
        Lifecycle::Stop(n) => workload::lifecycle(root, kind, &n.name, Verb::Stop),
        Lifecycle::Restart(n) => workload::lifecycle(root, kind, &n.name, Verb::Restart),
        Lifecycle::Status { name, out } => workload::status(root, kind, &name.name, &out),
        Lifecycle::Logs { name, journalctl } => workload::logs(root, kind, &name.name, &journalctl),
        Lifecycle::Console(args) => workload::console(root, kind, args),
    }
}

/// Run the parsed command.
pub fn run(opts: Opts) -> anyhow::Result<Outcome> {
    use crate::plan::Kind;
    let root = opts
        .root
        .clone()
        .unwrap_or_else(crate::config::root_from_env);
    if !root.is_dir() {
        // A mistyped --root (or VOLT_ROOT) would otherwise read as an empty configuration.
        log::error!(
            "{}: the root does not exist or is not a directory (--root, or {})",
            root.display(),
            crate::config::ROOT_ENV
        );
        return Ok(Outcome::Failed);
    }
    match opts.command {
        Command::Validate { paths, kind } => validate::exec(&root, &paths, kind),
        Command::Vm { command } => match command {
            VmCommand::List { out } => workload::list(&root, Kind::Vm, &out),
            VmCommand::Lifecycle(l) => lifecycle(&root, Kind::Vm, l),
            VmCommand::Run {
                name,
                config,
                attach,
                vmm,
                vmm_args,
            } => vm::run(
                &root,
                name.as_deref(),
                config.as_deref(),
                attach,
                vmm.as_deref(),
                &vmm_args,
            ),
        },
        Command::Container { command } => match command {
            ContainerCommand::List { out } => workload::list(&root, Kind::Container, &out),
            ContainerCommand::Show { name, out } => container::show(&root, &name.name, &out),
            ContainerCommand::Lifecycle(l) => lifecycle(&root, Kind::Container, l),
            ContainerCommand::Run(n) => container::run(&root, &n.name),
            ContainerCommand::NetUp { name, pid } => container::net_up(&root, &name.name, pid),
        },
        Command::Console(args) => console::exec(&root, args),
        Command::Generate { outdir } => generate::exec(&root, &outdir),
        Command::Net { command } => match command {
            NetCommand::List { out } => net::list(&root, &out),
            NetCommand::Show { name, out } => net::show(&root, &name, &out),
            NetCommand::Up { name } => net::up(&root, &name),
            NetCommand::Down { all: true, .. } => teardown::down_all(&root),
            NetCommand::Down { name, .. } => net::down(&root, name.as_deref().unwrap_or_default()),
        },
        Command::Ipam { command } => ipam::exec(&root, command),
        Command::Link { command } => match command {
            LinkCommand::Up { link } => link::up(&root, &link),
            LinkCommand::Down { link } => link::down(&root, &link),
            LinkCommand::Run { link } => link::run(&root, &link),
        },
        Command::Demo => demo::run(&root),
        Command::Cluster { command } => match command {
            ClusterCommand::Run => cluster::run(&root),
            ClusterCommand::Status { output } => cluster::show(&root, output),
            ClusterCommand::Claim { name, kind } => cluster::claim(&root, &name, &kind),
            ClusterCommand::Release { name, after_stop } => {
                cluster::release(&root, &name, after_stop)
            }
        },
        Command::GenDocs { out } => docs::exec(&out),
    }
}
