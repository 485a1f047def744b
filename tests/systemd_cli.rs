//! The lifecycle verbs under a real systemd 252 (nspawn): `volt vm|container
//! start|stop|restart|status|logs` through systemd's D-Bus API and the journal, with
//! systemctl's exit statuses; `list` with STATE and ADDRESS; the same JSON in `list` and
//! `status`; volt-cluster.service on a broken cluster file.

mod common;

use std::time::Duration;

use common::nspawn::{Host, Nspawn};

fn code(c: &Nspawn, cmd: &str) -> i32 {
    c.sh(cmd).status.code().unwrap_or(-1)
}

#[test]
fn vm_and_container_lifecycle_verbs_state_and_addresses() {
    let Some(c) = Host::with_volt("cli", true) else {
        return;
    };
    c.write(
        "/etc/volt/vms/web.toml",
        "memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\nipv4 = \"10.42.0.10\"\n",
    );
    // A VM without a static address: its lease shows in the ADDRESS column once it runs.
    c.write(
        "/etc/volt/vms/dyn.toml",
        "memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\n",
    );
    c.ok("systemctl daemon-reload");

    // Unknown names: systemctl's statuses (4 for status, 5 for start) and the file named.
    assert_eq!(code(&c, "volt vm status nope"), 4);
    assert_eq!(code(&c, "volt vm start nope"), 5);
    let err = c.sh("volt vm start nope");
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(
        err.contains("no VM nope: /etc/volt/vms/nope.toml does not exist"),
        "{err}"
    );

    // Not running yet: status exits 3.
    assert_eq!(code(&c, "volt vm status web"), 3);
    c.ok("volt vm start web");
    c.ok("volt vm start dyn");
    assert_eq!(
        c.ok("systemctl is-active volt-vm@web.service").trim(),
        "active"
    );
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    assert_eq!(code(&c, "volt vm status web"), 0);
    let status = c.ok("volt vm status web");
    assert!(status.contains("active (running)"), "{status}");
    assert!(
        status.contains("10.42.0.10/24 (reserved)") || status.contains("10.42.0.10/24 (static)"),
        "{status}"
    );

    let list = c.ok("volt vm list");
    let web = list
        .lines()
        .find(|l| l.starts_with("web "))
        .expect("web row");
    assert!(
        web.contains("active (running)") && web.contains("10.42.0.10/24"),
        "{list}"
    );
    let dyn_row = list
        .lines()
        .find(|l| l.starts_with("dyn "))
        .expect("dyn row");
    assert!(dyn_row.contains("10.42.0.2/24"), "the lease: {list}");
    assert!(
        list.lines().all(|l| l == l.trim_end()),
        "trailing spaces: {list:?}"
    );
    let no_legend = c.ok("volt vm list --no-legend");
    assert!(!no_legend.contains("NAME"), "{no_legend}");

    // The same JSON object in list and status.
    let all: serde_json::Value = serde_json::from_str(&c.ok("volt vm list -o json")).expect("json");
    let one: serde_json::Value =
        serde_json::from_str(&c.ok("volt vm status web --json=short")).expect("json");
    let from_list = all
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "web"))
        .expect("web in list");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(from_list), keys(&one));
    assert_eq!(one["state"]["active"], "active");
    assert_eq!(one["links"][0]["address"], "10.42.0.10/24");

    // logs: the guest's console is in the unit's journal.
    let logs = c.ok("volt vm logs web -- --no-pager -o cat");
    assert!(logs.contains("volt-test-guest: ready"), "{logs}");

    // restart keeps the TAP (same ifindex); stop ends it, status exits 3.
    let tap = volt::config::tap_name(&volt::config::vm_uuid("web"), 0);
    let index = c.ok(&format!("cat /sys/class/net/{tap}/ifindex"));
    c.ok("volt vm restart web");
    assert_eq!(c.ok(&format!("cat /sys/class/net/{tap}/ifindex")), index);
    c.ok("volt vm stop web");
    assert_eq!(
        c.ok("systemctl show -p ActiveState --value volt-vm@web.service")
            .trim(),
        "inactive"
    );
    assert_eq!(code(&c, "volt vm status web"), 3);
    // Containers: the same verbs.
    c.busybox_rootfs("/var/lib/volt/containers/db");
    c.write(
        "/etc/volt/containers/db.toml",
        "directory = \"/var/lib/volt/containers/db\"\ncommand = [\"/bin/sh\", \"-c\", \"exec sleep 100000\"]\n[[network]]\nipv4 = \"10.42.0.150\"\n",
    );
    c.ok("systemctl daemon-reload");
    assert_eq!(code(&c, "volt container status db"), 3);
    c.ok("volt container start db");
    assert_eq!(code(&c, "volt container status db"), 0);
    let list = c.ok("volt container list");
    let db = list.lines().find(|l| l.starts_with("db ")).expect("db row");
    assert!(
        db.contains("active (running)") && db.contains("10.42.0.150/24"),
        "{list}"
    );
    c.ok("volt container stop db");
    assert_eq!(code(&c, "volt container status db"), 3);

    // A start that fails says so with the unit's result (the kernel is no kernel).
    c.write("/var/lib/volt/not-a-kernel", "text\n");
    c.write(
        "/etc/volt/vms/broken.toml",
        "memory_mib = 64\nkernel = \"/var/lib/volt/not-a-kernel\"\n",
    );
    c.ok("systemctl daemon-reload");
    let bad = c.sh("volt vm start broken");
    assert_eq!(bad.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains("volt-vm@broken.service: the start job ended with result"),
        "{msg}"
    );
    // A kernel that is gone: named before systemd is asked, and the start fails in the unit.
    c.write(
        "/etc/volt/vms/broken.toml",
        "memory_mib = 64\nkernel = \"/nonexistent/vmlinux\"\n",
    );
    let bad = c.sh("volt vm start broken");
    assert_eq!(bad.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains("kernel: /nonexistent/vmlinux does not exist")
            && msg.contains("VM broken may not start")
            && msg.contains("the start job ended with result"),
        "{msg}"
    );
}

/// volt-cluster.service under systemd: skipped on a host with no cluster.toml; a symlink to
/// nothing or a file with errors fails the start, and the journal says why (file, line,
/// field), instead of a skip or a bare "invalid".
#[test]
fn volt_cluster_fails_and_says_why_on_a_broken_cluster_file() {
    let Some(c) = Host::with_volt("vcl", false) else {
        return;
    };
    // The unit waits for network-online.target, which here has no link to wait for.
    c.ok("systemctl mask --runtime systemd-networkd-wait-online.service");
    c.ok("systemctl start volt-cluster.service");
    c.ok("test \"$(systemctl show -p ConditionResult --value volt-cluster.service)\" = no");
    c.ok("ln -s /nonexistent/cluster.toml /etc/volt/cluster.toml");
    assert_ne!(code(&c, "systemctl start volt-cluster.service"), 0);
    let log = c.ok("journalctl --no-pager -o cat -u volt-cluster.service");
    assert!(
        log.contains("a symlink to /nonexistent/cluster.toml, which does not exist"),
        "{log}"
    );
    c.ok("rm /etc/volt/cluster.toml && systemctl reset-failed volt-cluster.service");
    c.write(
        "/etc/volt/cluster.toml",
        "host = \"a\"\nunderlya = \"192.0.2.1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:9\"]\n",
    );
    assert_ne!(code(&c, "systemctl start volt-cluster.service"), 0);
    let log = c.ok("journalctl --no-pager -o cat -u volt-cluster.service");
    assert!(log.contains("/etc/volt/cluster.toml:2:1"), "{log}");
}
