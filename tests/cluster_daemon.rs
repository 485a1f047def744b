//! `volt cluster run` itself, one host, in a network namespace this test creates: a veth
//! underlay, the bridge volt0, and an etcd member of its own on the namespace's loopback.
//! What it shows, in order:
//! - a host that defines the shared network otherwise (another subnet, container range)
//!   already in the cluster: this host refuses to join, naming both definitions;
//! - a workload on volt0 (uid 65534) sends UDP to a peer's VXLAN port and TCP to its etcd
//!   port, and UDP to this host's own VXLAN port: the guard (table `inet volt-cluster`)
//!   drops them, counted, and the peer sees nothing; this host's own VXLAN traffic reaches
//!   it;
//! - this host's record deleted from the store by hand (its lease alive) is written again,
//!   said once;
//! - after a crash with the record gone, the start takes a new lease and this host's address
//!   and DHCP block move to it (they outlive the old lease);
//! - a VM that runs here while another host holds its name and address (a partition
//!   longer than the TTL): the conflicts are said once, shown by `volt cluster status`, and
//!   claimed once the other host lets go;
//! - a static container address inside another host's DHCP block is warned of, once;
//! - a stop while a link is up keeps the lease and the DHCP drop-in; so does a stop while
//!   only a workload without NICs holds a name (systemd not being there to ask);
//! - after a crash and a VNI change, the old VXLAN port (left enslaved, its filter chains
//!   about to go) is removed at start; after a crash and another network shared instead,
//!   what the overlay put on the old bridge (this host's address, routes and neighbour
//!   entries, networkd drop-ins) and its claims there are removed, the admin's own route,
//!   neighbour entry and address kept; once the shared network's bridge is the admin's
//!   (`create_bridge = false`), no DHCP block is claimed there and no DHCP drop-in written,
//!   and the block claim and drop-in an earlier run left go; the ports, the filter and the
//!   overlay's addresses go when the cluster file is gone;
//! - a start that fails halfway (no DHCP block left for this host) takes back its VXLAN port
//!   and filter and ends its lease.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::netns::TestNs;

const ETCD: &str = "http://127.0.0.1:2379";

fn skip() -> bool {
    common::skip(common::netns::skip_reason(), false)
        || common::skip(common::etcd::skip_reason(), false)
        || common::skip_without_tool("nft", "--version", "nftables")
        || common::skip_without_tool("etcdctl", "version", "etcd-client")
}

/// This host's cluster.toml, sharing `network` with VNI `vni`.
fn cluster_toml(network: &str, vni: u32) -> String {
    format!(
        "host = \"a\"\nunderlay = \"192.168.77.1\"\nlease_ttl = 30\n[etcd]\nendpoints = [\"{ETCD}\"]\ntimeout_ms = 2000\n[[network]]\nname = \"{network}\"\nvni = {vni}\n"
    )
}

struct Host {
    ns: TestNs,
    root: tempfile::TempDir,
    logs: tempfile::TempDir,
    runs: usize,
}

impl Host {
    fn etcdctl(&self, args: &str) -> String {
        self.ns
            .ok(&format!("ETCDCTL_API=3 etcdctl --endpoints {ETCD} {args}"))
    }

    /// Share `network` with VNI `vni`, or (None) remove the cluster file.
    fn write_config(&self, shared: Option<(&str, u32)>) {
        let path = self.root.path().join("etc/volt/cluster.toml");
        match shared {
            Some((network, vni)) => {
                std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
                std::fs::write(&path, cluster_toml(network, vni)).expect("write");
            }
            None => std::fs::remove_file(&path).expect("rm"),
        }
    }

    /// Start the daemon; returns its PID and its log file.
    fn start(&mut self) -> (i32, PathBuf) {
        self.runs += 1;
        let log = self.logs.path().join(format!("run{}.log", self.runs));
        let out = std::fs::File::create(&log).expect("log");
        let root = self.root.path().display().to_string();
        let pid = self.ns.spawn(
            env!("CARGO_BIN_EXE_volt"),
            &["--root", &root, "cluster", "run"],
            &[("VOLT_LOG", "info")],
            out,
        );
        (pid as i32, log)
    }

    /// The lease `key` is attached to (0: none, or no such key).
    fn lease_of(&self, key: &str) -> i64 {
        let out = self.etcdctl(&format!("get {key} -w json"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl's json");
        v["kvs"][0]["lease"].as_i64().unwrap_or(0)
    }

    /// The IPv4 addresses, routes and neighbour entries of `dev`.
    fn state(&self, dev: &str) -> String {
        self.ns.ok(&format!(
            "ip -4 addr show dev {dev}; ip route show dev {dev}; ip neigh show dev {dev}"
        ))
    }

    /// `volt --root ROOT ARGS` in the namespace, for a claim or a release (both idempotent):
    /// tried again for a while when it fails, since a write that waits for etcd's fsync on a
    /// busy disk can outlast the 2 s `timeout_ms`.
    fn volt(&self, args: &str) {
        let script = format!(
            "{} --root {} {args}",
            env!("CARGO_BIN_EXE_volt"),
            self.root.path().display()
        );
        let start = Instant::now();
        while !self.ns.sh(&script).status.success() {
            if start.elapsed() > Duration::from_secs(30) {
                self.ns.ok(&script);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn links(&self) -> String {
        self.ns.ok("ip -o link show")
    }

    fn tables(&self) -> String {
        self.ns.ok("nft list tables")
    }
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Wait (bounded) until `cond`; on timeout, panic with `what` and the log.
fn wait(what: &str, log: &Path, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}; the daemon said:\n{}",
            read(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether process `pid` (a child of the namespace's spawner) has ended.
fn ended(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// SIGTERM (a stop, `systemctl stop` or `restart`), and wait for the end.
fn term(pid: i32, log: &Path) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait("the daemon did not stop on SIGTERM", log, || ended(pid));
}

fn kill(pid: i32) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let start = Instant::now();
    while !ended(pid) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Peer b's underlay end (ul1 moved into a namespace of its own as 192.168.77.2, recording
/// what reaches its VXLAN port and etcd's client port in the returned file), and a workload
/// namespace on volt0 (10.42.0.150, its default route via the gateway).
fn workload_and_peer(h: &Host) -> (PeerLog, TestNs) {
    let mut peer = TestNs::new("cp");
    h.ns.ok(&format!("ip link set ul1 netns {}", peer.name));
    peer.ok("ip addr add 192.168.77.2/24 dev ul1 && ip link set ul1 up");
    let file = h.logs.path().join("peer.log");
    let out = std::fs::File::create(h.logs.path().join("peer.out")).expect("log");
    peer.spawn(
        "/usr/bin/python3",
        &["-c", PEER, &file.display().to_string()],
        &[],
        out,
    );
    let start = Instant::now();
    while !std::fs::read_to_string(&file).is_ok_and(|s| s.contains("ready")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the peer never listened: {}",
            read(&h.logs.path().join("peer.out"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let workload = TestNs::new("cw");
    h.ns.ok(&format!("ip link add wl0 type veth peer name wl1 && ip link set wl1 netns {} && ip link set wl0 master volt0 up", workload.name));
    workload.ok("ip addr add 10.42.0.150/24 dev wl1 && ip link set wl1 up && ip route add default via 10.42.0.1");
    (PeerLog { file, _ns: peer }, workload)
}

/// What reached the peer (its namespace lives as long as this).
struct PeerLog {
    file: PathBuf,
    _ns: TestNs,
}

impl PeerLog {
    fn path(&self) -> &Path {
        &self.file
    }
}

/// The peer: each datagram to UDP 4789 and each connection to TCP 2379, a line each.
const PEER: &str = "import socket, select, sys
out = open(sys.argv[1], 'a', buffering=1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('192.168.77.2', 4789))
t = socket.socket()
t.bind(('192.168.77.2', 2379))
t.listen(8)
out.write('ready\\n')
while True:
    for s in select.select([u, t], [], [])[0]:
        if s is u:
            d, a = u.recvfrom(65535)
            out.write('udp %s %r\\n' % (a[0], d))
        else:
            c, a = t.accept()
            out.write('tcp %s\\n' % a[0])
            c.close()
";

#[test]
fn the_daemon_repairs_its_record_and_leaves_nothing_unfiltered() {
    if skip() {
        return;
    }
    let mut ns = TestNs::new("cd");
    ns.ok("ip link add ul0 type veth peer name ul1 && ip addr add 192.168.77.1/24 dev ul0 && ip link set ul1 up && ip link set ul0 up");
    ns.bridge("volt0", "10.42.0.1/24", 1450);
    let data = tempfile::tempdir().expect("etcd dir");
    let etcd_log = std::fs::File::create(data.path().join("etcd.log")).expect("log");
    let dir = format!("--data-dir={}", data.path().join("m").display());
    ns.spawn(
        "etcd",
        &[
            "--name=m",
            &dir,
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=m=http://127.0.0.1:2380",
            "--log-level=warn",
        ],
        &[],
        etcd_log,
    );
    let mut h = Host {
        ns,
        root: tempfile::tempdir().expect("root"),
        logs: tempfile::tempdir().expect("logs"),
        runs: 0,
    };
    let start = Instant::now();
    while !h
        .ns
        .sh(&format!(
            "ETCDCTL_API=3 etcdctl --endpoints {ETCD} put /volt-test/ping 1"
        ))
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "etcd never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    h.write_config(Some(("volt0", 42)));
    // A host already in the cluster defines volt0 otherwise (another subnet and container
    // range): this host refuses to join, naming both definitions, and makes nothing.
    h.etcdctl(r#"put /volt/hosts/b '{"name":"b","underlay":"192.168.77.2","vxlan_port":4789,"since":1,"networks":[{"name":"volt0","vni":42,"subnet":"10.43.0.0/24","gateway":"10.43.0.1","container_range":"10.43.0.100-10.43.0.254","mtu":1450}]}'"#);
    let (pid, log) = h.start();
    wait("the daemon did not end", &log, || ended(pid));
    let said = read(&log);
    assert!(
        said.contains("cannot join the cluster: host b defines volt0 as subnet 10.43.0.0/24, gateway 10.43.0.1, containers 10.43.0.100-10.43.0.254, MTU 1450, this host as subnet 10.42.0.0/24, gateway 10.42.0.1, containers 10.42.0.100-10.42.0.254, MTU 1450"),
        "{said}"
    );
    assert!(!h.links().contains("vx-42"), "{}", h.links());
    assert_eq!(h.etcdctl("get /volt/hosts/a"), "", "{said}");
    h.etcdctl("del /volt/hosts/b");
    let (pid, log) = h.start();
    wait("the daemon never came up", &log, || {
        read(&log).contains("is in the cluster")
    });
    assert!(h.links().contains("vx-42"), "{}", h.links());
    assert!(h.etcdctl("get /volt/hosts/a").contains("192.168.77.1"));

    // Entries like those the kernel learns (not permanent): one towards a peer (host b,
    // defining volt0 as this host does) is left alone, one towards an address that is no
    // peer's goes at the next resync; neither is logged.
    h.etcdctl(r#"put /volt/hosts/b '{"name":"b","underlay":"192.168.77.2","vxlan_port":4789,"since":1,"networks":[{"name":"volt0","vni":42,"subnet":"10.42.0.0/24","gateway":"10.42.0.1","container_range":"10.42.0.100-10.42.0.254","mtu":1450}]}'"#);
    h.ns.ok("bridge fdb add 52:54:00:aa:bb:cc dev vx-42 dst 192.168.77.2 dynamic");
    h.ns.ok("bridge fdb add 52:54:00:aa:bb:dd dev vx-42 dst 192.168.77.9 dynamic");

    // A workload on volt0 (uid 65534, an ordinary UDP socket) sends to peer b's VXLAN port
    // and etcd port: this host routes and masquerades (as networkd's IPMasquerade= does),
    // so b would take the datagram for this host's VXLAN traffic. The guard drops both,
    // counted, and what it sends to this host's own VXLAN port; this host's own VXLAN
    // traffic (a broadcast flooded to b) still leaves.
    let (peer, _workload) = workload_and_peer(&h);
    let peer_said = || std::fs::read_to_string(peer.path()).unwrap_or_default();
    h.ns.ok("sysctl -qw net.ipv4.ip_forward=1 && nft add table ip vxtest-nat && nft 'add chain ip vxtest-nat post { type nat hook postrouting priority srcnat; }' && nft add rule ip vxtest-nat post ip saddr 10.42.0.0/24 masquerade");
    wait("no flood entry towards b", &log, || {
        h.ns.ok("bridge fdb show dev vx-42")
            .contains("00:00:00:00:00:00 dst 192.168.77.2")
    });
    let send = |py: &str| {
        _workload.sh(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c \"import socket\n{py}\""
        ))
    };
    let o = send("s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor h in ('192.168.77.2', '10.42.0.1', '192.168.77.1'): s.sendto(b'INJECT', (h, 4789))\ns.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\ns.sendto(b'FLOOD', ('10.42.0.255', 9))");
    assert!(o.status.success(), "{o:?}");
    wait(
        "this host's own VXLAN traffic never reached b",
        &log,
        || peer_said().contains("FLOOD"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let said = peer_said();
    assert!(!said.contains("INJECT"), "{said}");
    let o = send("socket.create_connection(('192.168.77.2', 2379), timeout=2)");
    assert!(!o.status.success(), "a workload reached etcd's port on b");
    assert!(!said.contains("tcp "), "{said}");
    for (chain, comment, least) in [
        ("forward", "vxlan from a workload", 1),
        ("forward", "etcd from a workload", 1),
        ("input", "vxlan from a workload", 2),
    ] {
        let rules =
            h.ns.ok(&format!("nft list chain inet volt-cluster {chain}"));
        let n: u64 = rules
            .lines()
            .find(|l| l.contains(comment))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(n >= least, "{chain} {comment}: {n}\n{rules}");
    }

    // The record deleted by hand: written again, and said once.
    h.etcdctl("del /volt/hosts/a");
    wait("the host record was never written again", &log, || {
        h.etcdctl("get /volt/hosts/a").contains("192.168.77.1")
    });
    // A few resyncs later (every 5 s) nothing more is said of it.
    std::thread::sleep(Duration::from_secs(11));
    let said = read(&log);
    assert_eq!(
        said.matches("record is gone from the store").count(),
        1,
        "{said}"
    );
    assert!(!said.contains("52:54:00:aa:bb:c"), "{said}");
    assert!(!said.contains("52:54:00:aa:bb:d"), "{said}");
    let fdb = h.ns.ok("bridge fdb show dev vx-42");
    assert!(fdb.contains("52:54:00:aa:bb:cc dst 192.168.77.2"), "{fdb}");
    assert!(!fdb.contains("52:54:00:aa:bb:dd"), "{fdb}");
    h.etcdctl("del /volt/hosts/b");
    assert!(h
        .etcdctl("get /volt/hosts/a")
        .contains("\"address\":\"10.42.0."));

    // A crash, and the record deleted by hand while the lease lives: the next start finds no
    // registration to adopt and takes a new lease. This host's own address and DHCP block
    // move to it: when the old lease lapses (nothing keeps it alive), they stay.
    let old_lease = h.lease_of("/volt/hosts/a");
    kill(pid);
    h.etcdctl("del /volt/hosts/a");
    let (pid, log) = h.start();
    wait("the daemon never came up", &log, || {
        read(&log).contains("is in the cluster")
    });
    let new_lease = h.lease_of("/volt/hosts/a");
    assert!(new_lease != 0 && new_lease != old_lease, "{}", read(&log));
    let block = h
        .etcdctl("get --prefix /volt/dhcp/volt0/ --keys-only")
        .lines()
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .expect("a DHCP block");
    h.etcdctl(&format!("lease revoke {old_lease:x}"));
    for key in ["/volt/ipam/volt0/owner/host/a", block.as_str()] {
        assert_eq!(h.lease_of(key), new_lease, "{key}\n{}", read(&log));
    }

    // After a partition longer than the TTL, host b holds the name and the address of a VM
    // that runs here too (its link is up): the daemon cannot claim them, says so once, shows
    // the conflicts in `volt cluster status` and retries until b lets go.
    kill(pid);
    let root = h.root.path().to_path_buf();
    std::fs::write(root.join("k"), "kernel").expect("kernel");
    std::fs::create_dir_all(root.join("etc/volt/vms")).expect("mkdir");
    std::fs::write(
        root.join("etc/volt/vms/web.toml"),
        "kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.10\"\n",
    )
    .expect("web.toml");
    // And a DHCP container that runs here: its address is its record's `dhcp`.
    for dir in ["srv/dc/usr", "srv/dc/etc", "etc/volt/containers"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    std::fs::write(
        root.join("etc/volt/containers/dc.toml"),
        "directory = \"/srv/dc\"\ncommand = [\"/bin/true\"]\n[[network]]\n",
    )
    .expect("dc.toml");
    let plan = volt::plan::Plan::build(&volt::config::ConfigSet::load(&root));
    let link_of = |name: &str| {
        plan.workloads
            .iter()
            .find(|w| w.name == name)
            .and_then(|w| w.attachments.first())
            .map(|a| a.link.clone())
            .unwrap_or_else(|| panic!("{name}'s link"))
    };
    let (link, dc_link) = (link_of("web"), link_of("dc"));
    let record = volt::plan::Paths::new(&root).link_record(&link);
    std::fs::create_dir_all(record.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &record,
        r#"{"ipv4":"10.42.0.10/24","mac":"52:54:00:12:34:56"}"#,
    )
    .expect("link record");
    std::fs::write(
        volt::plan::Paths::new(&root).link_record(&dc_link),
        r#"{"dhcp":"10.42.0.200","mac":"52:54:00:12:34:99"}"#,
    )
    .expect("dc's link record");
    h.etcdctl(r#"put /volt/names/web '{"host":"b","kind":"vm","since":1}'"#);
    h.etcdctl(r#"put /volt/ipam/volt0/addr/10.42.0.10 '{"owner":"vm/web/eth0","host":"b","static":true,"mac":"52:54:00:65:43:21","since":1}'"#);
    h.etcdctl("put /volt/ipam/volt0/owner/vm/web/eth0 10.42.0.10");
    let (pid, log) = h.start();
    wait("the daemon never came up", &log, || {
        read(&log).contains("is in the cluster")
    });
    let status = || {
        h.ns.ok(&format!(
            "{} --root {} cluster status",
            env!("CARGO_BIN_EXE_volt"),
            root.display()
        ))
    };
    let shown = status();
    for want in [
        "CONFLICT web (vm) runs on a too, but host b holds the claim",
        "CONFLICT 10.42.0.10 on volt0 (vm/web/eth0) runs on a too, but host b holds the claim",
    ] {
        assert!(
            shown.contains(want),
            "{want:?} not in\n{shown}\n{}",
            read(&log)
        );
    }
    std::thread::sleep(Duration::from_secs(11));
    let said = read(&log);
    assert_eq!(
        said.matches("web (vm) runs here, but host b holds its claim")
            .count(),
        1,
        "{said}"
    );
    // Host b lets go: the next resync claims both, and the conflicts are gone.
    h.etcdctl("del /volt/names/web");
    h.etcdctl("del /volt/ipam/volt0/addr/10.42.0.10");
    h.etcdctl("del /volt/ipam/volt0/owner/vm/web/eth0");
    wait("the name was never claimed again", &log, || {
        h.etcdctl("get /volt/names/web").contains("\"host\":\"a\"")
            && !status().contains("CONFLICT")
    });
    assert!(h
        .etcdctl("get /volt/ipam/volt0/addr/10.42.0.10")
        .contains("\"host\":\"a\""));
    assert!(read(&log).contains("web (vm): the claim is this host's again"));
    let dc = h.etcdctl("get /volt/ipam/volt0/addr/10.42.0.200");
    assert!(
        dc.contains("\"owner\":\"container/dc/eth0\"") && dc.contains("\"host\":\"a\""),
        "the DHCP container's address was not claimed: {dc}\n{}",
        read(&log)
    );
    std::fs::remove_file(root.join("etc/volt/containers/dc.toml")).expect("rm dc.toml");
    std::fs::remove_file(volt::plan::Paths::new(&root).link_record(&dc_link))
        .expect("rm dc's link record");
    h.etcdctl("del /volt/ipam/volt0/addr/10.42.0.200");
    h.etcdctl("del /volt/ipam/volt0/owner/container/dc/eth0");
    h.etcdctl("del /volt/names/dc");
    // A static container address of this host inside host b's DHCP block: b's DHCP server
    // does not know it, so the daemon warns, once.
    h.etcdctl("put /volt/dhcp/volt0/10.42.0.116 b");
    for dir in ["srv/db/usr", "srv/db/etc", "etc/volt/containers"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    std::fs::write(root.join("srv/db/etc/os-release"), "ID=test\n").expect("os-release");
    std::fs::write(
        root.join("etc/volt/containers/db.toml"),
        "directory = \"/srv/db\"\nboot = true\n[[network]]\nipv4 = \"10.42.0.120\"\n",
    )
    .expect("db.toml");
    let warning = "10.42.0.120 on volt0, the static address of container db here, is inside host b's DHCP block 10.42.0.116-10.42.0.131";
    wait(
        "no warning of the static address in b's block",
        &log,
        || read(&log).contains(warning),
    );
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(read(&log).matches(warning).count(), 1, "{}", read(&log));
    std::fs::remove_file(root.join("etc/volt/containers/db.toml")).expect("rm db.toml");
    h.etcdctl("del /volt/dhcp/volt0/10.42.0.116");

    // A stop (SIGTERM: `systemctl restart volt-cluster`) while the VM's link is up keeps the
    // lease, and the DHCP drop-in with it: networkd goes on serving only this host's block,
    // which the kept lease still holds, not the whole container range (other hosts' blocks
    // included). Before, the drop-in went whatever happened to the lease.
    let dropin = root.join("run/systemd/network/10-volt0.network.d/70-volt-cluster-dhcp.conf");
    assert!(dropin.exists(), "no DHCP drop-in:\n{}", read(&log));
    term(pid, &log);
    let said = read(&log);
    assert!(said.contains("keeping this host's lease"), "{said}");
    assert!(
        dropin.exists(),
        "the DHCP drop-in went with a kept lease:\n{said}"
    );
    assert!(h.etcdctl("get /volt/names/web").contains("\"host\":\"a\""));
    let (pid, log) = h.start();
    wait("the daemon never came back", &log, || {
        read(&log).contains("is in the cluster")
    });
    assert!(
        read(&log).contains("adopted this host's live lease"),
        "{}",
        read(&log)
    );

    // A workload without NICs has no link record: its name claim is all it holds on the
    // lease, and a stop must keep the lease for it too (before, one without NICs lost its
    // name to a stop, and another host could start it while it ran here). systemd does not
    // run in this test, so the names this host holds stand for the units.
    std::fs::remove_file(&record).expect("rm record");
    h.volt("cluster release web");
    h.volt("cluster claim batch --kind container");
    term(pid, &log);
    let said = read(&log);
    assert!(
        h.etcdctl("get /volt/names/batch")
            .contains("\"host\":\"a\""),
        "a stop dropped the name of a workload without NICs:\n{said}"
    );
    assert!(
        said.contains("keeping this host's lease: systemd cannot say which workloads run")
            && said.contains("this host holds the names of container batch"),
        "{said}"
    );
    assert!(dropin.exists(), "{said}");
    let (pid, log) = h.start();
    wait("the daemon never came back", &log, || {
        read(&log).contains("is in the cluster")
    });
    h.volt("cluster release batch");

    // The VM is gone: nothing of it is left to hold the lease at the later stops.
    std::fs::remove_file(root.join("etc/volt/vms/web.toml")).expect("rm web.toml");

    // A crash, then the network's VNI changes: the old port goes before the new one (and its
    // filter) come up.
    kill(pid);
    h.write_config(Some(("volt0", 43)));
    let (pid, log) = h.start();
    wait("the daemon never came up again", &log, || {
        read(&log).contains("is in the cluster")
    });
    let links = h.links();
    assert!(links.contains("vx-43"), "{links}");
    assert!(!links.contains("vx-42"), "vx-42 left behind:\n{links}");
    assert!(read(&log).contains("removed vx-42"), "{}", read(&log));

    // What the daemon puts on volt0 for the overlay: its own address, and for a peer's
    // workload a route and a neighbour entry; its networkd drop-ins. Beside them, the
    // admin's own route, neighbour entry and address on volt0.
    h.etcdctl(r#"put /volt/hosts/b '{"name":"b","underlay":"192.168.77.2","vxlan_port":4789,"since":1,"networks":[{"name":"volt0","vni":43,"bridge_mac":"0a:00:00:00:00:0b","address":"10.42.0.240","subnet":"10.42.0.0/24","gateway":"10.42.0.1","container_range":"10.42.0.100-10.42.0.254","mtu":1450}]}'"#);
    h.etcdctl(r#"put /volt/ipam/volt0/addr/10.42.0.30 '{"owner":"vm/db/eth0","host":"b","static":false,"mac":"52:54:00:00:00:30","since":1}'"#);
    h.ns.ok("ip route add 10.42.0.77/32 dev volt0 proto static && ip neigh replace 10.42.0.78 lladdr 52:54:00:00:00:78 dev volt0 nud permanent && ip addr add 10.42.0.79/32 dev volt0");
    let mine = h.etcdctl("get --print-value-only /volt/ipam/volt0/owner/host/a");
    let mine = mine.trim().to_string();
    assert!(mine.starts_with("10.42.0."), "{mine}");
    let networkd = root.join("run/systemd/network");
    let dropins = [
        networkd.join("10-volt0.netdev.d/50-volt-cluster.conf"),
        networkd.join("10-volt0.network.d/70-volt-cluster-dhcp.conf"),
    ];
    wait("the overlay's state never came up on volt0", &log, || {
        let s = h.state("volt0");
        s.contains(&format!("inet {mine}/32"))
            && s.contains("10.42.0.30 proto 86")
            && s.contains("10.42.0.30 lladdr 52:54:00:00:00:30 PERMANENT proto 86")
    });
    for d in &dropins {
        assert!(d.exists(), "{} missing", d.display());
    }
    // VNI 43's datagrams reach the VXLAN driver only from b's underlay address, with b's
    // workload's or bridge's MAC inside (others would fill vx-43's forwarding table).
    wait("the underlay's source filter never came up", &log, || {
        let underlay = h.ns.ok("nft list chain ip volt-cluster prerouting");
        underlay.contains("udp dport 4789 @ih,32,24 0x2b ip saddr . @ih,112,48 != {")
            && underlay.contains("192.168.77.2 . 0xa000000000b")
            && underlay.contains("192.168.77.2 . 0x525400000030")
            && underlay.contains("comment \"vxlan source vx-43\"")
    });
    // A crash, then the cluster shares another network (lab) instead of volt0: the start
    // removes what the overlay left on volt0, and the drop-ins, and gives up this host's
    // address on volt0 in the store; the admin's own stay.
    kill(pid);
    h.ns.bridge("lab0", "10.50.0.1/24", 1450);
    std::fs::create_dir_all(root.join("etc/volt/networks")).expect("mkdir");
    std::fs::write(
        root.join("etc/volt/networks/lab.toml"),
        "bridge = \"lab0\"\nsubnet = \"10.50.0.0/24\"\n",
    )
    .expect("lab.toml");
    h.write_config(Some(("lab", 50)));
    let (pid, log) = h.start();
    wait("the daemon never came up sharing lab", &log, || {
        read(&log).contains("is in the cluster")
    });
    let s = h.state("volt0");
    for gone in [
        format!("inet {mine}/32"),
        "10.42.0.30".to_string(),
        "proto 86".to_string(),
    ] {
        assert!(
            !s.contains(&gone),
            "{gone} left on volt0:\n{s}\n{}",
            read(&log)
        );
    }
    common::assert_contains_all(
        "the admin's own on volt0",
        &s,
        &[
            "inet 10.42.0.79/32",
            "10.42.0.77 proto static",
            "10.42.0.78 lladdr 52:54:00:00:00:78 PERMANENT",
            "inet 10.42.0.1/24",
        ],
    );
    for d in &dropins {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert_eq!(
        h.etcdctl("get /volt/ipam/volt0/owner/host/a"),
        "",
        "{}",
        read(&log)
    );
    assert_eq!(
        h.etcdctl("get --prefix /volt/dhcp/volt0/ --keys-only")
            .trim(),
        ""
    );
    let lab_addr = h.etcdctl("get --print-value-only /volt/ipam/lab/owner/host/a");
    let lab_addr = lab_addr.trim().to_string();
    assert!(
        h.ns.ok("ip -4 addr show dev lab0")
            .contains(&format!("inet {lab_addr}/32")),
        "{}",
        read(&log)
    );
    h.etcdctl("del /volt/hosts/b");
    h.etcdctl("del --prefix /volt/ipam/volt0/");

    // lab0 becomes the admin's bridge (`create_bridge = false`): its DHCP server, if any, is
    // not Volt's, so this host claims no DHCP block on lab and writes no drop-in into
    // networkd's config of lab0. After a crash, the start gives up the block claim and
    // removes the DHCP drop-in the run on Volt's lab0 left; the MAC drop-in stays (the
    // network is still shared). A rewrite of the host record (its deletion by hand) claims
    // no block either.
    let lab_dhcp = networkd.join("10-lab0.network.d/70-volt-cluster-dhcp.conf");
    let lab_mac = networkd.join("10-lab0.netdev.d/50-volt-cluster.conf");
    let lab_blocks = |h: &Host| {
        h.etcdctl("get --prefix /volt/dhcp/lab/ --keys-only")
            .trim()
            .to_string()
    };
    assert!(
        lab_dhcp.exists(),
        "no DHCP drop-in for lab0:\n{}",
        read(&log)
    );
    assert!(!lab_blocks(&h).is_empty(), "no DHCP block on lab");
    kill(pid);
    std::fs::write(
        root.join("etc/volt/networks/lab.toml"),
        "bridge = \"lab0\"\nsubnet = \"10.50.0.0/24\"\ncreate_bridge = false\n",
    )
    .expect("lab.toml");
    let (pid, log) = h.start();
    wait("the daemon never came up on the admin's lab0", &log, || {
        read(&log).contains("is in the cluster")
    });
    let said = read(&log);
    assert!(
        !lab_dhcp.exists(),
        "the DHCP drop-in left on the admin's lab0:\n{said}"
    );
    assert!(lab_mac.exists(), "{said}");
    assert_eq!(lab_blocks(&h), "", "{said}");
    assert!(
        said.contains("released the DHCP block at 10.50.0."),
        "{said}"
    );
    h.etcdctl("del /volt/hosts/a");
    wait("the host record was never written again", &log, || {
        read(&log).contains("this host's record is in the store again")
    });
    let said = read(&log);
    assert!(!lab_dhcp.exists(), "{said}");
    assert_eq!(lab_blocks(&h), "", "{said}");
    assert!(!said.contains("DHCP server hands out"), "{said}");

    // A crash, then the cluster file is removed: the start fails, and takes the port and the
    // filter with it.
    kill(pid);
    h.write_config(None);
    let (pid, log) = h.start();
    wait("the daemon did not end", &log, || ended(pid));
    let links = h.links();
    assert!(!links.contains("vx-50"), "vx-50 left behind:\n{links}");
    assert!(!h.tables().contains("volt-cluster"), "{}", h.tables());
    let lab = h.ns.ok("ip -4 addr show dev lab0");
    assert!(
        !lab.contains(&format!("inet {lab_addr}/32")),
        "{lab}\n{}",
        read(&log)
    );
    assert!(!root
        .join("run/systemd/network/10-lab0.netdev.d/50-volt-cluster.conf")
        .exists());

    // No DHCP block left for this host (another holds them all): the start fails after it
    // made its port and filter, takes them back and ends its lease (not waiting for the
    // lease's 30 s).
    for first in (100..=244).step_by(16) {
        h.etcdctl(&format!("put /volt/dhcp/volt0/10.42.0.{first} b"));
    }
    h.write_config(Some(("volt0", 42)));
    let (pid, log) = h.start();
    wait("the daemon did not end", &log, || ended(pid));
    let said = read(&log);
    assert!(said.contains("no DHCP block"), "{said}");
    let links = h.links();
    assert!(
        !links.contains("vx-42"),
        "vx-42 left behind:\n{links}\n{said}"
    );
    assert!(
        !h.tables().contains("volt-cluster"),
        "{}\n{said}",
        h.tables()
    );
    assert_eq!(h.etcdctl("get /volt/hosts/a"), "", "{said}");
}
