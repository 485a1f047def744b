//! The Linux boot check: `volt-vmm` boots a real Linux 6.1 kernel (Debian's linux-source-6.1,
//! minimal config) as a bzImage and as a PVH vmlinux.
//!
//! The guest comes from `scripts/build-linux-guest` (cached under `~/.cache/volt/linux-guest/`;
//! the first build takes several minutes, later calls a fraction of a second). The tests skip,
//! saying why, when `/dev/kvm` is missing or the guest cannot be built here (exit 77: packages
//! missing and not root, or apt failed).
//!
//! What runs depends on the host's KVM:
//! - Everywhere: the kernel banner (`Linux version 6.1`) and early boot lines, including the MP
//!   table with every vCPU, reach the serial console through the VMM.
//! - Software KVM (no `/sys/module/kvm_intel` or `kvm_amd`, e.g. `kvm_pvm`): ring-0 guest code
//!   is emulated and Linux dies early on an instruction the emulator cannot handle; the VMM
//!   must report `KVM_EXIT_INTERNAL_ERROR` with registers and exit 1, not hang.
//! - Hardware KVM: the full boot to the initramfs marker `VOLT-LINUX-GUEST-UP` with 2 vCPUs,
//!   after which the guest resets the machine and the VMM exits 0.
//!
//! The root disk boot runs a VM file the way `volt-vm@.service` does (`volt vm run --attach`)
//! in a network namespace the test creates, with the bridge volt0 inside: the kernel and the
//! guest's ext4 image as a read-only `[[disk]]` with `root = true` (so `root=/dev/vda ro`), a
//! NIC on volt0. With hardware KVM the guest reaches userspace from the disk, takes the
//! address Volt gave it and serves HTTP to the host over volt0; with software KVM it runs as
//! far as the kernel gets (the banner, the command line with root=/dev/vda, then whatever
//! comes before the emulator gives up) and the test records why it stops there.
//!
//! Every timeout here is a failure bound (a stuck VMM fails the test instead of hanging it),
//! not a performance claim.

mod common;

use common::linux::{guest, no_hardware_kvm};

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const VMM: &str = env!("CARGO_BIN_EXE_volt-vmm");

/// Bound for the banner and early boot lines (software KVM, several VMs at once on 2 cores).
const EARLY_BOUND: Duration = Duration::from_secs(180);
/// Bound for a VMM to end once the guest died (or was told to stop).
const EXIT_BOUND: Duration = Duration::from_secs(120);
/// Bound for the full boot to the marker on hardware KVM.
const FULL_BOOT_BOUND: Duration = Duration::from_secs(120);

/// Guest command line for this machine's software KVM: no XSAVE, no FSGSBASE, and CPUID
/// bits cleared whose instructions the emulator fails on (cx16, popcnt, rdrand, rdseed,
/// smap, movbe; by number, which works with or without X86_FEATURE_NAMES).
const SOFT_KVM_CMDLINE: &str = "console=ttyS0 earlyprintk=serial noxsave nofsgsbase \
     clearcpuid=141,151,158,306,308,150 reboot=k panic=1 pci=off";

/// Early boot lines every run must show, in order, after the banner.
const EARLY_LINES: &[&str] = &[
    "Linux version 6.1",
    "Command line: console=ttyS0",
    "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
    "Hypervisor detected: KVM",
    "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]",
    "Processor #0 (Bootup-CPU)",
    "Processor #1",
    "IOAPIC[0]: apic_id 2, version 17, address 0xfec00000, GSI 0-23",
    "Processors: 2",
];

enum Out {
    Serial(String),
    Log(String),
}

/// A running `volt-vmm`: serial console (stdout) and VMM log (stderr) as lines.
struct Vm {
    child: Child,
    started: Instant,
    lines: Receiver<(Instant, Out)>,
    serial: Vec<(Duration, String)>,
    log: Vec<String>,
}

impl Vm {
    fn start(kernel: &Path, initrd: &Path, vcpus: u8, cmdline: &str) -> Vm {
        let mut cmd = Command::new(VMM);
        cmd.arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .args(["--vcpus", &vcpus.to_string(), "--memory-mib", "128"])
            .args(["--shutdown-timeout", "1s", "--cmdline", cmdline]);
        Vm::spawn(cmd)
    }

    /// Runs `cmd`, which ends up as the VMM (the same process, through exec): its stdout is
    /// the serial console, its stderr the log.
    fn spawn(mut cmd: Command) -> Vm {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn volt-vmm");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let l = l.trim_end().to_string();
                if tx.send((Instant::now(), Out::Serial(l))).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx2.send((Instant::now(), Out::Log(l))).is_err() {
                    break;
                }
            }
        });
        Vm {
            child,
            started,
            lines,
            serial: Vec::new(),
            log: Vec::new(),
        }
    }

    fn take(&mut self, item: (Instant, Out)) {
        match item {
            (t, Out::Serial(l)) => self.serial.push((t - self.started, l)),
            (_, Out::Log(l)) => self.log.push(l),
        }
    }

    fn transcript(&self) -> String {
        let mut s = String::from("--- serial console ---\n");
        for (t, l) in &self.serial {
            s.push_str(&format!("{:>8.3}s {l}\n", t.as_secs_f64()));
        }
        s.push_str("--- volt-vmm log ---\n");
        for l in &self.log {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Waits until the serial console showed lines containing each of `wants`, in order;
    /// returns when each appeared (since process start).
    fn expect_serial(&mut self, wants: &[&str], bound: Duration) -> Vec<Duration> {
        let deadline = self.started + bound;
        let mut at = Vec::new();
        let mut next = 0;
        for want in wants {
            loop {
                if let Some(i) = self.serial[next..]
                    .iter()
                    .position(|(_, l)| l.contains(want))
                {
                    at.push(self.serial[next + i].0);
                    next += i + 1;
                    break;
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    self.drain(Duration::from_millis(500));
                    if self.serial[next..].iter().any(|(_, l)| l.contains(want)) {
                        continue;
                    }
                    panic!(
                        "volt-vmm ended ({status}) before the serial console showed {want:?}\n{}",
                        self.transcript()
                    );
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    self.kill();
                    panic!(
                        "no serial line containing {want:?} within {bound:?}\n{}",
                        self.transcript()
                    );
                }
                if let Ok(item) = self
                    .lines
                    .recv_timeout(left.min(Duration::from_millis(200)))
                {
                    self.take(item);
                }
            }
        }
        at
    }

    fn drain(&mut self, quiet: Duration) {
        while let Ok(item) = self.lines.recv_timeout(quiet) {
            self.take(item);
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the VMM to end by itself within `bound`.
    fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = self.started + bound;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                self.drain(Duration::from_millis(500));
                return s;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "volt-vmm did not exit within {bound:?}\n{}",
                    self.transcript()
                );
            }
            if let Ok(item) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.take(item);
            }
        }
    }

    /// SIGTERM: the VMM asks the guest to power off (Ctrl-Alt-Del) and stops it after its
    /// 1 s shutdown timeout. Panics unless it ends by itself within [`EXIT_BOUND`], with exit
    /// status 0 and the stop in its log; a VMM that ignores SIGTERM is SIGKILLed and fails.
    fn stop_cleanly(&mut self) {
        if let Ok(Some(s)) = self.child.try_wait() {
            self.drain(Duration::from_millis(500));
            panic!(
                "volt-vmm had already ended ({s}) when it was to be stopped\n{}",
                self.transcript()
            );
        }
        let asked = Instant::now();
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.drain(Duration::from_millis(500));
                break s;
            }
            if asked.elapsed() > EXIT_BOUND {
                self.kill();
                panic!(
                    "volt-vmm ignored SIGTERM for {EXIT_BOUND:?}; SIGKILLed\n{}",
                    self.transcript()
                );
            }
            if let Ok(item) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.take(item);
            }
        };
        common::report::figure("SIGTERM to exit", format!("{:?}", asked.elapsed()));
        assert_eq!(status.code(), Some(0), "{}", self.transcript());
        assert!(
            self.log.iter().any(|l| l.contains("stop signal 15")),
            "the VMM did not log the stop signal\n{}",
            self.transcript()
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Boots `kernel` with 2 vCPUs, checks the banner and early lines (the MP table with both
/// vCPUs among them), prints when they came, then stops the VMM.
fn check_early_boot(kernel: &Path, initrd: &Path, label: &str) {
    let mut vm = Vm::start(kernel, initrd, 2, SOFT_KVM_CMDLINE);
    let at = vm.expect_serial(EARLY_LINES, EARLY_BOUND);
    eprintln!(
        "linux-boot: {label}: 'Linux version' {:.3}s after volt-vmm started, 'Processors: 2' at {:.3}s",
        at[0].as_secs_f64(),
        at[at.len() - 1].as_secs_f64()
    );
    let banner = &vm
        .serial
        .iter()
        .find(|(_, l)| l.contains("Linux version 6.1"))
        .expect("banner")
        .1;
    assert!(banner.contains("Linux version 6.1."), "{banner}");
    vm.stop_cleanly();
    assert!(
        vm.log.iter().any(|l| l.contains("2 vCPU")),
        "VMM status line missing\n{}",
        vm.transcript()
    );
}

#[test]
fn bzimage_banner_and_early_boot_reach_the_serial_console() {
    let Some(g) = guest() else { return };
    check_early_boot(&g.bzimage, &g.initramfs, "bzImage");
}

#[test]
fn pvh_vmlinux_banner_and_early_boot_reach_the_serial_console() {
    let Some(g) = guest() else { return };
    check_early_boot(&g.vmlinux, &g.initramfs, "vmlinux (PVH)");
}

#[test]
fn guest_death_on_software_kvm_is_reported_and_exits_nonzero() {
    let Some(g) = guest() else { return };
    if no_hardware_kvm().is_none() {
        common::report::skip("hardware KVM: Linux does not hit emulation failures here");
        return;
    }
    // Without clearcpuid=, SLUB's first cmpxchg16b (or later int3, XSAVE...) is an
    // instruction this KVM's emulator cannot run: KVM_EXIT_INTERNAL_ERROR.
    let mut vm = Vm::start(
        &g.vmlinux,
        &g.initramfs,
        1,
        "console=ttyS0 earlyprintk=serial reboot=k panic=1 pci=off",
    );
    vm.expect_serial(&["Linux version 6.1"], EARLY_BOUND);
    let status = vm.wait_exit(EXIT_BOUND);
    let t = vm.started.elapsed();
    let report = vm
        .log
        .iter()
        .find(|l| l.contains("KVM_EXIT_INTERNAL_ERROR") || l.contains("KVM_EXIT_SHUTDOWN"))
        .cloned()
        .unwrap_or_else(|| panic!("no KVM exit report\n{}", vm.transcript()));
    eprintln!(
        "linux-boot: guest died after {:.1}s, volt-vmm exited {status}: {report}",
        t.as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{}", vm.transcript());
    for reg in ["rip=", "rsp=", "cr3=", "cs="] {
        assert!(report.contains(reg), "{reg} missing from {report}");
    }
}

#[test]
fn full_boot_to_the_initramfs_marker_with_two_vcpus() {
    let Some(g) = guest() else { return };
    if let Some(why) = no_hardware_kvm() {
        common::report::skip(format!("full Linux boot to VOLT-LINUX-GUEST-UP: {why}"));
        return;
    }
    for (kernel, label) in [(&g.bzimage, "bzImage"), (&g.vmlinux, "vmlinux (PVH)")] {
        let mut vm = Vm::start(
            kernel,
            &g.initramfs,
            2,
            "console=ttyS0 reboot=k panic=1 pci=off volt.action=poweroff",
        );
        let at = vm.expect_serial(
            &[
                "Linux version 6.1",
                "smp: Brought up 1 node, 2 CPUs",
                "VOLT-LINUX-GUEST-UP",
                "VOLT-CPUS=2",
                "VOLT-ACTION=poweroff",
            ],
            FULL_BOOT_BOUND,
        );
        let status = vm.wait_exit(FULL_BOOT_BOUND);
        eprintln!(
            "linux-boot: {label}: banner {:.3}s, marker {:.3}s, volt-vmm exited {status}",
            at[0].as_secs_f64(),
            at[2].as_secs_f64()
        );
        assert_eq!(status.code(), Some(0), "{}", vm.transcript());
        assert!(
            vm.log.iter().any(|l| l.contains("guest reset the machine")),
            "{}",
            vm.transcript()
        );
    }
}

/// The guest's address on volt0 in the root disk boot.
const ROOT_DISK_IP: &str = "10.42.0.20";
/// Bound for the root disk boot on software KVM to go as far as it gets.
const SOFT_ROOT_DISK_BOUND: Duration = Duration::from_secs(240);

/// GET / from `ip`:80; the whole response.
fn http_get(ip: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect((ip, 80))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn root_disk_boot_to_userspace_address_and_http_over_volt0() {
    let Some(g) = guest() else { return };
    if common::skip(common::netns::skip_reason(), true) {
        return;
    }
    let soft = no_hardware_kvm();
    let ns = common::netns::TestNs::new("lnx");
    ns.bridge("volt0", "10.42.0.1/24", 1500);
    let root = tempfile::tempdir().expect("root");
    let vms = root.path().join("etc/volt/vms");
    std::fs::create_dir_all(&vms).expect("mkdir");
    let cmdline = if soft.is_some() {
        SOFT_KVM_CMDLINE
    } else {
        "console=ttyS0 reboot=k panic=1 pci=off"
    };
    let toml = format!(
        "vcpus = 2\nmemory_mib = 256\nkernel = \"{}\"\ncmdline = \"{cmdline}\"\n\
         [[disk]]\npath = \"{}\"\nroot = true\nreadonly = true\n\
         [[network]]\nmode = \"direct\"\nbridge = \"volt0\"\nipv4 = \"{ROOT_DISK_IP}/24\"\n",
        g.vmlinux.display(),
        g.rootfs.display()
    );
    std::fs::write(vms.join("lnx.toml"), toml).expect("vm file");
    // What volt-vm@lnx.service runs, bringing the link up itself, inside the namespace.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display()))
        .arg(env!("CARGO_BIN_EXE_volt"))
        .arg("--root")
        .arg(root.path())
        .args(["vm", "run", "lnx", "--attach", "--vmm", VMM])
        .args(["--", "--shutdown-timeout", "1s"]);
    let mut vm = Vm::spawn(cmd);
    let at = vm.expect_serial(&["Linux version 6.1", "Command line: "], EARLY_BOUND);
    let line = vm
        .serial
        .iter()
        .find(|(_, l)| l.contains("Command line: "))
        .map(|(_, l)| l.clone())
        .unwrap_or_default();
    for want in [
        " root=/dev/vda",
        " ro",
        "ip=10.42.0.20::10.42.0.1:255.255.255.0::eth0:off",
    ] {
        assert!(line.contains(want), "{want:?} missing from {line}");
    }
    eprintln!(
        "linux-boot: root disk: banner at {:.3}s",
        at[0].as_secs_f64()
    );

    if let Some(why) = soft {
        // Software KVM: as far as the kernel gets within the bound, or until it dies.
        let deadline = Instant::now() + SOFT_ROOT_DISK_BOUND;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = vm.child.try_wait() {
                vm.drain(Duration::from_millis(500));
                break;
            }
            if let Ok(item) = vm.lines.recv_timeout(Duration::from_millis(200)) {
                vm.take(item);
            }
        }
        let ended = vm.child.try_wait().ok().flatten();
        let reached = |what: &str| vm.serial.iter().any(|(_, l)| l.contains(what));
        let last = vm.serial.last().map(|(t, l)| (*t, l.clone()));
        let why_stopped = match ended {
            Some(status) => format!(
                "volt-vmm ended ({status}): {}",
                vm.log
                    .iter()
                    .rev()
                    .find(|l| l.contains("KVM_EXIT"))
                    .or(vm.log.last())
                    .map_or("", String::as_str)
            ),
            None => format!("still running after {SOFT_ROOT_DISK_BOUND:?}"),
        };
        eprintln!(
            "linux-boot: root disk on software KVM: virtio-blk vda {}, root mounted {}, \
             userspace {}; last serial line at {:.1}s: {}; {why_stopped}",
            reached("[vda]"),
            reached("VFS: Mounted root"),
            reached("VOLT-LINUX-ROOTFS-UP"),
            last.as_ref().map_or(0.0, |(t, _)| t.as_secs_f64()),
            last.as_ref().map_or("", |(_, l)| l.as_str())
        );
        common::report::skip(format!(
            "Linux from a root disk to userspace, its address and HTTP over volt0: {why}"
        ));
        return;
    }

    let ip = ROOT_DISK_IP;
    vm.expect_serial(
        &[
            "virtio_blk virtio",
            "[vda]",
            "VFS: Mounted root (ext4 filesystem) readonly",
            "VOLT-LINUX-ROOTFS-UP",
            "VOLT-ROOT=/dev/root ext4 ro",
            "VOLT-CPUS=2",
            &format!("VOLT-ETH0={ip}/24 (kernel ip=)"),
            "VOLT-HTTP-UP port 80",
        ],
        FULL_BOOT_BOUND,
    );
    let got = ns.run(move || http_get(ip));
    let page = got.unwrap_or_else(|e| panic!("GET http://{ip}/: {e}\n{}", vm.transcript()));
    assert!(page.starts_with("HTTP/1.0 200"), "{page}");
    assert!(page.contains(&format!("VOLT-LINUX-GUEST {ip}")), "{page}");
    // SIGTERM: Ctrl-Alt-Del (the guest has no i8042 driver), then the 1 s shutdown timeout.
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(vm.child.id() as libc::pid_t, libc::SIGTERM) };
    let status = vm.wait_exit(EXIT_BOUND + vm.started.elapsed());
    eprintln!("linux-boot: root disk: HTTP served, volt-vmm exited {status}");
}
