//! `volt vm ...`.

use std::path::Path;

use anyhow::Result;

use super::Outcome;
use crate::config::ConfigSet;

/// Default guest command line when a VM file gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// The kernel's own `ip=` syntax for NIC `index`: `ip=<addr>::<gw>:<mask>::eth<N>:off`.
pub fn ip_param(index: usize, addr: ipnet::Ipv4Net, gateway: Option<std::net::Ipv4Addr>) -> String {
    let gw = gateway.map(|g| g.to_string()).unwrap_or_default();
    format!(
        "ip={}::{gw}:{}::eth{index}:off",
        addr.addr(),
        addr.netmask()
    )
}

/// The VMM's view of a configured disk.
fn disk_spec(d: &crate::config::DiskConfig) -> crate::vmm::disk::DiskSpec {
    use crate::vmm::disk::{CacheMode, DiskLimit, DiskSpec};
    DiskSpec {
        path: d.path.clone(),
        readonly: d.readonly,
        root: d.root,
        cache: match d.cache {
            crate::config::DiskCache::Writeback => CacheMode::Writeback,
            crate::config::DiskCache::None => CacheMode::None,
        },
        serial: d.serial.clone(),
        limit: DiskLimit {
            bytes_per_sec: d.bytes_per_sec,
            ops_per_sec: d.ops_per_sec,
        },
    }
}

/// The VMM's spec for VM `w`: its config, and per NIC what the link owner recorded (the MAC
/// the guest may use, its address, the namespace its TAP lives in).
pub fn vm_spec(
    w: &crate::plan::Workload,
    records: &[crate::attach::LinkRecord],
) -> Result<crate::vmm::VmSpec, String> {
    let vm = w.vm().ok_or_else(|| format!("{} is not a VM", w.name))?;
    let mut cmdline = if vm.cmdline.trim().is_empty() {
        DEFAULT_CMDLINE.to_string()
    } else {
        vm.cmdline.clone()
    };
    let mut nics = Vec::new();
    for (a, r) in w.attachments.iter().zip(records) {
        if let Some(addr) = r.ipv4 {
            cmdline.push(' ');
            cmdline.push_str(&ip_param(a.index, addr, r.gateway));
        }
        nics.push(crate::vmm::spec::NicSpec {
            id: a.nic.clone(),
            tap: a.link.clone(),
            netns: r.netns.as_deref().map(crate::sys::netns::path_of),
            mac: r.mac.clone(),
            mtu: u16::try_from(a.mtu).unwrap_or(1500),
            queues: u16::try_from(a.queues()).unwrap_or(1),
            vhost: a.vhost,
            macvtap: matches!(a.kind, crate::plan::LinkKind::Macvtap { .. }),
        });
    }
    Ok(crate::vmm::VmSpec {
        name: vm.name.clone(),
        uuid: vm.uuid.to_string(),
        vcpus: u8::try_from(vm.vcpus).unwrap_or(u8::MAX),
        memory_mib: vm.memory_mib,
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone(),
        cmdline,
        serial_file: None,
        nics,
        disks: vm.disks.iter().map(disk_spec).collect(),
        // The socket paths are the runtime directory's (set by `run`).
        console_socket: None,
        vsock: None,
        notify_ready: vm.notify_ready,
    })
}

/// Under systemd, register the VM with systemd-machined (class `vm`, this process as its
/// leader: it becomes the VMM, so machined finds the unit from its cgroup). Without machined,
/// or outside a unit, the VM runs unregistered and this says so once.
fn register_with_machined(w: &crate::plan::Workload, records: &[crate::attach::LinkRecord]) {
    use crate::sd::machined;
    if std::env::var_os("INVOCATION_ID").is_none() {
        log::debug!(
            "not started by systemd: not registering {} with machined",
            w.name
        );
        return;
    }
    let conn = match crate::sd::system_bus() {
        Ok(c) => c,
        Err(e) => {
            log::info!(
                "{}: not registered with machined: {}",
                w.name,
                crate::error_chain(&e)
            );
            return;
        }
    };
    if !machined::reachable(&conn).unwrap_or(false) {
        log::info!(
            "systemd-machined is not available: {} runs without a registration (machinectl will not list it)",
            w.name
        );
        return;
    }
    let ifindices = records
        .iter()
        .filter(|r| r.netns.is_none())
        .filter_map(|r| crate::net::link::index(&r.link))
        .filter_map(|i| i32::try_from(i).ok())
        .collect();
    let m = machined::Machine {
        name: &w.name,
        uuid: *w.uuid.as_bytes(),
        class: "vm",
        leader: std::process::id(),
        ifindices,
    };
    match machined::register(&conn, &m) {
        Ok(()) => log::info!("registered {} with systemd-machined (class vm)", w.name),
        Err(e) => log::warn!(
            "{}: not registered with machined: {}",
            w.name,
            crate::error_chain(&e)
        ),
    }
}

/// `volt vm run NAME` (volt-vm@.service's ExecStart=): plan the VM, read what its link owners
/// brought up (or, with `attach`, bring the links up here: development and the demo, without
/// systemd), write the VMM's spec into the VM's runtime directory and replace this process
/// with `volt-vmm --spec FILE` (so the unit's main process is the VMM, with the fd store's
/// fds still open).
pub fn run(
    root: &Path,
    name: Option<&str>,
    config: Option<&Path>,
    attach: bool,
    vmm: Option<&Path>,
    vmm_args: &[String],
) -> Result<Outcome> {
    use std::os::unix::process::CommandExt;

    use crate::attach::{Attach, LinkRecord};
    use crate::plan::{Kind, Paths, Plan};

    let at = match config {
        Some(file) => match crate::config::load_vm_file(root, file) {
            Ok(vm) => {
                let mut set = ConfigSet::load(root);
                set.vms = vec![vm];
                set.containers.clear();
                let plan = Plan::build(&set);
                Attach {
                    paths: Paths::new(root),
                    set,
                    plan,
                }
            }
            Err(errs) => {
                for e in errs {
                    log::error!("{}", e.report());
                }
                return Ok(Outcome::Config);
            }
        },
        None => Attach::load(root),
    };
    let wanted = name
        .map(str::to_owned)
        .or_else(|| config.map(crate::config::file_stem))
        .unwrap_or_default();
    let Some(w) = at.plan.workload(Kind::Vm, &wanted) else {
        let errs = at.set.vm(&wanted).err().unwrap_or_default();
        if errs.is_empty() {
            log::error!(
                "no VM {wanted}: /{}/{wanted}.toml does not exist",
                crate::config::VMS_DIR
            );
        }
        for e in errs {
            log::error!("{}", e.report());
        }
        return Ok(Outcome::Config);
    };
    if config.is_none() {
        crate::generator::keep::keep_claims(root);
    }
    let mut records = Vec::new();
    for a in &w.attachments {
        let r = if attach {
            at.up(&a.link)?
        } else {
            match LinkRecord::load(&at.paths, &a.link)? {
                Some(r) => r,
                None => {
                    log::error!(
                        "{} is not up: its owner {} has not brought it up (start volt-vm@{} through systemd, or pass --attach)",
                        a.link,
                        a.owner_unit,
                        w.name
                    );
                    return Ok(Outcome::Failed);
                }
            }
        };
        records.push(r);
    }
    let mut spec = match vm_spec(w, &records) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return Ok(Outcome::Config);
        }
    };
    register_with_machined(w, &records);
    let dir = at.paths.vm_dir(&w.name);
    spec.console_socket = Some(dir.join("console.sock"));
    if let Some(cid) = w.vm().and_then(|v| v.vsock_cid) {
        spec.vsock = Some(crate::vmm::spec::VsockSpec {
            cid,
            socket: dir.join("vsock.sock"),
        });
    }
    let file = at.paths.vm_dir(&w.name).join("spec.json");
    let text = serde_json::to_string_pretty(&spec)? + "\n";
    crate::fsutil::write_atomic_if_changed(&file, &text)?;
    let vmm = vmm
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("VOLT_VMM").map(Into::into))
        .unwrap_or_else(|| crate::plan::names::VMM_BINARY.into());
    let err = std::process::Command::new(&vmm)
        .arg("--spec")
        .arg(&file)
        .args(vmm_args)
        .exec();
    anyhow::bail!("cannot run {}: {err}", vmm.display())
}

#[cfg(test)]
mod tests {
    /// The VM file's limits and the VMM's are the same numbers.
    #[test]
    fn limits_agree_between_the_config_and_the_vmm() {
        use crate::config::vm_limits as c;
        use crate::vmm::spec as v;
        assert_eq!(c::MAX_VCPUS, u32::from(v::MAX_VCPUS));
        assert_eq!(c::MIN_MEMORY_MIB, v::MIN_MEMORY_MIB);
        assert_eq!(c::MAX_MEMORY_MIB, v::MAX_MEMORY_MIB);
        assert_eq!(c::DEFAULT_MEMORY_MIB, v::DEFAULT_MEMORY_MIB);
    }
}
