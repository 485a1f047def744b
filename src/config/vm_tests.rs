use super::*;
use crate::config::fixtures::{error_lines, networks as nets};

fn parse(name: &str, text: &str) -> Result<VmConfig, Vec<ConfigError>> {
    let path = PathBuf::from(format!("/etc/volt/vms/{name}.toml"));
    parse_vm_toml(&path, text, &nets())
}

fn errs(name: &str, text: &str) -> Vec<String> {
    error_lines(parse(name, text))
}

const KERNEL: &str = "kernel = \"/var/lib/volt/kernels/vmlinux\"\n";

#[test]
fn minimal_vm_gets_defaults_and_derived_values() {
    let vm = parse("web", KERNEL).expect("valid");
    assert_eq!(vm.name, "web");
    assert_eq!(vm.uuid, derive::vm_uuid("web"));
    assert_eq!(
        (vm.vcpus, vm.memory_mib, vm.autostart),
        (1, DEFAULT_MEMORY_MIB, false)
    );
    assert!(vm.nics.is_empty());
}

#[test]
fn design_example_parses() {
    let text = "vcpus = 2\nmemory_mib = 512\nkernel = \"/var/lib/volt/kernels/vmlinux\"\n[[network]]\nid = \"eth0\"\nbridge = \"volt0\"\nipv4 = \"10.42.0.10/24\"\n";
    let vm = parse("web", text).expect("valid");
    let nic = &vm.nics[0];
    assert_eq!(nic.mode, NicMode::Networkd);
    assert_eq!(nic.bridge.as_deref(), Some("volt0"));
    assert_eq!(nic.network.as_deref(), Some("volt0"));
    assert_eq!(
        nic.ipv4.map(|i| i.to_string()).as_deref(),
        Some("10.42.0.10/24")
    );
    assert_eq!(
        nic.gateway.map(|g| g.to_string()).as_deref(),
        Some("10.42.0.1")
    );
    assert_eq!(nic.link, derive::tap_name(&vm.uuid, 0));
    assert_eq!(nic.mac, derive::nic_mac(&vm.uuid, "eth0", 0));
    assert!(nic.vhost);
    assert_eq!(nic.queues, 1);
}

#[test]
fn reservation_gives_the_address() {
    let vm = parse("web", &format!("{KERNEL}[[network]]\n")).expect("valid");
    assert_eq!(
        vm.nics[0].ipv4.map(|i| i.to_string()).as_deref(),
        Some("10.42.0.10/24")
    );
    let e = errs(
        "web",
        &format!("{KERNEL}[[network]]\nipv4 = \"10.42.0.11\"\n"),
    );
    assert!(
        e[0].contains("differs from the reservation vm-web = 10.42.0.10"),
        "{e:?}"
    );
    let e = errs(
        "api",
        &format!("{KERNEL}[[network]]\nipv4 = \"10.42.0.150\"\n"),
    );
    assert!(
        e[0].contains("10.42.0.150 is reserved for ct-db in volt0"),
        "{e:?}"
    );
}

#[test]
fn multi_nic_jumbo_multiqueue_zone_and_macvtap() {
    let text = format!(
        "{KERNEL}[[network]]\nzone = \"default\"\nmtu = 9000\nmultiqueue = 4\nvhost = false\n\
         [[network]]\nid = \"lan\"\nbridge = \"lab0\"\nmac = \"52:54:00:aa:bb:cc\"\nmode = \"direct\"\n\
         [[network]]\nid = \"up\"\nmode = \"macvtap\"\nparent = \"eth1\"\nmacvtap_mode = \"passthru\"\n"
    );
    let vm = parse("multi", &text).expect("valid");
    assert_eq!(vm.nics.len(), 3);
    assert_eq!(
        (vm.nics[0].mtu, vm.nics[0].queues, vm.nics[0].vhost),
        (9000, 4, false)
    );
    assert_eq!(vm.nics[1].network.as_deref(), Some("lab"));
    assert_eq!(
        vm.nics[1].link,
        format!("{}-1", derive::tap_name(&vm.uuid, 0))
    );
    assert!(vm.nics[1].mac_explicit);
    assert_eq!(
        vm.nics[2].link,
        format!("mvt-{}-2", derive::short_id(&vm.uuid))
    );
    assert_eq!(vm.nics[2].macvtap_mode, Some(MacvtapMode::Passthru));
    assert_eq!(vm.nics[2].bridge, None);
}

#[test]
fn errors_name_file_line_column_and_field() {
    let text = "vcpus = 2\nmemory_mib = 512\nkernel = \"/k\"\n[[network]]\nid = \"eth0\"\nbridge = \"volt0\"\nipv4 = \"10.43.0.5/24\"\n";
    assert_eq!(
        errs("db", text),
        vec![
            "/etc/volt/vms/db.toml:7:8: network[0].ipv4: 10.43.0.5 is outside volt0 (10.42.0.0/24)"
        ]
    );
}

#[test]
fn every_semantic_check() {
    let cases: &[(&str, &str)] = &[
        ("vcpus = 0\nkernel = \"/k\"\n", ":1:9: vcpus: 0 is outside 1-64"),
        ("vcpus = 65\nkernel = \"/k\"\n", "vcpus: 65 is outside"),
        ("memory_mib = 8\nkernel = \"/k\"\n", ":1:14: memory_mib: 8 is outside 16-1048576 MiB"),
        ("kernel = \"vmlinux\"\n", ":1:10: kernel: \"vmlinux\" is not an absolute path"),
        ("vcpus = 1\n", "db.toml: kernel: missing"),
        ("kernel = \"/k\"\ninitrd = \"i.img\"\n", "initrd: \"i.img\" is not an absolute path"),
        ("kernel = \"/k\"\nuuid = \"nope\"\n", ":2:8: uuid: \"nope\" is not a UUID"),
        ("kernel = \"/k\"\ncolour = \"red\"\n", ":2:1: colour: unknown key"),
        ("kernel = \"/k\"\nvcpus = \"two\"\n", ":2:9: vcpus: expected an integer from 1 to 64, found a string"),
        ("kernel = \"/k\"\n[[network]]\nmac = \"52:54:00:zz:00:01\"\n", ":3:7: network[0].mac: \"52:54:00:zz:00:01\" is not a MAC"),
        ("kernel = \"/k\"\n[[network]]\nmac = \"01:00:5e:00:00:01\"\n", "network[0].mac: 01:00:5e:00:00:01 is not a unicast address"),
        ("kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.300\"\n", "network[0].ipv4: \"10.42.0.300\" is not an IPv4 address"),
        ("kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.1\"\n", "network[0].ipv4: 10.42.0.1 is the gateway of volt0"),
        ("kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.120\"\n", "10.42.0.120 is outside volt0's VM range 10.42.0.2-10.42.0.99"),
        ("kernel = \"/k\"\n[[network]]\nipv4 = \"10.42.0.20/16\"\n", "/16 does not match volt0's prefix /24"),
        ("kernel = \"/k\"\n[[network]]\nmtu = 9001\n", "network[0].mtu: 9001 is outside 68-9000"),
        ("vcpus = 2\nkernel = \"/k\"\nvcpus = 3\n", ":3:1: vcpus is given twice"),
        ("kernel = \"/k\"\n[vsock]\ncid = 3\n[vsock]\ncid = 4\n", ":4:2: vsock is given twice"),
        ("kernel = \"/k\"\n[[network]]\nmultiqueue = 0\n", "network[0].multiqueue: 0 is outside 1-16 queue pairs"),
        ("kernel = \"/k\"\n[[network]]\nbridge = \"br9\"\n", ":3:10: network[0].bridge: no network uses bridge \"br9\""),
        ("kernel = \"/k\"\n[[network]]\nzone = \"dmz\"\n", "network[0].zone: no network or zone named \"dmz\""),
        ("kernel = \"/k\"\n[[network]]\nbridge = \"volt0\"\nzone = \"lab\"\n", "give either bridge or zone, not both"),
        ("kernel = \"/k\"\n[[network]]\nmode = \"macvtap\"\n", "network[0].parent: a macvtap NIC needs the parent"),
        ("kernel = \"/k\"\n[[network]]\nparent = \"eth0\"\n", "only macvtap NICs have a parent"),
        ("kernel = \"/k\"\n[[network]]\nmode = \"bridgy\"\n", "network[0].mode: \"bridgy\" is not one of networkd, direct, macvtap"),
        ("kernel = \"/k\"\n[[network]]\nid = \"x\"\n[[network]]\nid = \"x\"\n", "network[1].id: \"x\" is already the id of network[0]"),
        ("kernel = \"/k\"\n[[network]]\nid = \"a b\"\n", "network[0].id: \"a b\" must be"),
        (
            "kernel = \"/k\"\n[[network]]\nid = \"a\"\nmac = \"52:54:00:00:00:09\"\n[[network]]\nid = \"b\"\nmac = \"52:54:00:00:00:09\"\n",
            "network[1].mac: 52:54:00:00:00:09 is already the MAC of network[0]",
        ),
    ];
    for (text, want) in cases {
        let got = errs("db", text);
        assert!(
            got.iter().any(|e| e.contains(want)),
            "for {text:?} wanted {want:?}, got {got:?}"
        );
        assert!(
            got.iter().all(|e| e.starts_with("/etc/volt/vms/db.toml")),
            "{got:?}"
        );
    }
}

#[test]
fn bad_file_names_are_rejected() {
    for name in ["we b", "-x", "a@b"] {
        let e = errs(name, KERNEL);
        assert!(
            e[0].contains("name: the file name gives the VM name"),
            "{e:?}"
        );
    }
}

#[test]
fn all_errors_of_a_file_are_reported() {
    let e = errs("db", "vcpus = 0\nmemory_mib = 1\nkernel = \"k\"\n");
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn errors_say_what_to_fix_in_line_order() {
    // Every unknown key, with "did you mean" and the type and range wanted.
    let e = errs(
        "db",
        "kernel = \"/k\"\nvcpu = 2\nmemory_mib = \"512\"\ncolour = 1\nmemory_mib2 = 1\n",
    );
    // (Each unknown key's message ends with the keys known there.)
    let short: Vec<&str> = e
        .iter()
        .map(|m| m.split(" (known here: ").next().unwrap_or(m))
        .collect();
    assert_eq!(
        short,
        vec![
            "/etc/volt/vms/db.toml:2:1: vcpu: unknown key; did you mean vcpus?",
            "/etc/volt/vms/db.toml:3:14: memory_mib: expected an integer from 16 to 1048576 MiB, found a string",
            "/etc/volt/vms/db.toml:4:1: colour: unknown key",
            "/etc/volt/vms/db.toml:5:1: memory_mib2: unknown key; did you mean memory_mib?",
        ]
    );
    assert!(
        e[0].contains("(known here: autostart, cmdline, disk, initrd, kernel,"),
        "{e:?}"
    );
    // [network] instead of [[network]]; a top-level key after [[network]].
    let e = errs("db", "kernel = \"/k\"\n[network]\nid = \"eth0\"\n");
    assert_eq!(
        e,
        ["/etc/volt/vms/db.toml:2:1: network: write [[network]] (one table per entry), not [network]"]
    );
    let e = errs(
        "db",
        "kernel = \"/k\"\n[[network]]\nid = \"eth0\"\nvcpus = 4\n",
    );
    assert!(
        e[0].starts_with("/etc/volt/vms/db.toml:4:1: network[0].vcpus: unknown key; vcpus is a top-level key: move it above the first [[network]] line"),
        "{e:?}"
    );
    // A huge number names the range, not an integer type.
    let e = errs(
        "db",
        "kernel = \"/k\"\nmemory_mib = 99999999999999999999999\n",
    );
    assert!(
        e[0].ends_with("memory_mib: 99999999999999999999999 is outside 16-1048576 MiB"),
        "{e:?}"
    );
    // Semantic errors in line order, a missing kernel (the whole file) first.
    let e = errs(
        "db",
        "vcpus = 0\n[[network]]\nipv4 = \"10.43.0.5\"\nmtu = 99\n[[network]]\nmac = \"01:00:00:00:00:01\"\n",
    );
    let places: Vec<&str> = e
        .iter()
        .map(|m| m.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        places,
        [
            "/etc/volt/vms/db.toml",
            "/etc/volt/vms/db.toml:1:9",
            "/etc/volt/vms/db.toml:3:8",
            "/etc/volt/vms/db.toml:6:7",
        ],
        "{e:?}"
    );
    assert!(e[0].contains("kernel: missing"), "{e:?}");
}

#[test]
fn bytes_that_are_not_utf8_are_named_by_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = tmp.path().join("db.toml");
    std::fs::write(&f, b"kernel = \"/k\"\ncmdline = \"caf\xe9\"\n").expect("write");
    let e = crate::config::read(Path::new("/etc/volt/vms/db.toml"), &f)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "/etc/volt/vms/db.toml:2:15: byte 0xe9 is not UTF-8 (Volt's files are UTF-8 text)"
    );
}

#[test]
fn disks_parse_and_are_checked() {
    let vm = parse(
        "db",
        &format!(
            "{KERNEL}[[disk]]\npath = \"/var/lib/volt/disks/db.img\"\nroot = true\ncache = \"none\"\nserial = \"db-root\"\n[disk.limit]\nbytes_per_sec = 1000000\nops_per_sec = 500\n[[disk]]\npath = \"/dev/vdb\"\nreadonly = true\n"
        ),
    )
    .expect("valid");
    assert_eq!(vm.disks.len(), 2);
    let d = &vm.disks[0];
    assert!(d.root && !d.readonly);
    assert_eq!(d.cache, crate::config::DiskCache::None);
    assert_eq!(d.serial.as_deref(), Some("db-root"));
    assert_eq!((d.bytes_per_sec, d.ops_per_sec), (1_000_000, 500));
    assert!(vm.disks[1].readonly && !vm.disks[1].root);
    let e = errs(
        "db",
        &format!(
            "{KERNEL}[[disk]]\npath = \"rel.img\"\nroot = true\n[[disk]]\npath = \"/b.img\"\nroot = true\nserial = \"has space\"\ncache = \"unsafe\"\n[disk.limit]\niops = 5\n"
        ),
    );
    let joined = e.join("\n");
    for want in [
        "disk[0].path: \"rel.img\" is not an absolute path",
        // At the second `root` (line 7), not at its `path`.
        "db.toml:7:8: disk[1].root: disk[0] is the root disk already",
        "disk[1].serial: \"has space\" must be at most 20 printable ASCII characters",
        "disk[1].cache: \"unsafe\" is not one of writeback, none",
        "disk[1].limit.iops: unknown key",
    ] {
        assert!(joined.contains(want), "no {want:?} in {e:?}");
    }
}

#[test]
fn disk_images_are_checked_on_the_root() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(tmp.path().join("img")).expect("mkdir");
    std::fs::write(tmp.path().join("img/odd.img"), [0u8; 1000]).expect("write");
    std::fs::write(tmp.path().join("img/ok.img"), [0u8; 1024]).expect("write");
    std::fs::write(tmp.path().join("k"), b"x").expect("kernel");
    let vm = parse(
        "db",
        "kernel = \"/k\"\n[[disk]]\npath = \"/img/ok.img\"\n[[disk]]\npath = \"/img/odd.img\"\n[[disk]]\npath = \"/img/none.img\"\n",
    )
    .expect("valid");
    let e: Vec<String> = vm
        .check_boot_files(tmp.path())
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].ends_with("disk[1].path: /img/odd.img is 1000 bytes, not a multiple of 512 (truncate -s to a whole number of sectors)"), "{e:?}");
    assert!(
        e[1].ends_with("disk[2].path: /img/none.img does not exist"),
        "{e:?}"
    );
}

#[test]
fn vsock_and_guest_readiness() {
    let vm = parse("web", &format!("{KERNEL}vsock = true\n")).expect("valid");
    assert_eq!(vm.vsock_cid, Some(crate::config::vm::default_cid(&vm.uuid)));
    assert!(vm.vsock_cid.is_some_and(|c| (3..0x7fff_ffff).contains(&c)));
    let vm = parse("web", &format!("{KERNEL}[vsock]\ncid = 42\n")).expect("valid");
    assert_eq!(vm.vsock_cid, Some(42));
    // notify_ready brings its vsock device.
    let vm = parse("web", &format!("{KERNEL}notify_ready = true\n")).expect("valid");
    assert!(vm.notify_ready && vm.vsock_cid.is_some());
    let e = errs("web", &format!("{KERNEL}[vsock]\ncid = 2\n"));
    assert!(
        e[0].ends_with("vsock.cid: 2 is outside 3-4294967294"),
        "{e:?}"
    );
    assert!(parse("web", KERNEL).expect("valid").vsock_cid.is_none());
}

#[test]
fn nics_and_disks_past_their_limits_are_named_at_the_first_extra_table() {
    let nics = "[[network]]\n".repeat(MAX_NICS + 2);
    let e = errs("web", &format!("{KERNEL}{nics}"));
    // The ninth [[network]] is on line 2 + 8.
    let want = format!(
        "/etc/volt/vms/web.toml:{}:1: network: a VM has at most {MAX_NICS} NICs",
        2 + MAX_NICS
    );
    assert_eq!(
        e.iter().filter(|l| l.contains("at most")).count(),
        1,
        "{e:?}"
    );
    assert!(e.iter().any(|l| l == &want), "{e:?}");
    let disks = (0..=crate::config::disk::MAX_DISKS)
        .map(|i| format!("[[disk]]\npath = \"/d/{i}.img\"\n"))
        .collect::<String>();
    let e = errs("web", &format!("{KERNEL}{disks}"));
    let line = 2 + 2 * crate::config::disk::MAX_DISKS;
    assert!(
        e.iter().any(|l| l.starts_with(&format!(
            "/etc/volt/vms/web.toml:{line}:1: disk: a VM has at most"
        ))),
        "{e:?}"
    );
}

#[test]
fn one_image_behind_two_paths_is_one_image() {
    let tmp = tempfile::tempdir().expect("tmp");
    let r = tmp.path();
    for d in ["etc/volt/vms", "d"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    std::fs::write(r.join("k"), "kernel").expect("write");
    for img in ["a.img", "e.img"] {
        std::fs::write(r.join("d").join(img), vec![0u8; 4096]).expect("write");
    }
    std::os::unix::fs::symlink("a.img", r.join("d/alias.img")).expect("symlink");
    let vm = |name: &str, disks: &str| {
        std::fs::write(
            r.join(format!("etc/volt/vms/{name}.toml")),
            format!("kernel = \"/k\"\n{disks}"),
        )
        .expect("write");
    };
    vm("b", "[[disk]]\npath = \"/d/a.img\"\n");
    // The same image through a symlink, read-write in a second VM.
    vm("c", "[[disk]]\npath = \"/d/alias.img\"\n");
    // One image twice in one VM, spelled two ways.
    vm(
        "d",
        "[[disk]]\npath = \"/d/e.img\"\n[[disk]]\npath = \"/d/../d/e.img\"\nreadonly = true\n",
    );
    let set = crate::config::ConfigSet::load(r);
    let text: Vec<String> = set.errors.iter().map(|e| e.to_string()).collect();
    let has = |start: &str| text.iter().any(|e| e.starts_with(start));
    assert!(
        has("/etc/volt/vms/c.toml:3:8: disk[0].path: /d/alias.img is already used by VM b"),
        "{text:?}"
    );
    assert!(
        has("/etc/volt/vms/d.toml:5:8: disk[1].path: /d/../d/e.img is the image of disk[0] (/d/e.img) again"),
        "{text:?}"
    );
    let ok: Vec<&str> = set.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(ok, ["b"]);
}

#[test]
fn a_key_in_capitals_is_told_its_name_and_a_runaway_file_is_refused() {
    let e = errs("web", &format!("{KERNEL}VCPUS = 2\n"));
    assert!(
        e.iter()
            .any(|l| l.contains("VCPUS: unknown key; did you mean vcpus?")),
        "{e:?}"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let vms = tmp.path().join("etc/volt/vms");
    std::fs::create_dir_all(&vms).expect("mkdir");
    let mut big = String::from("# padding\n");
    while big.len() <= 1 << 20 {
        big.push_str("# a comment line that makes the file larger than any Volt file\n");
    }
    std::fs::write(vms.join("big.toml"), big).expect("write");
    let set = crate::config::ConfigSet::load(tmp.path());
    let text: Vec<String> = set.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        text,
        ["/etc/volt/vms/big.toml: file: larger than 1024 KiB: not a Volt config file"]
    );
}

#[test]
fn odd_entries_in_the_vm_directory_are_warnings_alike() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let vms = tmp.path().join("etc/volt/vms");
    std::fs::create_dir_all(vms.join("real.toml")).expect("mkdir");
    std::fs::create_dir_all(tmp.path().join("elsewhere")).expect("mkdir");
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), vms.join("link.toml"))
        .expect("symlink");
    let bad = std::ffi::OsStr::from_bytes(b"bad\xffname.toml");
    std::fs::write(vms.join(bad), "kernel = \"/k\"\n").expect("write");
    let set = crate::config::ConfigSet::load(tmp.path());
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    let w = set.warnings.join("\n");
    for want in [
        "/etc/volt/vms/real.toml is not a regular file; skipped",
        "/etc/volt/vms/link.toml is not a regular file; skipped",
        "is not read: its name is not UTF-8",
    ] {
        assert!(w.contains(want), "{want:?} not in {w}");
    }
}
