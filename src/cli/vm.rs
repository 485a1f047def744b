//! `volt vm ...`.

use std::path::Path;

use anyhow::Result;

use super::{Outcome, Output};
use crate::config::ConfigSet;

pub fn list(root: &Path, output: Output) -> Result<Outcome> {
    let set = ConfigSet::load(root);
    for e in &set.errors {
        log::warn!("{}", e.report());
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&set.vms)?),
        Output::Table => {
            println!(
                "{:<20} {:<36} {:>5} {:>8} {:<9} NICS",
                "NAME", "UUID", "VCPUS", "MEMORY", "AUTOSTART"
            );
            for vm in &set.vms {
                let nics: Vec<String> = vm
                    .nics
                    .iter()
                    .map(|n| {
                        let place = n.bridge.as_deref().or(n.parent.as_deref()).unwrap_or("-");
                        let ip = n
                            .ipv4
                            .map_or_else(|| "dynamic".to_string(), |i| i.to_string());
                        format!("{}={}@{} {} {}", n.id, n.link, place, n.mac, ip)
                    })
                    .collect();
                println!(
                    "{:<20} {:<36} {:>5} {:>7}M {:<9} {}",
                    vm.name,
                    vm.uuid,
                    vm.vcpus,
                    vm.memory_mib,
                    if vm.autostart { "yes" } else { "no" },
                    nics.join(", ")
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

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
        if matches!(a.kind, crate::plan::LinkKind::Macvtap { .. }) {
            return Err(format!(
                "{}: macvtap NICs are not supported by the VMM yet",
                a.describe()
            ));
        }
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
    })
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
    let spec = match vm_spec(w, &records) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return Ok(Outcome::Config);
        }
    };
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
