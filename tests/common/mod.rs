//! Helpers shared by integration tests.
#![allow(dead_code)]

pub mod backend;
pub mod conformance;
pub mod console;
pub mod etcd;
pub mod frames;
pub mod guest;
pub mod linux;
pub mod loopdev;
pub mod netns;
pub mod nspawn;
pub mod ping;
pub mod report;
pub mod vmm;
pub mod vsock;

use std::path::{Path, PathBuf};

/// A file, a symlink (its target) or a directory in a compared tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File(String),
    Link(String),
    Dir,
}

/// Every entry under `dir`, relative paths sorted; empty if `dir` does not exist.
pub fn read_tree(dir: &Path) -> Vec<(String, Entry)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Entry)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            let rel = p
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
                .into_owned();
            let ft = e.file_type().expect("file type");
            if ft.is_symlink() {
                out.push((
                    rel,
                    Entry::Link(
                        std::fs::read_link(&p)
                            .expect("readlink")
                            .to_string_lossy()
                            .into_owned(),
                    ),
                ));
            } else if ft.is_dir() {
                walk(base, &p, out);
            } else {
                out.push((rel, Entry::File(std::fs::read_to_string(&p).expect("read"))));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn write_tree(dir: &Path, tree: &[(String, Entry)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (rel, e) in tree {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        match e {
            Entry::File(t) => std::fs::write(&p, t).expect("write"),
            Entry::Link(t) => std::os::unix::fs::symlink(t, &p).expect("symlink"),
            Entry::Dir => std::fs::create_dir_all(&p).expect("mkdir"),
        }
    }
}

pub fn show_tree(tree: &[(String, Entry)]) -> String {
    tree.iter()
        .map(|(p, e)| match e {
            Entry::File(t) => format!("== {p}\n{t}"),
            Entry::Link(t) => format!("== {p} -> {t}"),
            Entry::Dir => format!("== {p}/"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Copy a directory tree (files, directories and symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    let tree = read_tree(from);
    write_tree(to, &tree);
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The template units of `units/` with the installed binary paths replaced by the binaries
/// cargo built, so `systemd-analyze verify` finds executables.
pub fn templates_with_built_binaries() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let vmm = option_env!("CARGO_BIN_EXE_volt-vmm").unwrap_or(env!("CARGO_BIN_EXE_volt"));
    for e in std::fs::read_dir(repo().join("units"))
        .expect("units")
        .filter_map(|e| e.ok())
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(e.path())
            .expect("unit")
            .replace("/usr/libexec/volt/volt-vmm", vmm)
            .replace("/usr/bin/volt", env!("CARGO_BIN_EXE_volt"));
        std::fs::write(dir.path().join(name), text).expect("write unit");
    }
    dir
}

/// Skip the running test when `reason` (from a harness check: root, nspawn, ip) is set, or
/// when it boots a VM (`needs_kvm`) and /dev/kvm is missing: records the skip (see
/// [`report::skip`]) and returns true; the caller returns at once.
pub fn skip(reason: Option<String>, needs_kvm: bool) -> bool {
    let why = reason.or_else(|| {
        (needs_kvm && !Path::new("/dev/kvm").exists()).then(|| "/dev/kvm is missing".to_string())
    });
    if let Some(w) = &why {
        report::skip(w);
    }
    why.is_some()
}

/// Skip the running test when `tool arg` cannot run: records "`tool` is missing
/// (scripts/setup installs `package`)" (see [`report::skip`]) and returns true; the caller
/// returns at once.
pub fn skip_without_tool(tool: &str, arg: &str, package: &str) -> bool {
    if std::process::Command::new(tool).arg(arg).output().is_ok() {
        return false;
    }
    report::skip(format!(
        "{tool} is missing (scripts/setup installs {package})"
    ));
    true
}

/// Connects to the Unix socket `sock`, writes `hello` and reads the one-line answer (without
/// its newline; empty when the peer closed without one) byte by byte, so that nothing after
/// it is consumed; the stream has `timeout` as its read timeout.
pub fn handshake(
    sock: &Path,
    hello: &str,
    timeout: std::time::Duration,
) -> (std::os::unix::net::UnixStream, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.write_all(hello.as_bytes())
        .unwrap_or_else(|e| panic!("write {hello:?}: {e}"));
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

/// Asserts that `text` (what `what` printed) contains every one of `wants`, naming the first
/// one missing.
#[track_caller]
pub fn assert_contains_all(what: &str, text: &str, wants: &[&str]) {
    for want in wants {
        assert!(text.contains(want), "{what}: no {want:?} in:\n{text}");
    }
}
