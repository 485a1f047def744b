//! Workload attachment under a real systemd 252 (nspawn): a VM NIC on an isolated network
//! (its TAP alone in the VM's namespace, the VM running, nothing reachable), a running VM
//! whose file gets a typo keeping its TAP and runtime files across daemon-reload, and
//! `volt generate` writing nothing outside its output directory.

mod common;

use std::process::Command;
use std::time::Duration;

use common::nspawn::Host;

const GUEST: &str = "/opt/volt/guest/volt-test-guest";

fn tap_of(vm: &str) -> String {
    volt::config::tap_name(&volt::config::vm_uuid(vm), 0)
}

#[test]
fn isolated_vm_nic_lives_in_its_own_namespace_and_reaches_nothing() {
    let Some(c) = Host::with_volt("iso", true) else {
        return;
    };
    c.write(
        "/etc/volt/networks/iso.toml",
        "bridge = \"iso0\"\nsubnet = \"10.60.0.0/24\"\ntype = \"isolated\"\n",
    );
    // The guest tries to reach the network's gateway address: nobody may answer.
    c.write(
        "/etc/volt/vms/lone.toml",
        &format!(
            "memory_mib = 64\nkernel = \"{GUEST}\"\ncmdline = \"console=ttyS0 volt.udpgen=10.60.0.1:9:64:1\"\n\
             [[network]]\nzone = \"iso\"\nipv4 = \"10.60.0.10\"\n"
        ),
    );
    c.ok("systemctl daemon-reload");
    // The generator gives this VM what opening a TAP in another namespace takes.
    let show =
        c.ok("systemctl show volt-vm@lone.service -p CapabilityBoundingSet -p RestrictNamespaces");
    assert!(show.contains("cap_sys_admin"), "{show}");
    c.ok("systemctl start volt-vm@lone.service");
    let tap = tap_of("lone");
    let id = volt::config::short_id(&volt::config::vm_uuid("lone"));
    let ns = format!("/run/netns/volt-iso-{id}");
    // The TAP is in the VM's namespace, alone, and not in the host's.
    let inside = c.ok(&format!("nsenter --net={ns} ip -o link show"));
    let names: Vec<&str> = inside
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    assert_eq!(names, ["lo", tap.as_str()], "{inside}");
    c.ok(&format!("! test -e /sys/class/net/{tap}"));
    c.ok("! test -e /sys/class/net/iso0");
    // The VM runs on that TAP and its ARP for the gateway goes unanswered.
    let journal = c.wait_ok(
        "journalctl -u volt-vm@lone.service --no-pager -o cat | grep -F 'udpgen no ARP reply from 10.60.0.1'",
        Duration::from_secs(30),
    );
    assert!(journal.contains("no ARP reply"), "{journal}");
    assert_eq!(
        c.ok("systemctl is-active volt-vm@lone.service").trim(),
        "active"
    );
    let log = c.ok("journalctl -u volt-vm@lone.service --no-pager -o cat");
    assert!(
        log.contains(&format!("eth0: opened {tap} in {ns}")),
        "{log}"
    );
    // Nothing outside reaches the guest either.
    let ping = c.sh("ping -c 2 -W 1 10.60.0.10");
    assert!(!ping.status.success(), "the host reached the isolated VM");
    // Stop: the TAP and the namespace are gone.
    c.ok("systemctl stop volt-vm@lone.service");
    c.wait_ok(&format!("! test -e {ns}"), Duration::from_secs(10));
}

#[test]
fn a_typo_in_a_running_vms_file_keeps_its_tap_and_runtime_files() {
    let Some(c) = Host::with_volt("typo", true) else {
        return;
    };
    let good =
        format!("memory_mib = 64\nkernel = \"{GUEST}\"\n[[network]]\nipv4 = \"10.42.0.10\"\n");
    c.write("/etc/volt/vms/web.toml", &good);
    c.ok("systemctl daemon-reload");
    c.ok("systemctl start volt-vm@web.service");
    c.wait_ok("ping -c 1 -W 1 10.42.0.10", Duration::from_secs(20));
    let tap = tap_of("web");
    let files = format!(
        "/run/systemd/network/60-volt-{tap}.netdev /run/systemd/network/60-volt-{tap}.network"
    );
    let index = c.ok(&format!("cat /sys/class/net/{tap}/ifindex"));

    // A typo: the file no longer parses.
    c.write(
        "/etc/volt/vms/web.toml",
        &good.replace("memory_mib", "memroy_mib"),
    );
    c.ok("systemctl daemon-reload");
    let log = c.wait_ok(
        "journalctl -b --no-pager -o cat -t volt-generator | grep -F 'unknown key'",
        Duration::from_secs(10),
    );
    assert!(log.contains("/etc/volt/vms/web.toml:1:1"), "{log}");
    // The running VM, its TAP (same ifindex) and its networkd files stay.
    c.ok(&format!("test -e {}", files.replace(' ', " && test -e ")));
    assert_eq!(c.ok(&format!("cat /sys/class/net/{tap}/ifindex")), index);
    assert_eq!(
        c.ok("systemctl is-active volt-vm@web.service").trim(),
        "active"
    );
    common::ping::assert_all(&c.ok("ping -c 3 -W 1 10.42.0.10"), 3);

    // Fixed again: a normal stop cleans everything up.
    c.write("/etc/volt/vms/web.toml", &good);
    c.ok("systemctl daemon-reload");
    c.ok("systemctl stop volt-vm@web.service");
    c.wait_ok(
        &format!("! test -e /sys/class/net/{tap}"),
        Duration::from_secs(10),
    );
    c.ok(&format!(
        "! test -e {}",
        files.replace(' ', " && ! test -e ")
    ));
}

#[test]
fn volt_generate_writes_nothing_outside_its_output_directory() {
    if common::skip(common::netns::skip_reason(), false) {
        return;
    }
    // A private mount namespace with an empty /run and an /etc holding one VM: `volt
    // generate` with the default root (/) must leave that /run empty (but for mount(8)'s own
    // /run/mount) and put the networkd files under OUTDIR/network.
    let out = tempfile::tempdir().expect("out");
    let script = format!(
        "set -e
         mount --make-rprivate /
         mount -t tmpfs none /run
         mount -t tmpfs none /etc
         mkdir -p /etc/volt/vms
         printf 'kernel = \"/k\"\\n[[network]]\\nipv4 = \"10.42.0.10\"\\n' > /etc/volt/vms/web.toml
         {volt} generate {out}
         echo RUN: $(find /run -mindepth 1 -not -path '/run/mount*' | wc -l)",
        volt = env!("CARGO_BIN_EXE_volt"),
        out = out.path().display()
    );
    let o = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .env_remove("VOLT_ROOT")
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("RUN: 0"), "{stdout}");
    let tap = tap_of("web");
    for f in [
        format!("network/60-volt-{tap}.netdev"),
        format!("network/60-volt-{tap}.network"),
        "volt-vm@web.service.d/50-volt-generator.conf".to_string(),
    ] {
        assert!(out.path().join(&f).is_file(), "{f} missing");
    }
}
