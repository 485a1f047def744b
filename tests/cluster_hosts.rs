//! Three hosts, one volt0: three real systemd 252 in nspawn ("hosts" a, b, c), joined by an
//! underlay bridge in a network namespace this test creates (each host's `ul0` is a veth
//! whose other end is on that bridge), one etcd member per host on its underlay address
//! (a three-member cluster), `volt-cluster.service` on each. What it shows, in order:
//! - a VM on a, a VM on b and a container on c reach each other at L2 across hosts (ICMP and
//!   UDP: the container pings both VMs and gets UDP echoes back from them; the VM on a sends
//!   UDP to the VM on b, which echoes it back), every host pings all three, the MTU is the
//!   underlay's minus 50 everywhere;
//! - 3 x 30 concurrent allocations across the hosts give 90 distinct addresses; the same VM
//!   name started on two hosts runs on exactly one, the other start names the holder;
//! - a VM whose file is removed while it runs gives up its name when it stops;
//! - a workload on a spoofing the MAC, or the address, of b's VM is dropped at b;
//! - volt-cluster restarted on a while its VM runs: the VM's address stays claimed;
//! - claims a `volt link down` cut short left on a (its link record gone, or left behind)
//!   and the name of a VM without NICs whose unit failed for good are given up by a's
//!   daemon after its grace;
//! - one etcd member stopped: starts work; two: starts fail with the quorum error while the
//!   running VMs keep answering; members back: starts work;
//! - host b's systemd SIGKILLed: its forwarding entries vanish on a and c, its address is
//!   free again;
//! - volt-cluster stopped on c while only a VM without NICs runs there: its name stays c's.
//!
//! Bounds only catch hangs (the machine may be loaded); measured times are reported.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::TestNs;
use common::nspawn::{skip_reason, stage_volt, Nspawn};

const HOSTS: [&str; 3] = ["a", "b", "c"];
const TTL: u64 = 10;
const LONG: Duration = Duration::from_secs(120);

fn ul_ip(i: usize) -> String {
    format!("192.168.77.{}", i + 1)
}

fn skip() -> bool {
    if common::skip(skip_reason(), true) || common::skip(common::netns::skip_reason(), false) {
        return true;
    }
    if common::skip(common::etcd::skip_reason(), false) {
        return true;
    }
    if !Path::new("/usr/bin/busybox").exists() && !Path::new("/bin/busybox").exists() {
        common::report::skip("busybox is missing (scripts/setup installs busybox-static)");
        return true;
    }
    false
}

fn etcd_unit(i: usize) -> String {
    let cluster: Vec<String> = HOSTS
        .iter()
        .enumerate()
        .map(|(j, h)| format!("{h}=http://{}:2380", ul_ip(j)))
        .collect();
    let ip = ul_ip(i);
    format!(
        "[Service]\nExecStart=/usr/bin/etcd --name {} --data-dir /var/lib/etcd-volt \
         --listen-client-urls http://{ip}:2379 --advertise-client-urls http://{ip}:2379 \
         --listen-peer-urls http://{ip}:2380 --initial-advertise-peer-urls http://{ip}:2380 \
         --initial-cluster {} --initial-cluster-token volt-test --initial-cluster-state new \
         --heartbeat-interval 250 --election-timeout 2500 --log-level warn\n",
        HOSTS[i],
        cluster.join(",")
    )
}

fn cluster_toml(i: usize) -> String {
    let mut eps: Vec<String> = (0..3)
        .map(|j| format!("\"http://{}:2379\"", ul_ip(j)))
        .collect();
    eps.rotate_left(i);
    format!(
        "host = \"{}\"\nunderlay = \"{}\"\nlease_ttl = {TTL}\n[etcd]\nendpoints = [{}]\ntimeout_ms = 3000\n[[network]]\nname = \"volt0\"\nvni = 42\n",
        HOSTS[i],
        ul_ip(i),
        eps.join(", ")
    )
}

/// A busybox root file system at `dir` inside a host.
fn vm_toml(extra: &str, ipv4: Option<&str>) -> String {
    let ip = ipv4
        .map(|i| format!("ipv4 = \"{i}\"\n"))
        .unwrap_or_default();
    format!("memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n{extra}[[network]]\nbridge = \"volt0\"\n{ip}")
}

fn since(t: Instant) -> String {
    format!("{:.1}", t.elapsed().as_secs_f64())
}

/// The leader PID (PID 1 inside) of container `name` on `c`.
fn leader(c: &Nspawn, name: &str) -> String {
    c.wait_ok(
        &format!("P=$(systemctl show -p MainPID --value volt-container@{name}.service); \
         test \"$P\" != 0 && L=$(cut -d' ' -f1 /proc/$P/task/$P/children) && test -n \"$L\" && echo $L"),
        Duration::from_secs(30),
    )
    .trim()
    .to_string()
}

/// What every host's overlay looks like, for a failure message.
fn overlay_state(hosts: &[Nspawn]) -> String {
    hosts
        .iter()
        .zip(HOSTS)
        .map(|(h, n)| {
            let o = h.sh("ip -br link show volt0; ip -br addr show volt0; ip route show dev volt0; bridge fdb show dev vx-42; ip -s link show vx-42; nft list table bridge volt-cluster; journalctl --no-pager -o cat -n 30 -u volt-cluster");
            format!(
                "=== host {n}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `h` pings `ip` (bounded wait); on failure, the overlay of every host.
fn reach(h: &Nspawn, ip: &str, hosts: &[Nspawn]) {
    let start = Instant::now();
    while !h.sh(&format!("ping -c 1 -W 1 {ip}")).status.success() {
        if start.elapsed() > LONG {
            // Debugging aid: keep the hosts up for a look from outside (nsenter -t PID -a).
            if let Some(secs) = std::env::var("VOLT_TEST_HOLD")
                .ok()
                .and_then(|s| s.parse().ok())
            {
                let pids: Vec<i32> = hosts.iter().map(|h| h.pid1).collect();
                eprintln!("HOLD: hosts' PID 1: {pids:?}");
                std::thread::sleep(Duration::from_secs(secs));
            }
            panic!("{} cannot reach {ip}:\n{}", h.name, overlay_state(hosts));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `spoof` drop counter of the VXLAN port's inbound filter on `c`.
/// What `c` dropped as spoofed from its VXLAN port: before the VXLAN driver (a source MAC
/// the store does not place behind the sending host) and at the bridge's port filter (a
/// (MAC, address) pair it does not know).
fn spoof_drops(c: &Nspawn) -> u64 {
    let count = |chain: &str, comment: &str| -> u64 {
        let out = c.ok(&format!("nft list chain {chain}"));
        out.lines()
            .find(|l| l.contains(&format!("comment \"{comment}\"")))
            .and_then(|l| l.split("counter packets ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {comment} counter in:\n{out}"))
    };
    count("bridge volt-cluster in-vx-42", "spoof")
        + count("ip volt-cluster prerouting", "vxlan source vx-42")
}

fn leased_ip(c: &Nspawn, owner: &str) -> String {
    let out = c.ok("/usr/bin/volt ipam list --output json");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v.as_array()
        .and_then(|a| a.iter().find(|l| l["owner"] == owner))
        .and_then(|l| l["ip"].as_str())
        .unwrap_or_else(|| panic!("{owner} has no lease in {out}"))
        .to_string()
}

#[test]
fn three_hosts_share_volt0() {
    if skip() {
        return;
    }
    let t0 = Instant::now();
    let ul = TestNs::new("cul");
    ul.ok("ip link add ul0 type bridge && ip link set ul0 up");
    let stage = stage_volt();
    let hosts: Vec<Nspawn> = (0..3)
        .map(|i| {
            let veth = format!("ulh-{}", HOSTS[i]);
            let c = Nspawn::boot_in(
                &format!("cl{}", HOSTS[i]),
                stage.path(),
                true,
                &[&format!("--network-veth-extra={veth}:ul0")],
                Some(&ul.path()),
                2400,
            );
            ul.ok(&format!(
                "ip link set {veth} master ul0 && ip link set {veth} up"
            ));
            // The underlay is networkd's, as on a real cluster host: network-online.target
            // (which volt-cluster.service waits for) is reached when ul0 is routable. With
            // ul0 unmanaged, networkd-wait-online has no link to wait for and volt-cluster's
            // start sat out its 120 s timeout on every host.
            c.write(
                "/etc/systemd/network/20-ul0.network",
                &format!(
                    "[Match]\nName=ul0\n\n[Network]\nAddress={}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
                    ul_ip(i)
                ),
            );
            c.ok("networkctl reload && /lib/systemd/systemd-networkd-wait-online --interface=ul0 --timeout=120");
            c.install_volt();
            c.write("/etc/systemd/system/etcd-volt.service", &etcd_unit(i));
            c.write("/etc/volt/cluster.toml", &cluster_toml(i));
            c.ok("systemctl daemon-reload && systemctl start --no-block etcd-volt.service");
            c
        })
        .collect();
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);
    let validate = a.ok("/usr/bin/volt validate");
    assert!(validate.contains("valid"), "{validate}");
    for h in &hosts {
        h.ok("systemctl start volt-cluster.service");
    }
    common::report::figure("3 hosts booted and registered, s", since(t0));
    let status = c.ok("/usr/bin/volt cluster status --output json");
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(names, HOSTS.to_vec(), "{status}");

    // MTU: the underlay's 1500 minus VXLAN's 50, on the VXLAN port and the bridge.
    for h in &hosts {
        assert_eq!(h.ok("cat /sys/class/net/vx-42/mtu").trim(), "1450");
        assert_eq!(h.ok("cat /sys/class/net/volt0/mtu").trim(), "1450");
    }

    // Workloads: a VM on b (static), a VM on a (from the pool, sending UDP to b's VM), a
    // container on c (static).
    let vm_b = "10.42.0.20";
    b.write("/etc/volt/vms/vb.toml", &vm_toml("", Some("10.42.0.20/24")));
    b.ok("systemctl daemon-reload && systemctl start volt-vm@vb.service");
    a.write(
        "/etc/volt/vms/va.toml",
        &vm_toml(&format!("cmdline = \"volt.udpgen={vm_b}:7:64:20\"\n"), None),
    );
    a.ok("systemctl daemon-reload && systemctl start volt-vm@va.service");
    let vm_a = leased_ip(a, "vm/va/eth0");
    c.busybox_rootfs("/var/lib/volt-test/ct");
    c.write(
        "/etc/volt/containers/ct.toml",
        "directory = \"/var/lib/volt-test/ct\"\ncommand = [\"/bin/sh\", \"-c\", \"exec sleep 100000\"]\n[[network]]\nbridge = \"volt0\"\nipv4 = \"10.42.0.150/24\"\n",
    );
    c.ok("systemctl daemon-reload && systemctl start volt-container@ct.service");
    let ct = "10.42.0.150";
    let l = leader(c, "ct");
    let serial = a.ok("journalctl --no-pager -o cat -u volt-vm@va.service");
    assert!(serial.contains("mtu=1450"), "the guest's MTU: {serial}");

    // Every host pings all three; the container pings both VMs and gets UDP echoes back.
    let t = Instant::now();
    for h in &hosts {
        for ip in [vm_a.as_str(), vm_b, ct] {
            reach(h, ip, &hosts);
        }
    }
    common::report::figure("every host reached all three workloads, s", since(t));
    for ip in [vm_a.as_str(), vm_b] {
        c.wait_ok(&format!("nsenter -t {l} -a /bin/ping -c 1 -W 1 {ip}"), LONG);
        let echo = c.ok(&format!(
            "nsenter -t {l} -n bash -c 'exec 3<>/dev/udp/{ip}/7; printf volt-echo >&3; timeout 5 head -c 9 <&3'"
        ));
        assert_eq!(echo, "volt-echo", "UDP echo from {ip}");
    }
    // The VM on a sent 20 datagrams to b's VM, which echoed them back to a's VM.
    a.wait_ok(
        "journalctl --no-pager -o cat -u volt-vm@va.service | grep -q 'udpgen done sent=20'",
        LONG,
    );
    let stats = |h: &Nspawn, ip: &str| -> u64 {
        let line = h.ok(&format!(
            "bash -c 'exec 3<>/dev/udp/{ip}/5; printf s >&3; timeout 5 head -n 1 <&3'"
        ));
        line.split_whitespace()
            .find_map(|f| f.strip_prefix("rxq="))
            .map(|q| q.split(',').filter_map(|n| n.parse::<u64>().ok()).sum())
            .unwrap_or_else(|| panic!("stats of {ip}: {line:?}"))
    };
    assert!(stats(b, vm_b) >= 20, "b's VM received a's datagrams");
    assert!(stats(a, &vm_a) >= 20, "a's VM received b's echoes");

    // 3 x 30 concurrent allocations across the hosts: 90 distinct addresses (for VMs that
    // are configured, not started: `volt ipam allocate` leases only to configured owners).
    for (i, h) in hosts.iter().enumerate() {
        h.ok(&format!(
            "for i in $(seq 30); do printf 'memory_mib = 64\nkernel = \"/opt/volt/guest/volt-test-guest\"\n[[network]]\nbridge = \"volt0\"\n' > /etc/volt/vms/t{i}-$i.toml; done"
        ));
    }
    let t = Instant::now();
    let outs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                s.spawn(move || {
                    h.ok(&format!(
                        "for i in $(seq 30); do /usr/bin/volt ipam allocate --owner vm/t{i}-$i/eth0 & done; wait"
                    ))
                })
            })
            .collect();
        hs.into_iter().map(|j| j.join().expect("thread")).collect()
    });
    let got: Vec<&str> = outs.iter().flat_map(|o| o.lines()).collect();
    let distinct: BTreeSet<&str> = got.iter().copied().collect();
    assert_eq!((got.len(), distinct.len()), (90, 90), "{outs:?}");
    common::report::figure("90 concurrent claims on 3 hosts, s", since(t));
    for (i, h) in hosts.iter().enumerate() {
        h.ok(&format!(
            "for i in $(seq 30); do /usr/bin/volt ipam release --owner vm/t{i}-$i/eth0 >/dev/null; rm /etc/volt/vms/t{i}-$i.toml; done"
        ));
    }

    // The same name on two hosts: exactly one runs, the other start names the holder; once
    // stopped, the name is free for the other host. With NICs the link owners claim and give
    // the name up; a VM without NICs has none, and its unit's ExecStartPre= claims it and its
    // ExecStopPost= gives it up after a clean stop.
    let solo = "memory_mib = 32\nkernel = \"/opt/volt/guest/volt-test-guest\"\n";
    for (name, toml, claimer) in [
        ("dup", vm_toml("", None), "'volt-tap@*'"),
        ("solo", solo.to_string(), "volt-vm@solo.service"),
    ] {
        let unit = format!("volt-vm@{name}.service");
        for h in [a, b] {
            h.write(&format!("/etc/volt/vms/{name}.toml"), &toml);
            h.ok("systemctl daemon-reload");
        }
        a.ok(&format!("systemctl start {unit}"));
        assert!(!b.sh(&format!("systemctl start {unit}")).status.success());
        let log = b.ok(&format!("journalctl --no-pager -o cat -u {claimer}"));
        assert!(
            log.contains(&format!("{name} already runs on host a")),
            "{log}"
        );
        a.ok(&format!("systemctl is-active {unit}"));
        b.ok(&format!("! systemctl is-active {unit}"));
        a.ok(&format!("systemctl stop {unit}"));
        b.wait_ok(
            &format!("systemctl reset-failed {unit}; systemctl start {unit}"),
            Duration::from_secs(20),
        );
        b.ok(&format!("systemctl is-active {unit}"));
        b.ok(&format!("systemctl stop {unit}"));
    }
    // A VM whose file is removed while it runs: taking its link down (its owner is no longer
    // needed) still gives up its name and address, from the link's record; without that, its
    // name stayed claimed by a for as long as a's daemon kept the host's lease.
    for h in [a, b] {
        h.write("/etc/volt/vms/gone.toml", &vm_toml("", None));
        h.ok("systemctl daemon-reload");
    }
    a.ok("systemctl start volt-vm@gone.service");
    a.ok("rm /etc/volt/vms/gone.toml && systemctl daemon-reload");
    a.ok("systemctl stop volt-vm@gone.service");
    b.wait_ok(
        "systemctl reset-failed volt-vm@gone.service; systemctl start volt-vm@gone.service",
        Duration::from_secs(20),
    );
    b.ok("systemctl stop volt-vm@gone.service && rm /etc/volt/vms/gone.toml && systemctl daemon-reload");

    // Host a's lease is lost (revoked here; a partition longer than the TTL does the same),
    // and its claims with it. Its daemon registers again and claims anew what runs on a: va
    // (its link is up: name and address), solo (a VM without NICs, its file broken meanwhile)
    // and batch (a container without NICs), whose units systemd says are active. A clean
    // stop of batch then gives its name up (no link owner does it for a container without
    // NICs).
    a.busybox_rootfs("/var/lib/volt-test/batch");
    a.write(
        "/etc/volt/containers/batch.toml",
        "directory = \"/var/lib/volt-test/batch\"\ncommand = [\"/bin/sh\", \"-c\", \"exec sleep 100000\"]\n",
    );
    a.ok("systemctl daemon-reload && systemctl start volt-vm@solo.service volt-container@batch.service");
    // Host a's lease and workloads (name:addresses) as c reads the store; an empty lease
    // while a is not registered.
    let host_a = || -> (String, Vec<String>) {
        let status = c.ok("/usr/bin/volt cluster status --output json");
        let v: serde_json::Value = serde_json::from_str(&status).expect("json");
        let Some(h) = v
            .as_array()
            .expect("array")
            .iter()
            .find(|h| h["name"] == "a")
        else {
            return (String::new(), Vec::new());
        };
        let mut w: Vec<String> = h["workloads"]
            .as_array()
            .expect("workloads")
            .iter()
            .map(|w| {
                let addrs = w["addresses"].as_array().map_or(0, Vec::len);
                format!("{}:{addrs}", w["name"].as_str().unwrap_or("?"))
            })
            .collect();
        w.sort();
        (h["lease"].as_str().unwrap_or("").to_string(), w)
    };
    let running = ["batch:0", "solo:0", "va:1"].map(String::from).to_vec();
    let (lease, before) = host_a();
    assert_eq!(before, running);
    // solo's file breaks while it runs: it keeps its units, and its name all the same.
    a.ok("printf 'vcpus = \"x\"\n' >> /etc/volt/vms/solo.toml && systemctl daemon-reload && systemctl is-active volt-vm@solo.service");
    a.ok(&format!(
        "etcdctl --endpoints http://{}:2379 lease revoke {lease}",
        ul_ip(0)
    ));
    let t = Instant::now();
    let after = loop {
        let (l, w) = host_a();
        if l != lease && !l.is_empty() && w == running {
            break w;
        }
        assert!(
            t.elapsed() < Duration::from_secs(TTL) + LONG,
            "host a did not claim its workloads again: lease {l}, {w:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    common::report::figure(
        "a's workloads claimed again after a lost lease, s",
        since(t),
    );
    assert_eq!(after, running);
    a.ok("systemctl stop volt-container@batch.service volt-vm@solo.service");
    assert_eq!(
        host_a().1,
        ["va:1"],
        "batch and solo given up after their stop"
    );

    // Claims nothing gave up while a's lease lived, each blocking the workload's start on
    // every other host: a's daemon gives them up once nothing of the workload has been at
    // work on a (a unit, a link up) for its grace (30 s), checked after the etcd part below.
    // A kill at an exact point of `volt link down` is simulated by doing its first half by
    // hand (the link and its networkd files removed) and not the rest:
    // - cut1: the record removed too, the release never run (a down killed between the two,
    //   as the old order allowed; or a release that met no quorum, where the down goes on);
    // - cut2: the record and the claims left (a down killed before its release: the record
    //   of a link that is gone does not keep the claims);
    // - gave: a VM without NICs whose unit failed for good (Restart=no, SIGKILLed): its
    //   ExecStopPost= kept the name for a restart that never comes.
    let cut = ["cut1", "cut2"];
    for name in cut {
        a.write(&format!("/etc/volt/vms/{name}.toml"), &vm_toml("", None));
    }
    a.write("/etc/volt/vms/gave.toml", solo);
    a.write(
        "/etc/systemd/system/volt-vm@gave.service.d/99-test.conf",
        "[Service]\nRestart=no\n",
    );
    a.ok("systemctl daemon-reload");
    for name in cut {
        let tap = volt::config::tap_name(&volt::config::vm_uuid(name), 0);
        a.ok(&format!("/usr/bin/volt link up {tap}"));
        let record = match name {
            "cut1" => format!(" /run/volt/links/{tap}.json"),
            _ => String::new(),
        };
        a.ok(&format!(
            "rm /run/systemd/network/60-volt-{tap}.netdev /run/systemd/network/60-volt-{tap}.network{record} && networkctl reload && ip link del {tap}"
        ));
    }
    a.ok("systemctl start volt-vm@gave.service && systemctl kill -s KILL volt-vm@gave.service");
    a.wait_ok(
        "systemctl is-failed volt-vm@gave.service && journalctl --no-pager -o cat -u volt-vm@gave.service | grep -q 'keeping the cluster name gave: the unit ended with result signal'",
        Duration::from_secs(20),
    );
    let orphaned = Instant::now();
    assert_eq!(
        host_a().1,
        ["cut1:1", "cut2:1", "gave:0", "va:1"].map(String::from)
    );
    for name in ["cut1", "cut2", "gave"] {
        let out = b.sh(&format!("/usr/bin/volt cluster claim {name}"));
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr)
                    .contains(&format!("{name} already runs on host a")),
            "{name}: {out:?}"
        );
    }

    // Spoofing from a (a namespace on a's volt0 without Volt's port rules): b's VM's MAC, then
    // its address with another MAC; b drops both at its VXLAN port.
    let mac_b = b.ok(&format!(
        "cat /sys/class/net/{}/address",
        volt::config::tap_name(&volt::config::vm_uuid("vb"), 0)
    ));
    // The TAP's own MAC is not the guest's; the guest's comes from the link record.
    let _ = mac_b;
    let rec = b.ok(&format!(
        "cat /run/volt/links/{}.json",
        volt::config::tap_name(&volt::config::vm_uuid("vb"), 0)
    ));
    let rec: serde_json::Value = serde_json::from_str(&rec).expect("record");
    let guest_mac = rec["mac"].as_str().expect("mac").to_string();
    a.ok("ip netns add rogue && ip link add rg-h type veth peer name rg-c && ip link set rg-c netns rogue && ip link set rg-h master volt0 up");
    for (mac, ip) in [
        (guest_mac.as_str(), "10.42.0.77"),
        ("02:00:00:00:77:77", vm_b),
    ] {
        let before = spoof_drops(b);
        a.ok(&format!(
            "nsenter --net=/run/netns/rogue sh -c 'ip link set rg-c down; ip link set rg-c address {mac}; ip -4 addr flush dev rg-c; ip addr add {ip}/24 dev rg-c; ip link set rg-c up'"
        ));
        let _ = a.sh(&format!(
            "nsenter --net=/run/netns/rogue ping -c 3 -i 0.3 -W 1 {ct}"
        ));
        let after = spoof_drops(b);
        assert!(
            after > before,
            "b dropped nothing from {mac}/{ip} ({before} -> {after})"
        );
    }
    a.ok("ip netns del rogue; ip link del rg-h 2>/dev/null || true");

    // volt-cluster restarted on a (how a cluster.toml edit is applied) while a's VM runs: the
    // lease that carries the VM's claims is kept, so b cannot take its address, and traffic
    // across hosts comes back.
    a.ok("systemctl restart volt-cluster.service");
    let log = a.ok("journalctl --no-pager -o cat -u volt-cluster.service");
    assert!(log.contains("keeping this host's lease"), "{log}");
    b.write("/etc/volt/vms/thief.toml", &vm_toml("", None));
    let stolen = b.sh(&format!(
        "/usr/bin/volt ipam allocate --owner vm/thief/eth0 --ip {vm_a}"
    ));
    let said = String::from_utf8_lossy(&stolen.stderr);
    assert!(
        !stolen.status.success() && said.contains("already claimed by vm/va/eth0 on host a"),
        "b took the address of a's running VM while a's daemon restarted: {}{said}",
        String::from_utf8_lossy(&stolen.stdout)
    );
    b.ok("rm /etc/volt/vms/thief.toml");
    c.wait_ok(&format!("ping -c 1 -W 1 {vm_a}"), LONG);

    // etcd: one member down, starts work; two down, starts fail and running VMs answer;
    // members back, starts work.
    a.write("/etc/volt/vms/v2.toml", &vm_toml("", None));
    a.write("/etc/volt/vms/v3.toml", &vm_toml("", None));
    a.ok("systemctl daemon-reload");
    b.ok("systemctl stop etcd-volt.service");
    a.ok("systemctl start volt-vm@v2.service");
    c.ok("systemctl stop etcd-volt.service");
    let t = Instant::now();
    assert!(!a.sh("systemctl start volt-vm@v3.service").status.success());
    common::report::figure("a start failed after quorum loss, s", since(t));
    let log = a.ok("journalctl --no-pager -o cat -u 'volt-tap@*'");
    assert!(
        log.contains("the cluster store (etcd) cannot serve requests"),
        "{log}"
    );
    for ip in [vm_a.as_str(), vm_b] {
        let out = c.ok(&format!("ping -c 5 -i 0.2 -W 2 {ip}"));
        common::ping::assert_all(&out, 5);
    }
    let out = c.ok(&format!("nsenter -t {l} -a /bin/ping -c 3 -W 2 {vm_a}"));
    assert!(out.contains(" 0% packet loss"), "{out}");
    b.ok("systemctl start etcd-volt.service");
    c.ok("systemctl start etcd-volt.service");
    let t = Instant::now();
    a.wait_ok(
        "systemctl reset-failed; systemctl start volt-vm@v3.service",
        LONG,
    );
    common::report::figure("starts worked again after quorum returned, s", since(t));
    a.ok("systemctl stop volt-vm@v2.service volt-vm@v3.service");

    // The claims left on a above are given up by a's daemon: b can claim each name, none of
    // their addresses is claimed, and a's daemon said each release once. (Before, they were
    // a's until its lease ended: b's claims failed with "cut1 already runs on host a".)
    for name in ["gave", "cut1", "cut2"] {
        b.wait_ok(&format!("/usr/bin/volt cluster claim {name}"), LONG);
        b.ok(&format!("/usr/bin/volt cluster release {name}"));
    }
    common::report::figure(
        "claims of workloads that stopped given up by the daemon after, s",
        since(orphaned),
    );
    let left = a.ok(&format!(
        "etcdctl --endpoints http://{}:2379 get --prefix --keys-only /volt/ipam/volt0/owner/vm/cut",
        ul_ip(0)
    ));
    assert_eq!(left.trim(), "", "addresses of cut1/cut2 still claimed");
    let log = a.ok("journalctl --no-pager -o cat -u volt-cluster.service");
    for what in [
        "the name cut1 (vm)",
        "the name cut2 (vm)",
        "the name gave (vm)",
        "(vm/cut1/eth0)",
        "(vm/cut2/eth0)",
    ] {
        assert_eq!(
            log.lines()
                .filter(|l| l.contains("released ") && l.contains(what))
                .count(),
            1,
            "{what}:\n{log}"
        );
    }

    // Host b dies (its systemd SIGKILLed, its etcd member with it): within the lease TTL its
    // forwarding entries are gone on a and c, and its VM's address is free again.
    let dst_b = format!("dst {}", ul_ip(1));
    for h in [a, c] {
        assert!(h.ok("bridge fdb show dev vx-42").contains(&dst_b));
    }
    // SAFETY: b's PID 1 is the init of a container this test booted.
    unsafe { libc::kill(b.pid1, libc::SIGKILL) };
    let t = Instant::now();
    for h in [a, c] {
        h.wait_ok(
            &format!("! bridge fdb show dev vx-42 | grep -q '{dst_b}'"),
            Duration::from_secs(TTL) + LONG,
        );
    }
    common::report::figure(
        &format!("host b's entries gone on a and c after SIGKILL (lease TTL {TTL} s), s"),
        since(t),
    );
    a.write("/etc/volt/vms/takeover.toml", &vm_toml("", None));
    let taken = a.ok(&format!(
        "/usr/bin/volt ipam allocate --owner vm/takeover/eth0 --ip {vm_b}"
    ));
    assert_eq!(taken.trim(), format!("{vm_b}/24"));
    let status = a.ok("/usr/bin/volt cluster status --output json");
    assert!(!status.contains("\"name\": \"b\""), "{status}");

    // volt-cluster stopped on c (as a restart does, for longer) while only a workload
    // without NICs runs there (its container stopped): systemd says the VM's unit is active,
    // so the lease that carries its name is kept, and a cannot take the name meanwhile.
    // (Before, only link records counted: the stop ended the lease and the name with it,
    // until c's daemon, back, claimed it again.)
    c.write("/etc/volt/vms/lone.toml", solo);
    c.ok("systemctl stop volt-container@ct.service && systemctl daemon-reload && systemctl start volt-vm@lone.service");
    c.wait_ok("! ls /run/volt/links/*.json", Duration::from_secs(20));
    c.ok("systemctl stop volt-cluster.service");
    let taken = a.sh("/usr/bin/volt cluster claim lone");
    c.ok("systemctl start volt-cluster.service");
    assert!(
        !taken.status.success()
            && String::from_utf8_lossy(&taken.stderr).contains("lone already runs on host c"),
        "a took the name of c's running VM while c's daemon was stopped: {taken:?}"
    );
    let log = c.ok("journalctl --no-pager -o cat -u volt-cluster.service");
    assert!(
        log.contains("keeping this host's lease: vm lone runs here"),
        "{log}"
    );
    common::report::figure("whole cluster test, s", since(t0));
}
