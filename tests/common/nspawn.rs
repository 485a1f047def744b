//! A real systemd 252 booted in systemd-nspawn, for integration tests (recipe in the
//! project's testing notes): the host's /usr, a volatile /etc, a private network namespace,
//! /dev/kvm bound in, and the stage bound read-only at /opt/volt. A stage made by
//! [`stage_volt`] holds Volt installed by `packaging/stage` (the same manifest the packages
//! and `scripts/install` use) under `root/`; its `usr/` is laid over the host's /usr, so the
//! container sees this build at the installed paths, whatever the host has installed.
//!
//! Processes: `timeout` (our child) → `systemd-nspawn` → the container's systemd (PID 1).
//! Drop stops the container with SIGTERM to nspawn, and SIGKILLs its PID 1 if that fails.
//!
//! Each container gets a cgroup of its own ([`OwnCgroup`]): with `--keep-unit`, nspawn puts
//! the container in `payload/` under nspawn's own cgroup, so containers started from one
//! cgroup (the test process's) would share one tree, and their systemds would create, kill
//! and remove each other's unit cgroups (units failing with 219/CGROUP, EIO from cgroup
//! kills: seen on this machine's cgroup v1 + v2 hybrid whenever two booted at once).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run real-systemd tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("real-systemd tests need root".into());
    }
    if Command::new("systemd-nspawn")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("systemd-nspawn is missing (scripts/setup installs systemd-container)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Nspawn {
    child: Child,
    nspawn: i32,
    pub pid1: i32,
    pub name: String,
    dir: tempfile::TempDir,
    // Dropped after the container is stopped (fields drop after `Drop::drop`).
    _cgroup: OwnCgroup,
}

/// A cgroup made for one container under the test process's own cgroup, in every hierarchy
/// nspawn places the container in (the named `systemd` v1 hierarchy and the v2 one); the
/// process that execs nspawn moves itself there. Removed, bottom-up, when the container is
/// gone.
pub struct OwnCgroup {
    dirs: Vec<PathBuf>,
}

impl OwnCgroup {
    pub fn new(name: &str) -> OwnCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let path_of = |prefix: &str| {
            own.lines()
                .find_map(|l| l.split_once(prefix).map(|(_, p)| p.trim_start_matches('/')))
                .map(str::to_owned)
        };
        let mut dirs = Vec::new();
        let v1 = Path::new("/sys/fs/cgroup/systemd");
        if v1.join("cgroup.procs").exists() {
            if let Some(p) = path_of(":name=systemd:") {
                dirs.push(v1.join(p).join(name));
            }
        }
        let v2 = [
            Path::new("/sys/fs/cgroup/unified"),
            Path::new("/sys/fs/cgroup"),
        ]
        .into_iter()
        .find(|m| m.join("cgroup.controllers").exists());
        if let (Some(m), Some(p)) = (v2, path_of("0::")) {
            dirs.push(m.join(p).join(name));
        }
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        OwnCgroup { dirs }
    }

    /// `sh -c SCRIPT sh` that moves the shell into these cgroups, then execs the arguments
    /// that follow.
    pub fn enter(&self) -> Command {
        let mut script = String::new();
        for d in &self.dirs {
            script.push_str(&format!("echo $$ > '{}/cgroup.procs' && ", d.display()));
        }
        script.push_str("exec \"$@\"");
        let mut c = Command::new("/bin/sh");
        c.args(["-c", &script, "sh"]);
        c
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        // Deepest first (nspawn's payload/ and supervisor/, the units' cgroups under them).
        // A cgroup whose last processes are still being reaped refuses rmdir (EBUSY) for a
        // moment after the container is gone: try again for up to 5 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for d in &self.dirs {
            while d.exists() {
                let mut all: Vec<PathBuf> = walk_dirs(d);
                all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
                for p in all {
                    let _ = std::fs::remove_dir(&p);
                }
                if std::time::Instant::now() > deadline {
                    eprintln!("cgroup {} not removed (still busy)", d.display());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

fn walk_dirs(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![d.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}

impl Nspawn {
    /// Boot a container with `stage` bound read-only at /opt/volt; wait until it is `running`.
    pub fn boot(hint: &str, stage: &Path) -> Nspawn {
        Self::boot_with(hint, stage, true)
    }

    /// Like [`Nspawn::boot`]; `kvm = false` leaves /dev/kvm out of the container.
    pub fn boot_with(hint: &str, stage: &Path, kvm: bool) -> Nspawn {
        Self::boot_with_args(hint, stage, kvm, &[])
    }

    /// Like [`Nspawn::boot_with`], with more systemd-nspawn arguments (e.g.
    /// `--overlay=/usr::/usr` for a writable /usr whose changes nspawn throws away).
    pub fn boot_with_args(hint: &str, stage: &Path, kvm: bool, extra: &[&str]) -> Nspawn {
        Self::boot_in(hint, stage, kvm, extra, None, 900)
    }

    /// Like [`Nspawn::boot_with_args`], with systemd-nspawn started inside the network
    /// namespace `netns` (`nsenter --net=`), so the host ends of links nspawn makes for the
    /// container (`--network-veth-extra=HOST:CONTAINER`) land there, e.g. on an underlay
    /// bridge that joins several test systemds. `limit_s`: `timeout` ends the container
    /// after that many seconds whatever happens (900 for the other constructors).
    pub fn boot_in(
        hint: &str,
        stage: &Path,
        kvm: bool,
        extra: &[&str],
        netns: Option<&Path>,
        limit_s: u32,
    ) -> Nspawn {
        let name = format!(
            "volt-{hint}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let preset = dir.path().join("99-test.preset");
        std::fs::write(&preset, "disable *\n").expect("preset");
        let log = std::fs::File::create(dir.path().join("console.log")).expect("log");
        let cgroup = OwnCgroup::new(&name);
        let mut cmd = cgroup.enter();
        if let Some(ns) = netns {
            cmd.arg("nsenter").arg(format!("--net={}", ns.display()));
        }
        cmd.arg("timeout")
            .arg("--signal=TERM")
            .arg(limit_s.to_string())
            .args([
                "systemd-nspawn",
                "-D",
                "/",
                "--volatile=yes",
                "-b",
                "--private-network",
                "--register=no",
                "--keep-unit",
            ])
            .arg(format!("--machine={name}"))
            .arg("--console=pipe")
            .arg(format!(
                "--bind-ro={}:/etc/systemd/system-preset/99-test.preset",
                preset.display()
            ))
            .arg(format!("--bind-ro={}:/opt/volt", stage.display()));
        if stage.join("root/usr").is_dir() {
            cmd.arg(format!(
                "--overlay-ro=/usr:{}:/usr",
                stage.join("root/usr").display()
            ));
        }
        cmd.args(extra);
        if kvm && Path::new("/dev/kvm").exists() {
            cmd.arg("--bind=/dev/kvm");
        }
        cmd.arg("systemd.mask=systemd-firstboot.service")
            // Kernel sysctls are the host's business; in a container /proc/sys is mostly
            // read-only and a package install on the shared /usr can make this unit fail.
            .arg("systemd.mask=systemd-sysctl.service")
            // It turns the kernel command line's ip= options into networkd files; in a
            // container that "command line" is PID 1's arguments and it has nothing to do, yet
            // it failed a CI boot once (no journal was kept): not what any test checks.
            .arg("systemd.mask=systemd-network-generator.service")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn systemd-nspawn");
        let tpid = child.id() as i32;
        let nspawn = wait_for("systemd-nspawn to start", Duration::from_secs(20), || {
            children(tpid).first().copied()
        });
        // nspawn forks a short-lived intermediate child before the container's init: wait for
        // the child that is systemd itself.
        let pid1 = wait_for("the container's PID 1", Duration::from_secs(60), || {
            children(nspawn).into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
            })
        });
        let c = Nspawn {
            child,
            nspawn,
            pid1,
            name,
            dir,
            _cgroup: cgroup,
        };
        // A bound that only catches a hung boot (~1 s normally; minutes when the machine is
        // overloaded); on expiry say where it stands.
        let start = Instant::now();
        let state = loop {
            let o = c.sh("systemctl is-system-running");
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if matches!(s.as_str(), "running" | "degraded") {
                break s;
            }
            if start.elapsed() > Duration::from_secs(240) {
                let jobs = c.sh("systemctl list-jobs --no-pager");
                panic!(
                    "container {} not up after 240 s (state {s:?}, load {}); jobs:\n{}\n{}",
                    c.name,
                    std::fs::read_to_string("/proc/loadavg")
                        .unwrap_or_default()
                        .trim(),
                    String::from_utf8_lossy(&jobs.stdout),
                    c.console()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Units of the container's own environment (device nodes, sysctls on a shared,
        // busy host) fail now and then under load; that is not what any test checks. Any
        // other failed unit fails the boot.
        const ENVIRONMENTAL: [&str; 2] = [
            "systemd-tmpfiles-setup-dev.service",
            "systemd-sysctl.service",
        ];
        if state == "degraded" {
            let failed = c.sh("systemctl --failed --no-legend --plain --no-pager");
            let units: Vec<String> = String::from_utf8_lossy(&failed.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect();
            if !units.is_empty() && units.iter().all(|u| ENVIRONMENTAL.contains(&u.as_str())) {
                eprintln!(
                    "note: container {} booted degraded by {units:?} (environmental); going on",
                    c.name
                );
                let _ = c.sh("systemctl reset-failed");
                return c;
            }
        }
        if state != "running" {
            let failed = c.sh("systemctl --failed --no-legend --no-pager");
            // The failed units' own journal says why; the console alone often does not.
            let why = c.sh(
                "for u in $(systemctl --failed --no-legend --plain --no-pager | cut -d' ' -f1); do \
                 journalctl -b --no-pager -o short-monotonic -n 30 -u \"$u\"; done",
            );
            panic!(
                "container booted {state}: {}\n{}\n{}",
                String::from_utf8_lossy(&failed.stdout),
                String::from_utf8_lossy(&why.stdout),
                c.console()
            );
        }
        c
    }

    /// Run a shell script inside the container (all namespaces of its PID 1).
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Run a script that must succeed; returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        if !o.status.success() {
            let journal = self.sh("journalctl -b --no-pager -n 25 -o short-monotonic; echo '--- volt units:'; journalctl -b --no-pager -n 40 -o short-monotonic -u 'volt-*'");
            panic!(
                "in container {}: `{script}` failed ({:?})\nstdout: {}\nstderr: {}\n--- last journal lines:\n{}",
                self.name,
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Poll `script` until it succeeds; returns its stdout.
    pub fn wait_ok(&self, script: &str, timeout: Duration) -> String {
        wait_for(script, timeout, || {
            let o = self.sh(script);
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        })
    }

    /// Write a file inside the container.
    pub fn write(&self, path: &str, content: &str) {
        let tmp = self.dir.path().join("upload");
        std::fs::write(&tmp, content).expect("write upload");
        let o = Command::new("nsenter")
            .args([
                "-t",
                &self.pid1.to_string(),
                "-a",
                "/bin/sh",
                "-c",
                &format!("mkdir -p \"$(dirname '{path}')\" && cat > '{path}'"),
            ])
            .stdin(std::fs::File::open(&tmp).expect("open upload"))
            .output()
            .expect("nsenter");
        assert!(
            o.status.success(),
            "writing {path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// A busybox root file system at `dir` inside the container: every applet but `busybox`
    /// itself linked to the static binary, a `/usr` (nspawn needs one), an os-release, and the
    /// udhcpc script that applies a lease with `ip`.
    pub fn busybox_rootfs(&self, dir: &str) {
        self.ok(&format!(
            r#"set -e
R={dir}
mkdir -p $R/bin $R/sbin $R/usr/bin $R/usr/sbin $R/etc $R/proc $R/sys $R/dev $R/tmp $R/run $R/var $R/root
B=$(command -v busybox)
cp "$B" $R/bin/busybox
for a in $("$B" --list); do
  [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
done
printf 'ID=volt-busybox\nNAME="busybox for Volt tests"\n' > $R/etc/os-release
cat > $R/etc/udhcpc.script <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip link set "$interface" up; ip -4 addr flush dev "$interface" ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${{router%% *}}" dev "$interface"
    ;;
esac
exit 0
EOF
chmod +x $R/etc/udhcpc.script
"#
        ));
    }

    /// Finish the install the way the package's postinst does (the files are already at their
    /// installed paths through the /usr overlay): the `volt` user and Volt's directories,
    /// networkd running with /dev/net/tun usable by it, a daemon-reload (the generator runs);
    /// then wait for the volt0 bridge.
    pub fn install_volt(&self) {
        self.ok(
            "set -e
             mkdir -p /etc/systemd/system/systemd-networkd.service.d /etc/volt/vms
             systemd-sysusers
             systemd-tmpfiles --create volt.conf
             printf '[Service]\\nExecStartPre=+/bin/chmod 0666 /dev/net/tun\\n' > /etc/systemd/system/systemd-networkd.service.d/50-tun.conf
             systemctl daemon-reload
             systemctl restart systemd-networkd",
        );
        self.wait_ok("test -e /sys/class/net/volt0", Duration::from_secs(30));
    }
}

impl Drop for Nspawn {
    fn drop(&mut self) {
        // SAFETY: signalling a process we started (nspawn is the child of our `timeout` child).
        unsafe { libc::kill(self.nspawn, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // nspawn did not stop: kill the container's PID 1 (that ends its netns and links),
        // then our child.
        // SAFETY: pid1 is the init of the container this test booted.
        unsafe { libc::kill(self.pid1, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What most real-systemd tests start from: a fresh stage of this build, a container booted
/// on it (with /dev/kvm) and Volt installed ([`Nspawn::install_volt`]). Derefs to the
/// container.
pub struct Host {
    /// Declared first, so dropped first: the container runs on the stage.
    pub c: Nspawn,
    pub stage: tempfile::TempDir,
}

impl Host {
    /// `None` when this machine cannot run real-systemd tests (or `needs_kvm` and there is
    /// no /dev/kvm): the test is recorded as skipped and returns at once.
    pub fn with_volt(hint: &str, needs_kvm: bool) -> Option<Host> {
        if super::skip(skip_reason(), needs_kvm) {
            return None;
        }
        Some(Host::boot(hint))
    }

    /// The same without the check (the caller has made it).
    pub fn boot(hint: &str) -> Host {
        let stage = stage_volt();
        let c = Nspawn::boot(hint, stage.path());
        c.install_volt();
        Host { c, stage }
    }
}

impl std::ops::Deref for Host {
    type Target = Nspawn;

    fn deref(&self) -> &Nspawn {
        &self.c
    }
}

/// Volt's build installed into `<stage>/root` by `packaging/stage` (binaries cargo built for
/// this test, man pages and completions from `volt gen-docs`, the test guest as the default
/// guest), plus `<stage>/guest/` with the test guest. `packaging/stage --list` writes every
/// installed path to `<stage>/installed`.
pub fn stage_volt() -> tempfile::TempDir {
    let repo = super::repo();
    let stage = tempfile::tempdir().expect("stage");
    let s = stage.path();
    let bins = s.join("bin");
    std::fs::create_dir_all(&bins).expect("mkdir");
    std::fs::create_dir_all(s.join("guest")).expect("mkdir");
    let mut built: Vec<(&str, &str)> = vec![
        ("volt", env!("CARGO_BIN_EXE_volt")),
        ("volt-generator", env!("CARGO_BIN_EXE_volt-generator")),
    ];
    if let Some(vmm) = option_env!("CARGO_BIN_EXE_volt-vmm") {
        built.push(("volt-vmm", vmm));
    }
    for (name, path) in built {
        std::fs::copy(path, bins.join(name)).expect("copy binary");
    }
    let gen = s.join("gen");
    let o = Command::new(env!("CARGO_BIN_EXE_volt"))
        .arg("gen-docs")
        .arg("--out")
        .arg(&gen)
        .output()
        .expect("volt gen-docs");
    assert!(
        o.status.success(),
        "volt gen-docs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The default guest the packages install is the test guest.
    std::fs::copy(super::guest::elf(), s.join("guest/volt-test-guest")).expect("copy test guest");
    let o = Command::new(repo.join("packaging/stage"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--gen-dir")
        .arg(&gen)
        .arg("--guest-dir")
        .arg(s.join("guest"))
        .arg("--list")
        .arg(s.join("installed"))
        .arg(s.join("root"))
        .output()
        .expect("packaging/stage");
    assert!(
        o.status.success(),
        "packaging/stage: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    stage
}

/// Make `upper` (the upper layer of an overlay over the host's /usr) hide every path under
/// /usr that Volt installs and the host has (a Volt installed on the host by `scripts/install`
/// or a package): overlayfs whiteouts, so the container's /usr is Volt-free.
pub fn hide_host_volt(upper: &Path) {
    let stage = stage_volt();
    let list = std::fs::read_to_string(stage.path().join("installed")).expect("installed list");
    for line in list.lines() {
        let mut cols = line.split_whitespace();
        // Directories stay (whiteouts over the files in them are enough, and a directory
        // whiteout could not hold the whiteouts below it).
        if cols.next() == Some("dir") {
            continue;
        }
        let Some(path) = cols.nth(1) else {
            continue;
        };
        let Some(rel) = path.strip_prefix("/usr/") else {
            continue;
        };
        if !Path::new(path).exists() && std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        let w = upper.join(rel);
        if let Some(d) = w.parent() {
            std::fs::create_dir_all(d).expect("mkdir upper");
        }
        let c = std::ffi::CString::new(w.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: c is a valid path; a 0:0 character device is overlayfs's whiteout.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
        assert_eq!(
            r,
            0,
            "whiteout {}: {}",
            w.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Path of a file inside the stage as the container sees it.
pub fn in_stage(rel: &str) -> PathBuf {
    Path::new("/opt/volt").join(rel)
}
