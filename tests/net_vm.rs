//! virtio-net end to end: volt-vmm with the test guest on a TAP on a bridge, all inside a
//! network namespace the test creates. Traffic: 1000 pings, a 10 MB UDP echo checked byte
//! for byte, a 9000-byte ping at MTU 9000, every queue of a 4-pair NIC carrying traffic (and
//! its control queue answering a second command under EVENT_IDX), and
//! the guest announcing itself (gratuitous ARP, VIRTIO_NET_S_ANNOUNCE acknowledged) when its
//! link comes up, and a macvtap NIC carrying pings from the far end of its parent.

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::netns::{skip_reason, TestNs};

struct Vm {
    ns: TestNs,
    /// volt-vmm's PID (nsenter execs it).
    pid: u32,
    log: PathBuf,
    _root: tempfile::TempDir,
}

fn skip() -> bool {
    common::skip(skip_reason(), true)
}

/// Boot the test guest with one NIC (`nic` is the TOML body of the [[network]] entry) on
/// bridge volt0 (10.42.0.1/24, MTU `mtu`) in a fresh namespace; wait for its net line.
fn boot(tag: &str, nic: &str, mtu: u32) -> Vm {
    boot_with(tag, nic, mtu, |_| {})
}

/// [`boot`], with `prepare` run in the namespace once the bridge is up, before the VM starts.
fn boot_with(tag: &str, nic: &str, mtu: u32, prepare: impl FnOnce(&TestNs)) -> Vm {
    boot_nic(tag, &format!("mode = \"direct\"\n{nic}"), mtu, prepare)
}

/// [`boot_with`] with the whole [[network]] body (its `mode` included).
fn boot_nic(tag: &str, nic: &str, mtu: u32, prepare: impl FnOnce(&TestNs)) -> Vm {
    let mut ns = TestNs::new(tag);
    ns.bridge("volt0", "10.42.0.1/24", mtu);
    prepare(&ns);
    let root = tempfile::tempdir().expect("root");
    let vms = root.path().join("etc/volt/vms");
    std::fs::create_dir_all(&vms).expect("mkdir");
    let toml = format!(
        "memory_mib = 64\nkernel = \"{}\"\n[[network]]\n{nic}\n",
        common::guest::elf().display()
    );
    std::fs::write(vms.join("web.toml"), toml).expect("toml");
    let log = root.path().join("vm.log");
    let out = std::fs::File::create(&log).expect("log");
    // What the unit does, without systemd: `volt vm run` brings the links up itself
    // (--attach), writes the spec and execs the VMM (same PID).
    let pid = ns.spawn(
        env!("CARGO_BIN_EXE_volt"),
        &[
            "vm",
            "run",
            "web",
            "--attach",
            "--vmm",
            env!("CARGO_BIN_EXE_volt-vmm"),
        ],
        &[("VOLT_ROOT", root.path().to_str().expect("utf8"))],
        out,
    );
    let vm = Vm {
        ns,
        pid,
        log,
        _root: root,
    };
    vm.wait_log("volt-test-guest: ready", Duration::from_secs(30));
    vm
}

impl Vm {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let l = self.log();
            if l.contains(needle) {
                return l;
            }
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} after {timeout:?}; log:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Echo `total` bytes off the guest's UDP port 7 in `size`-byte datagrams from `sockets`
/// source sockets, checking every byte; lost datagrams are sent again. Returns
/// (datagrams, retransmissions).
fn udp_echo(ns: &TestNs, total: usize, size: usize, sockets: usize) -> (usize, usize) {
    let name = ns.name.clone();
    let handle = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns");
        // SAFETY: moves only this helper thread into the test's namespace.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
            0
        );
        let socks: Vec<UdpSocket> = (0..sockets)
            .map(|_| {
                let s = UdpSocket::bind("10.42.0.1:0").expect("bind");
                s.connect("10.42.0.10:7").expect("connect");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        let count = total.div_ceil(size);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut payload = |seq: u64| -> Vec<u8> {
            let mut p = seq.to_be_bytes().to_vec();
            while p.len() < size {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                p.extend_from_slice(&seed.to_le_bytes());
            }
            p.truncate(size);
            p
        };
        let mut retrans = 0;
        let window = 32;
        let mut seq = 0u64;
        while (seq as usize) < count {
            let batch: Vec<(u64, Vec<u8>)> = (seq..(seq + window).min(count as u64))
                .map(|s| (s, payload(s)))
                .collect();
            let mut pending: BTreeMap<u64, Vec<u8>> = batch.into_iter().collect();
            let mut tries = 0;
            while !pending.is_empty() {
                assert!(
                    tries < 20,
                    "datagrams {:?} never came back",
                    pending.keys().collect::<Vec<_>>()
                );
                if tries > 0 {
                    retrans += pending.len();
                }
                for (s, p) in &pending {
                    socks[*s as usize % sockets].send(p).expect("send");
                }
                let mut buf = vec![0u8; 65536];
                let deadline = Instant::now() + Duration::from_millis(500);
                let mut fds: Vec<libc::pollfd> = socks
                    .iter()
                    .map(|s| libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(s),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                while !pending.is_empty() && Instant::now() < deadline {
                    // SAFETY: fds is a valid array of pollfd for its length.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
                    for (i, pfd) in fds.iter_mut().enumerate() {
                        if pfd.revents & libc::POLLIN == 0 {
                            continue;
                        }
                        pfd.revents = 0;
                        while let Ok(n) = socks[i].recv(&mut buf) {
                            let s = u64::from_be_bytes(buf[..8].try_into().expect("seq"));
                            if let Some(p) = pending.get(&s) {
                                assert_eq!(&buf[..n], &p[..], "echo of datagram {s} differs");
                                pending.remove(&s);
                            }
                        }
                    }
                }
                tries += 1;
            }
            seq += window;
        }
        (count, retrans)
    });
    handle.join().expect("echo thread")
}

/// Every datagram came back byte for byte (udp_echo checks that); losses it made up for by
/// sending again stay under 1 in 50 (a window of 32 in flight on a loopback-like path loses
/// nothing when the data path keeps up), and the figure is reported.
fn check_loss(what: &str, datagrams: usize, retrans: usize) {
    common::report::figure(what, format!("{datagrams} datagrams, {retrans} sent again"));
    assert!(
        retrans * 50 <= datagrams,
        "{what}: {retrans} of {datagrams} datagrams had to be sent again"
    );
}

#[test]
fn ping_a_thousand_times_and_echo_ten_megabytes() {
    if skip() {
        return;
    }
    let vm = boot("net1", "ipv4 = \"10.42.0.10/24\"", 1500);
    let out = vm.ns.ok("ping -q -c 1000 -i 0.002 -W 2 10.42.0.10");
    assert!(
        out.contains("1000 packets transmitted, 1000 received"),
        "{out}"
    );
    let (datagrams, retrans) = udp_echo(&vm.ns, 10 * 1024 * 1024, 1400, 4);
    check_loss("10 MB UDP echo", datagrams, retrans);
    common::backend::check(
        &vm.log(),
        common::backend::vhost_opens_here(),
        &common::backend::fds_of(vm.pid),
    );
    assert!(
        !vm.log().contains("anti-spoofing is off"),
        "anti-spoofing rules must be in place: {}",
        vm.log()
    );
    let tap = volt::config::tap_name(&volt::config::vm_uuid("web"), 0);
    let rules = vm.ns.ok(&format!("nft list chain bridge volt port-{tap}"));
    assert!(
        rules.contains("ether saddr != 52:54:00:3a:c9:a5")
            && rules.contains("ip saddr != 10.42.0.10"),
        "{rules}"
    );
}

#[test]
fn jumbo_frames_with_mtu_9000() {
    if skip() {
        return;
    }
    let vm = boot("jumbo", "ipv4 = \"10.42.0.10/24\"\nmtu = 9000", 9000);
    vm.wait_log("mtu=9000", Duration::from_secs(5));
    let out = vm.ns.ok("ping -c 3 -i 0.2 -M do -s 8972 10.42.0.10");
    common::ping::assert_all(&out, 3);
    let (datagrams, retrans) = udp_echo(&vm.ns, 2 * 1024 * 1024, 8972, 2);
    check_loss("2 MB UDP echo in 8972-byte datagrams", datagrams, retrans);
}

#[test]
fn multiqueue_spreads_traffic_over_every_queue() {
    if skip() {
        return;
    }
    let vm = boot("mq", "ipv4 = \"10.42.0.10/24\"\nmultiqueue = 4", 1500);
    // The guest notifies by event index, as Linux does: the announcement acknowledged after
    // VQ_PAIRS_SET is the control queue's second command, which reaches the device only if
    // the queue asked for that kick (avail_event) after answering the first.
    vm.wait_log("queues=4 event_idx=on", Duration::from_secs(5));
    vm.wait_log(
        "eth0: the guest announced itself on the link",
        Duration::from_secs(10),
    );
    let (datagrams, retrans) = udp_echo(&vm.ns, 4 * 1024 * 1024, 1000, 64);
    check_loss("4 MB UDP echo over 64 sockets", datagrams, retrans);
    let name = vm.ns.name.clone();
    let stats = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns");
        // SAFETY: moves only this helper thread into the test's namespace.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
            0
        );
        let s = UdpSocket::bind("10.42.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut buf = [0u8; 512];
        for _ in 0..5 {
            s.send_to(b"stats", "10.42.0.10:5").expect("send");
            if let Ok(n) = s.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        panic!("no stats reply");
    })
    .join()
    .expect("stats");
    let rxq: Vec<u64> = stats
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rxq="))
        .expect("rxq")
        .split(',')
        .map(|n| n.trim().parse().expect("count"))
        .collect();
    assert_eq!(rxq.len(), 4, "{stats}");
    assert!(
        rxq.iter().all(|n| *n > 0),
        "every RX queue must carry traffic: {stats}"
    );
}

#[test]
fn the_guest_announces_itself_when_its_link_comes_up() {
    if skip() {
        return;
    }
    // The bridge's kernel learns addresses from gratuitous ARP only with arp_accept (the
    // default ignores unsolicited ARP for unknown neighbours). Nothing is sent to the guest
    // before the check: the entry can only come from the guest's announcement.
    let vm = boot_with("announce", "ipv4 = \"10.42.0.10/24\"", 1500, |ns| {
        ns.ok("sysctl -qw net.ipv4.conf.volt0.arp_accept=1");
    });
    let mac = "52:54:00:3a:c9:a5"; // derived from the VM name "web"
    let start = Instant::now();
    loop {
        let neigh = vm.ns.ok("ip neigh show 10.42.0.10 dev volt0");
        if neigh.contains(mac) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no neighbour entry from a gratuitous ARP: {neigh:?}; log:\n{}",
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The device asked with VIRTIO_NET_S_ANNOUNCE; the guest acknowledged on the control queue.
    vm.wait_log(
        "eth0: the guest announced itself on the link",
        Duration::from_secs(10),
    );
}

/// A macvtap NIC (bridge mode) on a veth parent whose other end lives in a second namespace:
/// the owner creates the macvtap and its /dev/tap<ifindex>, the VMM opens that device, and
/// the far end pings the guest through the parent.
#[test]
fn a_macvtap_nic_carries_pings_from_the_far_end_of_its_parent() {
    if skip() {
        return;
    }
    let far = TestNs::new("mvtfar");
    let far_name = far.name.clone();
    let vm = boot_nic(
        "mvt",
        "mode = \"macvtap\"\nparent = \"mvp0\"\nmacvtap_mode = \"bridge\"\nzone = \"volt0\"\nipv4 = \"10.42.0.10/24\"",
        1500,
        |ns| {
            ns.ok(&format!(
                "ip link add mvp0 type veth peer name mvp1 && ip link set mvp1 netns {far_name} && ip link set mvp0 up"
            ));
            far.ok("ip addr add 10.42.0.50/24 dev mvp1 && ip link set mvp1 up");
        },
    );
    let log = vm.log();
    let mvt = volt::config::tap_name(&volt::config::vm_uuid("web"), 0).replace("tap-", "mvt-");
    assert!(log.contains(&format!("eth0: opened {mvt}")), "{log}");
    let kind = vm.ns.ok(&format!("ip -d -o link show {mvt}"));
    assert!(kind.contains("macvtap") && kind.contains("mvp0"), "{kind}");
    let ping = far.ok("ping -c 5 -i 0.2 -W 2 10.42.0.10");
    assert!(ping.contains(" 0% packet loss"), "{ping}");
}
