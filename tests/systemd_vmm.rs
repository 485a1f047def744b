//! volt-vmm under a real systemd 252 (nspawn): `systemctl start volt-vm@web` boots the test
//! guest, the journal carries the guest console and VMM lines with VOLT_VM=web, STATUS= is
//! informative, and `systemctl stop` powers the guest off cleanly (Ctrl-Alt-Del).

mod common;

use std::time::{Duration, Instant};

use common::nspawn::Host;

const WEB: &str = "vcpus = 1\nmemory_mib = 32\nkernel = \"/opt/volt/guest/volt-test-guest\"\ncmdline = \"hello=systemd\"\n";

#[test]
fn volt_vm_service_boots_logs_and_stops_under_real_systemd() {
    let Some(c) = Host::with_volt("vmm", true) else {
        return;
    };
    c.write("/etc/volt/vms/web.toml", WEB);
    c.ok("systemctl daemon-reload");
    c.ok("systemctl start volt-vm@web.service");
    assert_eq!(
        c.ok("systemctl is-active volt-vm@web.service").trim(),
        "active"
    );

    // The guest console is in the unit's journal, with the cmdline the guest received.
    c.wait_ok(
        "journalctl -u volt-vm@web.service --no-pager -o cat | grep -qxF 'volt-test-guest: ready'",
        Duration::from_secs(20),
    );
    let banner = c.ok(
        "journalctl -u volt-vm@web.service --no-pager -o cat | grep -F 'volt-test-guest: booted'",
    );
    assert!(banner.contains("hello=systemd"), "{banner}");
    // VMM lines carry the VM's fields.
    let fields = c.ok("journalctl --no-pager -o cat VOLT_VM=web");
    assert!(
        !fields.trim().is_empty(),
        "no journal entry with VOLT_VM=web"
    );
    let uuid = volt::config::vm_uuid("web").to_string();
    let by_uuid = c.ok(&format!("journalctl --no-pager -o cat VOLT_UUID={uuid}"));
    assert!(
        !by_uuid.trim().is_empty(),
        "no journal entry with VOLT_UUID={uuid}"
    );

    let status = c.ok("systemctl show -p StatusText --value volt-vm@web.service");
    assert!(
        status.contains("web") && status.contains("vCPU"),
        "StatusText: {status}"
    );

    // Stop: SIGTERM → Ctrl-Alt-Del → the guest powers off → clean exit, not a SIGKILL.
    let t = Instant::now();
    c.ok("systemctl stop volt-vm@web.service");
    let took = t.elapsed();
    let show = c.ok("systemctl show -p ActiveState -p Result -p ExecMainStatus -p ExecMainCode volt-vm@web.service");
    assert!(show.contains("ActiveState=inactive"), "{show}");
    assert!(show.contains("Result=success"), "{show}");
    assert!(show.contains("ExecMainStatus=0"), "{show}");
    let off = c.ok("journalctl -u volt-vm@web.service --no-pager -o cat");
    assert!(
        off.contains("volt-test-guest: ctrl-alt-del, powering off"),
        "{off}"
    );
    // Not a performance claim: a hung stop fails, a slow machine does not.
    common::report::figure("systemctl stop", format!("{took:?}"));
    assert!(
        took < Duration::from_secs(60),
        "systemctl stop took {took:?} (a clean stop must not hang)"
    );
}
