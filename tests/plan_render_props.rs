//! Property: whatever strings a configuration holds (file names, network and zone names,
//! bridges, NIC ids, parents, container commands: control characters, NUL, CR, backslashes,
//! quotes, `%`, `=`, brackets), every file the generator writes (unit drop-ins, networkd
//! files, DHCP static leases) and every file bound into a container parses back, the way
//! systemd reads it, to exactly the keys the plan intended, and each names its source file
//! intact. A config that cannot be rendered safely is refused by the config checks.

use std::path::Path;

use proptest::prelude::*;

#[allow(dead_code)]
#[path = "fuzz/src/plan_render.rs"]
mod plan_render;

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

use plan_render::put;

fn run_case(c: &Case) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("root");
    write_config(&root, c);
    plan_render::verify(&root, tmp.path())
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
