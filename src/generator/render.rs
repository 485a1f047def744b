//! The unit drop-ins the generator writes: pure functions of a workload's plan.

use std::fmt::Write;

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
    // Disks: the unit's file system is read-only (ProtectSystem=strict) and its devices
    // closed (DevicePolicy=closed); open exactly the VM's images. `-`: a missing image is
    // the VMM's error to report, not a namespace failure.
    for d in w.vm().map(|v| v.disks.as_slice()).unwrap_or_default() {
        let p = d.path.display();
        if !d.readonly {
            service.push(format!("ReadWritePaths=-{p}"));
        }
        if d.path.starts_with("/dev") {
            let mode = if d.readonly { "r" } else { "rw" };
            service.push(format!("DeviceAllow={p} {mode}"));
        }
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
