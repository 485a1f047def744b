//! Network namespaces a test creates (`ip netns add`), commands run inside them with
//! `nsenter --net=` (never `ip netns exec`: it remounts /sys), and library code run inside
//! them on a thread that `setns`. Dropping a [`TestNs`] deletes it, and with it every
//! virtual link inside.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run netns tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespace tests need root".into());
    }
    for tool in ["ip", "nsenter"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("{tool} is missing (scripts/setup installs it)"));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

pub struct TestNs {
    pub name: String,
    /// Processes started inside with [`TestNs::spawn`], ended by PID on drop.
    children: Vec<std::process::Child>,
}

impl TestNs {
    /// `ip netns add v<hint>-<pid>-<n>`.
    pub fn new(hint: &str) -> TestNs {
        let name = format!(
            "vx{hint}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add");
        assert!(
            o.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let ns = TestNs {
            name,
            children: Vec::new(),
        };
        ns.ok("ip link set lo up");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run a shell script inside the namespace.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args(["/bin/bash", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Run a script that must succeed; returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "in netns {}: `{script}` failed ({:?})\nstdout: {}\nstderr: {}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Start `program args` inside the namespace with extra env, output to `out`; it is
    /// ended (SIGTERM, then SIGKILL) on drop.
    pub fn spawn(
        &mut self,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        out: std::fs::File,
    ) -> u32 {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg(program)
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn in netns");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// A bridge with an address and MTU, up (the host side of a Volt network).
    pub fn bridge(&self, name: &str, cidr: &str, mtu: u32) {
        self.ok(&format!("ip link add {name} type bridge && ip link set {name} mtu {mtu} && ip addr add {cidr} dev {name} && ip link set {name} up"));
    }

    /// Run library code on a thread inside the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        volt::sys::netns::run_in(&self.path(), f).expect("run in netns")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        for c in &self.children {
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.children {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Container `name`'s veth pair names and isolated namespace, as the plan derives them.
pub fn veth(name: &str) -> (volt::net::manager::Veth, String) {
    use volt::config::{short_id, veth_names, vm_uuid};
    let (host_end, container_end) = veth_names(name);
    (
        volt::net::manager::Veth {
            host_end,
            container_end,
        },
        volt::plan::names::isolated_netns(&short_id(&vm_uuid(name))),
    )
}
