use super::*;
use crate::cluster::etcd::Kv;

fn kv(key: &str, value: &str, rev: i64) -> Kv {
    Kv {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: 7,
        create_revision: 1,
        mod_revision: rev,
    }
}

fn snap() -> Snapshot {
    let name = |n: &str, host: &str, kind: &str, rev| {
        let claim = format!(r#"{{"host":"{host}","kind":"{kind}","since":1}}"#);
        kv(&format!("/volt/names/{n}"), &claim, rev)
    };
    let addr = |ip: &str, owner: &str, host: &str, rev| {
        let claim =
            format!(r#"{{"owner":"{owner}","host":"{host}","static":false,"mac":null,"since":1}}"#);
        kv(&format!("/volt/ipam/volt0/addr/{ip}"), &claim, rev)
    };
    store::snapshot_of(
        &[
            name("web", "a", "vm", 3),
            name("db", "a", "container", 4),
            name("far", "b", "vm", 5),
            name("odd", "a", "pod", 6),
            addr("10.42.0.2", "vm/web/eth0", "a", 8),
            addr("10.42.0.3", "container/db/eth0", "a", 9),
            addr("10.42.0.4", "vm/far/eth0", "b", 10),
            addr("10.42.0.250", "host/a", "a", 11),
        ],
        12,
    )
}

fn w(kind: &str, name: &str) -> Workload {
    (kind.to_string(), name.to_string())
}

fn name(n: &str, kind: &str) -> Claim {
    Claim::Name {
        name: n.into(),
        kind: kind.into(),
    }
}

fn addr(ip: [u8; 4], owner: &str) -> Claim {
    Claim::Addr {
        net: "volt0".into(),
        ip: Ipv4Addr::from(ip),
        owner: owner.into(),
    }
}

#[test]
fn only_this_hosts_claims_of_workloads_not_at_work() {
    let s = snap();
    let all = unbacked(&s, "a", &BTreeSet::new());
    assert_eq!(
        all,
        vec![
            (name("db", "container"), 4),
            (name("web", "vm"), 3),
            (addr([10, 42, 0, 2], "vm/web/eth0"), 8),
            (addr([10, 42, 0, 3], "container/db/eth0"), 9),
        ],
        "never another host's, the host's own address or a kind Volt does not write"
    );
    let busy = BTreeSet::from([w("vm", "web")]);
    assert_eq!(
        unbacked(&s, "a", &busy),
        vec![
            (name("db", "container"), 4),
            (addr([10, 42, 0, 3], "container/db/eth0"), 9),
        ]
    );
    // A container named web does not back the VM web's claims.
    let busy = BTreeSet::from([w("container", "web"), w("container", "db")]);
    assert_eq!(
        unbacked(&s, "a", &busy),
        vec![
            (name("web", "vm"), 3),
            (addr([10, 42, 0, 2], "vm/web/eth0"), 8)
        ]
    );
}

#[test]
fn a_claim_is_due_after_the_grace_at_one_revision() {
    let mut o = Orphans::default();
    let t0 = Instant::now();
    let g = Duration::from_secs(30);
    let web = name("web", "vm");
    let db = name("db", "container");
    assert!(o.due(vec![(web.clone(), 3)], t0, g).is_empty());
    assert!(o
        .due(vec![(web.clone(), 3)], t0 + Duration::from_secs(29), g)
        .is_empty());
    // Claimed again (a start): its revision changed, so the grace starts over.
    assert!(o
        .due(vec![(web.clone(), 5)], t0 + Duration::from_secs(31), g)
        .is_empty());
    assert!(o
        .due(vec![(web.clone(), 5)], t0 + Duration::from_secs(60), g)
        .is_empty());
    assert_eq!(
        o.due(
            vec![(web.clone(), 5), (db.clone(), 4)],
            t0 + Duration::from_secs(61),
            g
        ),
        vec![(web.clone(), 5)]
    );
    // Backed for one pass (a link came up): forgotten, so it starts over.
    assert!(o.due(vec![], t0 + Duration::from_secs(62), g).is_empty());
    assert!(o
        .due(vec![(db.clone(), 4)], t0 + Duration::from_secs(100), g)
        .is_empty());
    assert_eq!(
        o.due(vec![(db.clone(), 4)], t0 + Duration::from_secs(130), g),
        vec![(db, 4)]
    );
}
