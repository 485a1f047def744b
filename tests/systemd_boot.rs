//! `autostart = true` on a real boot: systemd 252 (nspawn) boots with Volt installed under
//! /usr and the admin's /etc/volt already in place, as a host does after a reboot. Nothing is
//! started by hand: the generator runs at boot, `machines.target` pulls the autostart
//! workloads in, their link owners pull systemd-networkd in (the package enables nothing),
//! and the VM answers ping on volt0. A workload without `autostart` stays down.

mod common;

use std::time::Duration;

use common::nspawn::{self, Nspawn};

#[test]
fn autostart_workloads_come_up_on_a_real_boot_and_the_others_do_not() {
    if common::skip(nspawn::skip_reason(), true) {
        return;
    }
    let stage = nspawn::stage_volt();
    // The admin's /etc/volt, there before the boot.
    let etc = tempfile::tempdir().expect("tempdir");
    let put = |rel: &str, text: &str| {
        let p = etc.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    let guest = "memory_mib = 64\nkernel = \"/usr/lib/volt/guests/volt-test-guest\"\n";
    put(
        "vms/web.toml",
        &format!("{guest}autostart = true\n[[network]]\nipv4 = \"10.42.0.10\"\n"),
    );
    put(
        "vms/spare.toml",
        &format!("{guest}[[network]]\nipv4 = \"10.42.0.11\"\n"),
    );
    put(
        "containers/app.toml",
        "image = \"/\"\nvolatile = \"yes\"\nautostart = true\ncommand = [\"/bin/sleep\", \"100000\"]\n\
         [[network]]\nipv4 = \"10.42.0.150\"\n",
    );
    // The harness's one change to the host it boots (see Nspawn::install_volt): networkd may
    // open /dev/net/tun in a container.
    let tun = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(
        tun.path(),
        "[Service]\nExecStartPre=+/bin/chmod 0666 /dev/net/tun\n",
    )
    .expect("write");
    let c = Nspawn::boot_with_args(
        "boot",
        stage.path(),
        true,
        &[
            &format!("--bind={}:/etc/volt", etc.path().display()),
            &format!(
                "--bind-ro={}:/etc/systemd/system/systemd-networkd.service.d/50-tun.conf",
                tun.path().display()
            ),
        ],
    );
    // (is-active with two units succeeds when either is active.)
    c.wait_ok(
        "systemctl -q is-active volt-vm@web.service && systemctl -q is-active volt-container@app.service",
        Duration::from_secs(90),
    );
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(30));
    c.wait_ok("ping -c 1 -W 1 10.42.0.150", Duration::from_secs(30));
    let log = c.ok("journalctl -b -u volt-vm@web.service --no-pager -o cat");
    assert!(log.contains("volt-test-guest: ready"), "{log}");
    // Pulled in by the boot, not by a hand: the job came from machines.target.
    let wanted = c.ok("systemctl show -p WantedBy --value volt-vm@web.service");
    assert!(wanted.contains("machines.target"), "{wanted}");
    c.ok("systemctl -q is-active systemd-networkd.service");
    // The VM's TAP and the container's veth are on volt0, which networkd made at boot.
    let ports = c.ok("ip -o link show master volt0");
    assert_eq!(ports.lines().count(), 2, "{ports}");
    // The workload without autostart is known to systemd but was not started.
    assert_eq!(
        c.sh("systemctl is-active volt-vm@spare.service")
            .status
            .code(),
        Some(3),
        "spare started at boot: {}",
        c.console()
    );
    c.ok("systemctl cat volt-vm@spare.service >/dev/null");
    // No Volt unit failed on the way.
    let failed = c.ok("systemctl list-units --failed --plain --no-legend 'volt*'");
    assert!(failed.trim().is_empty(), "{failed}");
}
