//! The unit drop-ins the generator writes: pure functions of a workload's plan.

use std::fmt::Write;
use std::path::Path;

use crate::config::VmConfig;
use crate::plan::names::{HEADER, VOLT_BINARY};
use crate::plan::{Attachment, Kind, LinkKind, Workload};

/// Drop-in for the workload's unit (`volt-vm@<name>.service`, `volt-container@<name>.service`):
/// where the config is, and the units that own its host links (`BindsTo=`: the workload
/// stops when a link's owner stops; `After=`: the link exists before the workload starts).
/// A VM with a NIC on an isolated network opens its TAP inside that network's namespace,
/// which takes CAP_SYS_ADMIN and setns(CLONE_NEWNET) during the VMM's setup (it drops every
/// capability before the guest runs). With a cluster, a VM's name is claimed before it starts
/// (a container's by `volt container run`), and a workload's name is given up after a clean
/// stop (one without NICs has no link owner to do it); without one there is nothing to claim,
/// and the start runs no process for it.
pub fn workload_dropin(w: &Workload) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{HEADER}");
    let _ = writeln!(s, "[Unit]");
    let _ = writeln!(s, "SourcePath={}", w.source.display());
    let owners = w.owner_units();
    if !owners.is_empty() {
        let _ = writeln!(s, "BindsTo={}", owners.join(" "));
        let _ = writeln!(s, "After={}", owners.join(" "));
    }
    let mut service = Vec::new();
    if w.clustered {
        if w.kind == Kind::Vm {
            // "+": outside the VMM's sandbox, which has no IP sockets. (`volt container run`
            // claims a container's name itself.)
            service.push(format!("ExecStartPre=+{VOLT_BINARY} cluster claim %i"));
        }
        // Given up after a clean stop; without NICs no link owner's stop does it.
        service.push(format!(
            "ExecStopPost=+{VOLT_BINARY} cluster release --after-stop %i"
        ));
    }
    if w.kind == Kind::Vm && w.has_isolated_nic() {
        service.push("CapabilityBoundingSet=CAP_SYS_ADMIN".to_string());
        service.push("RestrictNamespaces=net".to_string());
    }
    if let Some(vm) = w.vm() {
        service.extend(vm_paths(vm));
    }
    if !service.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "[Service]");
        for line in service {
            let _ = writeln!(s, "{line}");
        }
    }
    s
}

/// What a VM's unit needs to reach its files through its hardening. The file system is
/// read-only (ProtectSystem=strict) and the devices closed (DevicePolicy=closed): open exactly
/// the VM's images, read-write ones for writing, block devices by their node (a symlink outside
/// `/dev` by the first `/dev` path its links lead to). Home directories are hidden
/// (ProtectHome=): a kernel, initrd or image under one (or linked into one) is bound
/// into an empty, read-only `/home`, `/root` and `/run/user` (ProtectHome=tmpfs). `-`: a
/// missing image is the VMM's error to report, not a namespace failure.
fn vm_paths(vm: &VmConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut binds = Vec::new();
    let boot = std::iter::once(&vm.kernel).chain(vm.initrd.as_ref());
    // A boot file linked into a home is bound where the links lead (each home hop: the unit
    // follows the links through each of them).
    for p in boot.chain(&vm.boot_link_hops) {
        if in_home(p) {
            binds.push(format!("BindReadOnlyPaths={}", unit_word("-", p)));
        }
    }
    for d in &vm.disks {
        // An image linked to from elsewhere is opened where it really is.
        let home = std::iter::once(&d.path)
            .chain(&d.link_hops)
            .find(|p| in_home(p));
        if let Some(home) = home {
            let setting = if d.readonly {
                "BindReadOnlyPaths"
            } else {
                "BindPaths"
            };
            binds.push(format!("{setting}={}", unit_word("-", home)));
        } else if !d.readonly {
            out.push(format!("ReadWritePaths={}", unit_word("-", &d.path)));
        }
        let node = if d.path.starts_with("/dev") {
            Some(d.path.as_path())
        } else {
            d.device_node.as_deref()
        };
        if let Some(node) = node {
            let mode = if d.readonly { "r" } else { "rw" };
            out.push(format!("DeviceAllow={} {mode}", unit_word("", node)));
        }
    }
    if !binds.is_empty() {
        out.push("ProtectHome=tmpfs".to_string());
        out.extend(binds);
    }
    out
}

/// Under a directory ProtectHome= hides.
fn in_home(p: &Path) -> bool {
    crate::plan::names::HIDDEN_HOMES
        .iter()
        .any(|h| p.starts_with(h))
}

/// `prefix` and `p` as one word of a unit file setting: `%` doubled (systemd expands
/// specifiers in paths), and the word quoted, with `\` and `"` escaped, when the path holds
/// white space, a quote, a backslash or a colon (systemd splits such settings there).
pub fn unit_word(prefix: &str, p: &Path) -> String {
    let text = p.to_string_lossy().replace('%', "%%");
    let plain = !text
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\\' | '\'' | ':'));
    if plain {
        return format!("{prefix}{text}");
    }
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{prefix}{escaped}\"")
}

/// Drop-in for the unit that owns one host link (`volt-tap@<link>.service`,
/// `volt-veth@<host end>.service`).
pub fn owner_dropin(w: &Workload, a: &Attachment) -> String {
    let what = match &a.kind {
        LinkKind::Tap { .. } => format!("TAP {}", a.link),
        LinkKind::Macvtap { .. } => format!("macvtap {}", a.link),
        LinkKind::Veth { peer } => format!("veth {} / {peer}", a.link),
    };
    let env = match w.kind {
        Kind::Vm => "VOLT_VM",
        Kind::Container => "VOLT_CONTAINER",
    };
    let mut s = String::new();
    let _ = writeln!(s, "{HEADER}");
    let _ = writeln!(s, "[Unit]");
    let _ = writeln!(
        s,
        "Description=Volt {what} for {} {} ({})",
        w.kind.noun(),
        w.name,
        a.nic
    );
    let _ = writeln!(s, "SourcePath={}", w.source.display());
    let _ = writeln!(s);
    let _ = writeln!(s, "[Service]");
    let _ = writeln!(s, "Environment={env}={} VOLT_NIC={}", w.name, a.nic);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(kernel: &str, disks: &str) -> VmConfig {
        let text = format!("kernel = \"{kernel}\"\n{disks}");
        crate::config::parse_vm_toml(
            Path::new("/etc/volt/vms/web.toml"),
            &text,
            &crate::config::fixtures::networks(),
        )
        .expect("valid")
    }

    #[test]
    fn a_path_is_one_word_of_its_setting_whatever_it_holds() {
        let w = |p: &str| unit_word("-", Path::new(p));
        assert_eq!(w("/var/lib/volt/disks/a.img"), "-/var/lib/volt/disks/a.img");
        assert_eq!(w("/d/100%.img"), "-/d/100%%.img");
        assert_eq!(w("/d/my disk.img"), "\"-/d/my disk.img\"");
        assert_eq!(w("/d/a:b"), "\"-/d/a:b\"");
        assert_eq!(w("/d/it's"), "\"-/d/it's\"");
        assert_eq!(w(r#"/d/a"b\c"#), r#""-/d/a\"b\\c""#);
    }

    #[test]
    fn a_vm_reaches_its_images_and_boot_files_through_the_units_hardening() {
        let v = vm(
            "/root/guest/vmlinux",
            "[[disk]]\npath = \"/var/lib/volt/disks/my data.img\"\n\
             [[disk]]\npath = \"/root/images/base.img\"\nreadonly = true\n\
             [[disk]]\npath = \"/home/u/scratch.img\"\n\
             [[disk]]\npath = \"/dev/vg/lv\"\n",
        );
        assert_eq!(
            vm_paths(&v),
            [
                "ReadWritePaths=\"-/var/lib/volt/disks/my data.img\"",
                "ReadWritePaths=-/dev/vg/lv",
                "DeviceAllow=/dev/vg/lv rw",
                "ProtectHome=tmpfs",
                "BindReadOnlyPaths=-/root/guest/vmlinux",
                "BindReadOnlyPaths=-/root/images/base.img",
                "BindPaths=-/home/u/scratch.img",
            ]
        );
    }

    #[test]
    fn an_image_linked_into_a_home_is_bound_where_it_really_is() {
        let mut v = vm(
            "/var/lib/volt/kernels/vmlinux",
            "[[disk]]\npath = \"/var/lib/volt/disks/x.img\"\n",
        );
        v.disks[0].link_hops = vec!["/home/me/vm.img".into(), "/srv/images/vm.img".into()];
        assert_eq!(
            vm_paths(&v),
            ["ProtectHome=tmpfs", "BindPaths=-/home/me/vm.img"]
        );
    }

    #[test]
    fn a_kernel_linked_into_a_home_is_bound_where_it_really_is() {
        let mut v = vm("/var/lib/volt/kernels/vmlinux", "");
        v.boot_link_hops = vec!["/root/.cache/volt/vmlinux".into()];
        assert_eq!(
            vm_paths(&v),
            [
                "ProtectHome=tmpfs",
                "BindReadOnlyPaths=-/root/.cache/volt/vmlinux"
            ]
        );
    }

    #[test]
    fn a_block_device_behind_a_symlink_is_allowed_by_its_node() {
        let mut v = vm(
            "/var/lib/volt/kernels/vmlinux",
            "[[disk]]\npath = \"/var/lib/volt/disks/lv\"\nreadonly = true\n",
        );
        v.disks[0].device_node = Some("/dev/loop7".into());
        assert_eq!(vm_paths(&v), ["DeviceAllow=/dev/loop7 r"]);
    }
}
