//! `volt demo`: Volt's main job on the default guest, right after install. It starts the
//! example VM `hello` (the test guest installed in /usr/lib/volt/guests) on volt0, shows it
//! answering ping and its console lines, and says how to stop it.
//!
//! Where systemd is PID 1 this is what an admin does by hand: `/etc/volt/vms/hello.toml` (the
//! example copied there when missing; an existing file is used as it is), `systemctl
//! daemon-reload`, `systemctl start volt-vm@hello` (over D-Bus, waiting for the job), `ping`
//! on the host's volt0, the run's console lines from the journal; the VM keeps running.
//!
//! Where it is not (containers, CI machines) there is no service to start: the same VM file
//! runs under `volt vm run --attach` (the unit's command, bringing the link up itself) inside
//! a private network namespace the demo creates, with a private configuration root, so the
//! bridge volt0, its address and the TAP all live in that namespace; the demo pings the guest
//! there, prints its console, stops it and removes the namespace and the root.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Outcome;
use crate::attach::LinkRecord;
use crate::config::ConfigSet;
use crate::plan::{Kind, Paths, Plan};
use crate::sd::units::{self, Verb};

/// The example VM file (packaging/examples/hello.toml, installed in
/// /usr/share/doc/volt/examples/), compiled in: the demo works where documentation is not
/// installed (container images often leave /usr/share/doc out).
pub const HELLO_TOML: &str = include_str!("../../packaging/examples/hello.toml");
const NAME: &str = "hello";
const UNIT: &str = "volt-vm@hello.service";
/// Bound for the VM to come up (its link, its first console line) and for the console lines
/// to reach the journal.
const UP_BOUND: Duration = Duration::from_secs(60);
/// Bound for the VMM to end after SIGTERM (the guest powers off on Ctrl-Alt-Del).
const STOP_BOUND: Duration = Duration::from_secs(30);

/// Set by SIGINT/SIGTERM while the demo runs a VM itself: stop it and clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether systemd is the init system (sd_booted(3): /run/systemd/system exists).
fn systemd_is_pid1() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// `volt demo`.
pub fn run(root: &Path) -> Result<Outcome> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        log::error!("volt demo needs root: it creates a bridge and a TAP and starts a VM");
        return Ok(Outcome::Failed);
    }
    if !Path::new("/dev/kvm").exists() {
        log::error!("/dev/kvm is missing: this machine cannot run KVM guests (load kvm_intel or kvm_amd, or enable nested virtualization)");
        return Ok(Outcome::Failed);
    }
    println!("volt demo: the example VM {NAME} on the default guest, on the bridge volt0");
    if systemd_is_pid1() {
        with_systemd(root)
    } else {
        without_systemd(root)
    }
}

/// `<root>/etc/volt/vms/hello.toml`.
fn vm_file(root: &Path) -> PathBuf {
    root.join(crate::config::VMS_DIR)
        .join(format!("{NAME}.toml"))
}

/// The admin's /etc/volt/vms/hello.toml, if there is one.
fn hello_file(root: &Path) -> Result<Option<String>> {
    let file = vm_file(root);
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// Load `hello` from the VM files under `root`; print every error (the file's and its boot
/// files') and return `None` when it cannot run.
fn load(root: &Path) -> Option<Plan> {
    let set = ConfigSet::load(root);
    let errors: Vec<String> = match set.vm(NAME) {
        Ok(vm) => vm
            .check_boot_files(Path::new("/"))
            .iter()
            .map(|e| e.report())
            .collect(),
        Err(errs) => errs.iter().map(|e| e.report()).collect(),
    };
    if !errors.is_empty() {
        for e in &errors {
            log::error!("{e}");
        }
        if errors.iter().any(|e| e.contains("/usr/lib/volt/guests/")) {
            log::error!("the default guest is missing: install Volt again (scripts/install, or the package)");
        }
        return None;
    }
    let plan = Plan::build(&set);
    if plan.workload(Kind::Vm, NAME).is_none() {
        log::error!("no VM {NAME} under {}", root.display());
        return None;
    }
    Some(plan)
}

/// The link and address of hello's first NIC: from its owner's record, else from the plan.
fn address(paths: &Paths, plan: &Plan) -> Option<(String, Option<std::net::Ipv4Addr>)> {
    let a = plan.workload(Kind::Vm, NAME)?.attachments.first()?;
    let recorded = LinkRecord::load(paths, &a.link).ok().flatten()?;
    let ip = recorded.ipv4.or(a.addressing.known()).map(|n| n.addr());
    Some((a.link.clone(), ip))
}

/// `ping -c 3 -w 15 ADDR`, its output shown, inside `netns` when given. 15 s covers a first
/// echo sent before the guest answers ARP (the kernel retries once a second).
fn ping(addr: std::net::Ipv4Addr, netns: Option<&std::fs::File>) -> Result<bool> {
    let shown = format!("ping -c 3 {addr}");
    step(&shown);
    let mut cmd = Command::new("ping");
    cmd.args(["-c", "3", "-w", "15", &addr.to_string()]);
    if let Some(ns) = netns {
        let fd = ns.as_raw_fd();
        // SAFETY: between fork and exec the child only calls setns(2), which is
        // async-signal-safe, on an fd the parent keeps open until the child has run.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    match cmd.status() {
        Ok(s) => Ok(s.success()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::error!("ping is not installed (apt install iputils-ping, or dnf install iputils)");
            Ok(false)
        }
        Err(e) => Err(e).context("cannot run ping"),
    }
}

/// The settings of a VM file (its comments left out).
fn show_settings(text: &str) {
    for l in text.lines() {
        let t = l.trim();
        if !t.is_empty() && !t.starts_with('#') {
            println!("    {l}");
        }
    }
}

fn indent(lines: &str) {
    for l in lines.lines() {
        println!("    {l}");
    }
}

// ---- systemd is PID 1: the service, as an admin would start it ----------------------------

fn with_systemd(root: &Path) -> Result<Outcome> {
    let paths = Paths::new(root);
    let file = vm_file(root);
    let text = match hello_file(root)? {
        Some(t) => {
            step(&format!("{} is there already: using it", file.display()));
            t
        }
        None => {
            step(&format!(
                "cp /usr/share/doc/volt/examples/{NAME}.toml {}",
                file.display()
            ));
            crate::fsutil::write_atomic_if_changed(&file, HELLO_TOML)?;
            HELLO_TOML.to_string()
        }
    };
    show_settings(&text);
    let Some(plan) = load(root) else {
        return Ok(Outcome::Config);
    };
    let conn = crate::sd::system_bus()?;
    step("systemctl daemon-reload");
    units::daemon_reload(&conn)?;
    let running = units::state(&conn, UNIT).is_ok_and(|s| s.is_active());
    if running {
        step(&format!("{UNIT} is running already"));
    } else {
        step(&format!("systemctl start {UNIT}"));
        if let Err(e) = units::run_job(&conn, UNIT, Verb::Start) {
            log::error!("{}", crate::error_chain(&e));
            journal(&["-u", UNIT, "-n", "30"]);
            return Ok(Outcome::Failed);
        }
    }
    let Some((link, Some(ip))) = address(&paths, &plan) else {
        log::error!("{NAME} has no recorded link or address; see volt vm status {NAME}");
        return Ok(Outcome::Failed);
    };
    println!("    {NAME} is running: its NIC is {link} on volt0, its address {ip}");
    let answered = ping(ip, None)?;
    step(&format!(
        "journalctl -u {UNIT}   (the guest's console lines of this run)"
    ));
    match units::invocation_id(&conn, UNIT)? {
        Some(id) => console_from_journal(&id),
        None => journal(&["-u", UNIT, "-n", "20"]),
    }
    println!(
        "\n{NAME} keeps running as {UNIT}. Look at it with\n    volt vm status {NAME}\n    \
         journalctl -u volt-vm@{NAME}\n    machinectl list\n    networkctl status {link}\n    \
         volt console {NAME}   (Ctrl-] leaves)\nand stop it with\n    systemctl stop volt-vm@{NAME}"
    );
    Ok(if answered {
        Outcome::Ok
    } else {
        log::error!("{NAME} did not answer ping at {ip}");
        Outcome::Failed
    })
}

/// `journalctl ARGS`, indented.
fn journal(args: &[&str]) {
    let out = Command::new("journalctl")
        .args(["--no-pager", "-q"])
        .args(args)
        .output();
    if let Ok(o) = out {
        indent(&String::from_utf8_lossy(&o.stdout));
    }
}

/// The guest's console lines of one run of the unit: the VMM writes each as a journal entry
/// of its own (`SYSLOG_IDENTIFIER=volt-guest`, next to its own log lines as `volt-vmm`).
/// They reach the journal shortly after the guest printed them, so wait (bounded) for the
/// first.
fn console_from_journal(invocation: &str) {
    let matches = [
        format!("_SYSTEMD_INVOCATION_ID={invocation}"),
        "SYSLOG_IDENTIFIER=volt-guest".to_string(),
    ];
    let start = Instant::now();
    loop {
        let out = Command::new("journalctl")
            .args(["--no-pager", "-q", "-o", "cat"])
            .args(&matches)
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !text.trim().is_empty() || start.elapsed() > Duration::from_secs(5) {
            indent(&text);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- no systemd: the same VM under `volt vm run --attach` in a private namespace ----------

/// What the demo made without systemd, removed on drop: the VM's process (SIGKILLed if
/// still there), the network namespace (with the bridge and TAP in it), the private root.
struct Scratch {
    netns: String,
    dir: PathBuf,
    vm: Option<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut c) = self.vm.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if let Err(e) = crate::sys::netns::delete(&self.netns) {
            log::warn!("{}", crate::error_chain(&e));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn without_systemd(root: &Path) -> Result<Outcome> {
    let pid = std::process::id();
    let netns = format!("volt-demo-{pid}");
    println!(
        "\nsystemd is not PID 1 here (no /run/systemd/system: a container or a CI machine?), so \
         there is no\n{UNIT} to start. The demo runs the same VM with `volt vm run {NAME} \
         --attach`\n(the service's command, bringing its link up itself) in a private network \
         namespace,\n{netns}, with its own bridge volt0 (10.42.0.1/24), and removes it all \
         afterwards."
    );
    let text = match hello_file(root)? {
        Some(t) => {
            step(&format!("/etc/volt/vms/{NAME}.toml"));
            t
        }
        None => {
            step(&format!("the example {NAME}.toml"));
            HELLO_TOML.to_string()
        }
    };
    show_settings(&text);
    // A private root: only the built-in volt0 and hello, and the link records, leases and
    // networkd files of this run, none of them on the host.
    let dir = std::env::temp_dir().join(format!("volt-demo-{pid}"));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut scratch = Scratch {
        netns: netns.clone(),
        dir: dir.clone(),
        vm: None,
    };
    let paths = Paths::new(&dir);
    crate::fsutil::write_atomic_if_changed(&vm_file(&dir), &text)?;
    let Some(plan) = load(&dir) else {
        return Ok(Outcome::Config);
    };
    crate::sys::netns::create(&netns)?;
    let ns = crate::sys::netns::open(&crate::sys::netns::path_of(&netns))?;

    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; a
        // handler (unlike SIG_IGN) is reset to the default in the children at exec.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    step(&format!(
        "volt vm run {NAME} --attach   (in network namespace {netns})"
    ));
    let (console, vmm_log) = (dir.join("console.log"), dir.join("vmm.log"));
    let exe = std::env::current_exe().context("cannot find the volt binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
        .arg(&dir)
        .args(["vm", "run", NAME, "--attach"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console)?)
        .stderr(std::fs::File::create(&vmm_log)?);
    let fd = ns.as_raw_fd();
    // SAFETY: between fork and exec the child only calls setns(2), which is
    // async-signal-safe, on an fd this process keeps open.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    scratch.vm = Some(cmd.spawn().context("cannot start volt vm run")?);

    let outcome = demo_vm(&mut scratch, &paths, &plan, &ns, &console, &vmm_log)?;
    drop(ns);
    drop(scratch);
    if !crate::sys::netns::exists(&netns) {
        println!("    removed network namespace {netns} (with volt0 and the TAP in it)");
    }
    if matches!(outcome, Outcome::Ok) {
        println!(
            "\nWhere systemd is PID 1, `volt demo` starts {NAME} as the service {UNIT} instead, \
             as an\nadmin would by hand:\n    cp /usr/share/doc/volt/examples/{NAME}.toml \
             /etc/volt/vms/\n    systemctl daemon-reload\n    systemctl start volt-vm@{NAME}\n    \
             ping 10.42.0.2\n    journalctl -u volt-vm@{NAME}\n    systemctl stop volt-vm@{NAME}"
        );
    }
    Ok(outcome)
}

/// Wait for hello to come up, ping it, show its console, stop it.
fn demo_vm(
    scratch: &mut Scratch,
    paths: &Paths,
    plan: &Plan,
    ns: &std::fs::File,
    console: &Path,
    vmm_log: &Path,
) -> Result<Outcome> {
    let Some(vm) = scratch.vm.as_mut() else {
        return Ok(Outcome::Failed);
    };
    let start = Instant::now();
    let up = loop {
        if let Some(status) = vm.try_wait()? {
            log::error!("{NAME} ended ({status}) before it came up");
            eprintln!("{}{}", read(vmm_log), read(console));
            return Ok(Outcome::Failed);
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            break None;
        }
        if let Some(a) = address(paths, plan) {
            if !read(console).is_empty() {
                break Some(a);
            }
        }
        if start.elapsed() > UP_BOUND {
            log::error!("{NAME} did not come up within {UP_BOUND:?}");
            eprintln!("{}{}", read(vmm_log), read(console));
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let answered = match &up {
        Some((link, Some(ip))) => {
            println!("    {NAME} is running: its NIC is {link} on volt0, its address {ip}");
            ping(*ip, Some(ns))?
        }
        Some((link, None)) => {
            log::error!("{link} has no address: nothing to ping");
            false
        }
        None => false,
    };
    step(&format!("the console of {NAME}"));
    let shown = read(console);
    indent(&shown);

    step(&format!(
        "stopping {NAME}   (SIGTERM: the VMM sends Ctrl-Alt-Del, the guest powers off)"
    ));
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(vm.id() as libc::pid_t, libc::SIGTERM) };
    let asked = Instant::now();
    let status = loop {
        if let Some(s) = vm.try_wait()? {
            break Some(s);
        }
        if asked.elapsed() > STOP_BOUND {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = read(console);
    indent(after.get(shown.len()..).unwrap_or_default());
    match status {
        Some(s) => println!("    {NAME} stopped ({s})"),
        None => log::error!("{NAME} did not stop within {STOP_BOUND:?}; killing it"),
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        log::error!("interrupted");
        return Ok(Outcome::Failed);
    }
    if !answered {
        if up.is_some() {
            log::error!("{NAME} did not answer ping; the VMM's log:");
            eprint!("{}", read(vmm_log));
        }
        return Ok(Outcome::Failed);
    }
    Ok(if status.is_some() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}
