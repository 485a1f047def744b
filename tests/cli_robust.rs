//! The command lines end cleanly on what users and scripts do to them: a reader that closes
//! the pipe early (`volt vm list | head -1`) ends the command quietly, without a panic, and
//! numbers `volt-vmm` cannot take are a usage error (exit 2), not a crash.

use std::process::{Command, Stdio};

const VOLT: &str = env!("CARGO_BIN_EXE_volt");
const VMM: &str = env!("CARGO_BIN_EXE_volt-vmm");

/// A root with VMs, a container and a network, plus a broken VM file for `validate`.
fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("root");
    let vms = dir.path().join("etc/volt/vms");
    std::fs::create_dir_all(&vms).expect("mkdir");
    for i in 0..20 {
        std::fs::write(
            vms.join(format!("vm{i}.toml")),
            "kernel = \"/k\"\n[[network]]\nbridge = \"volt0\"\n",
        )
        .expect("write");
    }
    std::fs::write(vms.join("broken.toml"), "vcpus = \"many\"\n").expect("write");
    let cts = dir.path().join("etc/volt/containers");
    std::fs::create_dir_all(&cts).expect("mkdir");
    std::fs::write(
        cts.join("db.toml"),
        "directory = \"/srv/db\"\nboot = true\n",
    )
    .expect("write");
    dir
}

#[test]
fn a_closed_pipe_ends_listings_quietly() {
    let r = root();
    for args in [
        &["vm", "list"][..],
        &["vm", "list", "-o", "json"],
        &["validate"],
        &["container", "list"],
        &["container", "list", "-o", "json"],
        &["net", "list"],
        &["ipam", "list"],
    ] {
        let mut child = Command::new(VOLT)
            .args(args)
            .env("VOLT_ROOT", r.path())
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn volt");
        // The reader goes away before the first line is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        let quiet = out.status.signal() == Some(libc::SIGPIPE)
            || (out.status.code() == Some(1) && args == ["validate"]);
        assert!(
            quiet && !err.contains("panicked") && !err.contains("Broken pipe"),
            "volt {}: {:?}\n{err}",
            args.join(" "),
            out.status
        );
    }
}

#[test]
fn bad_numbers_are_usage_errors() {
    for v in [
        "1e30",
        "1e30ms",
        "nan",
        "inf",
        "-1",
        "-0.5s",
        "99999999999999999999999",
        "",
        "1s1",
    ] {
        let o = Command::new(VMM)
            .args(["--kernel", "/nonexistent", "--shutdown-timeout", v])
            .output()
            .expect("run volt-vmm");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--shutdown-timeout {v:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    for (flag, v) in [
        ("--vcpus", "99999999999"),
        ("--vcpus", "-1"),
        ("--memory-mib", "1e30"),
        ("--memory-mib", "18446744073709551616"),
    ] {
        let o = Command::new(VMM)
            .args(["--kernel", "/nonexistent", flag, v])
            .output()
            .expect("run volt-vmm");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {v}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
