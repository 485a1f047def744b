//! VMs and containers in systemd-machined under a real systemd 252 (nspawn): registered while
//! they run (class vm / container, their unit, the leader), again after `kill -9` and the
//! restart, forgotten when they stop; `machinectl poweroff|terminate` stop them through their
//! units; without machined they run unregistered and say so.

mod common;

use std::time::Duration;

use common::nspawn::{Host, Nspawn};

const WEB: &str = "memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\nipv4 = \"10.42.0.10\"\n";

/// The `machinectl list` row of `name`, if any.
fn row(c: &Nspawn, name: &str) -> Option<String> {
    c.ok("machinectl list --no-pager --no-legend --full")
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_owned)
}

fn main_pid(c: &Nspawn, unit: &str) -> String {
    c.ok(&format!("systemctl show -p MainPID --value {unit}"))
        .trim()
        .to_string()
}

#[test]
fn vms_and_containers_are_registered_while_they_run() {
    let Some(c) = Host::with_volt("mach", true) else {
        return;
    };
    c.ok("systemctl start systemd-machined");
    c.busybox_rootfs("/var/lib/volt/containers/db");
    c.write("/etc/volt/vms/web.toml", WEB);
    c.write(
        "/etc/volt/containers/db.toml",
        "directory = \"/var/lib/volt/containers/db\"\ncommand = [\"/bin/sh\", \"-c\", \"exec sleep 100000\"]\n[[network]]\nipv4 = \"10.42.0.150\"\n",
    );
    c.ok("systemctl daemon-reload");
    c.ok("systemctl start volt-vm@web.service volt-container@db.service");

    // Both listed: the VM as class vm, the container as a container with its address.
    let web = c.wait_ok(
        "machinectl list --no-pager --no-legend | grep -w web",
        Duration::from_secs(10),
    );
    assert!(web.split_whitespace().nth(1) == Some("vm"), "{web}");
    let db = c.wait_ok(
        "machinectl list --no-pager --no-legend --full | grep -w db | grep -F 10.42.0.150",
        Duration::from_secs(10),
    );
    assert!(db.split_whitespace().nth(1) == Some("container"), "{db}");
    // Its unit and leader are the VM's.
    let show = c.ok("machinectl show web -p Unit -p Leader -p Class -p Service");
    assert!(show.contains("Unit=volt-vm@web.service"), "{show}");
    assert!(
        show.contains("Class=vm") && show.contains("Service=volt"),
        "{show}"
    );
    let pid = main_pid(&c, "volt-vm@web.service");
    assert!(
        show.contains(&format!("Leader={pid}")),
        "{show} (main PID {pid})"
    );
    let status = c.ok("machinectl status web --no-pager");
    assert!(status.contains("volt-vm@web.service"), "{status}");

    // kill -9: the unit restarts and the VM is registered again with its new leader.
    c.ok(&format!("kill -9 {pid}"));
    c.wait_ok(
        &format!("test \"$(systemctl show -p MainPID --value volt-vm@web.service)\" != {pid} && systemctl is-active volt-vm@web.service"),
        Duration::from_secs(30),
    );
    let new_pid = main_pid(&c, "volt-vm@web.service");
    c.wait_ok(
        &format!("machinectl show web -p Leader | grep -qx Leader={new_pid}"),
        Duration::from_secs(10),
    );
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));

    // machinectl poweroff: the guest powers off through the VMM, the unit stops cleanly and
    // machined forgets the VM.
    c.ok("machinectl poweroff web");
    c.wait_ok(
        "test \"$(systemctl show -p ActiveState --value volt-vm@web.service)\" = inactive",
        Duration::from_secs(30),
    );
    let result = c.ok("systemctl show -p Result --value volt-vm@web.service");
    assert_eq!(result.trim(), "success");
    c.wait_ok("! machinectl show web", Duration::from_secs(10));
    assert!(row(&c, "web").is_none());

    // The container after kill -9 of nspawn: restarted and registered again.
    let ct_pid = main_pid(&c, "volt-container@db.service");
    c.ok(&format!("kill -9 {ct_pid}"));
    c.wait_ok(
        &format!("P=$(systemctl show -p MainPID --value volt-container@db.service); test \"$P\" != 0 && test \"$P\" != {ct_pid} && systemctl is-active volt-container@db.service"),
        Duration::from_secs(30),
    );
    c.wait_ok(
        "machinectl show db -p Unit | grep -qx Unit=volt-container@db.service",
        Duration::from_secs(10),
    );

    // machinectl terminate stops the container's unit.
    c.ok("machinectl terminate db");
    c.wait_ok(
        "test \"$(systemctl show -p ActiveState --value volt-container@db.service)\" != active",
        Duration::from_secs(30),
    );
    c.wait_ok("! machinectl show db", Duration::from_secs(10));
}

#[test]
fn without_machined_workloads_run_unregistered_and_say_so() {
    let Some(c) = Host::with_volt("nomach", true) else {
        return;
    };
    c.ok("systemctl mask --now systemd-machined.service");
    c.write("/etc/volt/vms/web.toml", WEB);
    c.ok("systemctl daemon-reload");
    c.ok("systemctl start volt-vm@web.service");
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    let log = c.ok("journalctl -u volt-vm@web.service --no-pager -o cat");
    assert_eq!(
        log.matches("systemd-machined is not available: web runs without a registration")
            .count(),
        1,
        "{log}"
    );
}
