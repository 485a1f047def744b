//! `volt-vmm`: runs one KVM microVM in the foreground until it ends.
//!
//! Exit status: 0 when the guest stopped cleanly (reset, power-off after Ctrl-Alt-Del, or a
//! host stop), the guest's debug-exit value as-is, 1 on a runtime failure (systemd restarts
//! the unit), 78 (EX_CONFIG) when the configuration is wrong (never restarted:
//! `RestartPreventExitStatus=78`), 2 for command-line usage errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use volt::vmm::virtio::rng::Rng;
use volt::vmm::{systemd, VmSpec, Vmm, VmmError};

/// sysexits.h EX_CONFIG.
const EX_CONFIG: u8 = 78;
const EX_FAILURE: u8 = 1;
const EX_USAGE: u8 = 2;

/// Run a KVM microVM (development flags; units use `--config`).
#[derive(Debug, Parser)]
#[command(name = "volt-vmm", version, about)]
struct Cli {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line (device entries are appended).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "console=ttyS0 reboot=k panic=1 pci=off"
    )]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "N", default_value_t = 128)]
    memory_mib: u32,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u8,
    /// VM name (logs, STATUS=, journal field VOLT_VM).
    #[arg(long, value_name = "NAME", default_value = "vm")]
    name: String,
    /// VM UUID (journal field VOLT_UUID).
    #[arg(long, value_name = "UUID", default_value = "")]
    uuid: String,
    /// Also write the serial console to this file.
    #[arg(long, value_name = "FILE")]
    serial_file: Option<PathBuf>,
    /// Add a virtio-rng (entropy) device on virtio-mmio (development aid; the config file
    /// adds devices from `[[network]]` entries).
    #[arg(long)]
    virtio_rng: bool,
    /// Time the guest gets to power off after Ctrl-Alt-Del on SIGTERM (e.g. 10, 10s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    // ---- Reserved: `--config FILE` ----
    // The unit file runs `volt-vmm --config /etc/volt/vms/<name>.toml`. The config module
    // (`volt::config`, on branch main) parses and validates the TOML and maps the VM config
    // into a `VmSpec`; wire it here once it lands: `--config` conflicts with the flags above,
    // and its validation errors exit with EX_CONFIG (78).
    /// VM config file (not available yet in this build).
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    config: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10, 10s, 500ms)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

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
    systemd::init_logging(&cli.name, &cli.uuid, systemd::level_from_env());

    if cli.config.is_some() {
        log::error!("--config is not supported by this build yet; use --kernel and friends");
        return ExitCode::from(EX_CONFIG);
    }
    let Some(kernel) = cli.kernel.clone() else {
        log::error!("no kernel given: use --kernel FILE");
        return ExitCode::from(EX_CONFIG);
    };
    let spec = VmSpec {
        name: cli.name.clone(),
        uuid: cli.uuid.clone(),
        vcpus: cli.vcpus,
        memory_mib: cli.memory_mib,
        kernel,
        initrd: cli.initrd.clone(),
        cmdline: cli.cmdline.clone(),
        serial_file: cli.serial_file.clone(),
    };
    match run(spec, &cli) {
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

fn run(spec: VmSpec, cli: &Cli) -> Result<u8, VmmError> {
    let mut vmm = Vmm::new(spec)?;
    vmm.set_shutdown_timeout(cli.shutdown_timeout);
    if cli.virtio_rng {
        vmm.add_virtio_device(Box::new(Rng::new()))?;
    }
    let exit = vmm.run()?;
    Ok(exit.exit_code())
}
