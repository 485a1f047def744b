//! Real etcd members (Debian's etcd-server) for tests: on loopback ports of this process's
//! choosing, data in a temp dir, each its own child process; stopped (SIGTERM, then SIGKILL)
//! by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why this machine cannot run etcd tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    let ok = |b: &str| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("etcd") {
        return Some("etcd is missing (scripts/setup installs etcd-server)".into());
    }
    None
}

/// A free loopback TCP port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Member {
    pub name: String,
    pub client: String,
    pub peer: String,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.name))).expect("log");
        let child = Command::new("etcd")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    /// Stop this member (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on its data.
    pub fn start(&mut self) {
        if self.child.is_none() {
            let mut args = self.args.clone();
            for a in args.iter_mut() {
                if a == "--initial-cluster-state=new" {
                    *a = "--initial-cluster-state=existing".into();
                }
            }
            self.args = args;
            self.spawn();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster of `n` members on loopback, `tls` = (ca, cert, key) for client connections.
pub struct Etcd {
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start(n: usize, tls: Option<(&Path, &Path, &Path)>) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let token = format!("volt-test-{}", std::process::id());
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let client = format!("{scheme}://127.0.0.1:{c}");
            let peer = format!("http://127.0.0.1:{p}");
            let mut args = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                format!("--initial-cluster-token={token}"),
                "--initial-cluster-state=new".into(),
                "--log-level=warn".into(),
            ];
            if let Some((ca, cert, key)) = tls {
                args.push("--client-cert-auth".into());
                args.push(format!("--trusted-ca-file={}", ca.display()));
                args.push(format!("--cert-file={}", cert.display()));
                args.push(format!("--key-file={}", key.display()));
            }
            let mut m = Member {
                name: format!("m{i}"),
                client,
                peer,
                dir: dir.path().to_path_buf(),
                args,
                child: None,
            };
            m.spawn();
            members.push(m);
        }
        Etcd { members, dir }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// The members' logs, for a failure message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- {}:\n{}",
                    m.name,
                    std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
