//! What `volt-vmm` does between its command line and the guest: read the spec (a JSON file
//! from `volt vm run`, or development flags), start logging with the VM's name, open its NICs
//! (fd store first), build the VM, keep new TAP fds in systemd's fd store, run.
//!
//! Exit status: 0 when the guest stopped cleanly (reset, power-off after Ctrl-Alt-Del, or a
//! host stop), the guest's debug-exit value (2 and 78, this binary's own, become 1), 1 on a
//! runtime failure (systemd restarts the unit), 78 (EX_CONFIG) when the spec or the host
//! cannot work (never restarted: `RestartPreventExitStatus=78`); the binary answers 2 for
//! command-line usage errors.

use std::path::Path;

use super::cli::VmmCli;
use super::nics::{self, FdStore};
use super::sandbox::{RunAs, Sandbox};
use super::spec::VmSpec;
use super::virtio::rng::Rng;
use super::{systemd, Vmm, VmmError};

/// sysexits.h EX_CONFIG.
pub const EX_CONFIG: u8 = 78;
pub const EX_FAILURE: u8 = 1;
pub const EX_USAGE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("cannot read the VM spec {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid VM spec: {message}", path.display())]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Read a spec file written by `volt vm run`.
pub fn read_spec(path: &Path) -> Result<VmSpec, SpecFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| SpecFileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The spec the flags describe (development use: `--kernel` and friends).
fn spec_from_flags(cli: &VmmCli) -> Option<VmSpec> {
    let kernel = cli.kernel.clone()?;
    Some(VmSpec {
        name: cli.name.clone(),
        uuid: cli.uuid.clone(),
        vcpus: cli.vcpus,
        memory_mib: cli.memory_mib,
        kernel,
        initrd: cli.initrd.clone(),
        cmdline: cli.cmdline.clone(),
        serial_file: cli.serial_file.clone(),
        nics: cli.net.clone(),
        disks: cli.disks.clone(),
        console_socket: cli.console_socket.clone(),
        vsock: cli.vsock(),
        notify_ready: cli.notify_ready,
    })
}

/// The sandbox for the run phase: as root, switch to `cli.run_as` (when it exists) and deny
/// `open`. Every fd the run needs is open by then, vhost-net's included (the devices open
/// their instances when they are built), so vhost-net no longer keeps the VMM root.
fn sandbox(cli: &VmmCli) -> Sandbox {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    sandbox_for(root, &cli.run_as, cli.seccomp, &RunAs::lookup)
}

/// [`sandbox`] for a process that is `root` or not, with `lookup` finding users.
fn sandbox_for(
    root: bool,
    run_as: &str,
    seccomp: super::sandbox::SeccompMode,
    lookup: &dyn Fn(&str) -> Option<RunAs>,
) -> Sandbox {
    let run_as = if !root || run_as == "root" {
        None
    } else {
        let u = lookup(run_as);
        if u.is_none() {
            log::info!("user {run_as} does not exist; staying root after setup");
        }
        u
    };
    Sandbox {
        run_as,
        seccomp,
        allow_open: false,
    }
}

/// Run the VM `cli` describes; the process's exit status.
pub fn main(cli: &VmmCli) -> u8 {
    let loaded = cli.spec.as_deref().map(read_spec);
    let (name, uuid) = match (&loaded, &cli.spec) {
        (Some(Ok(s)), _) => (s.name.clone(), s.uuid.clone()),
        (Some(Err(_)), Some(p)) => (
            p.parent()
                .and_then(|d| d.file_name())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            String::new(),
        ),
        _ => (cli.name.clone(), cli.uuid.clone()),
    };
    systemd::init_logging(&name, &uuid, systemd::level_from_env());
    // fds systemd kept for us across a restart; taken before any thread starts.
    let mut store = FdStore::from_env();
    let spec = match loaded {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            log::error!("{}", crate::error_chain(&e));
            return EX_CONFIG;
        }
        None => match spec_from_flags(cli) {
            Some(s) => s,
            None => {
                log::error!("no kernel given: use --kernel FILE or --spec FILE");
                return EX_CONFIG;
            }
        },
    };
    // A root disk names itself on the command line (unless it has a root= already).
    let mut spec = spec;
    spec.cmdline = super::disk::with_root(&spec.cmdline, &spec.disks);
    let nics = match nics::setup(&spec.nics, &mut store) {
        Ok(n) => n,
        Err(e) => {
            log::error!("{}", crate::error_chain(&e));
            return if matches!(e, nics::NicError::Mac { .. }) {
                EX_CONFIG
            } else {
                EX_FAILURE
            };
        }
    };
    for line in &nics.summary {
        log::info!("{line}");
    }
    let leftover = store.leftover();
    match run(spec, cli, nics, &leftover) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{}", crate::error_chain(&e));
            if e.is_config_error() {
                EX_CONFIG
            } else {
                EX_FAILURE
            }
        }
    }
}

fn run(spec: VmSpec, cli: &VmmCli, nics: nics::Nics, leftover: &[String]) -> Result<u8, VmmError> {
    let mut vmm = Vmm::new(spec)?;
    vmm.set_shutdown_timeout(cli.shutdown_timeout);
    if cli.virtio_rng {
        vmm.add_virtio_device(Box::new(Rng::new()))?;
    }
    vmm.set_sandbox(sandbox(cli));
    for dev in nics.devices {
        vmm.add_virtio_device(Box::new(dev))?;
    }
    // The TAPs are open: keep them in systemd's fd store so a restarted VMM gets the same
    // TAPs back (same ifindex, no bridge flap).
    let stored = nics::store_fds(&nics.to_store);
    if stored > 0 {
        log::info!("{stored} TAP fd(s) in the fd store");
    }
    if !leftover.is_empty() {
        log::info!(
            "dropping unclaimed fd store entries: {}",
            leftover.join(", ")
        );
        nics::drop_stored(leftover);
    }
    let exit = vmm.run()?;
    Ok(exit.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::sandbox::SeccompMode;

    #[test]
    fn a_guest_cannot_give_the_vmms_own_exit_statuses() {
        use crate::vmm::VmExit;
        for (n, want) in [(0, 0), (3, 3), (0x70, 0x70), (1, 1), (EX_USAGE, EX_FAILURE)] {
            assert_eq!(VmExit::GuestExit(n).exit_code(), want, "{n}");
        }
        // EX_CONFIG would stop the unit for good (RestartPreventExitStatus=) and keep the
        // workload's cluster claims.
        assert_eq!(VmExit::GuestExit(EX_CONFIG).exit_code(), EX_FAILURE);
        assert_eq!(VmExit::GuestReset.exit_code(), 0);
    }

    #[test]
    fn the_run_phase_drops_root_and_denies_open_whatever_the_nic_backend() {
        let volt = |name: &str| {
            (name == "volt").then(|| RunAs {
                name: "volt".into(),
                uid: 990,
                gid: 990,
                groups: vec![],
            })
        };
        let s = sandbox_for(true, "volt", SeccompMode::Kill, &volt);
        assert_eq!(s.run_as.map(|u| u.uid), Some(990));
        assert!(
            !s.allow_open,
            "open stays denied (vhost-net is opened before)"
        );
        let s = sandbox_for(true, "root", SeccompMode::Kill, &volt);
        assert!(s.run_as.is_none() && !s.allow_open);
        let s = sandbox_for(false, "volt", SeccompMode::Kill, &volt);
        assert!(s.run_as.is_none() && !s.allow_open);
        let s = sandbox_for(true, "nobody-here", SeccompMode::Kill, &volt);
        assert!(s.run_as.is_none() && !s.allow_open);
    }
}
