//! `volt-vmm`: runs one KVM microVM in the foreground until it ends.
//!
//! Exit status: 0 when the guest stopped cleanly (reset, power-off after Ctrl-Alt-Del, or a
//! host stop), the guest's debug-exit value as-is, 1 on a runtime failure (systemd restarts
//! the unit), 78 (EX_CONFIG) when the configuration is wrong (never restarted:
//! `RestartPreventExitStatus=78`), 2 for command-line usage errors.

use std::process::ExitCode;

use clap::Parser;
use volt::vmm::cli::VmmCli as Cli;
use volt::vmm::virtio::rng::Rng;
use volt::vmm::{systemd, VmSpec, Vmm, VmmError};

/// sysexits.h EX_CONFIG.
const EX_CONFIG: u8 = 78;
const EX_FAILURE: u8 = 1;
const EX_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // With --config the VM's own name and UUID tag every log line (VOLT_VM=, VOLT_UUID=), so
    // read the file before logging starts and report its errors after.
    let loaded = cli
        .config
        .as_ref()
        .map(|p| volt::config::load_vm_file(&volt::config::root_from_env(), p));
    let (name, uuid) = match (&loaded, &cli.config) {
        (Some(Ok(vm)), _) => (vm.name.clone(), vm.uuid.to_string()),
        (Some(Err(_)), Some(p)) => (
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            String::new(),
        ),
        _ => (cli.name.clone(), cli.uuid.clone()),
    };
    systemd::init_logging(&name, &uuid, systemd::level_from_env());

    // fds systemd kept for us across a restart; taken before any thread starts.
    let mut store = volt::vmm::nics::FdStore::from_env();
    let mut nics = None;
    let spec = match loaded {
        Some(result) => match spec_from_config(result) {
            Ok((mut spec, vm)) => {
                match volt::vmm::nics::setup(&vm, &volt::config::root_from_env(), &mut store) {
                    Ok(n) => {
                        for line in &n.summary {
                            log::info!("{line}");
                        }
                        for p in &n.cmdline {
                            spec.cmdline.push(' ');
                            spec.cmdline.push_str(p);
                        }
                        nics = Some(n);
                    }
                    Err(e) => {
                        log::error!("{}", volt::error_chain(&e));
                        let code = if matches!(e, volt::vmm::nics::NicError::Macvtap { .. }) {
                            EX_CONFIG
                        } else {
                            EX_FAILURE
                        };
                        return ExitCode::from(code);
                    }
                }
                spec
            }
            Err(code) => return ExitCode::from(code),
        },
        None => {
            let Some(kernel) = cli.kernel.clone() else {
                log::error!("no kernel given: use --kernel FILE or --config FILE");
                return ExitCode::from(EX_CONFIG);
            };
            VmSpec {
                name: cli.name.clone(),
                uuid: cli.uuid.clone(),
                vcpus: cli.vcpus,
                memory_mib: cli.memory_mib,
                kernel,
                initrd: cli.initrd.clone(),
                cmdline: cli.cmdline.clone(),
                serial_file: cli.serial_file.clone(),
                nics: Vec::new(),
                console_socket: cli.console_socket.clone(),
                vsock: cli.vsock(),
                notify_ready: cli.notify_ready,
            }
        }
    };
    let leftover = store.leftover();
    match run(spec, &cli, nics, &leftover) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = if e.is_config_error() {
                EX_CONFIG
            } else {
                EX_FAILURE
            };
            log::error!("{:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}

/// The sandbox for the run phase. vhost-net opens /dev/vhost-net when the guest starts its
/// driver, so with vhost the VMM keeps root and may open files (said in the log).
fn sandbox(cli: &Cli, vhost: bool) -> volt::vmm::sandbox::Sandbox {
    use volt::vmm::sandbox::{RunAs, Sandbox};
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let run_as = if !root || cli.run_as == "root" {
        None
    } else if vhost {
        log::info!(
            "vhost-net in use: staying root after setup (it opens /dev/vhost-net at driver start)"
        );
        None
    } else {
        let u = RunAs::lookup(&cli.run_as);
        if u.is_none() {
            log::info!(
                "user {} does not exist; staying root after setup",
                cli.run_as
            );
        }
        u
    };
    Sandbox {
        run_as,
        seccomp: cli.seccomp,
        allow_open: vhost,
    }
}

/// Default guest command line when a VM file gives none.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Map a checked VM file (see `volt::config::load_vm_file`) into the VMM's spec. On error,
/// every message is logged and EX_CONFIG returned.
fn spec_from_config(
    loaded: Result<volt::config::VmConfig, Vec<volt::config::ConfigError>>,
) -> Result<(VmSpec, volt::config::VmConfig), u8> {
    let vm = loaded.map_err(|errs| {
        for e in &errs {
            log::error!("{}", e.report());
        }
        EX_CONFIG
    })?;
    let cmdline = if vm.cmdline.trim().is_empty() {
        DEFAULT_CMDLINE.to_string()
    } else {
        vm.cmdline.clone()
    };
    let spec = VmSpec {
        name: vm.name.clone(),
        uuid: vm.uuid.to_string(),
        vcpus: u8::try_from(vm.vcpus).unwrap_or(u8::MAX),
        memory_mib: vm.memory_mib,
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone(),
        cmdline,
        serial_file: None,
        nics: Vec::new(),
        // The console socket for `volt console NAME`, in the runtime directory the unit
        // creates (RuntimeDirectory=); run by hand without it, the VM has none.
        console_socket: Some(volt::vmm::spec::console_socket_path(&vm.name))
            .filter(|p| p.parent().is_some_and(|d| d.is_dir())),
        vsock: None,
        notify_ready: false,
    };
    Ok((spec, vm))
}

fn run(
    spec: VmSpec,
    cli: &Cli,
    nics: Option<volt::vmm::nics::Nics>,
    leftover: &[String],
) -> Result<u8, VmmError> {
    let mut vmm = Vmm::new(spec)?;
    vmm.set_shutdown_timeout(cli.shutdown_timeout);
    if cli.virtio_rng {
        vmm.add_virtio_device(Box::new(Rng::new()))?;
    }
    let mut vhost = false;
    if let Some(nics) = &nics {
        vhost = nics.devices.iter().any(|d| {
            d.backend()
                .lock()
                .map(|b| *b == volt::vmm::virtio::net::Backend::Vhost)
                .unwrap_or(false)
        });
    }
    vmm.set_sandbox(sandbox(cli, vhost));
    if let Some(nics) = nics {
        for dev in nics.devices {
            vmm.add_virtio_device(Box::new(dev))?;
        }
        // The TAPs are open: keep them in systemd's fd store so a restarted VMM gets the
        // same TAPs back (same ifindex, no bridge flap).
        let stored = volt::vmm::nics::store_fds(&nics.to_store);
        if stored > 0 {
            log::info!("{stored} TAP fd(s) in the fd store");
        }
        if !leftover.is_empty() {
            log::info!(
                "dropping unclaimed fd store entries: {}",
                leftover.join(", ")
            );
            volt::vmm::nics::drop_stored(leftover);
        }
    }
    let exit = vmm.run()?;
    Ok(exit.exit_code())
}
