//! Least privilege under a real systemd 252 (nspawn): `systemd-analyze security` rates
//! volt-vm@.service at most 2.0, and the running VMM has switched to the `volt` user with no
//! capabilities and a seccomp filter (as /proc/<pid>/status shows).

mod common;

use std::time::Duration;

use common::nspawn::Host;

#[test]
fn unit_exposure_and_running_vmm_privileges() {
    let Some(c) = Host::with_volt("sec", true) else {
        return;
    };
    c.write("/etc/volt/vms/web.toml", "memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\nipv4 = \"10.42.0.10/24\"\n");
    c.ok("systemctl daemon-reload");

    let report = c.ok("systemd-analyze security --no-pager volt-vm@web.service");
    eprintln!("{report}");
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for volt-vm@web.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("an overall exposure level");
    assert!(score <= 2.0, "exposure {score} is above 2.0");

    c.ok("systemctl start volt-vm@web.service");
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    let pid = c.ok("systemctl show -p MainPID --value volt-vm@web.service");
    let status = c.ok(&format!(
        "grep -E '^(Uid|Gid|CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/{}/status",
        pid.trim()
    ));
    let uid = c.ok("id -u volt");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(field("Uid:").iter().all(|u| *u == uid.trim()), "{status}");
    assert_eq!(field("CapEff:"), vec!["0000000000000000"], "{status}");
    assert_eq!(field("CapPrm:"), vec!["0000000000000000"], "{status}");
    assert_eq!(field("NoNewPrivs:"), vec!["1"], "{status}");
    assert_eq!(field("Seccomp:"), vec!["2"], "{status}");
    let log = c.ok("journalctl -u volt-vm@web.service --no-pager -o cat");
    assert!(
        log.contains("running as volt") && log.contains("seccomp filter"),
        "{log}"
    );
    // Still a working VM under all that: ping, then a clean stop.
    common::ping::assert_all(&c.ok("ping -c 3 -i 0.2 10.42.0.10"), 3);
    c.ok("systemctl stop volt-vm@web.service");
    assert_eq!(
        c.ok("systemctl show -p Result --value volt-vm@web.service")
            .trim(),
        "success"
    );
}
