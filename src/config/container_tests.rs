use super::*;
use crate::config::fixtures::{error_lines, networks as nets};

fn parse(name: &str, text: &str) -> Result<ContainerConfig, Vec<ConfigError>> {
    let path = PathBuf::from(format!("/etc/volt/containers/{name}.toml"));
    parse_container_toml(&path, text, &nets())
}

fn errs(name: &str, text: &str) -> Vec<String> {
    error_lines(parse(name, text))
}

const DIR: &str = "directory = \"/var/lib/volt/containers/app\"\n";

#[test]
fn static_container_from_the_container_range() {
    let text = format!(
        "{DIR}command = [\"/bin/sh\", \"-c\", \"sleep 1000\"]\n[[network]]\nbridge = \"volt0\"\nipv4 = \"10.42.0.120/24\"\n"
    );
    let c = parse("app", &text).expect("valid");
    assert_eq!(c.uuid, derive::vm_uuid("app"));
    let nic = &c.nics[0];
    assert_eq!(nic.id, "eth0");
    assert_eq!(
        nic.ipv4.map(|i| i.to_string()).as_deref(),
        Some("10.42.0.120/24")
    );
    assert!(!nic.dhcp);
    assert_eq!(nic.gateway, Some("10.42.0.1".parse().expect("ip")));
    assert_eq!(nic.mac, derive::nic_mac(&c.uuid, "eth0", 0));
    let (h, ce) = derive::veth_names("app");
    assert_eq!((nic.host_link.clone(), nic.container_link.clone()), (h, ce));
}

#[test]
fn dhcp_reservation_boot_and_image() {
    let c = parse("app", &format!("{DIR}boot = true\n[[network]]\n")).expect("valid");
    assert!(c.nics[0].dhcp && c.nics[0].ipv4.is_none());
    assert_eq!(c.nics[0].network.as_deref(), Some("volt0"));
    // ct-db is reserved: db gets it as a static address.
    let c = parse(
        "db",
        &format!("{DIR}boot = true\n[[network]]\nzone = \"default\"\n"),
    )
    .expect("valid");
    assert_eq!(
        c.nics[0].ipv4.map(|i| i.to_string()).as_deref(),
        Some("10.42.0.150/24")
    );
    assert!(!c.nics[0].dhcp);
    let c = parse("img", "image = \"/srv/img\"\nboot = true\n").expect("valid");
    assert_eq!(c.root_kind, RootKind::Image);
    assert_eq!(c.volatile, Volatile::Overlay);
}

#[test]
fn every_check_names_file_line_column_and_field() {
    let cmd = "command = [\"/bin/true\"]\n";
    let cases: Vec<(String, &str)> = vec![
        (cmd.to_string(), "app.toml: directory: missing"),
        (DIR.to_string(), "app.toml: command: missing"),
        (format!("{DIR}{cmd}boot = true\n"), ":2:11: command: give either boot = true or a command"),
        (format!("{DIR}command = []\n"), ":2:11: command: the command must not be empty"),
        (format!("{DIR}command = [\"/bin/sh\", 2]\n"), ":2:23: command[1]: expected a string, found an integer"),
        (format!("{DIR}command = \"/bin/sh\"\n"), ":2:11: command: expected an array of strings, found a string"),
        (format!("{DIR}image = \"/x\"\n{cmd}"), ":2:9: image: give either directory or image"),
        ("directory = \"rel\"\ncommand = [\"/x\"]\n".into(), ":1:13: directory: \"rel\" is not an absolute path"),
        (format!("image = \"/x\"\nvolatile = \"no\"\n{cmd}"), "volatile: an image is never written"),
        (format!("{DIR}{cmd}colour = 1\n"), ":3:1: colour: unknown key"),
        (format!("{DIR}{cmd}init_args = [\"x\"]\n"), ":3:13: init_args: init_args are for boot = true"),
        (format!("{DIR}{cmd}[[network]]\nmtu = 9000\n"), ":4:1: network[0].mtu: a container's veth takes its network's MTU"),
        (format!("{DIR}{cmd}[[network]]\nipv4 = \"10.42.0.20\"\n"), ":4:8: network[0].ipv4: 10.42.0.20 is outside volt0's container range 10.42.0.100-10.42.0.254"),
        (format!("{DIR}{cmd}[[network]]\nipv4 = \"10.42.0.10\"\n"), "network[0].ipv4: 10.42.0.10 is reserved for vm-web in volt0"),
        (format!("{DIR}{cmd}[[network]]\nipv4 = \"10.43.0.120\"\n"), "network[0].ipv4: 10.43.0.120 is outside volt0 (10.42.0.0/24)"),
        (format!("{DIR}{cmd}[[network]]\nbridge = \"br9\"\n"), ":4:10: network[0].bridge: no network uses bridge \"br9\""),
        (format!("{DIR}{cmd}[[network]]\nzone = \"dmz\"\n"), "network[0].zone: no network or zone named \"dmz\""),
        (format!("{DIR}{cmd}[[network]]\nmac = \"01:00:5e:00:00:01\"\n"), "network[0].mac: 01:00:5e:00:00:01 is not a unicast address"),
        (format!("{DIR}{cmd}[[network]]\n[[network]]\n"), ":4:1: network: a container has at most 1 network entry"),
        (format!("{DIR}{cmd}[[network]]\nzone = \"iso\"\n"), "network[0].ipv4: network iso has no DHCP server (isolated)"),
    ];
    for (text, want) in &cases {
        let got = errs("app", text);
        assert!(
            got.iter().any(|e| e.contains(want)),
            "for {text:?} wanted {want:?}, got {got:?}"
        );
        assert!(
            got.iter()
                .all(|e| e.starts_with("/etc/volt/containers/app.toml")),
            "{got:?}"
        );
    }
}

#[test]
fn names_must_be_machine_names() {
    for bad in ["a_b", "a..b", "a.", "-a", "a b"] {
        let e = errs(bad, "directory = \"/x\"\nboot = true\n");
        assert!(
            e[0].contains("name: the file name gives the container name"),
            "{bad}: {e:?}"
        );
    }
    assert!(parse("db-1.lab", "directory = \"/x\"\nboot = true\n").is_ok());
    for bad in ["db-", "a-.b", "a.-b"] {
        let e = parse(bad, "directory = \"/x\"\n").expect_err(bad);
        assert!(
            e[0].to_string()
                .contains("no label starting or ending with '-'"),
            "{bad}: {}",
            e[0]
        );
    }
    // As nspawn allows it: read-only under a tmpfs.
    assert!(parse("app", "image = \"/\"\nvolatile = \"yes\"\nboot = true\n").is_ok());
    for root in ["/", "/srv/a/../.."] {
        let e = parse("app", &format!("directory = \"{root}\"\nboot = true\n")).expect_err(root);
        assert!(
            e[0].to_string().contains("host's own root") || e[0].to_string().contains("holds '..'"),
            "{root}: {}",
            e[0]
        );
    }
}

#[test]
fn root_check() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(tmp.path().join("srv/ct/usr/lib")).expect("mkdir");
    std::fs::write(tmp.path().join("srv/ct/usr/lib/os-release"), "ID=x\n").expect("write");
    std::fs::create_dir_all(tmp.path().join("srv/noos/usr")).expect("mkdir");
    std::os::unix::fs::symlink("..", tmp.path().join("srv/up")).expect("link");
    std::fs::create_dir_all(tmp.path().join("srv/nousr")).expect("mkdir");
    std::fs::write(tmp.path().join("srv/file"), "x").expect("write");
    let check = |dir: &str, kind: &str| {
        let c = parse("app", &format!("{kind} = \"{dir}\"\nboot = true\n")).expect("valid");
        c.check_root(tmp.path())
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    };
    assert!(check("/srv/ct", "directory").is_empty());
    assert!(
        check("/srv/nousr", "directory")[0].contains(":1:13: directory: /srv/nousr has no /usr")
    );
    assert!(check("/srv/missing", "directory")[0].contains("does not exist"));
    assert!(check("/srv/noos", "directory")[0].contains(
        "has no /etc/os-release or /usr/lib/os-release, which systemd-nspawn needs to boot it"
    ));
    // A link to the root is the host's root as nspawn would see it.
    assert!(check("/srv/up", "directory")[0].contains("is the host's own root file system"));
    assert!(check("/srv/file", "image")[0]
        .contains("image: /srv/file is not a directory (disk images are not supported yet"));
}

#[test]
fn vm_nic_keys_in_a_container_say_why() {
    let e = errs(
        "db",
        "directory = \"/srv/db\"\nboot = true\n[[network]]\nmtu = 9000\nmultiqueue = 2\n",
    );
    assert!(
        e.iter().any(|l| l.ends_with(
            ":4:1: network[0].mtu: a container's veth takes its network's MTU: set mtu in the network file"
        )),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains(":5:1: network[0].multiqueue: only VM NICs have it")),
        "{e:?}"
    );
}

/// On an admin's bridge (`create_bridge = false`) Volt configures no DHCP server, but `dhcp`
/// (on by default) says the bridge has one of its own: a container there may take its
/// address by DHCP; with `dhcp = false` it needs a static one, as on Volt's bridges.
#[test]
fn a_dhcp_container_on_an_admins_bridge_follows_its_dhcp_key() {
    let lan = |extra: &str| {
        let text =
            format!("bridge = \"br7\"\nsubnet = \"10.53.0.0/24\"\ncreate_bridge = false\n{extra}");
        crate::config::parse_network_toml(Path::new("/etc/volt/networks/lan.toml"), &text)
            .expect("network")
    };
    let parse_on = |net: crate::config::Network| {
        let text = format!("{DIR}boot = true\n[[network]]\nbridge = \"br7\"\n");
        parse_container_toml(
            Path::new("/etc/volt/containers/app.toml"),
            &text,
            &crate::config::Networks::new(vec![crate::config::Network::builtin_default(), net]),
        )
    };
    let c = parse_on(lan("")).expect("valid");
    assert!(c.nics[0].dhcp && c.nics[0].ipv4.is_none());
    assert_eq!(c.nics[0].network.as_deref(), Some("lan"));
    let got = error_lines(parse_on(lan("dhcp = false\n")));
    assert_eq!(
        got,
        ["/etc/volt/containers/app.toml:3:1: network[0].ipv4: network lan has no DHCP server (dhcp = false): give a static ipv4 from its container range 10.53.0.100-10.53.0.254"],
        "{got:?}"
    );
}
