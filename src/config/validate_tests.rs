use std::path::PathBuf;

use crate::config::{parse_vm_toml, Network, Networks};

fn load(files: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    let nets = Networks::new(vec![Network::builtin_default()]);
    let vms = files
        .iter()
        .map(|(n, t)| {
            parse_vm_toml(&PathBuf::from(format!("/etc/volt/vms/{n}.toml")), t, &nets)
                .expect("valid")
        })
        .collect();
    let (ok, _, errs) = super::check_across(vms, Vec::new(), Default::default);
    (
        ok.into_iter().map(|v| v.name).collect(),
        errs.iter().map(|e| e.to_string()).collect(),
    )
}

#[test]
fn vsock_cids_are_unique() {
    let (ok, errs) = load(&[
        ("a", "kernel = \"/k\"\n[vsock]\ncid = 9\n"),
        ("b", "kernel = \"/k\"\n[vsock]\ncid = 9\n"),
    ]);
    assert_eq!(ok, ["a"]);
    assert!(
        errs[0].contains("vsock: vsock CID 9 is already used by VM a"),
        "{errs:?}"
    );
}

#[test]
fn an_image_is_read_write_for_one_vm_or_read_only_for_many() {
    let k = "kernel = \"/k\"\n";
    let rw = format!("{k}[[disk]]\npath = \"/d/a.img\"\n");
    let ro = format!("{k}[[disk]]\npath = \"/d/a.img\"\nreadonly = true\n");
    let (ok, errs) = load(&[("a", &ro), ("b", &ro), ("c", &rw)]);
    assert_eq!(ok, ["a", "b"]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("/etc/volt/vms/c.toml:3:8: disk[0].path: /d/a.img is already used by VM a (/etc/volt/vms/a.toml)"),
        "{errs:?}"
    );
    let (ok, errs) = load(&[("a", &rw), ("b", &ro)]);
    assert_eq!(ok, ["a"]);
    assert!(
        errs[0].contains("is already used by VM a (/etc/volt/vms/a.toml) (read-write)"),
        "{errs:?}"
    );
}

#[test]
fn duplicates_across_files_skip_the_later_file_only() {
    let k = "kernel = \"/k\"\n";
    let (ok, errs) = load(&[
        ("a", &format!("{k}[[network]]\nipv4 = \"10.42.0.10\"\n")),
        ("b", &format!("{k}[[network]]\nipv4 = \"10.42.0.10\"\n")),
        ("c", &format!("{k}[[network]]\nipv4 = \"10.42.0.11\"\n")),
    ]);
    assert_eq!(ok, vec!["a", "c"]);
    assert_eq!(errs, vec!["/etc/volt/vms/b.toml:3:8: network[0].ipv4: 10.42.0.10 on volt0 is already used by VM a (/etc/volt/vms/a.toml)"]);
}

#[test]
fn duplicate_uuid_and_mac() {
    let u = "uuid = \"0b7c8a8e-1f6b-4c39-9d8e-52a1f0f7e001\"\nkernel = \"/k\"\n";
    let (ok, errs) = load(&[("a", u), ("b", u)]);
    assert_eq!(ok, vec!["a"]);
    assert!(
        errs[0].starts_with("/etc/volt/vms/b.toml:1:8: uuid: UUID 0b7c8a8e"),
        "{errs:?}"
    );
    // Same UUID also means the same TAP name.
    let m = "kernel = \"/k\"\n[[network]]\nmac = \"52:54:00:00:00:42\"\n";
    let (ok, errs) = load(&[("a", m), ("b", m)]);
    assert_eq!(ok, vec!["a"]);
    assert!(
        errs[0]
            .contains("b.toml:3:7: network[0].mac: MAC 52:54:00:00:00:42 is already used by VM a"),
        "{errs:?}"
    );
}

#[test]
fn containers_clash_with_vms_on_names_addresses_and_macs() {
    use crate::config::parse_container_toml;
    let nets = Networks::new(vec![Network::builtin_default()]);
    let vm = |n: &str, t: &str| {
        parse_vm_toml(&PathBuf::from(format!("/etc/volt/vms/{n}.toml")), t, &nets)
            .expect("valid vm")
    };
    let ct = |n: &str, t: &str| {
        parse_container_toml(
            &PathBuf::from(format!("/etc/volt/containers/{n}.toml")),
            t,
            &nets,
        )
        .expect("valid container")
    };
    // A tree of its own each (a tree one container writes is that container's alone).
    let base = |n: &str| format!("directory = \"/srv/{n}\"\ncommand = [\"/bin/true\"]\n");
    let web_mac = crate::config::nic_mac(&crate::config::vm_uuid("web"), "eth0", 0);
    let (vms, cts, errs) = super::check_across(
        vec![vm("web", "kernel = \"/k\"\n[[network]]\n")],
        vec![
            ct("web", &base("web")),
            ct(
                "a",
                &format!("{}[[network]]\nipv4 = \"10.42.0.120\"\n", base("a")),
            ),
            ct(
                "b",
                &format!("{}[[network]]\nipv4 = \"10.42.0.120\"\n", base("b")),
            ),
            ct(
                "c",
                &format!("{}[[network]]\nmac = \"{web_mac}\"\n", base("c")),
            ),
            ct("d", &format!("{}[[network]]\n", base("d"))),
        ],
        Default::default,
    );
    assert_eq!(vms.len(), 1);
    let names: Vec<&str> = cts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["a", "d"]);
    let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "/etc/volt/containers/web.toml: name: the workload name web is already used by VM web"
        ),
        "{errs:?}"
    );
    assert!(errs[1].starts_with("/etc/volt/containers/b.toml:4:8: network[0].ipv4: 10.42.0.120 on volt0 is already used by container a"), "{errs:?}");
    assert!(
        errs[2].starts_with("/etc/volt/containers/c.toml:4:7: network[0].mac: MAC"),
        "{errs:?}"
    );
}

#[test]
fn a_link_name_is_claimed_once() {
    // Two UUIDs that differ after their first 8 hex digits: the TAP names (tap-<those
    // digits>) collide.
    let t =
        |u: &str| format!("uuid = \"0b7c8a8e-1f6b-4c39-9d8e-{u}\"\nkernel = \"/k\"\n[[network]]\n");
    let (ok, errs) = load(&[("a", &t("52a1f0f7e001")), ("b", &t("52a1f0f7e002"))]);
    assert_eq!(ok, vec!["a"]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .contains("b.toml:3:1: network[0].id: link name tap-0b7c8a8e is already used by VM a"),
        "{errs:?}"
    );
}
