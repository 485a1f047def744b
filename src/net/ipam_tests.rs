//! Tests of the lease store (`ipam.rs`).
use std::collections::BTreeSet;

use super::*;
use crate::config::Network;
use proptest::prelude::*;

fn net() -> Network {
    let mut n = Network::builtin_default();
    n.reservations
        .insert("vm-web".into(), "10.42.0.10".parse().expect("ip"));
    n.reservations
        .insert("ct-db".into(), "10.42.0.150".parse().expect("ip"));
    n
}

#[test]
fn reservations_statics_and_pools() {
    let n = net();
    assert_eq!(
        pick(Ask::new(&n, &Owner::vm("web", "eth0"), Request::Any), &[])
            .expect("ok")
            .0
            .to_string(),
        "10.42.0.10"
    );
    assert_eq!(
        pick(
            Ask::new(&n, &Owner::container("db", "eth0"), Request::Any),
            &[]
        )
        .expect("ok")
        .0
        .to_string(),
        "10.42.0.150"
    );
    assert_eq!(
        pick(Ask::new(&n, &Owner::vm("api", "eth0"), Request::Any), &[])
            .expect("ok")
            .0
            .to_string(),
        "10.42.0.2"
    );
    assert_eq!(
        pick(
            Ask::new(&n, &Owner::container("c", "eth0"), Request::Any),
            &[]
        )
        .expect("ok")
        .0
        .to_string(),
        "10.42.0.100"
    );
    let configured: BTreeSet<Ipv4Addr> = ["10.42.0.2".parse().expect("ip")].into();
    assert_eq!(
        pick(
            Ask::new(&n, &Owner::vm("api", "eth0"), Request::Any).with_configured(&configured),
            &[]
        )
        .expect("ok")
        .0
        .to_string(),
        "10.42.0.3"
    );
    let e = pick(
        Ask::new(
            &n,
            &Owner::vm("api", "eth0"),
            Request::Static("10.42.0.10".parse().expect("ip")),
        ),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "10.42.0.10 on volt0 is reserved for vm-web");
    let e = pick(
        Ask::new(
            &n,
            &Owner::vm("api", "eth0"),
            Request::Static("10.42.0.1".parse().expect("ip")),
        ),
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a usable address"), "{e}");
}

#[test]
fn exhaustion_is_a_clear_error() {
    let mut n = net();
    n.vm_range = Range {
        start: "10.42.0.2".parse().expect("ip"),
        end: "10.42.0.3".parse().expect("ip"),
    };
    let leases: Vec<Lease> = ["10.42.0.2", "10.42.0.3"]
        .iter()
        .enumerate()
        .map(|(i, ip)| Lease {
            ip: ip.parse().expect("ip"),
            owner: Owner::vm(&format!("v{i}"), "eth0"),
            fixed: false,
            since: 0,
        })
        .collect();
    let e = pick(Ask::new(&n, &Owner::vm("x", "eth0"), Request::Any), &leases).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no free address left in volt0's VM pool 10.42.0.2-10.42.0.3"
    );
}

#[test]
fn owner_parse_round_trip() {
    for s in ["vm/web/eth0", "container/db/eth0"] {
        assert_eq!(s.parse::<Owner>().expect("owner").to_string(), s);
    }
    assert_eq!(
        "ct/db".parse::<Owner>().expect("owner"),
        Owner::container("db", "eth0")
    );
    assert!("host/x/y".parse::<Owner>().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn allocations_never_collide_and_stay_in_pools(ops in proptest::collection::vec((any::<bool>(), 0u8..40, any::<bool>()), 1..120)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::new(dir.path());
        let n = net();
        for (is_vm, id, release) in ops {
            let owner = if is_vm { Owner::vm(&format!("v{id}"), "eth0") } else { Owner::container(&format!("c{id}"), "eth0") };
            if release {
                ipam.release(&n.name, &owner).expect("release");
            } else {
                match ipam.allocate(Ask::new(&n, &owner, Request::Any)) {
                    Ok(l) => {
                        let pool = if is_vm { n.vm_range } else { n.container_range };
                        prop_assert!(pool.contains(l.ip) || n.reservations.values().any(|r| *r == l.ip));
                    }
                    Err(IpamError::Exhausted { .. }) => {}
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
            let leases = ipam.list(&n.name).expect("list");
            let ips: BTreeSet<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();
            prop_assert_eq!(ips.len(), leases.len(), "duplicate address in {:?}", leases);
            let owners: BTreeSet<&Owner> = leases.iter().map(|l| &l.owner).collect();
            prop_assert_eq!(owners.len(), leases.len());
            for l in &leases {
                prop_assert!(n.is_host_addr(l.ip));
                if let Some((k, _)) = n.reservations.iter().find(|(_, v)| **v == l.ip) {
                    prop_assert_eq!(k, &l.owner.reservation_key());
                }
            }
        }
    }
}

#[test]
fn allocate_is_idempotent_and_release_frees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::new(dir.path());
    let n = net();
    let o = Owner::vm("api", "eth0");
    let a = ipam
        .allocate(Ask::new(&n, &o, Request::Any))
        .expect("alloc");
    let b = ipam
        .allocate(Ask::new(&n, &o, Request::Any))
        .expect("alloc");
    assert_eq!(a.ip, b.ip);
    assert_eq!(
        ipam.release("volt0", &o).expect("release").map(|l| l.ip),
        Some(a.ip)
    );
    assert!(ipam.list("volt0").expect("list").is_empty());
    assert_eq!(ipam.networks(), vec!["volt0".to_string()]);
}

#[test]
fn corrupt_file_is_an_error_not_an_empty_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("volt0.json"), "{ not json").expect("write");
    let e = Ipam::new(dir.path()).list("volt0").unwrap_err();
    assert!(
        e.to_string()
            .ends_with("volt0.json is not a valid lease file"),
        "{e}"
    );
}

#[test]
fn a_corrupt_file_is_moved_aside_and_rebuilt_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("volt0.json");
    let ipam = Ipam::new(dir.path());
    let n = net();
    let a = ipam
        .allocate(Ask::new(&n, &Owner::vm("a", "eth0"), Request::Any))
        .expect("alloc");
    // Truncated mid-write by a full disk or a crash of something else.
    let text = std::fs::read(&path).expect("read");
    std::fs::write(&path, &text[..text.len() / 2]).expect("truncate");
    let live = a.clone();
    let ipam = Ipam::with_rebuild(dir.path(), move |net| {
        assert_eq!(net, "volt0");
        vec![live.clone()]
    });
    assert_eq!(ipam.list("volt0").expect("list"), vec![a.clone()]);
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("volt0.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(dir.path().join(&aside[0])).expect("kept"),
        text[..text.len() / 2]
    );
    assert_eq!(ipam.networks(), vec!["volt0".to_string()]);
    // The rebuilt file is valid: the next start gets another address, nothing moves again.
    let b = ipam
        .allocate(Ask::new(&n, &Owner::vm("b", "eth0"), Request::Any))
        .expect("alloc after rebuild");
    assert_ne!(a.ip, b.ip);
    assert_eq!(ipam.list("volt0").expect("list").len(), 2);
    // An empty file (the other way a file gets cut): without a rebuild source it stays an
    // error (an empty pool would hand out taken addresses); with one it is rebuilt.
    std::fs::write(&path, "").expect("empty");
    assert!(Ipam::new(dir.path()).list("volt0").is_err());
    assert_eq!(ipam.list("volt0").expect("list"), vec![a]);
}

/// One entry edited into something that is not a lease (an address out of range): the
/// file no longer parses, but the entries that still read are kept, after the running
/// workloads' addresses (which win a conflict).
#[test]
fn a_rebuild_keeps_the_entries_that_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("volt0.json");
    let ipam = Ipam::new(dir.path());
    let n = net();
    let owners = ["a", "b", "c", "d", "e"].map(|v| Owner::vm(v, "eth0"));
    let leases: Vec<Lease> = owners
        .iter()
        .map(|o| ipam.allocate(Ask::new(&n, o, Request::Any)).expect("alloc"))
        .collect();
    let text = std::fs::read_to_string(&path).expect("read");
    let bad_ip = leases[1].ip.to_string();
    let bad = text.replacen(&format!("\"{bad_ip}\""), "\"10.42.0.400\"", 1);
    // e's entry still reads, but its address is outside the network's subnet.
    let outside = leases[4].ip.to_string();
    let bad = bad.replacen(&format!("\"{outside}\""), "\"10.43.0.7\"", 1);
    assert_ne!(bad, text);
    std::fs::write(&path, &bad).expect("edit");
    // d runs, now with another address than its old entry says.
    let live = Lease {
        ip: "10.42.0.99".parse().expect("ip"),
        ..leases[3].clone()
    };
    let ipam = Ipam::with_rebuild(dir.path(), move |_| vec![live.clone()])
        .keeping_only(|_, ip| net().is_host_addr(ip));
    let got: Vec<(String, String)> = ipam
        .list("volt0")
        .expect("rebuilt")
        .iter()
        .map(|l| (l.owner.name.clone(), l.ip.to_string()))
        .collect();
    let want = |o: &str, l: &Lease| (o.to_string(), l.ip.to_string());
    assert_eq!(
        got,
        vec![
            want("a", &leases[0]),
            want("c", &leases[2]),
            ("d".into(), "10.42.0.99".into())
        ]
    );
}

#[test]
fn a_rebuild_that_cannot_be_written_leaves_the_bad_file_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("volt0.json");
    std::fs::write(&path, "{ cut off").expect("corrupt");
    // The rebuilt file cannot be written (a directory where its temporary file goes: a
    // full disk or a crash at that moment does the same).
    let (_, tmp) = crate::fsutil::temp_beside(&path);
    std::fs::create_dir(&tmp).expect("block the temporary file");
    let live = Lease {
        ip: "10.42.0.2".parse().expect("ip"),
        owner: Owner::vm("a", "eth0"),
        fixed: false,
        since: 0,
    };
    let ipam = Ipam::with_rebuild(dir.path(), move |_| vec![live.clone()]);
    assert!(ipam.list("volt0").is_err(), "the write failed");
    // Never an empty pool: the bad file is still there (an error without a rebuild source,
    // rebuilt once the write works).
    assert!(Ipam::new(dir.path()).list("volt0").is_err());
    std::fs::remove_dir(&tmp).expect("unblock");
    let leases = ipam.list("volt0").expect("rebuilt");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].ip.to_string(), "10.42.0.2");
}

#[test]
fn a_pool_lease_gives_way_to_files_that_name_its_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::new(dir.path());
    let n = net();
    let (a, b) = (Owner::vm("a", "eth0"), Owner::vm("b", "eth0"));
    let first = ipam.allocate(Ask::new(&n, &a, Request::Any)).expect("a");
    // b's file now names a's address: b is refused while a holds it, naming a.
    let e = ipam
        .allocate(Ask::new(&n, &b, Request::Static(first.ip)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&first.ip.to_string()) && e.contains("vm/a/eth0"),
        "{e}"
    );
    // a's next start (which passes b's static address as configured) moves off it.
    let configured: BTreeSet<Ipv4Addr> = [first.ip].into();
    let moved = ipam
        .allocate(Ask::new(&n, &a, Request::Any).with_configured(&configured))
        .expect("a again");
    assert_ne!(moved.ip, first.ip);
    assert_eq!(
        ipam.allocate(Ask::new(&n, &b, Request::Static(first.ip)))
            .expect("b")
            .ip,
        first.ip
    );
    // A reservation made for a lease holder moves it there; one made for another owner on
    // its address moves it off.
    let mut n2 = n.clone();
    n2.reservations
        .insert("vm-a".into(), "10.42.0.20".parse().expect("ip"));
    let reserved = ipam.allocate(Ask::new(&n2, &a, Request::Any)).expect("a");
    assert_eq!(reserved.ip.to_string(), "10.42.0.20");
    let c = Owner::vm("c", "eth0");
    let held = ipam.allocate(Ask::new(&n2, &c, Request::Any)).expect("c");
    n2.reservations.insert("vm-x".into(), held.ip);
    let again = ipam
        .allocate(Ask::new(&n2, &c, Request::Any))
        .expect("c again");
    assert_ne!(again.ip, held.ip);
}

#[test]
fn reconcile_releases_dead_owners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::new(dir.path());
    let n = net();
    for name in ["a", "b", "c"] {
        ipam.allocate(Ask::new(&n, &Owner::vm(name, "eth0"), Request::Any))
            .expect("alloc");
    }
    let gone = ipam
        .reconcile("volt0", &|o| o.name != "b")
        .expect("reconcile");
    assert_eq!(
        gone.iter()
            .map(|l| l.owner.name.as_str())
            .collect::<Vec<_>>(),
        vec!["b"]
    );
    assert_eq!(ipam.list("volt0").expect("list").len(), 2);
}

#[test]
fn record_keeps_one_lease_per_owner_and_refuses_taken_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::new(dir.path());
    let n = net();
    let db = Owner::container("app", "eth0");
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    let l = ipam
        .record(Holding::new(&n, &db, ip("10.42.0.101"), false))
        .expect("record");
    assert!(!l.fixed);
    // The same again is the same lease; a new DHCP address replaces it.
    assert_eq!(
        ipam.record(Holding::new(&n, &db, ip("10.42.0.101"), false))
            .expect("again"),
        l
    );
    ipam.record(Holding::new(&n, &db, ip("10.42.0.102"), false))
        .expect("moved");
    let leases = ipam.list("volt0").expect("list");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].ip, ip("10.42.0.102"));
    let e = ipam
        .record(Holding::new(
            &n,
            &Owner::container("other", "eth0"),
            ip("10.42.0.102"),
            false,
        ))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("already leased to container/app/eth0"),
        "{e}"
    );
    assert!(ipam
        .record(Holding::new(&n, &db, ip("10.42.0.1"), true))
        .is_err());
}

/// After a crash that outlived the cluster's claims, the claims were handed out anew in
/// another order: the local mirror follows the store (a and b swap), so port maps and
/// listings that read the lease file reach the right workload.
#[test]
fn a_mirror_follows_the_store_over_stale_local_leases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::new(dir.path());
    let n = net();
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    let (a, b) = (Owner::vm("a", "eth0"), Owner::vm("b", "eth0"));
    ipam.record(Holding::new(&n, &a, ip("10.42.0.2"), false))
        .expect("a");
    ipam.record(Holding::new(&n, &b, ip("10.42.0.3"), false))
        .expect("b");
    // The store gives b .2, then a .3.
    ipam.mirror(Holding::new(&n, &b, ip("10.42.0.2"), false))
        .expect("b's claim");
    ipam.mirror(Holding::new(&n, &a, ip("10.42.0.3"), false))
        .expect("a's claim");
    assert_eq!(
        owners_and_addresses(&ipam),
        [
            ("vm/a/eth0".to_string(), ip("10.42.0.3")),
            ("vm/b/eth0".to_string(), ip("10.42.0.2"))
        ]
    );
    // A plain record still refuses an address another owner holds.
    assert!(ipam
        .record(Holding::new(&n, &a, ip("10.42.0.2"), false))
        .is_err());
}

/// Every lease of volt0 as (owner, address), sorted.
fn owners_and_addresses(ipam: &Ipam) -> Vec<(String, Ipv4Addr)> {
    let mut got: Vec<(String, Ipv4Addr)> = ipam
        .list("volt0")
        .expect("list")
        .into_iter()
        .map(|l| (l.owner.to_string(), l.ip))
        .collect();
    got.sort();
    got
}

/// A lease file in a fresh directory where container `names[0]` holds 10.42.0.120 from the
/// pool and `names[2]` 10.42.0.121 (`fixed` or from the pool); `names[1]` holds nothing.
fn old_and_another(
    names: [&str; 3],
    fixed: bool,
) -> (tempfile::TempDir, Ipam, Network, [Owner; 3]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = Ipam::new(dir.path());
    let n = net();
    let owners = names.map(|w| Owner::container(w, "eth0"));
    ipam.record(Holding::new(&n, &owners[0], ip("10.42.0.120"), false))
        .expect("the first");
    ipam.record(Holding::new(&n, &owners[2], ip("10.42.0.121"), fixed))
        .expect("the third");
    (dir, ipam, n, owners)
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// A DHCP container's pool lease that the caller knows has ended (networkd leases its address
/// to another now) goes to the new holder in one write; a fixed lease of it, or a lease of
/// anyone but the named owner, still refuses it.
#[test]
fn a_take_over_drops_only_the_named_owners_pool_lease() {
    let (_dir, ipam, n, [old, new, _third]) = old_and_another(["old", "new", "third"], false);
    // Naming the wrong owner takes nothing.
    let e = ipam
        .take_over(Holding::new(&n, &new, ip("10.42.0.121"), false), &old)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("already leased to container/third/eth0"),
        "{e}"
    );
    let l = ipam
        .take_over(Holding::new(&n, &new, ip("10.42.0.120"), false), &old)
        .expect("take over");
    assert_eq!((l.owner.clone(), l.ip), (new.clone(), ip("10.42.0.120")));
    let owners: Vec<String> = ipam
        .list("volt0")
        .expect("list")
        .iter()
        .map(|l| l.owner.to_string())
        .collect();
    assert!(
        !owners.contains(&"container/old/eth0".to_string()) && owners.len() == 2,
        "{owners:?}"
    );
    // A fixed lease (a static address) is never taken over.
    let db = Owner::container("db", "eth0");
    ipam.record(Holding::new(&n, &db, ip("10.42.0.150"), true))
        .expect("db");
    assert!(ipam
        .take_over(Holding::new(&n, &new, ip("10.42.0.150"), false), &db)
        .is_err());
}

/// A DHCP address the file gives to a stale pool lease: that lease gives way where `stale`
/// says so of its owner, in the same locked change; a running owner's, a fixed lease, and a
/// fixed holding do not displace anything.
#[test]
fn a_stale_pool_lease_gives_way_to_a_dhcp_address() {
    let (_dir, ipam, n, [old, new, _pinned]) = old_and_another(["old", "new", "pinned"], true);
    let stale = |o: &Owner| *o != new;
    let taken =
        |r: Result<(Lease, Option<Owner>), IpamError>| matches!(r, Err(IpamError::Taken { .. }));
    // It runs: refused.
    assert!(taken(ipam.record_displacing(
        Holding::new(&n, &new, ip("10.42.0.120"), false),
        &|_| false
    )));
    // A static address never displaces; a fixed lease never gives way.
    assert!(taken(ipam.record_displacing(
        Holding::new(&n, &new, ip("10.42.0.120"), true),
        &stale
    )));
    assert!(taken(ipam.record_displacing(
        Holding::new(&n, &new, ip("10.42.0.121"), false),
        &stale
    )));
    let (l, gone) = ipam
        .record_displacing(Holding::new(&n, &new, ip("10.42.0.120"), false), &stale)
        .expect("displaced");
    assert_eq!(
        (l.owner, l.ip, gone),
        (new.clone(), ip("10.42.0.120"), Some(old))
    );
    // Nobody else's: a plain record.
    let (_, gone) = ipam
        .record_displacing(Holding::new(&n, &new, ip("10.42.0.122"), false), &stale)
        .expect("moved");
    assert_eq!(gone, None);
    assert_eq!(
        owners_and_addresses(&ipam),
        [
            ("container/new/eth0".to_string(), ip("10.42.0.122")),
            ("container/pinned/eth0".to_string(), ip("10.42.0.121"))
        ]
    );
}
