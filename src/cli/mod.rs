//! The `volt` command line: the one module that sees every other.

mod generate;
mod link;
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
    /// Run the generator on a root and write into OUTDIR, for debugging.
    Generate {
        /// Output directory (used as normal, early and late directory).
        outdir: PathBuf,
    },
    /// Bring a VM NIC's host link up or down (what volt-tap@.service runs).
    Link {
        #[command(subcommand)]
        command: LinkCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List the configured VMs.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Write the link's networkd files, reload networkd, wait for the link on its bridge.
    Up { link: String },
    /// Remove the link's networkd files, reload networkd, delete the link.
    Down { link: String },
}

/// Exit status of a command that ran: success, or failure with the messages already printed.
pub enum Outcome {
    Ok,
    Failed,
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
        Command::Generate { outdir } => generate::exec(&root, &outdir),
        Command::Link {
            command: LinkCommand::Up { link },
        } => link::up(&root, &link),
        Command::Link {
            command: LinkCommand::Down { link },
        } => link::down(&root, &link),
    }
}
