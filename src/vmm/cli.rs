//! `volt-vmm`'s command line, in the library so `volt gen-docs` renders its man page from
//! the same definition the binary parses.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Run a KVM microVM (development flags; units run `volt vm run`, which gives it `--spec`).
#[derive(Debug, Parser)]
#[command(name = "volt-vmm", version)]
pub struct VmmCli {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (device entries are appended).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "console=ttyS0 reboot=k panic=1 pci=off"
    )]
    pub cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "N", default_value_t = crate::vmm::spec::DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u32).range(i64::from(crate::vmm::spec::MIN_MEMORY_MIB)..=i64::from(crate::vmm::spec::MAX_MEMORY_MIB)))]
    pub memory_mib: u32,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(crate::vmm::spec::MAX_VCPUS)))]
    pub vcpus: u8,
    /// VM name (logs, STATUS=, journal field VOLT_VM).
    #[arg(long, value_name = "NAME", default_value = "vm")]
    pub name: String,
    /// VM UUID (journal field VOLT_UUID).
    #[arg(long, value_name = "UUID", default_value = "")]
    pub uuid: String,
    /// Also write the serial console to this file.
    #[arg(long, value_name = "FILE")]
    pub serial_file: Option<PathBuf>,
    /// Add a virtio-rng (entropy) device on virtio-mmio (development aid; the config file
    /// adds devices from `[[network]]` entries).
    #[arg(long)]
    pub virtio_rng: bool,
    /// Time the guest gets to power off after Ctrl-Alt-Del on SIGTERM (e.g. 10, 10s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// After setup, run as this user (no capabilities; the kvm group for /dev/kvm) when
    /// started as root and the user exists; "root" keeps root.
    #[arg(long, value_name = "USER", default_value = "volt")]
    pub run_as: String,
    /// Seccomp filter for the run phase: kill on a syscall outside the allowlist, log it,
    /// or no filter.
    #[arg(long, value_enum, default_value_t)]
    pub seccomp: crate::vmm::sandbox::SeccompMode,
    /// Serve the serial console on this Unix socket (`volt console --socket PATH`).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Add a virtio-vsock device with this guest CID (3 or more).
    #[arg(long, value_name = "CID", requires = "vsock_socket")]
    pub vsock_cid: Option<u32>,
    /// Host socket of the vsock device: clients write `CONNECT <port>\n` to it; guest
    /// connections to host port P go to `<PATH>_P`.
    #[arg(long, value_name = "PATH", requires = "vsock_cid")]
    pub vsock_socket: Option<PathBuf>,
    /// Send READY=1 only when the guest does (sd_notify over vsock, like systemd-vmspawn
    /// --notify-ready); needs --vsock-cid.
    #[arg(long, requires = "vsock_cid")]
    pub notify_ready: bool,
    /// A virtio-blk disk (repeatable, guest order vda, vdb, ...):
    /// path=FILE[,readonly][,root][,cache=none|writeback][,serial=S][,bps=N][,iops=N].
    /// `root` adds root=/dev/vdX (ro/rw) to the command line.
    #[arg(long = "disk", value_name = "SPEC", value_parser = parse_disk)]
    pub disks: Vec<crate::vmm::disk::DiskSpec>,
    /// A virtio-net device on an existing TAP (repeatable, guest order):
    /// `tap=NAME,mac=52:54:00:xx:xx:xx[,mtu=N][,queues=N][,vhost=on|off][,netns=PATH][,id=ethN][,macvtap=on|off]`.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    pub net: Vec<crate::vmm::spec::NicSpec>,
    /// The VM spec `volt vm run` writes (JSON; what volt-vm@.service runs). Errors exit 78
    /// (EX_CONFIG).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "net", "disks"])]
    pub spec: Option<PathBuf>,
}

/// `tap=NAME,mac=MAC[,mtu=N][,queues=N][,vhost=on|off][,netns=PATH][,id=ID][,macvtap=on|off]`.
pub fn parse_net(s: &str) -> Result<crate::vmm::spec::NicSpec, String> {
    let mut nic = crate::vmm::spec::NicSpec {
        id: String::new(),
        tap: String::new(),
        netns: None,
        mac: String::new(),
        mtu: 1500,
        queues: 1,
        vhost: true,
        macvtap: false,
    };
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        let num = |what: &str| {
            v.parse::<u16>()
                .map_err(|_| format!("{what} {v:?} is not a number 0-65535"))
        };
        match k {
            "tap" => nic.tap = v.to_string(),
            "mac" => {
                crate::vmm::nics::parse_mac(v)
                    .ok_or_else(|| format!("{v:?} is not a MAC address"))?;
                nic.mac = v.to_string();
            }
            "mtu" => nic.mtu = num("mtu")?,
            "queues" => nic.queues = num("queues")?.max(1),
            "vhost" => nic.vhost = matches!(v, "on" | "yes" | "true" | "1"),
            "netns" => nic.netns = Some(PathBuf::from(v)),
            "id" => nic.id = v.to_string(),
            "macvtap" => nic.macvtap = matches!(v, "on" | "yes" | "true" | "1"),
            _ => {
                return Err(format!(
                    "unknown key {k:?} (tap, mac, mtu, queues, vhost, netns, id, macvtap)"
                ))
            }
        }
    }
    if nic.tap.is_empty() || nic.mac.is_empty() {
        return Err("tap= and mac= are required".into());
    }
    if nic.id.is_empty() {
        nic.id = nic.tap.clone();
    }
    Ok(nic)
}

fn parse_disk(s: &str) -> Result<crate::vmm::disk::DiskSpec, String> {
    crate::vmm::disk::parse_disk_arg(s).map_err(|e| e.to_string())
}

impl VmmCli {
    /// The vsock device the flags ask for.
    pub fn vsock(&self) -> Option<crate::vmm::spec::VsockSpec> {
        Some(crate::vmm::spec::VsockSpec {
            cid: self.vsock_cid?,
            socket: self.vsock_socket.clone()?,
        })
    }
}

/// `10`, `10s`, `500ms`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
    Duration::try_from_secs_f64(v * scale)
        .ok()
        .filter(|d| *d <= Duration::from_secs(365 * 24 * 3600))
        .ok_or_else(|| format!("invalid duration {s:?} (0 to one year)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1e30").is_err());
        assert!(parse_duration("NaN").is_err());
    }

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        VmmCli::command().debug_assert();
    }
}
