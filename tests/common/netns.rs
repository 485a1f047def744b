//! Named network namespaces for tests (`ip netns add`), so external tools (`ip`, `ping`
//! through `nsenter --net=`) and test threads (`setns`) share them. Everything is removed on
//! drop; processes started in them are ended by PID.

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
    children: Vec<Child>,
}

/// Whether namespace tests can run here (root, `ip`).
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespace tests need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (ip) is missing".into());
    }
    None
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!(
            "volt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
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
        let ns = NetNs {
            name,
            children: Vec::new(),
        };
        ns.ok("ip link set lo up");
        ns
    }

    fn cmd(&self, script: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .args(["sh", "-c", script]);
        c
    }

    pub fn sh(&self, script: &str) -> Output {
        self.cmd(script)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

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

    /// Start `program args` inside the namespace with extra env; it is killed on drop.
    pub fn spawn(
        &mut self,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        out: std::fs::File,
    ) -> u32 {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
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

    /// Move the calling thread into the namespace (for sockets made by the test itself).
    pub fn enter_thread(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: setns on this thread only; the fd is valid for the call.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// A bridge with an address, up (the "host side" of a Volt network).
    pub fn bridge(&self, name: &str, cidr: &str, mtu: u32) {
        self.ok(&format!("ip link add {name} type bridge && ip link set {name} mtu {mtu} && ip addr add {cidr} dev {name} && ip link set {name} up"));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.children {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
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
