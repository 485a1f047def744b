//! The attach policy on real links, in namespaces the test creates, with a configuration
//! root in a temporary directory: what `volt link up|down` (the link owner units) and the
//! container start do. A container's veth port gets the same anti-spoofing rules as a VM's
//! TAP; rules that cannot be installed fail the link (and remove it), so the workload does
//! not start; `volt link down` of a `direct` NIC removes its rules; links Volt does not own
//! are refused with a message naming them and survive.

mod common;

use std::path::Path;
use std::process::Output;

use common::netns::{skip_reason, TestNs};
use volt::attach::{Attach, AttachError};
use volt::net::antispoof;
use volt::net::ipam::{Ask, Owner, Request};

fn skip() -> bool {
    common::skip(skip_reason(), false) || common::skip_without_tool("nft", "--version", "nftables")
}

/// A configuration root holding `files` (relative path, text).
fn root(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("root");
    for (rel, text) in files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    dir
}

const CT: &str = "directory = \"/srv/ct\"\ncommand = [\"/bin/true\"]\n[[network]]\nbridge = \"volt0\"\nipv4 = \"10.42.0.150/24\"\n";
const VM_DIRECT: &str = "kernel = \"/boot/guest\"\n[[network]]\nmode = \"direct\"\nbridge = \"volt0\"\nipv4 = \"10.42.0.10/24\"\n";

fn veth_of(ct: &str) -> (String, String) {
    volt::config::veth_names(ct)
}

fn tap_of(vm: &str) -> String {
    volt::config::tap_name(&volt::config::vm_uuid(vm), 0)
}

fn up(ns: &TestNs, root: &Path, link: &str) -> Result<(), String> {
    let (root, link) = (root.to_path_buf(), link.to_string());
    ns.run(move || {
        Attach::load(&root)
            .up(&link)
            .map(|_| ())
            .map_err(|e| match e {
                AttachError::Antispoof { .. } => format!("antispoof: {}", volt::error_chain(&e)),
                e => volt::error_chain(&e),
            })
    })
}

/// `volt <args>` with the root, inside `ns`.
fn volt(ns: &TestNs, root: &Path, args: &str) -> Output {
    ns.sh(&format!(
        "VOLT_ROOT={} {} {args}",
        root.display(),
        env!("CARGO_BIN_EXE_volt")
    ))
}

/// `volt link <verb> <link>` with the root, inside `ns` (what the owner units run).
fn volt_link(ns: &TestNs, root: &Path, verb: &str, link: &str) -> Output {
    volt(ns, root, &format!("link {verb} '{link}'"))
}

/// `volt <args>` that must succeed; its stdout.
fn volt_ok(ns: &TestNs, root: &Path, args: &str) -> String {
    let o = volt(ns, root, args);
    assert!(
        o.status.success(),
        "volt {args}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn exists(ns: &TestNs, link: &str) -> bool {
    ns.sh(&format!("ip link show dev {link}")).status.success()
}

fn chain(ns: &TestNs, port: &str) -> String {
    ns.ok(&format!("nft list chain bridge volt port-{port}"))
}

/// `port` is pinned to `mac`: a static, sticky forwarding entry on `bridge`, and no unknown
/// unicast flooded to it.
fn assert_pinned(ns: &TestNs, port: &str, bridge: &str, mac: &str) {
    let flags = ns.ok(&format!("bridge -d link show dev {port}"));
    assert!(
        flags.contains("flood off") && flags.contains("learning off"),
        "{flags}"
    );
    let fdb = ns.ok(&format!("bridge fdb show dev {port}"));
    assert!(
        fdb.contains(&format!("{mac} sticky master {bridge} static")),
        "{fdb}"
    );
}

#[test]
fn a_container_veth_port_gets_the_rules_and_link_down_removes_them() {
    if skip() {
        return;
    }
    let host = TestNs::new("atct");
    // lab has no DHCP server of Volt's: a workload may be its server; and a broadcast limit
    // of its own.
    let r = root(&[
        ("etc/volt/containers/ct.toml", CT),
        (
            "etc/volt/networks/lab.toml",
            "bridge = \"lab0\"\nsubnet = \"10.60.0.0/24\"\ndhcp = false\nbroadcast_limit = 300\n",
        ),
        (
            "etc/volt/containers/srv.toml",
            "directory = \"/srv/srv\"\ncommand = [\"/bin/true\"]\n[[network]]\nbridge = \"lab0\"\nipv4 = \"10.60.0.150/24\"\n",
        ),
    ]);
    let (h, c) = veth_of("ct");
    up(&host, r.path(), &h).expect("up");
    assert!(exists(&host, &h) && exists(&host, &c));
    let mac = volt::config::nic_mac(&volt::config::vm_uuid("ct"), "eth0", 0);
    assert_pinned(&host, &h, "volt0", &mac.to_string());
    // The host's replies waiting for a neighbour on Volt's bridge are bounded.
    for fam in ["ipv4", "ipv6"] {
        if !std::path::Path::new(&format!("/proc/sys/net/{fam}")).exists() {
            continue;
        }
        let q = host.ok(&format!("sysctl -n net.{fam}.neigh.volt0.unres_qlen_bytes"));
        assert_eq!(q.trim(), "8192", "{fam}");
    }
    let rules = chain(&host, &h);
    let server = "udp dport 68 counter packets 0 bytes 0 drop";
    for want in [
        format!("ether saddr != {mac}"),
        "ip saddr != 10.42.0.150".to_string(),
        "arp saddr ip != { 0.0.0.0, 10.42.0.150 }".to_string(),
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 @th,288,48"
            .to_string(),
        server.to_string(),
        "vlan id 0".to_string(),
        "ether type 8021ad".to_string(),
        "icmpv6 type nd-router-advert".to_string(),
        "ether type != { ip, arp, ip6 }".to_string(),
        "limit rate over 2000/second burst 2000 packets".to_string(),
    ] {
        assert!(rules.contains(&want), "{want:?} missing:\n{rules}");
    }
    let (srv, _) = veth_of("srv");
    up(&host, r.path(), &srv).expect("up srv");
    let lab = chain(&host, &srv);
    assert!(
        lab.contains("ip saddr != 10.60.0.150") && !lab.contains(server),
        "{lab}"
    );
    assert!(
        lab.contains("limit rate over 300/second burst 300 packets"),
        "{lab}"
    );
    assert_eq!(
        volt_link(&host, r.path(), "down", &srv).status.code(),
        Some(0)
    );
    let down = volt_link(&host, r.path(), "down", &h);
    assert!(down.status.success(), "{down:?}");
    assert!(!host.run({
        let h = h.clone();
        move || antispoof::installed(&h)
    }));
    assert!(!exists(&host, &h) && !exists(&host, &c));
}

#[test]
fn rules_that_cannot_be_installed_fail_the_link_and_remove_it() {
    if skip() {
        return;
    }
    let host = TestNs::new("atfc");
    // Someone else's `ports` map of another type in Volt's table: nft refuses ours.
    host.ok("nft add table bridge volt && nft add map bridge volt ports '{ type ether_addr : verdict; }'");
    let r = root(&[
        ("etc/volt/containers/ct.toml", CT),
        ("etc/volt/vms/vm.toml", VM_DIRECT),
    ]);
    let (h, c) = veth_of("ct");
    let e = up(&host, r.path(), &h).expect_err("the container's link must fail");
    assert!(e.starts_with("antispoof: ") && e.contains(&h), "{e}");
    assert!(
        !exists(&host, &h) && !exists(&host, &c),
        "the pair was left behind"
    );
    let tap = tap_of("vm");
    let e = up(&host, r.path(), &tap).expect_err("the VM's link must fail");
    assert!(e.starts_with("antispoof: ") && e.contains(&tap), "{e}");
    assert!(!exists(&host, &tap), "the TAP was left behind");
    assert!(!r.path().join(format!("run/volt/links/{tap}.json")).exists());
    // What the owner unit runs fails too (so BindsTo= keeps the workload from starting).
    let o = volt_link(&host, r.path(), "up", &h);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{o:?}");
    assert!(err.contains("anti-spoofing") && err.contains(&h), "{err}");
}

#[test]
fn a_direct_nic_has_rules_until_its_owner_takes_the_link_down() {
    if skip() {
        return;
    }
    let host = TestNs::new("atdir");
    let r = root(&[("etc/volt/vms/vm.toml", VM_DIRECT)]);
    let tap = tap_of("vm");
    up(&host, r.path(), &tap).expect("up");
    assert!(host
        .ok(&format!("ip -o link show dev {tap}"))
        .contains("master volt0"));
    assert!(chain(&host, &tap).contains("ip saddr != 10.42.0.10"));
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.path().join(format!("run/volt/links/{tap}.json"))).expect("record"),
    )
    .expect("json");
    let mac = record["mac"].as_str().expect("the guest's MAC");
    assert_pinned(&host, &tap, "volt0", mac);
    // volt-tap@'s ExecStopPost=.
    let down = volt_link(&host, r.path(), "down", &tap);
    assert!(down.status.success(), "{down:?}");
    host.ok(&format!(
        "! nft list chain bridge volt port-{tap} 2>/dev/null"
    ));
    assert!(!exists(&host, &tap));
}

fn refused(ns: &TestNs, root: &Path, link: &str) {
    let o = volt_link(ns, root, "down", link);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "link down {link:?} succeeded: {o:?}");
    assert!(
        err.contains(&format!("{link} is not a link Volt owns")),
        "{link}: {err}"
    );
}

#[test]
fn link_down_refuses_links_volt_does_not_own() {
    if skip() {
        return;
    }
    let host = TestNs::new("atown");
    let r = root(&[("etc/volt/vms/vm.toml", VM_DIRECT)]);
    // An unrelated bridge, the shared bridge, an unrelated veth pair (named like one of ours).
    host.ok("ip link add lab9 type bridge && ip link add volt0 type bridge");
    host.ok("ip link add veth-deadbeef-h type veth peer name veth-deadbeef-c");
    host.ok("ip link add vethx type veth peer name vethy");
    for link in ["lab9", "volt0", "veth-deadbeef-h", "vethx", "lo"] {
        refused(&host, r.path(), link);
    }
    for link in [
        "lab9",
        "volt0",
        "veth-deadbeef-h",
        "veth-deadbeef-c",
        "vethx",
        "vethy",
    ] {
        assert!(exists(&host, link), "{link} was deleted");
    }
    // A planned name on a link Volt did not create (a bridge): left alone, said so.
    let tap = tap_of("vm");
    host.ok(&format!("ip link add {tap} type bridge"));
    let o = volt_link(&host, r.path(), "down", &tap);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{o:?}");
    assert!(err.contains(&format!("{tap} is a bridge")), "{err}");
    assert!(exists(&host, &tap));
    // A TAP whose workload file is gone and whose record was damaged: still Volt's (only
    // Volt writes records), taken down, and the record's problem said with its path.
    host.ok("ip tuntap add dev tap-0badc0de mode tap");
    let rec = r.path().join("run/volt/links/tap-0badc0de.json");
    std::fs::create_dir_all(rec.parent().expect("dir")).expect("mkdir");
    std::fs::write(&rec, "{ cut off").expect("write");
    let o = volt_link(&host, r.path(), "down", "tap-0badc0de");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("tap-0badc0de.json is not a valid link record"),
        "{err}"
    );
    assert!(!exists(&host, "tap-0badc0de") && !rec.exists());
    // Names that are no link names at all (a systemd instance can unescape to anything).
    for bad in ["../../etc/passwd", "/etc/volt", "a b", ""] {
        let o = volt_link(&host, r.path(), "down", bad);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{bad:?}: {o:?}");
        assert!(
            err.contains("not a valid interface name") || err.contains("bytes long"),
            "{bad:?}: {err}"
        );
    }
}

const VM_POOL: &str =
    "kernel = \"/boot/guest\"\n[[network]]\nmode = \"direct\"\nbridge = \"volt0\"\n";

fn leases(root: &Path) -> Vec<(String, String)> {
    let at = Attach::load(root);
    let mut v: Vec<(String, String)> = at
        .ipam()
        .list("volt0")
        .expect("leases")
        .into_iter()
        .map(|l| (l.owner.to_string(), l.ip.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn link_up_reconciles_gone_workloads_and_survives_a_corrupt_lease_file() {
    if skip() {
        return;
    }
    let host = TestNs::new("atipam");
    let r = root(&[
        ("etc/volt/vms/a.toml", VM_POOL),
        ("etc/volt/vms/b.toml", VM_POOL),
        ("etc/volt/vms/c.toml", VM_POOL),
    ]);
    for vm in ["a", "b", "c"] {
        up(&host, r.path(), &tap_of(vm)).expect("up");
    }
    assert_eq!(
        leases(r.path()),
        [
            ("vm/a/eth0".to_string(), "10.42.0.2".to_string()),
            ("vm/b/eth0".into(), "10.42.0.3".into()),
            ("vm/c/eth0".into(), "10.42.0.4".into()),
        ]
    );
    // a stops and its file is removed: gone. b stops and its file breaks: it may start again
    // on its last good units, so it keeps its lease. c runs on while its file is removed: its
    // link is up, so it keeps its lease until it stops.
    for vm in ["a", "b"] {
        let down = volt_link(&host, r.path(), "down", &tap_of(vm));
        assert!(down.status.success(), "{down:?}");
    }
    let vms = r.path().join("etc/volt/vms");
    std::fs::remove_file(vms.join("a.toml")).expect("rm");
    std::fs::write(vms.join("b.toml"), "vcpus = \"x\"\n").expect("break");
    std::fs::remove_file(vms.join("c.toml")).expect("rm");
    // The next link up gives a's address back to the pool and keeps b's and c's.
    std::fs::write(vms.join("d.toml"), VM_POOL).expect("write");
    up(&host, r.path(), &tap_of("d")).expect("up d");
    assert_eq!(
        leases(r.path()),
        [
            ("vm/b/eth0".to_string(), "10.42.0.3".to_string()),
            ("vm/c/eth0".into(), "10.42.0.4".into()),
            ("vm/d/eth0".into(), "10.42.0.2".into()),
        ]
    );

    // A truncated lease file: the next start moves it aside, rebuilds the leases of the
    // running workloads (c and d) from their link records, and hands out a free address.
    let file = r.path().join("var/lib/volt/ipam/volt0.json");
    let text = std::fs::read(&file).expect("read");
    std::fs::write(&file, &text[..text.len() / 3]).expect("truncate");
    std::fs::write(r.path().join("etc/volt/vms/e.toml"), VM_POOL).expect("write");
    up(&host, r.path(), &tap_of("e")).expect("up e with a corrupt lease file");
    let now = leases(r.path());
    assert!(
        now.contains(&("vm/e/eth0".to_string(), "10.42.0.3".to_string())),
        "{now:?}"
    );
    for held in ["vm/c/eth0", "vm/d/eth0"] {
        assert!(now.iter().any(|(o, _)| o == held), "{held} lost: {now:?}");
    }
    let aside = std::fs::read_dir(file.parent().expect("dir"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("volt0.json.corrupt-")
        })
        .count();
    assert_eq!(aside, 1);
}

/// A VM on volt0 at `ip`, direct (no networkd in the test's namespace).
fn vm_static(ip: &str) -> String {
    format!("{VM_POOL}ipv4 = \"{ip}/24\"\n")
}

#[test]
fn an_address_a_pool_lease_holds_is_refused_to_a_static_workload_until_the_holder_moves() {
    if skip() {
        return;
    }
    let host = TestNs::new("atdup");
    let r = root(&[("etc/volt/vms/a.toml", VM_POOL)]);
    up(&host, r.path(), &tap_of("a")).expect("up a");
    assert_eq!(
        leases(r.path()),
        [("vm/a/eth0".to_string(), "10.42.0.2".to_string())]
    );
    // Container p got the first container address from the pool (a DHCP lease recorded).
    let cts = r.path().join("etc/volt/containers");
    std::fs::create_dir_all(&cts).expect("mkdir");
    std::fs::write(
        cts.join("p.toml"),
        CT.replace("ipv4 = \"10.42.0.150/24\"\n", ""),
    )
    .expect("p");
    let at = Attach::load(r.path());
    let net = at
        .plan
        .networks
        .list
        .iter()
        .find(|n| n.name == "volt0")
        .expect("volt0")
        .clone();
    let p = Owner::container("p", "eth0");
    let held = at
        .ipam()
        .allocate(Ask::new(&net, &p, Request::Any))
        .expect("p's lease");
    assert_eq!(held.ip.to_string(), "10.42.0.100");
    // While they run, the admin gives b a's address and container c p's: both are refused,
    // naming the holder, and neither leaves a link, rules or a record behind.
    let vms = r.path().join("etc/volt/vms");
    std::fs::write(vms.join("b.toml"), vm_static("10.42.0.2")).expect("b");
    std::fs::write(cts.join("c.toml"), CT.replace("10.42.0.150", "10.42.0.100")).expect("c");
    let (ch, cc) = veth_of("c");
    for (link, ip, holder) in [
        (tap_of("b"), "10.42.0.2", "vm/a/eth0"),
        (ch.clone(), "10.42.0.100", "container/p/eth0"),
    ] {
        let e = up(&host, r.path(), &link).expect_err("two workloads on one address");
        assert!(e.contains(ip) && e.contains(holder), "{link}: {e}");
        assert!(!exists(&host, &link), "{link} was left behind");
        host.ok(&format!(
            "! nft list chain bridge volt port-{link} 2>/dev/null"
        ));
        assert!(!r
            .path()
            .join(format!("run/volt/links/{link}.json"))
            .exists());
    }
    assert!(!exists(&host, &cc));
    // a's next start moves it off the address b's file names; then b starts on it.
    for ct in ["c", "p"] {
        std::fs::remove_file(cts.join(format!("{ct}.toml"))).expect("rm");
    }
    let down = volt_link(&host, r.path(), "down", &tap_of("a"));
    assert!(down.status.success(), "{down:?}");
    up(&host, r.path(), &tap_of("a")).expect("up a again");
    up(&host, r.path(), &tap_of("b")).expect("up b");
    assert_eq!(
        leases(r.path()),
        [
            ("vm/a/eth0".to_string(), "10.42.0.3".to_string()),
            ("vm/b/eth0".into(), "10.42.0.2".into()),
        ]
    );
}

#[test]
fn a_lease_on_a_network_the_nic_has_left_goes_back_to_its_pool() {
    // Pure file work: no links, no namespace.
    let r = root(&[
        (
            "etc/volt/networks/lab.toml",
            "bridge = \"lab0\"\nsubnet = \"10.50.0.0/24\"\ngateway = \"10.50.0.1\"\n",
        ),
        ("etc/volt/vms/web.toml", VM_POOL),
    ]);
    let at = Attach::load(r.path());
    assert!(at.errors().is_empty(), "{:?}", at.errors());
    let web = Owner::vm("web", "eth0");
    let net = |name: &str| {
        at.plan
            .networks
            .list
            .iter()
            .find(|n| n.name == name)
            .expect("network")
            .clone()
    };
    // web's eth0 was on lab before its file moved it to volt0.
    at.ipam()
        .allocate(Ask::new(&net("lab"), &web, Request::Any))
        .expect("lease on lab");
    assert!(at.lease_alive("volt0", &web));
    assert!(!at.lease_alive("lab", &web));
    let gone = at.reconcile_leases(&net("lab")).expect("reconcile");
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(at.ipam().list("lab").expect("list").is_empty());
}

/// A host-only network's NAT follows its workloads: a port map to a VM that has no address
/// yet waits, and is made when the VM's link comes up with its lease, with no `volt net up`.
#[test]
fn a_port_map_is_made_when_its_vms_link_comes_up() {
    if skip() {
        return;
    }
    let host = TestNs::new("atnat");
    host.ok("ip link add wan0 type veth peer name wan1 && ip link set wan0 up");
    let r = root(&[
        (
            "etc/volt/networks/lab.toml",
            "bridge = \"vbr5\"\nsubnet = \"10.81.0.0/24\"\ntype = \"host-only\"\nuplink = \"wan0\"\n\
             [[port_map]]\nhost_port = 8080\ntarget = \"web\"\ntarget_port = 80\n",
        ),
        (
            "etc/volt/vms/web.toml",
            "kernel = \"/boot/guest\"\n[[network]]\nbridge = \"vbr5\"\n",
        ),
    ]);
    let at = Attach::load(r.path());
    assert!(at.errors().is_empty(), "{:?}", at.errors());
    let lab = at
        .plan
        .networks
        .list
        .iter()
        .find(|n| n.name == "lab")
        .expect("lab")
        .clone();
    let before = at.port_map_targets(&lab).expect("targets");
    assert!(before.ready.is_empty(), "{before:?}");
    assert_eq!(
        before.waiting,
        vec!["port map tcp 8080 -> web:80 waits for web to have an address on lab (a static ipv4, a reservation or a lease)"]
    );
    // By hand: the NAT without the map, which it lists as waiting (an error before).
    let by_hand = volt_ok(&host, r.path(), "net up lab");
    assert!(
        by_hand.contains("with 0 port map(s)") && by_hand.contains("8080 -> web:80 waits for web"),
        "{by_hand}"
    );
    assert!(!host.ok("nft list table ip volt").contains("dnat to"));
    let tap = tap_of("web");
    up(&host, r.path(), &tap).expect("web's link up");
    let leased = at
        .ipam()
        .list("lab")
        .expect("leases")
        .into_iter()
        .find(|l| l.owner.name == "web")
        .expect("web's lease")
        .ip;
    let rules = host.ok("nft list table ip volt");
    assert!(rules.contains(&format!("dnat to {leased}:80")), "{rules}");
    assert!(rules.contains("masquerade"), "{rules}");
    assert_eq!(
        host.ok("cat /proc/sys/net/ipv4/conf/vbr5/forwarding")
            .trim(),
        "1"
    );
    // `volt net show` tells what the host has of the network now.
    let shown: serde_json::Value =
        serde_json::from_str(&volt_ok(&host, r.path(), "net show lab -o json")).expect("json");
    let st = &shown["state"];
    assert_ne!(st["bridge"], "absent", "{shown}");
    assert_eq!(st["nat"], true, "{shown}");
    assert_eq!(st["ports"][0]["link"], tap.as_str(), "{shown}");
    assert_eq!(st["ports"][0]["altnames"][0], "web-eth0", "{shown}");
    let o = volt_link(&host, r.path(), "down", &tap);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!exists(&host, &tap));
    // The network's file removed: `volt net down lab` still removes what Volt left of it.
    std::fs::remove_file(r.path().join("etc/volt/networks/lab.toml")).expect("rm");
    let volt = |args: &str| volt(&host, r.path(), args);
    let o = volt("net down lab");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "lab: no file defines it any more; removed its NAT chains in table ip volt and bridge vbr5"
    );
    assert!(!exists(&host, "vbr5"));
    assert!(!host.sh("nft list table ip volt").status.success());
    let o = volt("net down lab");
    assert_eq!(
        o.status.code(),
        Some(1),
        "nothing left: the same error as before"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no network named \"lab\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `volt net down` of a host-only network stays down when its workloads' links go down later
/// (the refresh neither re-creates the bridge nor the NAT), and `volt net down` of a name no
/// file defines leaves a bridge another network's file uses, and refuses a broken file's name.
#[test]
fn net_down_stays_down_and_leaves_what_others_use() {
    if skip() {
        return;
    }
    let host = TestNs::new("atdown");
    host.ok("ip link add wan0 type veth peer name wan1 && ip link set wan0 up");
    let lab =
        "bridge = \"vbr6\"\nsubnet = \"10.82.0.0/24\"\ntype = \"host-only\"\nuplink = \"wan0\"\n\
               [[port_map]]\nhost_port = 8080\ntarget = \"web\"\ntarget_port = 80\n";
    let r = root(&[
        ("etc/volt/networks/lab.toml", lab),
        (
            "etc/volt/vms/web.toml",
            "kernel = \"/boot/guest\"\n[[network]]\nbridge = \"vbr6\"\n",
        ),
    ]);
    let volt = |args: &str| volt(&host, r.path(), args);
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let tap = tap_of("web");
    up(&host, r.path(), &tap).expect("web's link up");
    assert!(host.ok("nft list table ip volt").contains("dnat to"));
    let o = volt("net down lab");
    assert!(o.status.success(), "{}", text(&o));
    let o = volt_link(&host, r.path(), "down", &tap);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !host.sh("nft list table ip volt").status.success(),
        "the NAT came back when a link went down"
    );
    assert!(!exists(&host, "vbr6"), "the bridge came back");

    // The bridge Volt made for lab, now used by lab2 (the file renamed): kept.
    up(&host, r.path(), &tap).expect("web's link up again");
    std::fs::rename(
        r.path().join("etc/volt/networks/lab.toml"),
        r.path().join("etc/volt/networks/lab2.toml"),
    )
    .expect("rename");
    let o = volt("net down lab");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "lab: no file defines it any more; removed its NAT chains in table ip volt"
    );
    assert!(exists(&host, "vbr6"), "lab2's bridge was deleted");

    // A broken file of that name is not gone.
    std::fs::write(r.path().join("etc/volt/networks/lab.toml"), "subnet = 7\n").expect("write");
    let o = volt("net down lab");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("network \"lab\" has errors in /etc/volt/networks/lab.toml"),
        "{}",
        text(&o)
    );
    let o = volt_link(&host, r.path(), "down", &tap);
    assert!(o.status.success(), "{}", text(&o));
}
