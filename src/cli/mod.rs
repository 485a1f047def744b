//! The `volt` command line: the one module that sees every other.

mod cluster;
mod container;
mod docs;
mod generate;
mod ipam;
mod link;
mod net;
mod validate;
mod vm;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check VM, network and zone files; print every error; exit 1 if any.
    Validate {
        /// Files to check (default: everything under <root>/etc/volt and the zone directory).
        paths: Vec<PathBuf>,
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
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenDocs {
        /// Output directory (man/, completions/{bash,zsh,fish}/ below it).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List the configured VMs.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Run a VM in the foreground: write its spec from the config and the link owners'
    /// records, then exec volt-vmm (what volt-vm@.service runs).
    Run {
        /// The VM (file stem of /etc/volt/vms/NAME.toml).
        #[arg(required_unless_present = "config")]
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
    /// List the configured containers.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one container: config, nspawn command line, links and leases.
    Show {
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Make sure the container's veth pair is whole, then exec systemd-nspawn
    /// (what volt-container@.service runs).
    Run { name: String },
    /// Configure the container's interfaces inside its network namespace and record its
    /// address in IPAM (volt-container@.service's ExecStartPost=).
    NetUp {
        name: String,
        /// systemd-nspawn's PID (default: $MAINPID).
        #[arg(long)]
        pid: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// List the networks.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one network with its leases.
    Show {
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Bring a network up: create its bridge if missing (and allowed); for host-only
    /// networks enable forwarding and install masquerade + port-map DNAT in table `ip volt`.
    Up { name: String },
    /// Take a network down: remove its NAT rules, and its bridge if Volt created it.
    Down { name: String },
}

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// List leases of every network (or one).
    List {
        #[arg(long)]
        network: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Lease an address to an owner (vm/<name>/<nic> or container/<name>/<nic>); prints it.
    Allocate {
        #[arg(long, default_value = "volt0")]
        network: String,
        #[arg(long)]
        owner: String,
        /// Ask for this address instead of the owner's reservation or a free one.
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
    },
    /// Release an owner's lease.
    Release {
        #[arg(long, default_value = "volt0")]
        network: String,
        #[arg(long)]
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
    /// Claim a workload name for this host (volt-vm@.service's ExecStartPre=; nothing
    /// without a cluster): fails naming the host that runs it already.
    Claim {
        name: String,
        #[arg(long, default_value = "vm")]
        kind: String,
    },
    /// Give up this host's claim on a workload name.
    Release { name: String },
}

#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Bring the link up, then stay until it is deleted (exit 1) or systemd stops us: what
    /// volt-tap@.service runs.
    Run { link: String },
    /// Create a VM NIC's host link: through networkd (runtime files, D-Bus Reload, bounded
    /// wait), directly when networkd is absent or too slow; macvtaps directly.
    Up { link: String },
    /// Remove the link's networkd files, reload networkd, delete the link (collecting errors).
    Down { link: String },
}

/// Exit status of a command that ran: success, or failure with the messages already printed.
pub enum Outcome {
    Ok,
    Failed,
    /// The configuration cannot work (exit 78, EX_CONFIG: restarting would not help).
    Config,
}

/// Run the parsed command.
pub fn run(opts: Opts) -> anyhow::Result<Outcome> {
    let root = opts
        .root
        .clone()
        .unwrap_or_else(crate::config::root_from_env);
    match opts.command {
        Command::Validate { paths } => validate::exec(&root, &paths),
        Command::Vm {
            command: VmCommand::List { output },
        } => vm::list(&root, output),
        Command::Vm {
            command:
                VmCommand::Run {
                    name,
                    config,
                    attach,
                    vmm,
                    vmm_args,
                },
        } => vm::run(
            &root,
            name.as_deref(),
            config.as_deref(),
            attach,
            vmm.as_deref(),
            &vmm_args,
        ),
        Command::Container { command } => match command {
            ContainerCommand::List { output } => container::list(&root, output),
            ContainerCommand::Show { name, output } => container::show(&root, &name, output),
            ContainerCommand::Run { name } => container::run(&root, &name),
            ContainerCommand::NetUp { name, pid } => container::net_up(&root, &name, pid),
        },
        Command::Generate { outdir } => generate::exec(&root, &outdir),
        Command::Net {
            command: NetCommand::List { output },
        } => net::list(&root, output),
        Command::Net {
            command: NetCommand::Show { name, output },
        } => net::show(&root, &name, output),
        Command::Net {
            command: NetCommand::Up { name },
        } => net::up(&root, &name),
        Command::Net {
            command: NetCommand::Down { name },
        } => net::down(&root, &name),
        Command::Ipam { command } => ipam::exec(&root, command),
        Command::Link {
            command: LinkCommand::Up { link },
        } => link::up(&root, &link),
        Command::Link {
            command: LinkCommand::Down { link },
        } => link::down(&root, &link),
        Command::Link {
            command: LinkCommand::Run { link },
        } => link::run(&root, &link),
        Command::Cluster { command } => match command {
            ClusterCommand::Run => cluster::run(&root),
            ClusterCommand::Status { output } => cluster::show(&root, output),
            ClusterCommand::Claim { name, kind } => cluster::claim(&root, &name, &kind),
            ClusterCommand::Release { name } => cluster::release(&root, &name),
        },
        Command::GenDocs { out } => docs::exec(&out),
    }
}
