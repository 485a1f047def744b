//! The fault matrix items that need no network: /dev/kvm missing under systemd (clear error,
//! no restart loop), a full disk while writing leases (old file intact, clear error), a
//! missing kernel at `volt validate`, and 100 garbage VM files next to good ones.

mod common;

use std::path::Path;
use std::process::Command;

fn volt(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volt"));
    c.arg("--root").arg(root);
    c
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn no_dev_kvm_is_a_clear_error_without_a_restart_loop() {
    if common::skip(common::nspawn::skip_reason(), false) {
        return;
    }
    let stage = common::nspawn::stage_volt();
    let c = common::nspawn::Nspawn::boot_with("nokvm", stage.path(), false);
    c.install_volt();
    c.ok("! test -e /dev/kvm");
    c.write(
        "/etc/volt/vms/web.toml",
        "memory_mib = 32\nkernel = \"/opt/volt/guest/volt-test-guest\"\n",
    );
    c.ok("systemctl daemon-reload");
    let o = c.sh("systemctl start volt-vm@web.service");
    assert!(!o.status.success());
    let show =
        c.ok("systemctl show -p ExecMainStatus -p NRestarts -p ActiveState volt-vm@web.service");
    assert!(show.contains("ExecMainStatus=78"), "{show}");
    assert!(show.contains("NRestarts=0"), "{show}");
    assert!(show.contains("ActiveState=failed"), "{show}");
    let log = c.ok("journalctl -u volt-vm@web.service --no-pager -o cat");
    assert!(log.contains("opening /dev/kvm failed"), "{log}");
}

#[test]
fn disk_full_while_writing_leases_keeps_the_old_file() {
    if !is_root() || Command::new("unshare").arg("--version").output().is_err() {
        common::report::skip("needs root and unshare");
        return;
    }
    let root = tempfile::tempdir().expect("root");
    let ipam = root.path().join("var/lib/volt/ipam");
    std::fs::create_dir_all(&ipam).expect("mkdir");
    // The IPAM commands serve configured owners: VMs a and b.
    let vms = root.path().join("etc/volt/vms");
    std::fs::create_dir_all(&vms).expect("mkdir");
    for vm in ["a", "b"] {
        std::fs::write(
            vms.join(format!("{vm}.toml")),
            "kernel = \"/k\"\n[[network]]\n",
        )
        .expect("write");
    }
    // A private mount namespace with a 64 KiB tmpfs as the lease directory: one lease fits,
    // then the disk is filled and a second allocation must fail cleanly.
    let script = format!(
        "set -e; mount -t tmpfs -o size=64k tmpfs {ipam}
         {volt} --root {root} ipam allocate --owner vm/a/eth0
         cp {ipam}/volt0.json /tmp/volt-before-$$.json
         dd if=/dev/zero of={ipam}/filler bs=4k 2>/dev/null || true
         if {volt} --root {root} ipam allocate --owner vm/b/eth0 2>{ipam}/../err; then echo ALLOCATED; fi
         cat {ipam}/../err
         cmp {ipam}/volt0.json /tmp/volt-before-$$.json && echo INTACT
         {volt} --root {root} ipam list --output json
         rm -f /tmp/volt-before-$$.json",
        ipam = ipam.display(),
        root = root.path().display(),
        volt = env!("CARGO_BIN_EXE_volt")
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !out.contains("ALLOCATED"),
        "allocation on a full disk must fail: {out}"
    );
    assert!(out.contains("the previous file is intact"), "{out}");
    assert!(out.contains("No space left on device"), "{out}");
    assert!(out.contains("INTACT"), "the lease file changed: {out}");
    assert!(
        out.contains("\"owner\": \"vm/a/eth0\"") && !out.contains("\"owner\": \"vm/b/eth0\""),
        "{out}"
    );
}

#[test]
fn missing_kernel_is_reported_by_validate() {
    let root = tempfile::tempdir().expect("root");
    let vms = root.path().join("etc/volt/vms");
    std::fs::create_dir_all(&vms).expect("mkdir");
    std::fs::write(vms.join("web.toml"), "vcpus = 1\nkernel = \"/var/lib/volt/kernels/nope\"\ninitrd = \"/var/lib/volt/kernels/nope.img\"\n").expect("write");
    let o = volt(root.path())
        .arg("validate")
        .output()
        .expect("volt validate");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "/etc/volt/vms/web.toml:2:10: kernel: /var/lib/volt/kernels/nope does not exist"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "/etc/volt/vms/web.toml:3:10: initrd: /var/lib/volt/kernels/nope.img does not exist"
        ),
        "{err}"
    );
}

#[test]
fn a_hundred_garbage_files_do_not_stop_the_good_ones() {
    let root = tempfile::tempdir().expect("root");
    let vms = root.path().join("etc/volt/vms");
    std::fs::create_dir_all(&vms).expect("mkdir");
    // Deterministic garbage: random bytes, truncated TOML, wrong types, unknown keys.
    let mut seed: u64 = 0xdead_beef;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..100 {
        let body: Vec<u8> = match i % 4 {
            0 => (0..(next() % 400)).map(|_| (next() & 0xff) as u8).collect(),
            1 => b"kernel = \"/k\"\n[[network]\nipv4 = ".to_vec(),
            2 => format!("kernel = {}\nvcpus = \"many\"\n", next()).into_bytes(),
            _ => format!("kernel = \"/k\"\nbogus_{} = 1\n", next() % 1000).into_bytes(),
        };
        std::fs::write(vms.join(format!("junk{i:03}.toml")), body).expect("write");
    }
    for name in ["alpha", "beta", "gamma"] {
        std::fs::write(
            vms.join(format!("{name}.toml")),
            "kernel = \"/var/lib/volt/kernels/vmlinux\"\n[[network]]\n",
        )
        .expect("write");
    }
    let out = tempfile::tempdir().expect("out");
    let start = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_volt-generator"))
        .arg(out.path())
        .env("VOLT_ROOT", root.path())
        .env("VOLT_LOG_STDERR", "1")
        .output()
        .expect("generator");
    eprintln!(
        "generator with 100 garbage + 3 good files: {:?}",
        start.elapsed()
    );
    assert_eq!(o.status.code(), Some(1), "bad files make the run fail");
    let log = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("; skipping /etc/volt/vms/junk"))
            .map(|l| l.split("skipping ").nth(1))
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        100,
        "{log}"
    );
    for name in ["alpha", "beta", "gamma"] {
        assert!(
            out.path()
                .join(format!("volt-vm@{name}.service.d/50-volt-generator.conf"))
                .exists(),
            "{name} was not generated"
        );
    }
}
