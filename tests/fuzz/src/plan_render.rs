//! `plan_render`: configurations with arbitrary strings through the plan and the generator.
//!
//! The input is split at NUL bytes (never valid in a file name, and TOML/YAML spell a NUL
//! as an escape) into up to eight parts: zone file name, zone YAML, network file name,
//! network TOML, VM file name, VM TOML, container file name, container TOML (lossy UTF-8).
//! Each file whose name a file can have is written under a fresh root; the generator runs.
//!
//! Checked, for every file it wrote: it parses back the way systemd 252 reads files
//! (`parse_networkd_file`: NUL and lone CR end lines, a trailing backslash continues) to
//! exactly the keys the plan intended; it starts with Volt's header; a networkd file's
//! `# Source:` line names its config file intact; unit values hold no `%` specifier and
//! `Environment=` no quoting; nothing else was written (no file name made from a string).
//! `tests/plan_render_props.rs` runs the same checks on generated configurations.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use volt::config::ConfigSet;
use volt::generator::{self, OutputDirs, Targets};
use volt::plan::names::{self, HEADER};
use volt::plan::{parse_networkd_file, Kind, LinkKind, Paths, Plan, Workload};

pub type Keys = Vec<(String, String, String)>;

pub fn kv(s: &str, k: &str, v: impl Into<String>) -> (String, String, String) {
    (s.into(), k.into(), v.into())
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

/// Run the generator on the configuration under `root` (output below `scratch`), then check
/// every file it wrote against the plan (see the module documentation). Returns the
/// configuration's errors, rendered.
pub fn verify(root: &Path, scratch: &Path) -> Vec<String> {
    let out = scratch.join("out");
    let targets = Targets {
        networkd: scratch.join("networkd"),
        keep: scratch.join("keep"),
        left_bridges: scratch.join("bridges-left"),
        claims: scratch.join("claims.json"),
        // Every link's files, to check them all against the plan.
        every_link: true,
    };
    let _ = generator::run(root, &OutputDirs::single(&out), &targets);
    let set = ConfigSet::load(root);
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
    // The bridge of every network a file defines (not isolated, not admin-managed), with the
    // values of its network and nothing a hostile name could add.
    for net in &plan.networks.list {
        let Some(src) = net.source.clone() else {
            continue;
        };
        if net.kind == volt::config::NetworkType::Isolated || !net.create_bridge {
            continue;
        }
        let is_volt0 = net.bridge == "volt0";
        let mtu = net.mtu.to_string();
        if !is_volt0 {
            let keys = vec![
                kv("NetDev", "Name", net.bridge.clone()),
                kv("NetDev", "Kind", "bridge"),
                kv("NetDev", "MTUBytes", mtu.clone()),
                kv("Bridge", "STP", "no"),
                kv("Bridge", "ForwardDelaySec", "0"),
            ];
            let name = names::bridge_netdev_file_name(&net.bridge);
            check(&targets.networkd.join(&name), &keys, Some(&src));
            want_net.insert(PathBuf::from(name));
        }
        let mut keys = vec![
            kv("Match", "Name", net.bridge.clone()),
            kv("Match", "Kind", "bridge"),
            kv("Link", "MTUBytes", mtu),
            kv("Link", "RequiredForOnline", "no"),
            kv(
                "Network",
                "Address",
                format!("{}/{}", net.gateway, net.subnet.prefix_len()),
            ),
            kv("Network", "ConfigureWithoutCarrier", "yes"),
            kv("Network", "LinkLocalAddressing", "no"),
            kv("Network", "IPv6AcceptRA", "no"),
        ];
        if is_volt0 {
            keys.push(kv("Network", "IPForward", "yes"));
            keys.push(kv("Network", "IPMasquerade", "both"));
        }
        if net.dhcp {
            let base = u32::from(net.subnet.network());
            let (start, end) = (
                u32::from(net.container_range.start),
                u32::from(net.container_range.end),
            );
            keys.push(kv("Network", "DHCPServer", "yes"));
            keys.push(kv("DHCPServer", "PoolOffset", (start - base).to_string()));
            keys.push(kv("DHCPServer", "PoolSize", (end - start + 1).to_string()));
            keys.push(kv("DHCPServer", "EmitDNS", "no"));
        }
        let name = names::bridge_network_file_name(&net.bridge);
        check(&targets.networkd.join(&name), &keys, Some(&src));
        want_net.insert(PathBuf::from(name));
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

/// Where each input part goes: (directory under the root, extension) for the name parts.
const FILES: [(&str, &str); 4] = [
    ("etc/voltainer/network", "yaml"),
    ("etc/volt/networks", "toml"),
    ("etc/volt/vms", "toml"),
    ("etc/volt/containers", "toml"),
];

/// Write `text` as `<dir>/<name>.<ext>` when a file can have that name.
pub fn put(dir: &Path, name: &str, ext: &str, text: &str) {
    if name.is_empty()
        || name.len() > 200
        || name.contains('/')
        || name.contains('\0')
        || name.starts_with('.')
    {
        return;
    }
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{name}.{ext}")), text);
    }
}

pub fn run(data: &[u8]) {
    static N: AtomicU64 = AtomicU64::new(0);
    let scratch = std::env::temp_dir().join(format!(
        "volt-fuzz-plan-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let root = scratch.join("root");
    let parts: Vec<String> = data
        .split(|&b| b == 0)
        .take(8)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    for (i, (dir, ext)) in FILES.iter().enumerate() {
        if let (Some(name), Some(text)) = (parts.get(2 * i), parts.get(2 * i + 1)) {
            put(&root.join(dir), name, ext, text);
        }
    }
    let result = std::panic::catch_unwind(|| verify(&root, &scratch));
    let _ = std::fs::remove_dir_all(&scratch);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
