use super::*;
use crate::config::parse_zone_yaml;

fn toml_net(text: &str) -> Result<Network, ConfigError> {
    parse_network_toml(Path::new("/etc/volt/networks/lab.toml"), text)
        .map_err(|mut errs| errs.remove(0))
}

#[test]
fn builtin_default_matches_the_address_plan() {
    let n = Network::builtin_default();
    assert_eq!(n.bridge, "volt0");
    assert_eq!(n.subnet.to_string(), "10.42.0.0/24");
    assert_eq!(n.gateway.to_string(), "10.42.0.1");
    assert_eq!(n.vm_range.to_string(), "10.42.0.2-10.42.0.99");
    assert_eq!(n.container_range.to_string(), "10.42.0.100-10.42.0.254");
}

#[test]
fn network_toml_full() {
    let n = toml_net(
        "bridge = \"lab0\"\nsubnet = \"10.50.0.0/16\"\ngateway = \"10.50.0.1\"\ntype = \"host-only\"\nuplink = \"wan0\"\nmtu = 9000\n\
         [pool]\nstart = \"10.50.1.1\"\nend = \"10.50.1.200\"\n\
         [reservations]\nvm-web = \"10.50.1.10\"\n\
         [[port_map]]\nproto = \"udp\"\nhost_port = 5353\ntarget = \"web\"\ntarget_port = 53\n",
    )
    .expect("valid");
    assert_eq!(n.name, "lab");
    assert_eq!(n.kind, NetworkType::HostOnly);
    assert_eq!(n.vm_range.to_string(), "10.50.1.1-10.50.1.200");
    assert_eq!(n.container_range.to_string(), "10.50.1.201-10.50.255.254");
    assert_eq!(n.reservations["vm-web"].to_string(), "10.50.1.10");
    assert_eq!(n.port_maps[0].proto, Proto::Udp);
    assert_eq!(n.mtu, 9000);
}

#[test]
fn every_error_of_a_network_file_at_once() {
    let errs = |text: &str| -> Vec<String> {
        parse_network_toml(Path::new("/etc/volt/networks/lab.toml"), text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    // Three wrong values: all three, in line order (they took three runs).
    let e =
        errs("subnet = \"10.51.0.1/24\"\nbridge = \"this-bridge-name-too-long\"\nmtu = 70000\n");
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].contains(":1:10: subnet: 10.51.0.1/24 has host bits set"),
        "{e:?}"
    );
    assert!(e[1].contains(":2:10: bridge:"), "{e:?}");
    assert!(
        e[2].contains(":3:7: mtu: 70000 is outside 68-9000"),
        "{e:?}"
    );
    // With a right subnet, what lies in it is checked too.
    let e = errs(
        "subnet = \"10.50.0.0/24\"\ngateway = \"10.51.0.1\"\nmtu = 1\n[reservations]\nweb = \"10.50.0.0\"\n",
    );
    assert!(
        e.iter()
            .any(|l| l.contains("gateway: 10.51.0.1 is not a host address")),
        "{e:?}"
    );
    assert!(e.iter().any(|l| l.contains("mtu: 1 is outside")), "{e:?}");
}

#[test]
fn network_errors_name_line_and_field() {
    let e = toml_net("subnet = \"10.50.0.0/24\"\ngateway = \"10.51.0.1\"\n")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "/etc/volt/networks/lab.toml:2:11: gateway: 10.51.0.1 is not a host address of 10.50.0.0/24");
    let e = toml_net("subnet = \"10.50.0.1/24\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":1:10: subnet: 10.50.0.1/24 has host bits set"),
        "{e}"
    );
    let e = toml_net("subnet = \"10.50.0.0/24\"\ncolour = 3\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/etc/volt/networks/lab.toml:2:1: colour: unknown key"),
        "{e}"
    );
    let e = toml_net("subnet = \"10.50.0.0/24\"\ntype = \"host-only\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("uplink: a host-only network needs"), "{e}");
    let e = toml_net("subnet = \"10.50.0.0/24\"\n[[port_map]]\nhost_port = 80\ntarget = \"web\"\ntarget_port = 80\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("port_map[0]: port maps apply only to host-only"),
        "{e}"
    );
    let e = toml_net(
        "subnet = \"10.50.0.0/24\"\n[pool]\nstart = \"10.50.0.2\"\nend = \"10.50.0.55\"\n[container_pool]\nstart = \"10.50.0.50\"\nend = \"10.50.0.60\"\n",
    )
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlaps the VM pool"), "{e}");
    // A subnet too small for both pools.
    let e = toml_net("subnet = \"10.60.0.0/30\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":1:10: subnet: 10.60.0.0/30 leaves no address for the VM pool"),
        "{e}"
    );
    // A pool that is the gateway alone is no pool.
    let e = toml_net("subnet = \"10.60.0.0/30\"\ngateway = \"10.60.0.2\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("leaves no address for the"), "{e}");
    // A VM pool taking the whole subnet: fine without DHCP, else the containers' DHCP server
    // has no address.
    let whole = "subnet = \"10.60.0.0/24\"\n[pool]\nstart = \"10.60.0.2\"\nend = \"10.60.0.254\"\n";
    let e = toml_net(whole).unwrap_err().to_string();
    assert!(e.contains("pool: 10.60.0.2-10.60.0.254 leaves no address of 10.60.0.0/24 for the containers' DHCP"), "{e}");
    assert!(toml_net(&format!("dhcp = false\n{whole}")).is_ok());
    // A zone gets the same rule.
    let e = parse_zone_yaml(
        Path::new("/etc/voltainer/network/z.yaml"),
        "kind: NetworkZone\nname: z\nsubnet: 10.61.0.0/30\n",
    );
    assert!(
        format!("{e:?}").contains("leaves no address for the"),
        "{e:?}"
    );
    assert!(toml_net("subnet = \"10.60.0.0/29\"\n").is_ok());
    // A missing subnet is said once.
    let errs = parse_network_toml(Path::new("/etc/volt/networks/lab.toml"), "mtu = 1500\n")
        .expect_err("no subnet");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].to_string().contains("subnet: missing"), "{errs:?}");
    // Reservations: whose, and in that kind's range.
    for (res, says) in [
        ("vm-c = \"10.50.0.200\"", ":3:8: reservations.vm-c: 10.50.0.200 is outside lab's VM range 10.50.0.2-10.50.0.99"),
        ("foo = \"10.50.0.16\"", "reservations.foo: \"foo\" is no workload's: a reservation's key is vm-<name> or ct-<name>"),
        ("vm-web = \"10.50.0.1\"", "reservations.vm-web: 10.50.0.1 is not a usable host address"),
        ("\"ct-\" = \"10.50.0.150\"", "reservations.ct-: \"ct-\" does not name a container: the name is empty"),
    ] {
        let e = toml_net(&format!("subnet = \"10.50.0.0/24\"\n[reservations]\n{res}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
    }
    assert!(toml_net("subnet = \"10.50.0.0/24\"\n[reservations]\nvm-a = \"10.50.0.20\"\nct-b = \"10.50.0.150\"\nct-c = \"10.50.0.30\"\n").is_ok());
}

/// A bridge name that is not a bridge's: the loopback, the kernel's names for every
/// interface's settings, the prefixes of the links Volt creates.
#[test]
fn a_bridge_cannot_take_a_name_that_is_not_a_bridges() {
    for (bridge, says) in [
        ("lo", "is the loopback device"),
        ("all", "the kernel keeps for its own settings"),
        ("default", "the kernel keeps for its own settings"),
        (".x", "starts with a dot"),
        ("tap-1a2b3c4d", "starts with \"tap-\", which Volt uses"),
        ("vx-42", "starts with \"vx-\""),
        ("veth-x", "starts with \"veth-\""),
        ("mvt-x", "starts with \"mvt-\""),
    ] {
        let e = toml_net(&format!(
            "bridge = \"{bridge}\"\nsubnet = \"10.50.0.0/24\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(":1:10: bridge: ") && e.contains(says), "{e}");
    }
    // A network named so with no bridge given takes its name for the bridge: the same rule.
    let e = parse_network_toml(
        Path::new("/etc/volt/networks/lo.toml"),
        "subnet = \"10.55.0.0/24\"\n",
    )
    .map_err(|mut errs| errs.remove(0))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bridge: no bridge given and the network name \"lo\" is the loopback"),
        "{e}"
    );
    let e = parse_zone_yaml(
        Path::new("/etc/voltainer/network/z.yaml"),
        "kind: NetworkZone\nname: z\nsubnet: 10.56.0.0/24\nbridge: eth0x\n",
    );
    assert!(e.is_ok(), "{e:?}");
    let e = parse_zone_yaml(
        Path::new("/etc/voltainer/network/z.yaml"),
        "kind: NetworkZone\nname: z\nsubnet: 10.56.0.0/24\nbridge: lo\n",
    );
    assert!(format!("{e:?}").contains("is the loopback device"), "{e:?}");
}

#[test]
fn zone_yaml() {
    let p = Path::new("/etc/voltainer/network/default.yaml");
    let text = "kind: NetworkZone\nname: default\nbridge: volt0\nsubnet: 10.42.0.0/24\ngateway: 10.42.0.1\ndhcp:\n  enabled: true\n  range: 10.42.0.100-10.42.0.254\n";
    let n = parse_zone_yaml(p, text).expect("valid").expect("a zone");
    assert_eq!(n.name, "default");
    assert_eq!(n.bridge, "volt0");
    assert_eq!(n.vm_range.to_string(), "10.42.0.2-10.42.0.99");
    assert_eq!(n.container_range.to_string(), "10.42.0.100-10.42.0.254");
    assert!(parse_zone_yaml(p, "kind: Something\nfoo: 1\n")
        .expect("ok")
        .is_none());
    let e = parse_zone_yaml(
        p,
        "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\ndhcp:\n  range: 10.43.0.1-10.43.0.9\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("/etc/voltainer/network/default.yaml:5:10: dhcp.range:"),
        "{e}"
    );
    let e = parse_zone_yaml(
        p,
        "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\nfoo: 1\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("default.yaml:4:1: foo: unknown key (known: apiVersion"),
        "{e}"
    );
    // The parser's errors in the words of the other files: field, then what is wrong.
    for (text, says) in [
        (
            "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\nmtu: \"big\"\n",
            ":4:6: mtu: expected a whole number",
        ),
        (
            "kind: NetworkZone\nname: z\nname: y\nsubnet: 10.42.0.0/24\n",
            ":3:1: name is given twice",
        ),
        (
            "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\n---\nkind: NetworkZone\n",
            ":4:1: a second YAML document (---) beside a NetworkZone: a zone file holds one zone",
        ),
        (
            "kind: NetworkZone\n",
            ":1:1: name: missing: a NetworkZone needs name and subnet",
        ),
        (
            "kind: NetworkZone\nname: z\nsubnet: [1, 2]\n",
            "subnet: expected a string",
        ),
        (
            "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\nmtu: [1]\n",
            "mtu: expected a whole number",
        ),
        (
            "kind: NetworkZone\nname:\nsubnet: 10.42.0.0/24\n",
            ":2:5: name: no value: expected a string",
        ),
        (
            "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\ndhcp:\n  enabled: maybe\n",
            ":5:12: dhcp.enabled: expected true or false",
        ),
        (
            "kind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\ndhcp: yes\n",
            "dhcp: expected a mapping with enabled: and range:",
        ),
    ] {
        let e = parse_zone_yaml(p, text).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
        assert!(!e.contains("line ") && !e.contains("Options"), "{e}");
    }
    // Voltainer's files of other kinds are not Volt's, however many documents they hold; a
    // zone may end with an empty document.
    let other = "kind: Policy\nname: a\n---\nkind: Policy\nname: b\n";
    assert!(matches!(parse_zone_yaml(p, other), Ok(None)));
    let zone = "---\nkind: NetworkZone\nname: z\nsubnet: 10.42.0.0/24\n---\n";
    assert!(
        matches!(parse_zone_yaml(p, zone), Ok(Some(_))),
        "{:?}",
        parse_zone_yaml(p, zone)
    );
}

/// Who serves DHCP: a workload may be a DHCP client where `dhcp` is on and the bridge is in
/// the host's namespace; the server is Volt's (networkd's, from Volt's `.network`) only on a
/// bridge Volt defines, an admin's bridge's server is the admin's.
#[test]
fn dhcp_clients_and_volts_server_are_two_questions() {
    let cases = [
        ("", true, true),
        ("dhcp = false\n", false, false),
        ("type = \"isolated\"\n", false, false),
        ("create_bridge = false\n", true, false),
        ("create_bridge = false\ndhcp = false\n", false, false),
        ("create_bridge = false\ntype = \"isolated\"\n", false, false),
    ];
    for (extra, offers, volts) in cases {
        let n = toml_net(&format!("subnet = \"10.50.0.0/24\"\n{extra}")).expect("valid");
        assert_eq!(n.offers_dhcp(), offers, "offers_dhcp with {extra:?}");
        assert_eq!(
            n.volt_serves_dhcp(),
            volts,
            "volt_serves_dhcp with {extra:?}"
        );
    }
    let volt0 = Network::builtin_default();
    assert!(volt0.offers_dhcp() && volt0.volt_serves_dhcp());
}

#[test]
fn broadcast_limit_defaults_and_is_checked_at_its_place() {
    let n = toml_net("subnet = \"10.50.0.0/24\"\n").expect("valid");
    assert_eq!(n.broadcast_limit, DEFAULT_BROADCAST_LIMIT);
    assert_eq!(Network::builtin_default().broadcast_limit, 2000);
    let n = toml_net("subnet = \"10.50.0.0/24\"\nbroadcast_limit = 50000\n").expect("valid");
    assert_eq!(n.broadcast_limit, 50000);
    for (value, want) in [
        (
            "0",
            "/etc/volt/networks/lab.toml:2:19: broadcast_limit: 0 is outside 10-10000000 frames a second",
        ),
        (
            "20000000",
            "/etc/volt/networks/lab.toml:2:19: broadcast_limit: 20000000 is outside 10-10000000 frames a second",
        ),
        (
            "-1",
            "/etc/volt/networks/lab.toml:2:19: broadcast_limit: -1 is outside 10-10000000 frames a second",
        ),
    ] {
        let e = toml_net(&format!(
            "subnet = \"10.50.0.0/24\"\nbroadcast_limit = {value}\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(e, want);
    }
    let e = toml_net("subnet = \"10.50.0.0/24\"\nbroadcast_limit = \"fast\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/etc/volt/networks/lab.toml:2:19: broadcast_limit: ")
            && e.contains("an integer from 10 to 10000000 frames a second"),
        "{e}"
    );
}
