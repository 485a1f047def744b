use std::path::{Path, PathBuf};

use super::*;
use crate::config::{parse_container_toml, parse_vm_toml, vm_uuid, ConfigSet};

fn nets() -> Networks {
    crate::config::fixtures::networks()
}

const KERNEL: &str = "kernel = \"/k\"\n";

fn plan(vms: &[(&str, &str)], cts: &[(&str, &str)]) -> Plan {
    let networks = nets();
    let mut set = ConfigSet {
        networks: networks.clone(),
        ..ConfigSet::default()
    };
    for (name, text) in vms {
        let p = PathBuf::from(format!("/etc/volt/vms/{name}.toml"));
        set.vms
            .push(parse_vm_toml(&p, text, &networks).expect("valid VM"));
    }
    for (name, text) in cts {
        let p = PathBuf::from(format!("/etc/volt/containers/{name}.toml"));
        set.containers
            .push(parse_container_toml(&p, text, &networks).expect("valid container"));
    }
    Plan::build(&set)
}

#[test]
fn a_vm_nic_becomes_a_networkd_tap_attachment() {
    let p = plan(&[("web", &format!("{KERNEL}[[network]]\n"))], &[]);
    let w = p.workload(Kind::Vm, "web").expect("web");
    assert_eq!(w.unit, "volt-vm@web.service");
    assert_eq!(w.source, Path::new("/etc/volt/vms/web.toml"));
    let a = &w.attachments[0];
    let tap = crate::config::tap_name(&vm_uuid("web"), 0);
    assert_eq!(a.link, tap);
    assert_eq!(a.altname, "web-eth0");
    assert_eq!(a.owner_unit, format!("volt-tap@{tap}.service"));
    assert_eq!(a.kind, LinkKind::Tap { queues: 1 });
    assert_eq!(a.creation, Creation::Networkd);
    assert_eq!(a.netns, None);
    assert_eq!(a.bridge.as_deref(), Some("volt0"));
    assert_eq!(
        a.addressing,
        Addressing::Reserved("10.42.0.10/24".parse().expect("net"))
    );
    assert_eq!(w.owner_units(), vec![a.owner_unit.clone()]);
    let names: Vec<&str> = a.networkd.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("60-volt-{tap}.netdev"),
            format!("60-volt-{tap}.network")
        ]
    );
    assert!(p.attachment(&tap).is_some_and(|(w, _)| w.name == "web"));
}

#[test]
fn direct_isolated_pool_and_macvtap_nics() {
    let text = format!(
        "{KERNEL}[[network]]\nbridge = \"lab0\"\nmode = \"direct\"\n\
         [[network]]\nzone = \"iso\"\n\
         [[network]]\nmode = \"macvtap\"\nparent = \"eth1\"\n"
    );
    let p = plan(&[("multi", &text)], &[]);
    let w = &p.workloads[0];
    let [direct, iso, mvt] = &w.attachments[..] else {
        panic!("three attachments");
    };
    // Every NIC has an owner unit: a direct NIC's TAP is made by Volt, not by networkd.
    assert_eq!(direct.creation, Creation::Direct);
    assert_eq!(
        direct.owner_unit,
        format!("volt-tap@{}.service", direct.link)
    );
    assert!(direct.networkd.is_empty());
    assert_eq!(direct.addressing, Addressing::Pool);
    // Isolated: its own namespace, no bridge, no networkd files.
    let id = crate::config::short_id(&vm_uuid("multi"));
    assert_eq!(
        iso.netns.as_deref(),
        Some(format!("volt-iso-{id}").as_str())
    );
    assert_eq!(iso.bridge, None);
    assert!(iso.networkd.is_empty());
    assert!(w.has_isolated_nic());
    assert_eq!(
        mvt.kind,
        LinkKind::Macvtap {
            parent: "eth1".into(),
            mode: MacvtapMode::Bridge
        }
    );
    assert_eq!(mvt.addressing, Addressing::None);
}

#[test]
fn containers_get_veth_attachments_and_an_nspawn_command_line() {
    let p = plan(
        &[],
        &[(
            "app",
            "directory = \"/var/lib/volt/containers/app\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 1000\"]\n[[network]]\nbridge = \"volt0\"\nipv4 = \"10.42.0.120/24\"\n",
        )],
    );
    let w = p.workload(Kind::Container, "app").expect("app");
    assert_eq!(w.unit, "volt-container@app.service");
    let a = &w.attachments[0];
    let (h, c) = crate::config::veth_names("app");
    assert_eq!(a.link, h);
    assert_eq!(a.kind, LinkKind::Veth { peer: c.clone() });
    assert_eq!(a.owner_unit, format!("volt-veth@{h}.service"));
    assert_eq!(a.altname, "app");
    assert_eq!(
        a.addressing,
        Addressing::Static("10.42.0.120/24".parse().expect("net"))
    );
    let paths = Paths::new(Path::new("/"));
    assert_eq!(
        nspawn_args(w, &paths, false),
        vec![
            "--quiet".to_string(),
            "--keep-unit".into(),
            "--register=no".into(),
            "--machine=app".into(),
            "-D".into(),
            "/var/lib/volt/containers/app".into(),
            format!("--network-interface={c}"),
            "--setenv=VOLT_CONTAINER=app".into(),
            format!("--setenv=VOLT_IFACE={c}"),
            "--as-pid2".into(),
            "--kill-signal=SIGRTMIN+3".into(),
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            "sleep 1000".into(),
        ]
    );
}

#[test]
fn boot_mode_containers_bind_their_dhcp_network_file() {
    let p = plan(
        &[],
        &[
            ("app", "directory = \"/srv/app\"\nboot = true\n[[network]]\n"),
            (
                "img",
                "image = \"/\"\nboot = true\nvolatile = \"yes\"\ninit_args = [\"systemd.mask=x.service\"]\n",
            ),
        ],
    );
    let paths = Paths::new(Path::new("/"));
    let app = p.workload(Kind::Container, "app").expect("app");
    assert_eq!(app.attachments[0].addressing, Addressing::Dhcp);
    let (_, ce) = crate::config::veth_names("app");
    let args = nspawn_args(app, &paths, true);
    assert!(args.contains(&"--boot".to_string()));
    assert!(args.contains(&format!(
        "--bind-ro=/run/volt/containers/app/{ce}.network:/run/systemd/network/60-volt-{ce}.network"
    )));
    let files = boot_network(app, &paths);
    assert!(files[0]
        .text
        .contains(&format!("Name={ce}\n\n[Network]\nDHCP=ipv4")));
    let img = p.workload(Kind::Container, "img").expect("img");
    let args = nspawn_args(img, &paths, false);
    assert!(args.contains(&"--private-network".to_string()));
    assert!(args.contains(&"--volatile=yes".to_string()));
    assert_eq!(
        &args[args.len() - 3..],
        ["--boot", "--", "systemd.mask=x.service"]
    );
}

#[test]
fn static_leases_cover_reservations_and_static_containers() {
    let p = plan(
        &[
            ("web", &format!("{KERNEL}[[network]]\n")),
            (
                "api",
                &format!("{KERNEL}[[network]]\nipv4 = \"10.42.0.20\"\n"),
            ),
        ],
        &[
            ("db", "directory = \"/srv/db\"\nboot = true\n[[network]]\n"),
            (
                "app",
                "directory = \"/srv/app\"\nboot = true\n[[network]]\nipv4 = \"10.42.0.120\"\n",
            ),
            (
                "dyn",
                "directory = \"/srv/dyn\"\nboot = true\n[[network]]\n",
            ),
        ],
    );
    let net = p.networks.by_name("volt0").expect("volt0").clone();
    let leases = p.static_leases(&net);
    let ips: Vec<String> = leases.iter().map(|(_, ip)| ip.to_string()).collect();
    // web's reservation, app's static address, db's reservation; not api's static VM
    // address (a VM gets it on its command line), not dyn (DHCP).
    assert_eq!(ips, ["10.42.0.10", "10.42.0.120", "10.42.0.150"]);
    let web = &p.workload(Kind::Vm, "web").expect("web").attachments[0];
    assert_eq!(leases[0].0, web.mac);
    let f = static_leases_dropin(&net, &leases);
    assert_eq!(f.name, "10-volt0.network.d/60-volt-static-leases.conf");
    let keys = parse_networkd_file(&f.text).expect("parses");
    assert_eq!(keys.len(), 6);
    assert_eq!(
        keys[0],
        (
            "DHCPServerStaticLease".to_string(),
            "MACAddress".to_string(),
            web.mac.to_string()
        )
    );
}

#[test]
fn rendered_tap_files_parse_back_to_the_intended_keys() {
    let p = plan(
        &[(
            "web",
            &format!("{KERNEL}[[network]]\nmtu = 9000\nmultiqueue = 2\n"),
        )],
        &[],
    );
    let a = &p.workloads[0].attachments[0];
    let netdev = parse_networkd_file(&a.networkd[0].text).expect("netdev");
    let want = |s: &str, k: &str, v: &str| (s.to_string(), k.to_string(), v.to_string());
    assert_eq!(
        netdev,
        vec![
            want("NetDev", "Name", &a.link),
            want("NetDev", "Kind", "tap"),
            want("Tap", "VNetHeader", "yes"),
            want("Tap", "MultiQueue", "yes"),
            want("Tap", "User", "volt"),
            want("Tap", "Group", "volt"),
        ]
    );
    let network = parse_networkd_file(&a.networkd[1].text).expect("network");
    assert!(network.contains(&want("Network", "Bridge", "volt0")));
    assert!(network.contains(&want("Link", "MTUBytes", "9000")));
    assert!(a.networkd[0].text.starts_with(
        "# Automatically generated by volt-generator\n# Source: /etc/volt/vms/web.toml\n"
    ));
}

#[test]
fn bridges_of_defined_networks() {
    let parse = |name: &str, text: &str| {
        crate::config::parse_network_toml(
            Path::new(&format!("/etc/volt/networks/{name}.toml")),
            text,
        )
        .expect("valid network")
    };
    let lab = parse(
        "lab",
        "bridge = \"lab0\"\nsubnet = \"10.50.0.0/24\"\nmtu = 9000\n[container_pool]\nstart = \"10.50.0.200\"\nend = \"10.50.0.209\"\n",
    );
    let files = bridge_files(&lab).expect("lab0's files");
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["10-lab0.netdev", "10-lab0.network"]);
    // The generator reads the bridge and network back when it removes the file.
    assert_eq!(
        crate::plan::names::left_bridge(&files[0].name, &files[0].text),
        Some(("lab0".to_string(), "lab".to_string()))
    );
    assert_eq!(
        crate::plan::names::left_bridge(&files[1].name, &files[1].text),
        None
    );
    // A text naming another bridge than its file, or a path, is not taken.
    let other = files[0].text.replace("bridge lab0 of", "bridge ../../x of");
    assert_eq!(
        crate::plan::names::left_bridge("10-lab0.netdev", &other),
        None
    );
    assert_eq!(
        crate::plan::names::left_bridge("10-lab1.netdev", &files[0].text),
        None
    );
    assert!(
        files[0].text.contains("Kind=bridge\nMTUBytes=9000\n"),
        "{}",
        files[0].text
    );
    let network = &files[1].text;
    for want in [
        "Address=10.50.0.1/24\n",
        "MTUBytes=9000\n",
        "DHCPServer=yes\n",
        "PoolOffset=200\nPoolSize=10\n",
    ] {
        assert!(network.contains(want), "{want:?} missing:\n{network}");
    }
    assert!(!network.contains("IPMasquerade"), "{network}");
    // Every line means to systemd what it says.
    for f in &files {
        parse_networkd_file(&f.text).expect("networkd reads it");
    }
    let no_dhcp = parse(
        "nd",
        "bridge = \"nd0\"\nsubnet = \"10.51.0.0/24\"\ndhcp = false\n",
    );
    let text = &bridge_files(&no_dhcp).expect("files")[1].text;
    assert!(!text.contains("DHCPServer"), "{text}");
    // A file redefining volt0: only the .network (it masks the packaged one), which keeps
    // forwarding and masquerade.
    let volt0 = parse("volt0", "bridge = \"volt0\"\nsubnet = \"10.42.8.0/24\"\n");
    let files = bridge_files(&volt0).expect("volt0's .network");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].name, "10-volt0.network");
    assert!(
        files[0].text.contains("Address=10.42.8.1/24\n")
            && files[0].text.contains("IPMasquerade=both\n")
    );
    // No files: the built-in volt0, an isolated network, a bridge the admin manages.
    assert!(bridge_files(&crate::config::Network::builtin_default()).is_none());
    let iso = parse(
        "iso",
        "bridge = \"iso0\"\nsubnet = \"10.52.0.0/24\"\ntype = \"isolated\"\n",
    );
    assert!(bridge_files(&iso).is_none());
    let managed = parse(
        "br",
        "bridge = \"br7\"\nsubnet = \"10.53.0.0/24\"\ncreate_bridge = false\n",
    );
    assert!(bridge_files(&managed).is_none());
}
