//! virtio-net under a real systemd 252 (nspawn): networkd creates the VM's TAP from the
//! generated files, the guest answers ping on volt0; `kill -9` of the VMM restarts it with
//! the same TAP (same ifindex) from the fd store; `systemctl stop` removes the TAP and its
//! runtime files; with networkd stopped the TAP is created directly. StatusText names the
//! data path (vhost-net, or userspace and why), checked against the container. A host-only
//! network's NAT and port map come with the VM's start.

mod common;

use std::time::Duration;

use common::nspawn::{Host, Nspawn};

const WEB: &str = "memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\nid = \"eth0\"\nbridge = \"volt0\"\nipv4 = \"10.42.0.10/24\"\n";

fn tap() -> String {
    volt::config::tap_name(&volt::config::vm_uuid("web"), 0)
}

fn main_pid(c: &Nspawn) -> u32 {
    c.ok("systemctl show -p MainPID --value volt-vm@web.service")
        .trim()
        .parse()
        .expect("MainPID")
}

#[test]
fn networkd_tap_ping_kill_restart_same_tap_and_stop_cleans_up() {
    let Some(c) = Host::with_volt("vnet", true) else {
        return;
    };
    c.write("/etc/volt/vms/web.toml", WEB);
    c.ok("systemctl daemon-reload");
    c.ok("systemctl start volt-vm@web.service");
    let tap = tap();
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    let status = c.ok(&format!("networkctl status --no-pager {tap}"));
    assert!(status.contains("Master: volt0"), "{status}");
    // Whichever data path the VMM reports in StatusText, checked against the container.
    let text = c.ok("systemctl show -p StatusText --value volt-vm@web.service");
    let vhost_opens = c.sh("exec 3<>/dev/vhost-net").status.success();
    let fds = c.ok(&format!("ls -l /proc/{}/fd", main_pid(&c)));
    common::backend::check(&text, vhost_opens, &fds);
    c.ok(&format!(
        "nft list chain bridge volt port-{tap} | grep -q 'ip saddr != 10.42.0.10'"
    ));
    let out = c.ok("ping -q -c 20 -i 0.05 10.42.0.10");
    common::ping::assert_all(&out, 20);

    // kill -9: systemd restarts the VMM, which takes the same TAP back from the fd store.
    let ifindex = c.ok(&format!("cat /sys/class/net/{tap}/ifindex"));
    let pid = main_pid(&c);
    c.ok(&format!("kill -9 {pid}"));
    c.wait_ok(&format!("test \"$(systemctl show -p MainPID --value volt-vm@web.service)\" != 0 && test \"$(systemctl show -p MainPID --value volt-vm@web.service)\" != {pid} && systemctl is-active volt-vm@web.service"), Duration::from_secs(20));
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    assert_eq!(
        c.ok(&format!("cat /sys/class/net/{tap}/ifindex")),
        ifindex,
        "same TAP after the restart"
    );
    let log = c.ok("journalctl -u volt-vm@web.service --no-pager -o cat");
    assert!(log.contains("took the TAP back from the fd store"), "{log}");
    let restarts = c.ok("systemctl show -p NRestarts --value volt-vm@web.service");
    assert_eq!(restarts.trim(), "1");

    // systemctl restart keeps the TAP too (the owner unit stays: StopWhenUnneeded=).
    c.ok("systemctl restart volt-vm@web.service");
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    assert_eq!(
        c.ok(&format!("cat /sys/class/net/{tap}/ifindex")),
        ifindex,
        "same TAP after systemctl restart"
    );

    // Stop: the TAP and its runtime networkd files are gone. `systemctl stop` returns
    // before the link owner (StopWhenUnneeded=) has run its ExecStopPost=, which removes
    // them: wait for the owner to be inactive, then look.
    c.ok("systemctl stop volt-vm@web.service");
    c.wait_ok(
        &format!(
            "test \"$(systemctl show -p ActiveState --value volt-tap@{tap}.service)\" = inactive"
        ),
        Duration::from_secs(10),
    );
    c.ok(&format!("! test -e /sys/class/net/{tap}"));
    c.ok(&format!(
        "! ls /run/systemd/network/60-volt-{tap}.* 2>/dev/null"
    ));
    c.ok(&format!(
        "! nft list chain bridge volt port-{tap} 2>/dev/null"
    ));
    let show = c.ok("systemctl show -p Result --value volt-vm@web.service");
    assert_eq!(show.trim(), "success");

    // Quick stop/start cycles by hand: systemd unloads the stopped VM unit, so its own
    // start limit (which stops crash loops) never counts them; the TAP's owner had a limit
    // of its own, and the sixth quick start failed with 'dependency' (a `systemctl
    // reset-failed volt-vm@web` did not clear it). An interval of an hour makes the limit
    // independent of how fast this machine is.
    c.write(
        "/etc/systemd/system.conf.d/50-start-limit.conf",
        "[Manager]\nDefaultStartLimitIntervalSec=1h\nDefaultStartLimitBurst=5\n",
    );
    c.ok("systemctl daemon-reexec && systemctl reset-failed");
    for _ in 0..7 {
        c.ok("systemctl start volt-vm@web.service && systemctl stop volt-vm@web.service");
    }
    c.ok("systemctl start volt-vm@web.service");
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    c.ok("systemctl stop volt-vm@web.service");
}

#[test]
fn without_networkd_the_tap_is_created_directly_and_said_so() {
    let Some(c) = Host::with_volt("vdir", true) else {
        return;
    };
    // networkd gone for good (masked so volt-tap@'s Wants= cannot bring it back).
    c.ok("systemctl mask --runtime --now systemd-networkd.socket systemd-networkd.service");
    c.write("/etc/volt/vms/web.toml", WEB);
    c.ok("systemctl daemon-reload");
    c.ok("systemctl start volt-vm@web.service");
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(30));
    let tap = tap();
    let log = c.ok(&format!(
        "journalctl -u volt-tap@{tap}.service --no-pager -o cat"
    ));
    assert!(
        log.contains("falling back to creating the TAP directly"),
        "{log}"
    );
    c.ok("systemctl stop volt-vm@web.service");
    c.wait_ok(
        &format!("! test -e /sys/class/net/{tap}"),
        Duration::from_secs(10),
    );
}

#[test]
fn tap_deleted_under_a_running_vm_stops_it_and_releases_its_lease() {
    let Some(c) = Host::with_volt("vdel", true) else {
        return;
    };
    // No ipv4: the VMM leases one from volt0's VM pool (10.42.0.2 is the first free).
    c.write(
        "/etc/volt/vms/dyn.toml",
        "memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\n",
    );
    c.ok("systemctl daemon-reload");
    c.ok("systemctl start volt-vm@dyn.service");
    c.wait_ok("ping -c 1 -W 1 10.42.0.2", Duration::from_secs(20));
    let leases = c.ok("/usr/bin/volt ipam list --output json");
    assert!(
        leases.contains("vm/dyn/eth0") && leases.contains("10.42.0.2"),
        "{leases}"
    );
    let tap = volt::config::tap_name(&volt::config::vm_uuid("dyn"), 0);
    let owner = format!("volt-tap@{tap}.service");

    c.ok(&format!("ip link delete {tap}"));
    c.wait_ok(
        "test \"$(systemctl show -p ActiveState --value volt-vm@dyn.service)\" != active",
        Duration::from_secs(10),
    );
    c.wait_ok(
        &format!("test \"$(systemctl show -p ActiveState --value {owner})\" = failed"),
        Duration::from_secs(10),
    );
    let log = c.ok(&format!("journalctl -u {owner} --no-pager -o cat"));
    assert!(
        log.contains(&format!(
            "{tap} was deleted under VM dyn (NIC eth0); stopping the VM"
        )),
        "{log}"
    );
    assert!(
        log.contains("released 10.42.0.2 on volt0 from vm/dyn/eth0"),
        "{log}"
    );
    let leases = c.ok("/usr/bin/volt ipam list --output json");
    assert!(!leases.contains("vm/dyn/eth0"), "{leases}");
    // The next start works: a new TAP, the lease again.
    c.ok("systemctl reset-failed");
    c.ok("systemctl start volt-vm@dyn.service");
    c.wait_ok("ping -c 1 -W 1 10.42.0.2", Duration::from_secs(20));
}

#[test]
fn direct_nic_rules_go_with_the_vm_and_an_owner_typo_deletes_nothing() {
    let Some(c) = Host::with_volt("vdrt", true) else {
        return;
    };
    c.write(
        "/etc/volt/vms/web.toml",
        &WEB.replace("id = \"eth0\"\n", "id = \"eth0\"\nmode = \"direct\"\n"),
    );
    c.ok("systemctl daemon-reload");
    let st = c.sh("systemctl start volt-vm@web.service");
    assert!(
        st.status.success(),
        "{}",
        c.ok("journalctl --no-pager -o cat -u 'volt-tap@*'")
    );
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    let tap = tap();
    let rules = c.ok(&format!("nft list chain bridge volt port-{tap}"));
    assert!(
        rules.contains("ip saddr != 10.42.0.10") && rules.contains("vlan id 0"),
        "{rules}"
    );
    c.ok("systemctl stop volt-vm@web.service");
    c.wait_ok(
        &format!("! test -e /sys/class/net/{tap}"),
        Duration::from_secs(10),
    );
    c.ok(&format!(
        "! nft list chain bridge volt port-{tap} 2>/dev/null"
    ));

    // A typo in an owner unit's instance: its ExecStopPost= must not delete the shared bridge.
    let before = c.ok("cat /sys/class/net/volt0/ifindex");
    c.ok("! systemctl start volt-tap@volt0.service");
    let log = c.ok("journalctl -u volt-tap@volt0.service --no-pager -o cat");
    assert!(log.contains("volt0 is not a link Volt owns"), "{log}");
    assert_eq!(c.ok("cat /sys/class/net/volt0/ifindex"), before);
}

/// A host-only network under real systemd: networkd makes its bridge, and starting a VM on it
/// brings the NAT and the VM's port map with no `volt net up`: a datagram from the WAN to the
/// uplink's port reaches the guest's UDP echo and the answer comes back.
#[test]
fn a_host_only_port_map_reaches_the_vm_with_no_net_up() {
    let Some(c) = Host::with_volt("vho", true) else {
        return;
    };
    // The uplink: a veth whose far end is in a namespace standing for the WAN.
    c.ok(
        "ip netns add wan && ip link add wan0 type veth peer name wan1 netns wan \
          && ip addr add 203.0.113.1/24 dev wan0 && ip link set wan0 up \
          && ip -n wan addr add 203.0.113.2/24 dev wan1 && ip -n wan link set wan1 up",
    );
    c.write(
        "/etc/volt/networks/lab.toml",
        "bridge = \"lab0\"\nsubnet = \"10.83.0.0/24\"\ntype = \"host-only\"\nuplink = \"wan0\"\n\
         [[port_map]]\nproto = \"udp\"\nhost_port = 7007\ntarget = \"web\"\ntarget_port = 7\n",
    );
    c.write(
        "/etc/volt/vms/web.toml",
        "memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\nbridge = \"lab0\"\n",
    );
    c.ok("systemctl daemon-reload");
    c.ok("systemctl start volt-vm@web.service");
    let leases = c.ok("/usr/bin/volt ipam list --network lab");
    let ip = leases
        .lines()
        .find(|l| l.contains("vm/web/eth0"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no lease for web: {leases}"))
        .to_string();
    let rules = c.ok("nft list table ip volt");
    assert!(rules.contains(&format!("dnat to {ip}:7")), "{rules}");
    let echo = c.wait_ok(
        "ip netns exec wan bash -c 'exec 3<>/dev/udp/203.0.113.1/7007; printf volt-echo >&3; timeout 2 head -c 9 <&3'",
        Duration::from_secs(30),
    );
    assert_eq!(
        echo, "volt-echo",
        "WAN -> port map -> the guest's echo and back"
    );
    c.ok("systemctl stop volt-vm@web.service");

    // The network's file goes: networkd keeps the bridge it made (it never deletes a link),
    // and `volt net down lab` removes it with the NAT.
    c.ok("rm /etc/volt/networks/lab.toml /etc/volt/vms/web.toml");
    // Before the generator has run, the bridge is still networkd's: the command says so.
    let early = c.sh("/usr/bin/volt net down lab");
    let said = String::from_utf8_lossy(&early.stderr);
    assert!(
        !early.status.success() && said.contains("run `systemctl daemon-reload`"),
        "{said}"
    );
    c.ok("systemctl daemon-reload");
    c.ok("test ! -e /run/systemd/network/10-lab0.netdev");
    // networkd made it: the generator's marker, not one of a bridge Volt created itself.
    c.ok("test -e /run/volt/bridges-left/lab0 && test ! -e /run/volt/bridges/lab0");
    c.ok("ip link show lab0");
    let list = c.ok("/usr/bin/volt net list");
    assert!(
        list.contains("note: bridge lab0 of network lab is still here"),
        "{list}"
    );
    // A link of the admin's on it (an uplink enslaved by hand): the bridge stays, and says
    // why; without it, it goes.
    c.ok("ip link add uplink9 type veth peer name uplink9p && ip link set uplink9 master lab0");
    let out = c.ok("/usr/bin/volt net down lab");
    assert!(
        out.contains("bridge lab0 stays: uplink9 on it") && out.contains("NAT chains"),
        "{out}"
    );
    c.ok("ip link show lab0 && ip link show uplink9");
    c.ok("ip link del uplink9");
    let down = c.ok("/usr/bin/volt net down lab");
    assert!(down.contains("bridge lab0"), "{down}");
    c.ok("! ip link show lab0 2>/dev/null");
    c.ok("! nft list chain ip volt post-lab 2>/dev/null");
    assert!(!c.ok("/usr/bin/volt net list").contains("note:"));
    c.ok("ip netns del wan");
}

/// A network whose bridge name is taken by a link of another kind (a typo naming a NIC):
/// networkd leaves that link alone (the rendered `.network` matches bridges only), so the
/// host's interface keeps its own configuration; `volt net up` names the problem.
#[test]
fn a_network_file_never_configures_a_link_that_is_not_a_bridge() {
    let Some(c) = Host::with_volt("vnb", false) else {
        return;
    };
    c.ok(
        "ip link add eth9 type veth peer name eth9p && ip link set eth9 up && ip link set eth9p up",
    );
    c.write(
        "/etc/volt/networks/lan.toml",
        "bridge = \"eth9\"\nsubnet = \"10.84.0.0/24\"\n",
    );
    c.ok("systemctl daemon-reload && networkctl reload");
    c.ok("grep -qx 'Kind=bridge' /run/systemd/network/10-eth9.network");
    let status = c.ok("networkctl status eth9 --no-pager");
    assert!(
        status.contains("Network File: n/a") && !status.contains("10.84.0.1"),
        "{status}"
    );
    let up = c.sh("/usr/bin/volt net up lan");
    let said = String::from_utf8_lossy(&up.stderr);
    assert!(!up.status.success() && said.contains("eth9"), "{said}");
    c.ok("! ip -4 addr show dev eth9 | grep -q 10.84.0.1");
}
