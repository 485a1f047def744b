//! The unit drop-ins the generator writes: pure functions of a workload's plan.

use std::fmt::Write;

use crate::plan::names::HEADER;
use crate::plan::{Attachment, Kind, LinkKind, Workload};

/// Drop-in for the workload's unit (`volt-vm@<name>.service`, `volt-container@<name>.service`):
/// where the config is, and the units that own its host links (`BindsTo=`: the workload
/// stops when a link's owner stops; `After=`: the link exists before the workload starts).
/// A VM with a NIC on an isolated network opens its TAP inside that network's namespace,
/// which takes CAP_SYS_ADMIN and setns(CLONE_NEWNET) during the VMM's setup (it drops every
/// capability before the guest runs).
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
    if w.kind == Kind::Vm && w.has_isolated_nic() {
        let _ = writeln!(s);
        let _ = writeln!(s, "[Service]");
        let _ = writeln!(s, "CapabilityBoundingSet=CAP_SYS_ADMIN");
        let _ = writeln!(s, "RestrictNamespaces=net");
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
