//! The foundation under a real systemd 252 (nspawn): generator, unit graph, networkd TAP,
//! and a broken VM file reported in the journal while the good VMs load.

mod common;

use std::time::Duration;

use common::nspawn::Host;

const WEB: &str = "vcpus = 1\nmemory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\nid = \"eth0\"\nbridge = \"volt0\"\nipv4 = \"10.42.0.10/24\"\n";
const DB: &str =
    "kernel = \"/var/lib/volt/kernels/vmlinux\"\n[[network]]\nipv4 = \"10.42.0.11\"\nmtu = 9000\n";
const BROKEN: &str =
    "kernel = \"/var/lib/volt/kernels/vmlinux\"\n[[network]]\nipv4 = \"10.43.0.5/24\"\n";

fn tap_of(vm: &str) -> String {
    volt::config::tap_name(&volt::config::vm_uuid(vm), 0)
}

#[test]
fn generator_units_and_networkd_tap_under_real_systemd() {
    let Some(c) = Host::with_volt("found", false) else {
        return;
    };
    c.write("/etc/volt/vms/web.toml", WEB);
    c.write("/etc/volt/vms/db.toml", DB);
    c.write("/etc/volt/vms/broken.toml", BROKEN);
    c.ok("systemctl daemon-reload");

    let (web_tap, db_tap) = (tap_of("web"), tap_of("db"));
    let owner = format!("volt-tap@{web_tap}.service");
    let show =
        c.ok("systemctl show volt-vm@web.service -p BindsTo -p After -p SourcePath -p LoadState");
    assert!(show.contains(&format!("BindsTo={owner}\n")), "{show}");
    assert!(
        show.lines()
            .any(|l| l.starts_with("After=") && l.contains(&owner)),
        "{show}"
    );
    assert!(
        show.contains("SourcePath=/etc/volt/vms/web.toml\n"),
        "{show}"
    );
    assert!(show.contains("LoadState=loaded\n"), "{show}");
    let show_db = c.ok("systemctl show volt-vm@db.service -p BindsTo -p SourcePath");
    assert!(
        show_db.contains(&format!("BindsTo=volt-tap@{db_tap}.service")),
        "{show_db}"
    );

    // The broken file is named with file:line in the journal, from the generator.
    let log = c.wait_ok(
        "journalctl -b --no-pager -o cat -t volt-generator | grep -F broken.toml",
        Duration::from_secs(10),
    );
    assert!(
        log.contains("/etc/volt/vms/broken.toml:3:8: network[0].ipv4: 10.43.0.5 is outside volt0 (10.42.0.0/24); skipping /etc/volt/vms/broken.toml"),
        "{log}"
    );
    // ... and the broken VM got no generated drop-in.
    let broken = c.ok("systemctl show volt-vm@broken.service -p SourcePath -p DropInPaths");
    assert!(!broken.contains("broken.toml"), "{broken}");

    // The TAP owner unit (started through the VM's BindsTo=): networkd creates the TAP from
    // the runtime files and enslaves it.
    c.ok("systemctl start volt-vm@web.service");
    assert_eq!(
        c.ok(&format!("systemctl is-active {owner}")).trim(),
        "active"
    );
    let status = c.ok(&format!("networkctl status --no-pager {web_tap}"));
    assert!(status.contains("Master: volt0"), "{status}");
    assert!(
        status.contains(&format!(
            "Network File: /run/systemd/network/60-volt-{web_tap}.network"
        )),
        "{status}"
    );
    // db does not run: networkd's reload for web created no TAP for it, and it has no
    // networkd files for the next reload to act on.
    c.ok(&format!(
        "! test -e /sys/class/net/{db_tap} && ! ls /run/systemd/network/60-volt-{db_tap}.* 2>/dev/null"
    ));
    // A daemon-reload while web runs refreshes web's files and writes none for db.
    c.ok("systemctl daemon-reload && networkctl reload");
    c.ok(&format!(
        "test -e /run/systemd/network/60-volt-{web_tap}.netdev && ! ls /run/systemd/network/60-volt-{db_tap}.* 2>/dev/null"
    ));
    let kind = c.ok(&format!("cat /sys/class/net/{web_tap}/tun_flags"));
    // IFF_TAP (0x2) | IFF_NO_PI (0x1000) | IFF_VNET_HDR (0x4000)
    let flags = u32::from_str_radix(kind.trim().trim_start_matches("0x"), 16).expect("tun_flags");
    assert_eq!(flags & 0x5002, 0x5002, "tun_flags {kind}");

    // Stopping the VM stops the owner (StopWhenUnneeded=), which removes the TAP and its
    // runtime files.
    c.ok("systemctl stop volt-vm@web.service");
    c.wait_ok(
        &format!("test \"$(systemctl show -p ActiveState --value {owner})\" = inactive"),
        Duration::from_secs(10),
    );
    c.ok(&format!("! test -e /sys/class/net/{web_tap}"));
    c.ok(&format!("! test -e /run/systemd/network/60-volt-{web_tap}.netdev && ! test -e /run/systemd/network/60-volt-{web_tap}.network"));
    // ... and starting it again brings it back.
    c.ok("systemctl start volt-vm@web.service");
    let status = c.ok(&format!("networkctl status --no-pager {web_tap}"));
    assert!(status.contains("Master: volt0"), "{status}");
}
