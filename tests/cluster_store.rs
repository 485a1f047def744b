//! The cluster store against real etcd (Debian's 3.4) on loopback: three "hosts" (three
//! `Cluster` handles with their own leases) claim addresses and names concurrently, a host's
//! lease ending frees its claims, quorum loss makes claims fail with a clear error and
//! nothing is handed out twice, and a TLS member with client certificates works.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use volt::cluster::etcd::Op;
use volt::cluster::store::{self, HostRecord};
use volt::cluster::{Cluster, ClusterError};
use volt::config::{parse_cluster_toml, Network};
use volt::net::ipam::{Ask, Holding, Owner, Request};

fn vm(name: &str) -> Owner {
    Owner::vm(name, "eth0")
}

fn skip() -> bool {
    common::skip(common::etcd::skip_reason(), false)
}

fn toml_text(host: &str, endpoints: &[String], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        "host = \"{host}\"\nunderlay = \"192.168.77.1\"\nlease_ttl = 30\n[etcd]\nendpoints = [{}]\ntimeout_ms = 2000\n{extra}[[network]]\nname = \"volt0\"\nvni = 42\n",
        eps.join(", ")
    )
}

fn cluster_config(host: &str, text: &str) -> volt::config::ClusterConfig {
    parse_cluster_toml(
        Path::new("/etc/volt/cluster.toml"),
        text,
        host,
        &[Network::builtin_default()],
    )
    .expect("valid cluster.toml")
}

fn config(host: &str, endpoints: &[String], extra: &str) -> volt::config::ClusterConfig {
    cluster_config(host, &toml_text(host, endpoints, extra))
}

/// Register `c` as the daemon does: a lease and the host key on it.
fn register(c: &Cluster) -> i64 {
    let lease = c.etcd.grant(30).expect("grant");
    let rec = HostRecord {
        name: c.host().into(),
        underlay: c.config.underlay,
        vxlan_port: 4789,
        since: store::now(),
        networks: Vec::new(),
    };
    c.etcd
        .put(
            &store::host_key(c.host()),
            &serde_json::to_vec(&rec).expect("json"),
            lease,
        )
        .expect("put host");
    lease
}

fn wait_writable(c: &Cluster, e: &common::etcd::Etcd) {
    let start = Instant::now();
    while c.etcd.put("/volt-test/ping", b"1", 0).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "etcd never became writable:\n{}",
            e.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One etcd member, and host `host`'s handle on it once it takes writes.
fn one_member(host: &str) -> (common::etcd::Etcd, Cluster) {
    let etcd = common::etcd::Etcd::start(1, None);
    let c = Cluster::new(&config(host, &etcd.endpoints(), "")).expect("client");
    wait_writable(&c, &etcd);
    (etcd, c)
}

#[test]
fn concurrent_claims_lease_expiry_and_quorum_loss() {
    if skip() {
        return;
    }
    let mut etcd = common::etcd::Etcd::start(3, None);
    let eps = etcd.endpoints();
    let hosts: Vec<Cluster> = ["a", "b", "c"]
        .iter()
        .map(|h| Cluster::new(&config(h, &eps, "")).expect("client"))
        .collect();
    wait_writable(&hosts[0], &etcd);
    let leases: Vec<i64> = hosts.iter().map(register).collect();
    let net = Network::builtin_default();

    // Not registered: a clear error.
    let stranger = Cluster::new(&config("d", &eps, "")).expect("client");
    let e = stranger.claim_name("x", "vm").unwrap_err().to_string();
    assert_eq!(
        e,
        "host d is not registered in the cluster (is volt-cluster.service running on it?)"
    );

    // A daemon restarting adopts its host's live lease; a second host with the same name
    // (another underlay) is refused, naming the other registration.
    assert_eq!(hosts[0].live_registration().expect("a"), Some(leases[0]));
    assert_eq!(stranger.live_registration().expect("d"), None);
    let text = toml_text("a", &eps, "").replace("192.168.77.1", "192.168.77.9");
    let clone = Cluster::new(&cluster_config("a", &text)).expect("client");
    let e = clone.live_registration().unwrap_err().to_string();
    assert!(
        e.starts_with(
            "host name a is registered from underlay 192.168.77.1, not this host's 192.168.77.9"
        ),
        "{e}"
    );

    // A name key holding something Volt did not write: an error at once that says what to
    // do (it used to spin 200 tries and then blame contention).
    hosts[0]
        .etcd
        .put(&store::name_key("junk"), b"not a claim", 0)
        .expect("put");
    let e = hosts[0].claim_name("junk", "vm").unwrap_err().to_string();
    assert!(e.contains("is not a claim Volt wrote"), "{e}");

    // 3 x 30 concurrent allocations: 90 distinct addresses, every one in the VM pool.
    let got: Vec<(String, Ipv4Addr)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for c in &hosts {
            for i in 0..30 {
                let net = &net;
                handles.push(s.spawn(move || {
                    let owner = Owner::vm(&format!("{}-{i}", c.host()), "eth0");
                    let l = c
                        .allocate(Ask::new(net, &owner, Request::Any))
                        .unwrap_or_else(|e| panic!("{owner}: {e}"));
                    (c.host().to_string(), l.ip)
                }));
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let distinct: BTreeSet<Ipv4Addr> = got.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(distinct.len(), 90, "{got:?}");
    assert!(got.iter().all(|(_, ip)| net.vm_range.contains(*ip)));
    let listed = hosts[1].list("volt0").expect("list");
    assert_eq!(listed.len(), 90);

    // The same owner again is the same address; the same owner from another host is refused.
    let a0 = got.iter().find(|(h, _)| h == "a").expect("a's").1;
    let owner = listed
        .iter()
        .find(|(l, _)| l.ip == a0)
        .map(|(l, _)| l.owner.clone())
        .expect("owner");
    let again = hosts[0]
        .allocate(Ask::new(&net, &owner, Request::Any))
        .expect("again");
    assert_eq!(again.ip, a0);
    let e = hosts[1]
        .allocate(Ask::new(&net, &owner, Request::Any))
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("{owner} already holds {a0} on volt0 on host a"));
    let e = hosts[1]
        .allocate(Ask::new(&net, &vm("static"), Request::Static(a0)))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("{a0} on volt0 is already claimed by {owner} on host a")
    );

    // Names: the same name started on all three hosts at once: exactly one wins.
    let results: Vec<Result<(), ClusterError>> = std::thread::scope(|s| {
        let hs: Vec<_> = hosts
            .iter()
            .map(|c| s.spawn(move || c.claim_name("web", "vm")))
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let winners: Vec<usize> = (0..3).filter(|i| results[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = hosts[winners[0]].host().to_string();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.to_string(), format!("web already runs on host {winner}"));
    }
    hosts[winners[0]]
        .claim_name("web", "vm")
        .expect("idempotent");

    // Host a's lease ends (as when it dies): its addresses and names are free again.
    hosts[0].etcd.revoke(leases[0]).expect("revoke");
    let left = hosts[1].list("volt0").expect("list");
    assert_eq!(left.len(), 60);
    assert!(left.iter().all(|(_, h)| h != "a"));
    let l = hosts[1]
        .allocate(Ask::new(&net, &vm("static"), Request::Static(a0)))
        .expect("a's address is free");
    assert_eq!(l.ip, a0);
    if winner == "a" {
        hosts[1].claim_name("web", "vm").expect("a's name is free");
    }

    // One member of three down: claims still work (once the other two have a leader, if
    // it took the leader with it: an election, which a loaded machine can make slow).
    etcd.members[2].stop();
    let b = &hosts[1];
    let start = Instant::now();
    let one_down = loop {
        match b.allocate(Ask::new(&net, &vm("one-down"), Request::Any)) {
            Ok(l) => break l,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(60),
                "with two of three members: {e}\n{}",
                etcd.logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    common::report::figure(
        "a claim with one member of three down, s",
        format!("{:.1}", start.elapsed().as_secs_f64()),
    );
    // Two down: no quorum, a clear error, nothing handed out.
    etcd.members[1].stop();
    let start = Instant::now();
    let e = b
        .allocate(Ask::new(&net, &vm("no-quorum"), Request::Any))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("the cluster store (etcd) cannot serve requests, so nothing can be allocated or claimed now (is a quorum of members up?): "),
        "{e}"
    );
    let e = b.claim_name("new-name", "vm").unwrap_err().to_string();
    assert!(e.contains("cannot serve requests"), "{e}");
    common::report::figure(
        "claims fail after quorum loss, s",
        format!("{:.1}", start.elapsed().as_secs_f64()),
    );
    // Quorum back: claims work again, and nothing was handed out twice.
    etcd.members[1].start();
    etcd.members[2].start();
    let start = Instant::now();
    let back = loop {
        match b.allocate(Ask::new(&net, &vm("no-quorum"), Request::Any)) {
            Ok(l) => break l,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(120),
                "claims never worked again: {e}\n{}",
                etcd.logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_ne!(back.ip, one_down.ip);
    let all = b.list("volt0").expect("list");
    let ips: BTreeSet<Ipv4Addr> = all.iter().map(|(l, _)| l.ip).collect();
    assert_eq!(ips.len(), all.len(), "an address handed out twice: {all:?}");
}

/// A dead member listed first (it accepts connections and never answers) costs the first
/// call its timeout; later calls start at the member that answered and never connect to it
/// again.
#[test]
fn calls_stick_to_the_member_that_answered() {
    if skip() {
        return;
    }
    let etcd = common::etcd::Etcd::start(1, None);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", silent.local_addr().expect("addr"));
    silent.set_nonblocking(true).expect("nonblocking");
    let mut eps = vec![dead];
    eps.extend(etcd.endpoints());
    let text = toml_text("a", &eps, "").replace("timeout_ms = 2000", "timeout_ms = 300");
    let c = Cluster::new(&cluster_config("a", &text)).expect("client");
    wait_writable(&c, &etcd);
    let mut held = Vec::new();
    let accept = |held: &mut Vec<std::net::TcpStream>| {
        while let Ok((s, _)) = silent.accept() {
            held.push(s);
        }
    };
    accept(&mut held);
    let before = held.len();
    for i in 0..5 {
        c.etcd
            .put("/volt-test/sticky", format!("{i}").as_bytes(), 0)
            .expect("put");
    }
    accept(&mut held);
    assert_eq!(
        held.len(),
        before,
        "later calls went to the dead member first again"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether the openssl command is here (it makes the test certificates); says so if not.
fn have_openssl() -> bool {
    let there = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok();
    if !there {
        common::report::skip("the openssl command is missing (needed to make test certificates)");
    }
    there
}

/// A CA (ca.pem, ca.key), a server certificate for 127.0.0.1 (server.pem, server.key) and a
/// client one (client.pem, client.key) signed by it, in a new directory.
fn make_certs() -> tempfile::TempDir {
    let certs = tempfile::tempdir().expect("tempdir");
    let d = certs.path();
    let subj = |cn: &str| format!("/CN={cn}");
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            &subj("volt-test-ca"),
        ],
    );
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &subj(name),
            ],
        );
        std::fs::write(d.join(format!("{name}.ext")), format!("{ext}\n")).expect("ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    certs
}

#[test]
fn tls_with_a_client_certificate() {
    if skip() || !have_openssl() {
        return;
    }
    let certs = make_certs();
    let d = certs.path();
    let etcd = common::etcd::Etcd::start(
        1,
        Some((
            &d.join("ca.pem"),
            &d.join("server.pem"),
            &d.join("server.key"),
        )),
    );
    let eps = etcd.endpoints();
    assert!(eps[0].starts_with("https://"));
    let tls = format!(
        "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        d.join("ca.pem").display(),
        d.join("client.pem").display(),
        d.join("client.key").display()
    );
    let c = Cluster::new(&config("a", &eps, &tls)).expect("client");
    wait_writable(&c, &etcd);
    register(&c);
    c.claim_name("web", "vm").expect("claim over TLS");
    let kv = c
        .etcd
        .get(&store::name_key("web"))
        .expect("get")
        .expect("key");
    assert!(String::from_utf8_lossy(&kv.value).contains("\"host\":\"a\""));
    // Without the client certificate the member refuses us, and the error says so.
    let no_cert = format!("ca = \"{}\"\n", d.join("ca.pem").display());
    let anon = Cluster::new(&config("b", &eps, &no_cert)).expect("client");
    let e = anon.etcd.get("/volt/names/web").unwrap_err().to_string();
    assert!(e.contains(&eps[0]), "{e}");
    // Plain HTTP to the https member: etcd 3.4 closes the connection without a word (a
    // Go net/http server answers 400), and the error says to use https://.
    let plain = eps[0].replacen("https://", "http://", 1);
    let c = Cluster::new(&config("c", &[plain], "")).expect("client");
    let e = c.etcd.get("/volt/names/web").unwrap_err().to_string();
    assert!(e.contains("use https:// for this endpoint"), "{e}");
    assert!(!e.contains("quorum"), "{e}");
}

/// https:// to a plain-HTTP member fails in the handshake: the error says what that
/// suggests, and no quorum hint, even beside a member that is down.
#[test]
fn https_to_a_plain_http_member_is_not_a_quorum_problem() {
    if skip() {
        return;
    }
    let etcd = common::etcd::Etcd::start(1, None);
    let eps = etcd.endpoints();
    wait_writable(
        &Cluster::new(&config("a", &eps, "")).expect("client"),
        &etcd,
    );
    let tls = eps[0].replacen("http://", "https://", 1);
    let down = format!("http://127.0.0.1:{}", common::etcd::free_port());
    let c = Cluster::new(&config("a", &[down, tls.clone()], "")).expect("client");
    let e = c.etcd.get("/volt/names/web").unwrap_err().to_string();
    assert!(
        e.contains(&tls) && e.contains("(an https endpoint answered by a plain-HTTP etcd, or a certificate it does not trust?)"),
        "{e}"
    );
    assert!(!e.contains("quorum"), "{e}");
    // With the member stopped, both fail as members down do.
    drop(etcd);
    let e = c.etcd.get("/volt/names/web").unwrap_err().to_string();
    assert!(e.contains("(is a quorum of members up?)"), "{e}");
}

/// A TLS file the client cannot use is named by its field and path, with what is wrong in
/// words and OpenSSL's text after it (it used to be OpenSSL's text alone).
#[test]
fn tls_file_errors_say_which_file_and_what_is_wrong() {
    if !have_openssl() {
        return;
    }
    let certs = make_certs();
    let d = certs.path();
    let eps = ["https://127.0.0.1:9".to_string()];
    let tls = |ca: &str, cert: &str, key: &str| {
        let p = |f: &str| d.join(f).display().to_string();
        let text = format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            p(ca),
            p(cert),
            p(key)
        );
        match Cluster::new(&config("a", &eps, &text)) {
            Ok(_) => panic!("{ca} {cert} {key}: no error"),
            Err(e) => volt::error_chain(&e),
        }
    };
    let p = |f: &str| d.join(f).display().to_string();
    for (files, want) in [
        (
            ("gone.pem", "client.pem", "client.key"),
            format!(
                "etcd.ca: {} cannot be read: No such file or directory",
                p("gone.pem")
            ),
        ),
        (
            ("ca.key", "client.pem", "client.key"),
            format!(
                "etcd.ca: {} is not a PEM certificate (bundle): ",
                p("ca.key")
            ),
        ),
        (
            ("ca.pem", "client.key", "client.key"),
            format!("etcd.cert: {} is not a PEM certificate: ", p("client.key")),
        ),
        (
            ("ca.pem", "client.pem", "client.pem"),
            format!("etcd.key: {} is not a PEM private key: ", p("client.pem")),
        ),
        (
            ("ca.pem", "client.pem", "server.key"),
            format!(
                "etcd.key: {} is not the key of the certificate in etcd.cert ({}): ",
                p("server.key"),
                p("client.pem")
            ),
        ),
    ] {
        let e = tls(files.0, files.1, files.2);
        assert!(e.contains(&want), "want {want:?} in\n{e}");
    }
}

/// Two hosts started at the same time with the same name (a cloned image's hostname, another
/// underlay): one registers, the other is refused naming the first one's underlay. Both
/// used to see the name free and both write it (the second silently taking over).
#[test]
fn the_same_host_name_started_twice_at_once_registers_once() {
    if skip() {
        return;
    }
    let etcd = common::etcd::Etcd::start(1, None);
    let eps = etcd.endpoints();
    let one = Cluster::new(&config("a", &eps, "")).expect("client");
    let text = toml_text("a", &eps, "").replace("192.168.77.1", "192.168.77.9");
    let two = Cluster::new(&cluster_config("a", &text)).expect("client");
    wait_writable(&one, &etcd);
    let record = |c: &Cluster| HostRecord {
        name: c.host().into(),
        underlay: c.config.underlay,
        vxlan_port: 4789,
        since: store::now(),
        networks: Vec::new(),
    };
    for round in 0..8 {
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Result<(i64, bool), ClusterError>> = std::thread::scope(|s| {
            let hs: Vec<_> = [&one, &two]
                .into_iter()
                .map(|c| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        c.register(&record(c))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let won: Vec<usize> = (0..2).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        let (winner, loser) = if won[0] == 0 {
            (&one, &two)
        } else {
            (&two, &one)
        };
        let e = results[1 - won[0]].as_ref().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "host name a is registered from underlay {}, not this host's {}",
                winner.config.underlay, loser.config.underlay
            )),
            "round {round}: {e}"
        );
        let kv = one
            .etcd
            .get(&store::host_key("a"))
            .expect("get")
            .expect("record");
        let held: HostRecord = serde_json::from_slice(&kv.value).expect("json");
        assert_eq!(held.underlay, winner.config.underlay, "round {round}");
        let (lease, adopted) = results[won[0]].as_ref().expect("winner");
        assert!(!adopted);
        // The winner registering again (a daemon restart) adopts its lease.
        assert_eq!(
            winner.register(&record(winner)).expect("again"),
            (*lease, true)
        );
        winner.etcd.revoke(*lease).expect("revoke");
    }
}

/// An address claimed before its MAC was known (`volt ipam allocate`) gets the MAC when the
/// link comes up (its owner claims it again with the MAC); an address recorded from
/// elsewhere keeps what it is (a pool lease claimed again after a lost lease is no static
/// address).
#[test]
fn a_claim_gets_its_mac_and_keeps_its_fixedness() {
    if skip() {
        return;
    }
    let (_etcd, c) = one_member("a");
    register(&c);
    let net = Network::builtin_default();
    let claim_of = |ip: Ipv4Addr| -> serde_json::Value {
        let kv = c
            .etcd
            .get(&store::addr_key("volt0", ip))
            .expect("get")
            .expect("claim");
        serde_json::from_slice(&kv.value).expect("json")
    };
    let first = c
        .allocate(Ask::new(&net, &vm("web"), Request::Any))
        .expect("allocate");
    assert_eq!(claim_of(first.ip)["mac"], serde_json::Value::Null);
    let mac: volt::config::MacAddr = "52:54:00:12:34:56".parse().expect("mac");
    let up = c
        .allocate(Ask {
            mac: Some(mac),
            ..Ask::new(&net, &vm("web"), Request::Any)
        })
        .expect("link up");
    assert_eq!(up.ip, first.ip);
    assert_eq!(claim_of(first.ip)["mac"], "52:54:00:12:34:56");
    assert_eq!(
        c.etcd
            .get(&store::owner_key("volt0", "vm/web/eth0"))
            .expect("get")
            .map(|kv| kv.value),
        Some(first.ip.to_string().into_bytes()),
        "the owner keeps its address"
    );
    // Another MAC (a conflict replaced it): corrected.
    let other: volt::config::MacAddr = "52:54:00:12:34:57".parse().expect("mac");
    c.allocate(Ask {
        mac: Some(other),
        ..Ask::new(&net, &vm("web"), Request::Any)
    })
    .expect("new mac");
    assert_eq!(claim_of(first.ip)["mac"], "52:54:00:12:34:57");
    // Without a MAC the claim keeps the one it has.
    c.allocate(Ask::new(&net, &vm("web"), Request::Any))
        .expect("again");
    assert_eq!(claim_of(first.ip)["mac"], "52:54:00:12:34:57");

    // A pool address recorded again (as after a lost lease) stays a pool address.
    let ip = Ipv4Addr::new(10, 42, 0, 50);
    let l = c
        .record(Holding {
            mac: Some(mac),
            ..Holding::new(&net, &vm("pool"), ip, false)
        })
        .expect("record");
    assert!(!l.fixed);
    assert_eq!(claim_of(ip)["static"], false);
    let s = Ipv4Addr::new(10, 42, 0, 51);
    c.record(Holding::new(&net, &vm("fixed"), s, true))
        .expect("record");
    assert_eq!(claim_of(s)["static"], true);
}

/// A daemon that registers anew while its old lease still lives (its record had gone from
/// the store, so there was no registration to adopt) claims its running workloads again,
/// and their claims move to the new lease: they outlive the old one. They used to be found
/// "already this host's" and left on the old lease, and vanished when it lapsed, while the
/// workload ran on (another host could then start it, or take its address).
#[test]
fn claims_made_again_under_a_new_lease_move_to_it() {
    if skip() {
        return;
    }
    let (_etcd, a) = one_member("a");
    let record = HostRecord {
        name: "a".into(),
        underlay: a.config.underlay,
        vxlan_port: 4789,
        since: store::now(),
        networks: Vec::new(),
    };
    let (old, adopted) = a.register(&record).expect("register");
    assert!(!adopted);
    let net = Network::builtin_default();
    let mac: volt::config::MacAddr = "52:54:00:12:34:56".parse().expect("mac");
    a.claim_name("web", "vm").expect("name");
    let l = a
        .allocate(Ask {
            mac: Some(mac),
            ..Ask::new(&net, &vm("web"), Request::Any)
        })
        .expect("address");

    // The record deleted by hand, then the daemon restarts: nothing to adopt, a new lease.
    a.etcd
        .txn(&[], &[Op::Delete(store::host_key("a"))], &[])
        .expect("delete");
    let (new, adopted) = a.register(&record).expect("register again");
    assert!(!adopted && new != old, "{old:x} {new:x}");
    // What the daemon's reclaim does for a workload that runs here.
    a.claim_name("web", "vm").expect("name again");
    a.record(Holding {
        mac: Some(mac),
        ..Holding::new(&net, &vm("web"), l.ip, l.fixed)
    })
    .expect("address again");

    // The old lease lapses (nothing keeps it alive now): the claims stay, once each.
    a.etcd.revoke(old).expect("revoke");
    for key in [
        store::name_key("web"),
        store::addr_key("volt0", l.ip),
        store::owner_key("volt0", "vm/web/eth0"),
    ] {
        let kv = a.etcd.get(&key).expect("get");
        assert_eq!(
            kv.map(|kv| kv.lease),
            Some(new),
            "{key} did not move to the new lease"
        );
    }
    let listed = a.list("volt0").expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].0.ip, l.ip);
    a.etcd.revoke(new).expect("revoke");
}

/// A claim this host holds already, claimed again (a start that finds it held), is written
/// again: its mod revision moves, so the daemon's release of a claim no workload backs (a
/// transaction on the revision it read before it looked at the workloads) fails against a
/// start that claimed meanwhile, instead of taking the claim from under it.
#[test]
fn a_claim_made_again_is_written_again() {
    if skip() {
        return;
    }
    let etcd = common::etcd::Etcd::start(1, None);
    let eps = etcd.endpoints();
    let c = Cluster::new(&config("a", &eps, "")).expect("client");
    wait_writable(&c, &etcd);
    let lease = register(&c);
    let net = Network::builtin_default();
    let at = |key: &str| {
        let kv = c.etcd.get(key).expect("get").expect("claimed");
        assert_eq!(kv.lease, lease, "{key} is on the host's lease");
        (kv.mod_revision, kv.value)
    };
    c.claim_name("web", "vm").expect("claim");
    let (first, value) = at(&store::name_key("web"));
    c.claim_name("web", "vm").expect("claim again");
    let (again, same) = at(&store::name_key("web"));
    assert!(
        again > first,
        "the name was not written again ({first} -> {again})"
    );
    assert_eq!(same, value, "the claim itself is unchanged");

    let l = c
        .allocate(Ask::new(&net, &vm("web"), Request::Any))
        .expect("allocate");
    let key = store::addr_key("volt0", l.ip);
    let (first, value) = at(&key);
    let again_l = c
        .allocate(Ask::new(&net, &vm("web"), Request::Any))
        .expect("allocate again");
    assert_eq!(again_l.ip, l.ip);
    let (again, same) = at(&key);
    assert!(
        again > first,
        "the address was not written again ({first} -> {again})"
    );
    assert_eq!(same, value);
    assert_eq!(
        c.etcd
            .get(&store::owner_key("volt0", "vm/web/eth0"))
            .expect("get")
            .map(|kv| (kv.mod_revision, kv.value)),
        Some((again, l.ip.to_string().into_bytes())),
        "the owner key goes with it"
    );
}

/// A DHCP address this host's server gave, that the store gives to a stale pool claim: the
/// claim gives way where this host made it and its workload does not run, and the lease file
/// follows; another host's claim, a fixed one, and one of a running workload do not.
#[test]
fn only_this_hosts_stale_pool_claim_gives_way_to_a_dhcp_address() {
    use volt::attach::{AddressBook, ClusterBook};
    if skip() {
        return;
    }
    let (etcd, a) = one_member("a");
    let b = Cluster::new(&config("b", &etcd.endpoints(), "")).expect("client");
    register(&a);
    register(&b);
    let net = Network::builtin_default();
    let ct = |n: &str| Owner::container(n, "eth0");
    let ip = |last: u8| Ipv4Addr::new(10, 42, 0, last);
    let pool = |c: &Cluster, who: &str, last: u8, fixed: bool| {
        c.record(Holding::new(&net, &ct(who), ip(last), fixed))
            .expect("claim");
    };
    pool(&a, "old", 120, false);
    pool(&b, "far", 121, false);
    pool(&a, "pinned", 122, true);
    pool(&a, "busy", 123, false);
    let leases = tempfile::tempdir().expect("leases");
    let book = ClusterBook {
        cluster: a.clone(),
        local: volt::net::ipam::Ipam::new(leases.path()),
    };
    // What runs here: busy.
    let runs = |o: &Owner| o.name == "busy";
    let (new, new2) = (ct("new"), ct("new2"));
    for last in [121, 122, 123] {
        let e = book
            .record_displacing(Holding::new(&net, &new2, ip(last), false), &runs)
            .expect_err("kept");
        assert!(e.refuses_the_address(), "{e}");
    }
    let (l, gone) = book
        .record_displacing(Holding::new(&net, &new, ip(120), false), &runs)
        .expect("displaced");
    assert_eq!((l.ip, gone), (ip(120), Some(ct("old"))));
    let claims: BTreeSet<(String, Ipv4Addr, String)> = a
        .list("volt0")
        .expect("list")
        .into_iter()
        .map(|(l, host)| (l.owner.to_string(), l.ip, host))
        .collect();
    let want: BTreeSet<(String, Ipv4Addr, String)> = [
        ("container/new/eth0", 120, "a"),
        ("container/far/eth0", 121, "b"),
        ("container/pinned/eth0", 122, "a"),
        ("container/busy/eth0", 123, "a"),
    ]
    .into_iter()
    .map(|(o, last, h)| (o.to_string(), ip(last), h.to_string()))
    .collect();
    assert_eq!(claims, want);
    let local = book.local.list("volt0").expect("local");
    assert!(
        local.iter().any(|l| l.owner == new && l.ip == ip(120)),
        "{local:?}"
    );
}
