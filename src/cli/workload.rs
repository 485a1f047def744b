//! What `volt vm ...` and `volt container ...` share: listing and showing workloads with their
//! state (from systemd) and addresses (from the link owners' records and the leases), and the
//! lifecycle verbs, thin wrappers over systemd's D-Bus API (start/stop/restart wait for the
//! job as `systemctl` does) and the journal. Exit statuses as systemctl's.

use std::os::unix::process::CommandExt;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::output::OutputArgs;
use super::Outcome;
use crate::attach::{owner_of, LinkRecord};
use crate::config::{ConfigSet, NetworkLookup};
use crate::net::link;
use crate::plan::{Config, Kind, Paths, Plan, Workload};
use crate::sd::units::{self, UnitState, Verb};

/// One host link of a workload as it is now.
#[derive(Debug, Serialize)]
pub struct LinkView {
    pub nic: String,
    pub link: String,
    /// The owner unit.
    pub unit: String,
    /// Whether the link exists (in the host namespace, or its isolated one when recorded).
    pub present: bool,
    pub master: Option<String>,
    pub mac: String,
    /// The address the workload has on this NIC: recorded by its owner, planned, leased.
    pub address: Option<String>,
    /// Where the address comes from: `static`, `reserved`, `lease`, `dhcp` or none.
    pub addressing: String,
}

/// A workload, the same in `list` and `show` (JSON keys in this order).
#[derive(Debug, Serialize)]
pub struct WorkloadView {
    pub name: String,
    pub kind: Kind,
    pub unit: String,
    pub source: String,
    pub autostart: bool,
    /// systemd's view of the unit; `null` when systemd cannot be asked.
    pub state: Option<UnitState>,
    pub links: Vec<LinkView>,
    pub config: serde_json::Value,
    /// What is wrong with its file (`file:line:col: field: message`); empty when it is valid.
    /// A workload whose file is broken is still listed: the generator keeps a running one's
    /// last good units, and systemd still knows its unit.
    pub config_errors: Vec<String>,
    /// What is wrong with the files a valid one needs (a VM's kernel, initrd and images, a
    /// container's root): it cannot start until they are there.
    pub file_errors: Vec<String>,
}

impl WorkloadView {
    /// `active (running)`, `failed (exit-code)`, or `-`.
    pub fn state_text(&self) -> String {
        let state = match &self.state {
            Some(s) if s.active == "failed" => format!("failed ({})", s.result),
            Some(s) => format!("{} ({})", s.active, s.sub),
            None => "-".into(),
        };
        if !self.config_errors.is_empty() {
            format!("{state}, config invalid")
        } else if !self.file_errors.is_empty() {
            format!("{state}, files unusable")
        } else {
            state
        }
    }

    pub fn addresses(&self) -> String {
        let a: Vec<&str> = self
            .links
            .iter()
            .filter_map(|l| l.address.as_deref())
            .collect();
        if a.is_empty() {
            "-".into()
        } else {
            a.join(",")
        }
    }
}

fn link_view(paths: &Paths, plan: &Plan, w: &Workload, a: &crate::plan::Attachment) -> LinkView {
    let record = LinkRecord::load(paths, &a.link).ok().flatten();
    let lease = || {
        let net = a
            .network
            .as_deref()
            .and_then(|n| plan.networks.by_name(n))?;
        let owner = owner_of(w, a);
        super::ipam::leases_for_view(paths.root(), &net.name)
            .into_iter()
            .find(|l| l.owner == owner)
            .map(|l| format!("{}/{}", l.ip, net.subnet.prefix_len()))
    };
    let (address, addressing) = match (&record, a.addressing) {
        (Some(r), crate::plan::Addressing::Pool) if r.ipv4.is_some() => {
            (r.ipv4.map(|i| i.to_string()), "lease")
        }
        (_, crate::plan::Addressing::Static(n)) => (Some(n.to_string()), "static"),
        (_, crate::plan::Addressing::Reserved(n)) => (Some(n.to_string()), "reserved"),
        (_, crate::plan::Addressing::Pool) => (lease(), "lease"),
        (_, crate::plan::Addressing::Dhcp) => (lease(), "dhcp"),
        (_, crate::plan::Addressing::None) => (None, "none"),
    };
    let in_host = a.netns.is_none();
    LinkView {
        nic: a.nic.clone(),
        link: a.link.clone(),
        unit: a.owner_unit.clone(),
        present: if in_host {
            link::index(&a.link).is_some()
        } else {
            record.is_some()
        },
        master: in_host.then(|| link::master(&a.link)).flatten(),
        mac: record
            .as_ref()
            .map_or_else(|| a.mac.to_string(), |r| r.mac.clone()),
        address,
        addressing: addressing.into(),
    }
}

/// Every workload of `kind` under `root`, as it is now.
pub fn views(root: &Path, kind: Kind) -> (ConfigSet, Vec<WorkloadView>) {
    let set = ConfigSet::load(root);
    let plan = Plan::build(&set);
    let paths = Paths::new(root);
    let bus = crate::sd::system_bus().ok();
    let mut views = plan
        .workloads
        .iter()
        .filter(|w| w.kind == kind)
        .map(|w| WorkloadView {
            name: w.name.clone(),
            kind: w.kind,
            unit: w.unit.clone(),
            source: w.source.display().to_string(),
            autostart: w.autostart,
            state: bus.as_ref().and_then(|c| units::state(c, &w.unit).ok()),
            links: w
                .attachments
                .iter()
                .map(|a| link_view(&paths, &plan, w, a))
                .collect(),
            config: match &w.config {
                Config::Vm(v) => {
                    let mut j = serde_json::to_value(v).unwrap_or_default();
                    // The command line the guest gets when the file gives none.
                    if v.cmdline.is_empty() {
                        j["cmdline"] = super::vm::DEFAULT_CMDLINE.into();
                    }
                    j
                }
                Config::Container(c) => serde_json::to_value(c).unwrap_or_default(),
            },
            config_errors: Vec::new(),
            file_errors: match &w.config {
                Config::Vm(v) => v.check_boot_files(root),
                Config::Container(c) => c.check_root(root),
            }
            .iter()
            // What this user may not look at is not known to be wrong (/var/lib/machines is
            // 0700 root).
            .filter(|e| !e.is_permission_denied())
            .map(|e| e.report())
            .collect(),
        })
        .collect::<Vec<_>>();
    // Workloads whose file is broken: what systemd says of their unit, and the errors; they
    // start at boot if the units the generator kept for them say so.
    let mut kept = None;
    for (file, errs) in set.errors_by_file() {
        let Some((k, name)) = crate::config::workload_of(file) else {
            continue;
        };
        if k != kind.as_str() || views.iter().any(|v| v.name == name) {
            continue;
        }
        let unit = match kind {
            Kind::Vm => crate::plan::names::vm_unit(&name),
            Kind::Container => crate::plan::names::container_unit(&name),
        };
        let autostart = kept
            .get_or_insert_with(|| crate::generator::kept_units(root))
            .get(kind.as_str(), &name)
            .is_some_and(|k| k.autostarts());
        views.push(WorkloadView {
            state: bus.as_ref().and_then(|c| units::state(c, &unit).ok()),
            name,
            kind,
            unit,
            source: file.display().to_string(),
            autostart,
            links: Vec::new(),
            config: serde_json::Value::Null,
            config_errors: errs.iter().map(|e| e.report()).collect(),
            file_errors: Vec::new(),
        });
    }
    views.sort_by(|a, b| a.name.cmp(&b.name));
    (set, views)
}

/// The NICs column: `eth0=tap-1a2b3c4d@volt0`.
fn nics_text(v: &WorkloadView) -> String {
    v.links
        .iter()
        .map(|l| {
            format!(
                "{}={}@{}",
                l.nic,
                l.link,
                l.master.as_deref().unwrap_or("-")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `volt vm list` / `volt container list`.
pub fn list(root: &Path, kind: Kind, out: &OutputArgs) -> Result<Outcome> {
    let (set, views) = views(root, kind);
    for e in &set.errors {
        log::warn!("{}", e.report());
    }
    if out.print_json(&views)? {
        return Ok(Outcome::Ok);
    }
    let rows = views
        .iter()
        .map(|v| {
            let mut row = vec![v.name.clone(), v.state_text(), v.addresses()];
            match kind {
                _ if v.config.is_null() => row.extend(["-".to_string(), "-".to_string()]),
                Kind::Vm => row.extend([
                    v.config["vcpus"].to_string(),
                    format!("{}M", v.config["memory_mib"]),
                ]),
                Kind::Container => row.extend([
                    if v.config["boot"] == true {
                        "boot"
                    } else {
                        "command"
                    }
                    .to_string(),
                    v.config["root"].as_str().unwrap_or("-").to_string(),
                ]),
            }
            row.push(if v.autostart { "yes" } else { "no" }.into());
            row.push(nics_text(v));
            row
        })
        .collect();
    let header: &[&str] = match kind {
        Kind::Vm => &[
            "NAME",
            "STATE",
            "ADDRESS",
            "VCPUS",
            "MEMORY",
            "AUTOSTART",
            "NICS",
        ],
        Kind::Container => &[
            "NAME",
            "STATE",
            "ADDRESS",
            "MODE",
            "ROOT",
            "AUTOSTART",
            "NICS",
        ],
    };
    out.print_table(header, rows);
    if !views.is_empty() && views.iter().all(|v| v.state.is_none()) {
        let _ = std::io::Write::flush(&mut std::io::stdout());
        eprintln!("note: systemd could not be asked over D-Bus: the states are unknown");
    }
    Ok(Outcome::Ok)
}

/// The workload `name` of `kind`, or its errors logged and the exit status systemctl gives for
/// a unit that does not exist (4 for status, 5 otherwise).
fn find<'a>(
    set: &ConfigSet,
    views: &'a [WorkloadView],
    kind: Kind,
    name: &str,
) -> std::result::Result<&'a WorkloadView, ()> {
    if let Some(v) = views.iter().find(|v| v.name == name) {
        return Ok(v);
    }
    if let Err(m) = crate::config::check_workload_name(name) {
        log::error!("not a valid {} name: {m}", kind.noun());
        return Err(());
    }
    let (dir, errs) = match kind {
        Kind::Vm => (
            crate::config::VMS_DIR,
            set.vm(name).err().unwrap_or_default(),
        ),
        Kind::Container => (
            crate::config::CONTAINERS_DIR,
            set.container(name).err().unwrap_or_default(),
        ),
    };
    if errs.is_empty() {
        log::error!(
            "no {} {name}: /{dir}/{name}.toml does not exist",
            kind.noun()
        );
    }
    for e in errs {
        log::error!("{}", e.report());
    }
    Err(())
}

/// `volt vm start|stop|restart NAME`: the job through systemd, waited for.
pub fn lifecycle(root: &Path, kind: Kind, name: &str, verb: Verb) -> Result<Outcome> {
    let (set, views) = views(root, kind);
    let Ok(v) = find(&set, &views, kind, name) else {
        return Ok(Outcome::Code(5));
    };
    if !v.config_errors.is_empty() && verb != Verb::Stop {
        // Stopping is always possible; a start would run the last good units of a file that
        // is broken now (or fail in them): say what to fix instead.
        for e in &v.config_errors {
            log::error!("{e}");
        }
        log::error!(
            "not starting {} {name}: fix {} first (`volt validate` lists every error)",
            kind.noun(),
            v.source
        );
        return Ok(Outcome::Config);
    }
    if verb != Verb::Stop {
        // Said, not refused: systemd may mount a file system or make a device the unit
        // needs on the way (RequiresMountsFor=, an LV), which this check cannot know.
        for e in &v.file_errors {
            log::warn!("{e}");
        }
        if !v.file_errors.is_empty() {
            log::warn!(
                "{} {name} may not start: the files above are not usable now; asking systemd anyway",
                kind.noun()
            );
        }
    }
    let conn = match crate::sd::system_bus() {
        Ok(c) => c,
        Err(e) => {
            log::error!("{}", crate::error_chain(&e));
            let foreground = match kind {
                Kind::Vm => format!("; `volt vm run {name} --attach` runs it in the foreground"),
                Kind::Container => String::new(),
            };
            log::error!(
                "{} {name} is a systemd unit ({}): is systemd running here?{foreground}",
                kind.noun(),
                v.unit
            );
            return Ok(Outcome::Failed);
        }
    };
    match units::run_job(&conn, &v.unit, verb) {
        Ok(()) => Ok(Outcome::Ok),
        Err(e) => {
            log::error!("{}", crate::error_chain(&e));
            Ok(Outcome::Failed)
        }
    }
}

/// `volt vm status NAME`: unit state, links and addresses, the last journal lines. Exit 0
/// when running, 3 when not, 4 when there is no such workload (as `systemctl status`) or
/// systemd cannot be asked (the state is unknown, LSB's 4).
pub fn status(root: &Path, kind: Kind, name: &str, out: &OutputArgs) -> Result<Outcome> {
    let (set, views) = views(root, kind);
    let Ok(v) = find(&set, &views, kind, name) else {
        return Ok(Outcome::Code(4));
    };
    let running = v.state.as_ref().is_some_and(UnitState::is_active);
    if !out.print_json(v)? {
        println!("{} ({}) {}", v.name, kind.as_str(), v.source);
        println!("  state    {}", v.state_text());
        if v.state.is_none() {
            println!("  note     systemd could not be asked over D-Bus: the state is unknown");
        }
        for e in &v.config_errors {
            println!("  config   {e}");
        }
        for e in &v.file_errors {
            println!("  file     {e}");
        }
        if let Some(s) = &v.state {
            println!(
                "  unit     {} (main PID {}, {} restart(s))",
                v.unit, s.main_pid, s.n_restarts
            );
        }
        for l in &v.links {
            println!(
                "  {:<8} {} {}{}, MAC {}, address {}{}",
                l.nic,
                l.link,
                if l.present { "up" } else { "down" },
                l.master
                    .as_deref()
                    .map(|m| format!(" on {m}"))
                    .unwrap_or_default(),
                l.mac,
                l.address.as_deref().unwrap_or("-"),
                if l.addressing.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", l.addressing)
                }
            );
        }
        if kind == Kind::Vm {
            let dir = Paths::new(Path::new("/")).vm_dir(name);
            println!("  console  {}", dir.join("console.sock").display());
            if let Some(cid) = v.config["vsock_cid"].as_u64() {
                println!(
                    "  vsock    CID {cid}, host side {} (CONNECT <port>)",
                    dir.join("vsock.sock").display()
                );
            }
            for d in v.config["disks"].as_array().into_iter().flatten() {
                // What the guest calls it: vda, vdb, ...
                let index = d["index"].as_u64().unwrap_or_default();
                let letter = char::from(b'a' + u8::try_from(index).unwrap_or(0).min(25));
                println!(
                    "  {:<8} {}{}{}",
                    format!("vd{letter}"),
                    d["path"].as_str().unwrap_or("-"),
                    if d["readonly"] == true {
                        " (read-only)"
                    } else {
                        ""
                    },
                    if d["root"] == true { " (root)" } else { "" },
                );
            }
        }
        let journal = std::process::Command::new("journalctl")
            .args(["--no-pager", "-o", "short", "-n", "10", "-u", &v.unit])
            .output();
        if let Ok(o) = journal {
            let text = String::from_utf8_lossy(&o.stdout);
            if !text.trim().is_empty() && text.trim() != "-- No entries --" {
                println!();
                print!("{text}");
            }
        }
    }
    Ok(if running {
        Outcome::Ok
    } else if v.state.is_none() {
        Outcome::Code(4)
    } else {
        Outcome::Code(3)
    })
}

/// `volt vm logs NAME [-- JOURNALCTL-ARGS]`: journalctl for the workload's unit and its link
/// owners (the VMM's log, the guest's console, link events).
pub fn logs(root: &Path, kind: Kind, name: &str, extra: &[String]) -> Result<Outcome> {
    let (set, views) = views(root, kind);
    let Ok(v) = find(&set, &views, kind, name) else {
        return Ok(Outcome::Code(1));
    };
    let mut args = vec!["-u".to_string(), v.unit.clone()];
    for l in &v.links {
        args.push("-u".into());
        args.push(l.unit.clone());
    }
    let err = std::process::Command::new("journalctl")
        .args(&args)
        .args(extra)
        .exec();
    anyhow::bail!("cannot run journalctl: {err}")
}

/// `volt vm console NAME`, `volt container console NAME`.
pub fn console(root: &Path, kind: Kind, args: super::console::ConsoleArgs) -> Result<Outcome> {
    if kind == Kind::Vm {
        return super::console::exec(root, args);
    }
    let (set, views) = views(root, kind);
    let Ok(v) = find(&set, &views, kind, &args.name) else {
        return Ok(Outcome::Code(1));
    };
    // A container in boot mode has its own login; a command container gets a shell.
    let verb = if v.config["boot"] == true {
        vec!["login".to_string(), v.name.clone()]
    } else {
        vec!["shell".to_string(), v.name.clone()]
    };
    let err = std::process::Command::new("machinectl").args(&verb).exec();
    anyhow::bail!("cannot run machinectl: {err}")
}
