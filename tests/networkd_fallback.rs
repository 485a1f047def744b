//! `volt link up` against a real systemd 252 + networkd (nspawn): networkd creates the TAP
//! after a D-Bus `Reload` and Volt waits for it; with networkd stopped, Volt creates the
//! bridge and a persistent TAP owned by `volt` itself, and says so in its log (the time it takes
//! is reported, bounded only against a hang).

mod common;

use std::time::{Duration, Instant};

use common::nspawn::Host;

const WEB: &str = "kernel = \"/var/lib/volt/kernels/vmlinux\"\n[[network]]\nid = \"eth0\"\nbridge = \"volt0\"\nipv4 = \"10.42.0.10/24\"\n";

#[test]
fn networkd_over_dbus_then_direct_fallback_when_networkd_is_stopped() {
    let Some(c) = Host::with_volt("nwd", false) else {
        return;
    };
    c.write("/etc/volt/vms/web.toml", WEB);
    c.ok("systemctl daemon-reload");
    let tap = volt::config::tap_name(&volt::config::vm_uuid("web"), 0);
    let unit = format!("volt-tap@{tap}.service");

    // networkd's way: runtime files, Reload over D-Bus, bounded wait for configured + master.
    // The owner has StopWhenUnneeded=: start it through a holder that needs it, as a VM does.
    c.ok(&format!(
        "systemd-run --unit=holder -p BindsTo={unit} -p After={unit} sleep infinity"
    ));
    c.wait_ok(
        &format!("systemctl is-active {unit}"),
        Duration::from_secs(10),
    );
    let log = c.wait_ok(
        &format!("journalctl --no-pager -o cat -u {unit} | grep -F '(networkd)'"),
        Duration::from_secs(10),
    );
    assert!(log.contains(&format!("{tap} (ifindex")), "{log}");
    let all = c.ok(&format!("journalctl --no-pager -o cat -u {unit}"));
    assert!(!all.contains("falling back"), "{all}");
    let status = c.ok(&format!("networkctl status --no-pager {tap}"));
    assert!(status.contains("Master: volt0"), "{status}");
    // The altname <vm>-<nic> is there: `ip link show web-eth0` finds the TAP.
    let shown = c.ok("ip -j link show web-eth0");
    assert!(shown.contains(&format!("\"ifname\":\"{tap}\"")), "{shown}");
    c.ok("systemctl stop holder.service");
    c.wait_ok(
        &format!("test \"$(systemctl show -p ActiveState --value {unit})\" = inactive"),
        Duration::from_secs(10),
    );
    c.ok(&format!("! test -e /sys/class/net/{tap}"));

    // networkd stopped (and its bridge gone): Volt does it all itself, within the bound.
    c.ok("systemctl stop systemd-networkd.socket systemd-networkd.service");
    c.ok("ip link del volt0");
    let start = Instant::now();
    c.ok(&format!(
        "systemd-run --wait --quiet --unit=volt-fallback-up /usr/bin/volt link up {tap}"
    ));
    let took = start.elapsed();
    // Not a performance claim: a hung fallback fails, a slow machine does not.
    common::report::figure("volt link up without networkd", format!("{took:?}"));
    assert!(took < Duration::from_secs(60), "fallback took {took:?}");
    let log = c.wait_ok(
        "journalctl --no-pager -o cat -u volt-fallback-up | grep -F 'created directly'",
        Duration::from_secs(10),
    );
    assert!(log.contains("persistent, owned by volt"), "{log}");
    let all = c.ok("journalctl --no-pager -o cat -u volt-fallback-up");
    assert!(
        all.contains("systemd-networkd is not running")
            && all.contains("falling back to creating the TAP directly"),
        "{all}"
    );
    assert_eq!(all.matches("falling back").count(), 1, "said once: {all}");
    assert!(all.contains("created bridge volt0"), "{all}");
    c.ok(&format!(
        "test \"$(cat /sys/class/net/{tap}/owner)\" = \"$(id -u volt)\""
    ));
    c.ok(&format!(
        "test \"$(basename $(readlink /sys/class/net/{tap}/master))\" = volt0"
    ));
    let flags = c.ok(&format!("cat /sys/class/net/{tap}/tun_flags"));
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("flags");
    assert_eq!(
        flags & 0x5002,
        0x5002,
        "IFF_TAP|IFF_NO_PI|IFF_VNET_HDR: {flags:#x}"
    );
    let addr = c.ok("ip -br addr show volt0");
    assert!(addr.contains("10.42.0.1/24"), "{addr}");
    assert_eq!(
        c.ok("systemctl is-active systemd-networkd.service || true")
            .trim(),
        "inactive",
        "Volt must not bus-activate networkd"
    );

    // Down without networkd: the TAP goes.
    c.ok(&format!(
        "systemd-run --wait --quiet --unit=volt-fallback-down /usr/bin/volt link down {tap}"
    ));
    c.ok(&format!("! test -e /sys/class/net/{tap}"));
}
