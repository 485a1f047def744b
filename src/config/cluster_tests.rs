use super::*;

const P: &str = "/etc/volt/cluster.toml";

fn nets() -> Vec<Network> {
    let mut iso = Network::builtin_default();
    iso.name = "iso".into();
    iso.bridge = "iso0".into();
    iso.kind = NetworkType::Isolated;
    vec![Network::builtin_default(), iso]
}

/// The config, or every error, one a line.
fn parse(text: &str) -> Result<ClusterConfig, String> {
    parse_cluster_toml(Path::new(P), text, "node-a", &nets()).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

const GOOD: &str = "underlay = \"192.168.7.1\"\n[etcd]\nendpoints = [\"http://192.168.7.1:2379\", \"http://192.168.7.2:2379/\"]\n[[network]]\nname = \"volt0\"\nvni = 42\n";

#[test]
fn defaults_and_network() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.host, "node-a");
    assert_eq!(c.underlay_mtu, 1500);
    assert_eq!(c.overlay_mtu(), 1450);
    assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
    assert_eq!(c.vxlan_port, 4789);
    assert_eq!(c.etcd.endpoints[1], "http://192.168.7.2:2379");
    assert_eq!(
        c.networks,
        vec![ClusterNetwork {
            name: "volt0".into(),
            bridge: "volt0".into(),
            vni: 42
        }]
    );
}

#[test]
fn every_error_at_once_in_words_of_the_file() {
    // Each of these took a run of its own when the file was read through serde.
    let e = parse(
        "host = \"a b\"\nunderlay = \"192.168.50.300\"\nlease_ttl = 0\nvxlan_port = 0\n[etcd]\nendpoint = [\"http://x:1\"]\n[[network]]\nname = \"nope\"\nvni = 99999999\n",
    )
    .unwrap_err();
    for want in [
        ":1:8: host:",
        ":2:12: underlay:",
        ":3:13: lease_ttl: 0 is outside 2-3600 s",
        ":4:14: vxlan_port: 0 is outside 1-65535",
        ":5:1: etcd.endpoints: missing",
        ":6:1: etcd.endpoint: unknown key; did you mean endpoints?",
        ":9:7: network[0].vni: 99999999 is outside 1-16777215",
    ] {
        assert!(e.contains(want), "{want:?} not in\n{e}");
    }
    let missing = parse("").unwrap_err();
    assert!(
        missing.contains("underlay: missing: this host's address"),
        "{missing}"
    );
    assert!(
        missing.contains("etcd: missing: an [etcd] table"),
        "{missing}"
    );
}

#[test]
fn errors_name_line_column_and_field() {
    let cases = [
        (
            GOOD.replace("192.168.7.1\"\n[etcd]", "127.0.0.1\"\n[etcd]"),
            "cluster.toml:1:12: underlay: 127.0.0.1 is a loopback address, so it cannot be a VXLAN endpoint",
        ),
        (
            GOOD.replace("vni = 42", "vni = 16777216"),
            ":6:7: network[0].vni: 16777216 is outside 1-16777215",
        ),
        (
            GOOD.replace("name = \"volt0\"", "name = \"lab\""),
            ":5:8: network[0].name: no network named \"lab\"",
        ),
        (
            GOOD.replace("name = \"volt0\"", "name = \"iso\""),
            "network[0].name: iso is an isolated network",
        ),
        (
            GOOD.replace("http://192.168.7.1:2379\"", "ftp://x:1\""),
            ":3:14: etcd.endpoints[0]: \"ftp://x:1\" is not an http:// or https:// URL",
        ),
        (
            GOOD.replace("[etcd]\n", "[etcd]\ncert = \"/c.pem\"\n"),
            "etcd: cert and key go together",
        ),
        (
            GOOD.replace("[etcd]\n", "[etcd]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n"),
            "etcd: ca, cert and key need https:// endpoints",
        ),
        (
            format!("{GOOD}[[network]]\nname = \"volt0\"\nvni = 7\n"),
            ":7:1: network[1]: volt0 is listed twice",
        ),
        (
            format!("lease_ttl = 1\n{GOOD}"),
            ":1:13: lease_ttl: 1 is outside 2-3600 s",
        ),
        (
            format!("colour = 1\n{GOOD}"),
            "cluster.toml:1:1: colour: unknown key",
        ),
        (
            format!("host = \"a b\"\n{GOOD}"),
            ":1:8: host: \"a b\" is not a valid systemd instance name",
        ),
        (
            format!(
                "lease_ttl = 6\n{}",
                GOOD.replace("[etcd]\n", "[etcd]\ntimeout_ms = 3000\n")
            ),
            ":4:14: etcd.timeout_ms: timeout_ms 3000 is more than a third of lease_ttl (6 s)",
        ),
        (
            format!("lease_ttl = 2\n{GOOD}"),
            "etcd: timeout_ms 3000 is more than a third of lease_ttl (2 s)",
        ),
    ];
    for (text, want) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}\n=> {e}\nwanted {want}");
    }
}

/// Addresses no other host can send VXLAN to, and one inside the shared network itself (the
/// gateway every host has on its bridge): refused at the underlay's line and column, saying
/// what would be valid.
#[test]
fn underlay_addresses_that_cannot_work_are_refused() {
    let valid = "give this host's unicast address on the network between the hosts";
    for (ip, why) in [
        ("255.255.255.255", "is the broadcast address"),
        ("169.254.10.1", "is a link-local address"),
        ("0.0.0.0", "is the unspecified address"),
        ("239.1.1.1", "is a multicast address"),
        ("250.1.1.1", "is a reserved address"),
    ] {
        let e =
            parse(&GOOD.replace("192.168.7.1\"\n[etcd]", &format!("{ip}\"\n[etcd]"))).unwrap_err();
        let want = format!("cluster.toml:1:12: underlay: {ip} {why}");
        assert!(e.contains(&want), "{ip}: {e}\nwanted {want}");
        assert!(
            e.contains("cannot be a VXLAN endpoint other hosts reach"),
            "{e}"
        );
        assert!(e.contains(valid), "{e}");
    }
    for ip in ["10.42.0.1", "10.42.0.77"] {
        let e =
            parse(&GOOD.replace("192.168.7.1\"\n[etcd]", &format!("{ip}\"\n[etcd]"))).unwrap_err();
        let want = format!("cluster.toml:1:12: underlay: {ip} is inside volt0 (10.42.0.0/24), which this cluster shares: give the host's address on the network between the hosts");
        assert!(e.contains(&want), "{ip}: {e}\nwanted {want}");
    }
    // Inside a network of this host that the cluster does not share: nothing to say.
    let lab = GOOD.replace("192.168.7.1\"\n[etcd]", "10.42.0.5\"\n[etcd]");
    let no_net = lab.split("[[network]]").next().expect("text").to_string();
    assert!(parse(&no_net).is_ok(), "{:?}", parse(&no_net));
    assert!(parse(GOOD).is_ok());
}

#[test]
fn mtu_is_derived_unless_set_and_checked_when_set() {
    let c = parse(&GOOD.replace("underlay = ", "underlay_mtu = 1400\nunderlay = ")).expect("ok");
    let mut n = nets();
    assert!(apply_to_networks(&c, &mut n).is_empty());
    assert_eq!(n[0].mtu, 1350);
    let mut n = nets();
    n[0].mtu = 1500;
    n[0].mtu_explicit = true;
    n[0].source = Some("/etc/volt/networks/volt0.toml".into());
    let e = apply_to_networks(&c, &mut n);
    assert_eq!(e.len(), 1);
    let e = e[0].to_string();
    assert!(
        e.starts_with("/etc/volt/networks/volt0.toml: mtu: volt0 is clustered"),
        "{e}"
    );
    assert!(e.contains("its MTU 1500 must be at most 1350"), "{e}");
}

/// The TLS files `[etcd]` names: an error about one is at the line and column that names
/// it, says the path as written and, where validate looked below a root, where it looked.
#[test]
fn tls_files_are_checked_at_their_line_and_column() {
    let text = "underlay = \"192.168.7.1\"\n[etcd]\nendpoints = [\"https://192.168.7.1:2379\"]\nca = \"/nonexistent-volt/ca.pem\"\ncert = \"/nonexistent-volt/c.pem\"\n  key = \"/\"\n";
    let c = parse(text).expect("valid");
    let shown = |root: &Path| {
        check_files(&c, root)
            .iter()
            .map(ConfigError::report)
            .collect::<Vec<_>>()
    };
    let e = shown(Path::new("/"));
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("/etc/volt/cluster.toml:4:6: etcd.ca: /nonexistent-volt/ca.pem cannot be read: No such file or directory"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with(
            "/etc/volt/cluster.toml:5:8: etcd.cert: /nonexistent-volt/c.pem cannot be read: "
        ),
        "{e:?}"
    );
    assert_eq!(
        e[2],
        "/etc/volt/cluster.toml:6:9: etcd.key: / is not a regular file: give the PEM file itself"
    );
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("nonexistent-volt")).expect("mkdir");
    std::fs::write(root.path().join("nonexistent-volt/c.pem"), "x").expect("write");
    let e = shown(root.path());
    let below = root.path().join("nonexistent-volt/ca.pem");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with(&format!(
            "/etc/volt/cluster.toml:4:6: etcd.ca: /nonexistent-volt/ca.pem cannot be read (validate looked at {}, below --root): No such file",
            below.display()
        )),
        "{e:?}"
    );
    assert!(
        e[1].contains(":6:9: etcd.key: / is not a regular file (validate looked at"),
        "{e:?}"
    );
}

/// Endpoints the client could not use, or that name one member twice: an error at the
/// endpoint's line and column, saying what is wrong and what is valid.
#[test]
fn endpoints_that_cannot_work_are_refused_at_their_place() {
    let with = |eps: &str| {
        GOOD.replace(
            "[\"http://192.168.7.1:2379\", \"http://192.168.7.2:2379/\"]",
            eps,
        )
    };
    for (eps, want) in [
        (
            r#"["http://192.168.7.1:2379", "http://192.168.7.1:2379/"]"#,
            ":3:41: etcd.endpoints[1]: \"http://192.168.7.1:2379/\" names the same etcd member as etcd.endpoints[0] (192.168.7.1:2379): list each member once",
        ),
        (
            r#"["http://etcd-a:2379", "https://ETCD-A:2379"]"#,
            ":3:36: etcd.endpoints[1]: \"https://ETCD-A:2379\" names the same etcd member as etcd.endpoints[0]",
        ),
        (
            r#"["http://root:pw@192.168.7.1:2379"]"#,
            ":3:14: etcd.endpoints[0]: \"http://…@192.168.7.1:2379\" has a user name or password",
        ),
        (
            r#"["http://192.168.7 .1:2379"]"#,
            ":3:14: etcd.endpoints[0]: \"http://192.168.7 .1:2379\" contains whitespace (like http://192.168.1.10:2379)",
        ),
        (
            r#"["http://192.168.7.1:2379/v3/kv"]"#,
            "etcd.endpoints[0]: \"http://192.168.7.1:2379/v3/kv\" has a path (/v3/kv)",
        ),
        (
            r#"["http://192.168.7.1:2379?x=1"]"#,
            "etcd.endpoints[0]: \"http://192.168.7.1:2379?x=1\" has a query (?x=1)",
        ),
        (
            r#"["http://192.168.7.1"]"#,
            "etcd.endpoints[0]: \"http://192.168.7.1\" has no port",
        ),
        (
            r#"["unix:///run/etcd.sock"]"#,
            "etcd.endpoints[0]: \"unix:///run/etcd.sock\" is not an http:// or https:// URL",
        ),
    ] {
        let e = parse(&with(eps)).unwrap_err();
        assert!(e.contains(want), "{eps}\n=> {e}\nwanted {want}");
        assert!(!e.contains(":pw@"), "{e}");
    }
    // Two members on one host, or IPv6 in brackets: fine.
    let c = parse(&with(
        r#"["http://192.168.7.1:2379", "http://192.168.7.1:22379", "http://[fd00::7]:2379"]"#,
    ))
    .expect("valid");
    assert_eq!(c.etcd.endpoints.len(), 3);
}

/// A cluster file that shares no network is valid (it still claims workload names across
/// the hosts) but says so; one that shares a network says nothing.
#[test]
fn a_cluster_that_shares_no_network_is_a_warning() {
    let tls = GOOD.replace("http://", "https://");
    assert_eq!(parse(&tls).expect("valid").warnings(), Vec::<String>::new());
    let bare = tls.split("[[network]]").next().expect("text").to_string();
    let w = parse(&bare).expect("valid").warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("/etc/volt/cluster.toml: network: no [[network]], so this cluster shares no network: workload names are claimed across its hosts"),
        "{w:?}"
    );
    assert!(w[0].contains("add [[network]] with name and vni"), "{w:?}");
}

/// An endpoint in plain HTTP to another machine is a warning at its own place (etcd checks
/// no client there); https and this machine's loopback are not.
#[test]
fn plain_http_to_another_machine_is_a_warning() {
    let c = parse(&GOOD.replace(
        "[\"http://192.168.7.1:2379\", \"http://192.168.7.2:2379/\"]",
        r#"["https://192.168.7.1:2379", "http://192.168.7.2:2379", "http://127.0.0.1:2379", "http://[::1]:2379", "http://LocalHost:2379", "http://etcd.example:2379", "http://localhost.:2379", "http://[::ffff:127.0.0.1]:2379"]"#,
    ))
    .expect("valid");
    let w = c.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("/etc/volt/cluster.toml:3:42: etcd.endpoints[1]: \"http://192.168.7.2:2379\" is plain HTTP to another machine: anyone who reaches that port can rewrite"),
        "{w:?}"
    );
    assert!(
        w[0].ends_with("use https:// endpoints with ca, cert and key"),
        "{w:?}"
    );
    assert!(
        w[1].contains(": etcd.endpoints[5]: \"http://etcd.example:2379\" is plain HTTP"),
        "{w:?}"
    );
}
