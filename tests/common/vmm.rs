//! A `volt-vmm` process running the test guest, for integration tests: stdout lines
//! collected on a thread, waits bounded (a hung VMM fails the test, it never hangs it),
//! the process killed (by PID, it is our child) when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub struct Vmm {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

/// The guest, or None with the SKIP reason printed (no /dev/kvm).
pub fn guest() -> Option<PathBuf> {
    if super::skip(None, true) {
        return None;
    }
    Some(super::guest::elf())
}

impl Vmm {
    /// `volt-vmm --kernel GUEST --run-as root ARGS...` (seccomp on, as in production).
    pub fn start(vmm: &str, guest: &Path, args: &[&str]) -> Vmm {
        let mut child = Command::new(vmm)
            .arg("--kernel")
            .arg(guest)
            .args(["--run-as", "root"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn volt-vmm");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Vmm {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to `bound`) for a stdout line containing `part`; returns it.
    pub fn wait_line(&mut self, part: &str, bound: Duration) -> String {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(part)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => {
                    let err = self.kill_and_stderr();
                    panic!(
                        "no stdout line containing {part:?} within {bound:?}; stdout {:#?}\nstderr {err}",
                        self.seen
                    );
                }
            }
        }
    }

    /// Lines so far (non-blocking).
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// A field of /proc/PID/status in kB (e.g. "RssAnon").
    pub fn status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read status");
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill_and_stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// Waits (bounded) for the process to end; returns its status and stderr.
    pub fn wait(mut self, bound: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                self.drain();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (s, err);
            }
            if Instant::now() > deadline {
                let err = self.kill_and_stderr();
                panic!("volt-vmm did not exit within {bound:?}; stderr {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (the guest powers off on Ctrl-Alt-Del).
    pub fn term(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
