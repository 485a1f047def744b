//! Property: whatever strings a configuration holds (file names, network and zone names,
//! bridges, NIC ids, parents, container commands: control characters, NUL, CR, backslashes,
//! quotes, `%`, `=`, brackets), every file the generator writes (unit drop-ins, networkd
//! files, DHCP static leases) and every file bound into a container parses back, the way
//! systemd reads it, to exactly the keys the plan intended, and each names its source file
//! intact. A config that cannot be rendered safely is refused by the config checks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use volt::config::ConfigSet;
use volt::generator::{self, OutputDirs, Targets};
use volt::plan::names::{self, HEADER};
use volt::plan::{parse_networkd_file, Kind, LinkKind, Paths, Plan, Workload};

type Keys = Vec<(String, String, String)>;

fn kv(s: &str, k: &str, v: impl Into<String>) -> (String, String, String) {
    (s.into(), k.into(), v.into())
}

/// A string that is sometimes a plain name and sometimes hostile.
fn text() -> impl Strategy<Value = String> {
    let nasty = prop_oneof![
        Just('\n'),
        Just('\r'),
        Just('\0'),
        Just('\\'),
        Just('%'),
        Just('"'),
        Just('\''),
        Just(' '),
        Just('='),
        Just('['),
        Just(']'),
        Just('#'),
        Just(';'),
        Just('/'),
        Just('.'),
        Just('-'),
        Just('\u{85}'),
        Just('\u{a0}'),
        Just('\u{2028}'),
        any::<char>(),
        proptest::char::range('a', 'z'),
    ];
    prop_oneof![
        8 => "[a-z][a-z0-9]{0,6}",
        2 => prop::collection::vec(nasty, 0..12).prop_map(|v| v.into_iter().collect()),
        1 => ("[a-z]{1,4}", "[\n\r\0\\\\%\"]", "[A-Za-z=\\[\\]]{0,12}")
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

/// A quoted TOML/YAML string: JSON's escapes are valid in both.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

#[derive(Debug, Clone)]
struct Case {
    zone_file: String,
    zone_name: String,
    zone_bridge: String,
    net_file: String,
    net_bridge: String,
    vm_file: String,
    nic_id: String,
    /// 0: the zone, 1: the network's bridge, 2: volt0, 3: macvtap on `parent`.
    vm_attach: u8,
    mode: u8,
    parent: String,
    ct_file: String,
    ct_arg: String,
    ct_boot: bool,
    ct_static: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (text(), text(), text(), text(), text()),
        (text(), text(), 0u8..4, 0u8..2, text()),
        (text(), text(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (zone_file, zone_name, zone_bridge, net_file, net_bridge),
                (vm_file, nic_id, vm_attach, mode, parent),
                (ct_file, ct_arg, ct_boot, ct_static),
            )| Case {
                zone_file,
                zone_name,
                zone_bridge,
                net_file,
                net_bridge,
                vm_file,
                nic_id,
                vm_attach,
                mode,
                parent,
                ct_file,
                ct_arg,
                ct_boot,
                ct_static,
            },
        )
}

/// Write `name` (a file name; skipped when no file can have it) under `dir`.
fn put(dir: &Path, name: &str, ext: &str, text: &str) {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name.starts_with('.') {
        return;
    }
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(format!("{name}.{ext}")), text).expect("write");
}

fn write_config(root: &Path, c: &Case) {
    put(
        &root.join("etc/voltainer/network"),
        &c.zone_file,
        "yaml",
        &format!(
            "kind: NetworkZone\nname: {}\nbridge: {}\nsubnet: 10.77.0.0/24\n",
            q(&c.zone_name),
            q(&c.zone_bridge)
        ),
    );
    put(
        &root.join("etc/volt/networks"),
        &c.net_file,
        "toml",
        &format!(
            "bridge = {}\nsubnet = \"10.78.0.0/24\"\n[reservations]\n{} = \"10.78.0.10\"\n",
            q(&c.net_bridge),
            q(&format!("vm-{}", c.vm_file))
        ),
    );
    let nic = match c.vm_attach {
        0 => format!("zone = {}\n", q(&c.zone_name)),
        1 => format!("bridge = {}\n", q(&c.net_bridge)),
        2 => "bridge = \"volt0\"\n".into(),
        _ => format!("mode = \"macvtap\"\nparent = {}\n", q(&c.parent)),
    };
    let mode = if c.vm_attach < 3 && c.mode == 1 {
        "mode = \"direct\"\n"
    } else {
        ""
    };
    put(
        &root.join("etc/volt/vms"),
        &c.vm_file,
        "toml",
        &format!(
            "kernel = \"/k\"\n[[network]]\nid = {}\nmultiqueue = 2\n{nic}{mode}",
            q(&c.nic_id)
        ),
    );
    let run = if c.ct_boot {
        format!("boot = true\ninit_args = [{}]\n", q(&c.ct_arg))
    } else {
        format!("command = [\"/bin/sh\", {}]\n", q(&c.ct_arg))
    };
    let addr = if c.ct_static {
        "ipv4 = \"10.77.0.150/24\"\n"
    } else {
        ""
    };
    put(
        &root.join("etc/volt/containers"),
        &c.ct_file,
        "toml",
        &format!(
            "directory = \"/srv/ct\"\n{run}[[network]]\nzone = {}\n{addr}",
            q(&c.zone_name)
        ),
    );
}

/// The keys a workload's drop-in must hold.
fn workload_keys(w: &Workload) -> Keys {
    let mut k = vec![kv("Unit", "SourcePath", w.source.display().to_string())];
    let owners = w.owner_units().join(" ");
    if !owners.is_empty() {
        k.push(kv("Unit", "BindsTo", owners.clone()));
        k.push(kv("Unit", "After", owners));
    }
    if w.kind == Kind::Vm && w.has_isolated_nic() {
        k.push(kv("Service", "CapabilityBoundingSet", "CAP_SYS_ADMIN"));
        k.push(kv("Service", "RestrictNamespaces", "net"));
    }
    k
}

fn owner_keys(w: &Workload, a: &volt::plan::Attachment) -> Keys {
    let what = match &a.kind {
        LinkKind::Tap { .. } => format!("TAP {}", a.link),
        LinkKind::Macvtap { .. } => format!("macvtap {}", a.link),
        LinkKind::Veth { peer } => format!("veth {} / {peer}", a.link),
    };
    let env = if w.kind == Kind::Vm {
        "VOLT_VM"
    } else {
        "VOLT_CONTAINER"
    };
    vec![
        kv(
            "Unit",
            "Description",
            format!("Volt {what} for {} {} ({})", w.kind.noun(), w.name, a.nic),
        ),
        kv("Unit", "SourcePath", w.source.display().to_string()),
        kv(
            "Service",
            "Environment",
            format!("{env}={} VOLT_NIC={}", w.name, a.nic),
        ),
    ]
}

fn tap_keys(a: &volt::plan::Attachment) -> (Keys, Keys) {
    let mut netdev = vec![
        kv("NetDev", "Name", a.link.clone()),
        kv("NetDev", "Kind", "tap"),
        kv("Tap", "VNetHeader", "yes"),
    ];
    if a.queues() > 1 {
        netdev.push(kv("Tap", "MultiQueue", "yes"));
    }
    netdev.push(kv("Tap", "User", "volt"));
    netdev.push(kv("Tap", "Group", "volt"));
    let network = vec![
        kv("Match", "Name", a.link.clone()),
        kv("Link", "MTUBytes", a.mtu.to_string()),
        kv("Link", "RequiredForOnline", "no"),
        kv("Network", "Bridge", a.bridge.clone().unwrap_or_default()),
        kv("Network", "LinkLocalAddressing", "no"),
        kv("Network", "IPv6AcceptRA", "no"),
        kv("Network", "ConfigureWithoutCarrier", "yes"),
    ];
    (netdev, network)
}

/// Every value a unit file holds is read by systemd with `%` specifiers expanded and,
/// for `Environment=`, split at white space and unquoted: none of that may apply.
fn plain_unit_values(file: &Path, keys: &Keys) {
    for (_, k, v) in keys {
        assert!(
            !v.contains('%'),
            "{}: {k}={v:?} has a specifier",
            file.display()
        );
        if k == "Environment" {
            assert!(
                !v.contains(['"', '\'', '\\']),
                "{}: {v:?} would be unquoted",
                file.display()
            );
        }
    }
}

/// Parse `file` and compare with `want`; its header and source line must be intact.
fn check(file: &Path, want: &Keys, source: Option<&Path>) {
    let text = std::fs::read_to_string(file).expect("read");
    let got = parse_networkd_file(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}\n{text:?}", file.display()));
    assert_eq!(&got, want, "{}:\n{text:?}", file.display());
    assert_eq!(text.lines().next(), Some(HEADER), "{}", file.display());
    if let Some(src) = source {
        assert_eq!(
            names::networkd_source(&text).as_deref(),
            Some(src),
            "{}: the source line was split:\n{text:?}",
            file.display()
        );
    }
}

/// Every regular file under `dir`, relative.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let ft = e.file_type().expect("type");
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_file() {
                out.insert(p.strip_prefix(base).expect("under").to_path_buf());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn run_case(c: &Case) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    write_config(&root, c);
    let out = tmp.path().join("out");
    let targets = Targets {
        networkd: tmp.path().join("networkd"),
        keep: tmp.path().join("keep"),
    };
    let _ = generator::run(&root, &OutputDirs::single(&out), &targets);
    let set = ConfigSet::load(&root);
    let plan = Plan::build(&set);

    let mut want_units = BTreeSet::new();
    let dropin = |unit: &str| PathBuf::from(format!("{unit}.d")).join(names::DROPIN_NAME);
    let mut want_net = BTreeSet::new();
    for w in &plan.workloads {
        let f = dropin(&w.unit);
        let keys = workload_keys(w);
        check(&out.join(&f), &keys, None);
        plain_unit_values(&f, &keys);
        want_units.insert(f);
        for a in &w.attachments {
            let f = dropin(&a.owner_unit);
            let keys = owner_keys(w, a);
            check(&out.join(&f), &keys, None);
            plain_unit_values(&f, &keys);
            want_units.insert(f);
            if !a.networkd.is_empty() {
                let (netdev, network) = tap_keys(a);
                for (name, keys) in [
                    (names::netdev_file_name(&a.link), netdev),
                    (names::network_file_name(&a.link), network),
                ] {
                    check(&targets.networkd.join(&name), &keys, Some(&w.source));
                    want_net.insert(PathBuf::from(name));
                }
            }
        }
        // What a boot-mode container gets bound in: parsed the same way.
        for b in volt::plan::boot_network(w, &Paths::new(Path::new("/"))) {
            let got = parse_networkd_file(&b.text).expect("bound .network parses");
            let peer = match &w.attachments[0].kind {
                LinkKind::Veth { peer } => peer.clone(),
                _ => String::new(),
            };
            assert_eq!(
                got,
                vec![
                    kv("Match", "Name", peer),
                    kv("Network", "DHCP", "ipv4"),
                    kv("Network", "LinkLocalAddressing", "no"),
                    kv("Network", "IPv6AcceptRA", "no"),
                ],
                "{:?}",
                b.text
            );
        }
    }
    for net in plan.networks.list.iter().filter(|n| n.dhcp) {
        let leases = plan.static_leases(net);
        if leases.is_empty() {
            continue;
        }
        let name = PathBuf::from(names::bridge_network_dropin_dir(&net.bridge))
            .join(names::STATIC_LEASES_NAME);
        let mut keys = Vec::new();
        for (mac, ip) in leases {
            keys.push(kv("DHCPServerStaticLease", "MACAddress", mac.to_string()));
            keys.push(kv("DHCPServerStaticLease", "Address", ip.to_string()));
        }
        let src = net
            .source
            .clone()
            .unwrap_or_else(|| PathBuf::from("(built-in network)"));
        check(&targets.networkd.join(&name), &keys, Some(&src));
        want_net.insert(name);
    }
    // Nothing else was written: no file name was made from a hostile string.
    assert_eq!(files(&out), want_units, "unit files");
    assert_eq!(files(&targets.networkd), want_net, "networkd files");
    set.errors.iter().map(|e| e.report()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_generated_file_parses_back_to_what_the_plan_intended(c in case()) {
        run_case(&c);
    }
}

/// The cases, always run: a NUL in a bridge name, newlines in a zone file's name.
#[test]
fn known_injections_are_refused() {
    let mut c = Case {
        zone_file: "lab".into(),
        zone_name: "lab".into(),
        zone_bridge: "lab0\u{0}DHCP=yes".into(),
        net_file: "n".into(),
        net_bridge: "n0".into(),
        vm_file: "web".into(),
        nic_id: "eth0".into(),
        vm_attach: 0,
        mode: 0,
        parent: "eth0".into(),
        ct_file: "db".into(),
        ct_arg: "x".into(),
        ct_boot: false,
        ct_static: true,
    };
    let errs = run_case(&c);
    assert!(
        errs.iter()
            .any(|e| e.contains("bridge") && e.contains("\\0")),
        "{errs:?}"
    );
    c.zone_bridge = "lab0".into();
    for name in ["z\n[DHCPServer]\nDNS=192.0.2.1\n", "z\rDNS=192.0.2.1"] {
        c.zone_file = name.into();
        let errs = run_case(&c);
        let want = format!(
            "the file name {:?} contains the control character",
            format!("{name}.yaml")
        );
        assert!(
            errs.iter()
                .any(|e| e.contains(&want) && !e.contains('\n') && !e.contains('\r')),
            "{errs:?}"
        );
    }
}
