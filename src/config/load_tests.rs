use super::*;

/// A root holding `files` (path under the root, text).
fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tmp");
    for (rel, text) in files {
        let p = tmp.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    tmp
}

/// The errors of the configuration under `root`, as they are printed.
fn error_texts(root: &Path) -> Vec<String> {
    ConfigSet::load(root)
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn the_cluster_loader_reads_networks_and_cluster_toml_but_no_workload_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let etc = tmp.path().join("etc/volt");
    std::fs::create_dir_all(etc.join("vms")).expect("mkdir");
    std::fs::write(
        etc.join("cluster.toml"),
        "host = \"a\"\nunderlay = \"192.168.50.11\"\n[etcd]\nendpoints = [\"http://192.168.50.11:2379\"]\n[[network]]\nname = \"volt0\"\nvni = 42\n",
    )
    .expect("write");
    std::fs::write(etc.join("vms/bad.toml"), "memory_mib = \"lots\"\n").expect("write");
    let light = ConfigSet::load_cluster(tmp.path());
    assert!(light.cluster.is_some(), "{:?}", light.errors);
    assert!(light.errors.is_empty(), "{:?}", light.errors);
    assert!(light.vms.is_empty() && light.containers.is_empty());
    let full = ConfigSet::load(tmp.path());
    assert!(full.cluster.is_some());
    assert!(
        full.errors
            .iter()
            .any(|e| e.file().ends_with("vms/bad.toml")),
        "{:?}",
        full.errors
    );
}

/// A cluster.toml that is a symlink to nothing was meant to be there: the host does not
/// quietly leave the cluster (its VMs would start unclaimed), it fails closed.
#[test]
fn a_dangling_cluster_toml_symlink_fails_closed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let etc = tmp.path().join("etc/volt");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::os::unix::fs::symlink("/nonexistent/cluster.toml", etc.join("cluster.toml"))
        .expect("symlink");
    for set in [
        ConfigSet::load(tmp.path()),
        ConfigSet::load_cluster(tmp.path()),
    ] {
        assert!(set.cluster_broken, "{:?}", set.errors);
        assert!(
            set.errors.iter().any(|e| e
                .to_string()
                .contains("a symlink to /nonexistent/cluster.toml, which does not exist")),
            "{:?}",
            set.errors
        );
        assert!(
            set.errors
                .iter()
                .any(|e| e.file() == Path::new("/etc/volt/cluster.toml")),
            "{:?}",
            set.errors
        );
    }
    // Absent, it is no cluster.
    std::fs::remove_file(etc.join("cluster.toml")).expect("rm");
    let set = ConfigSet::load(tmp.path());
    assert!(!set.cluster_broken && set.cluster.is_none() && set.errors.is_empty());
}

#[test]
fn a_nic_on_a_network_whose_file_is_broken_is_told_to_fix_that_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let etc = tmp.path().join("etc/volt");
    std::fs::create_dir_all(etc.join("vms")).expect("mkdir");
    std::fs::create_dir_all(etc.join("networks")).expect("mkdir");
    std::fs::write(tmp.path().join("k"), "kernel").expect("write");
    std::fs::write(
        etc.join("networks/lab.toml"),
        "subnet = \"10.50.0.0/24\"\nbridge = \"brlab\"\ntpye = \"bridged\"\n",
    )
    .expect("write");
    std::fs::write(
        etc.join("vms/a.toml"),
        "kernel = \"/k\"\n[[network]]\nbridge = \"brlab\"\n",
    )
    .expect("write");
    std::fs::write(
        etc.join("vms/b.toml"),
        "kernel = \"/k\"\n[[network]]\nzone = \"lab\"\n",
    )
    .expect("write");
    let text = error_texts(tmp.path());
    for vm in ["a", "b"] {
        assert!(
            text.iter()
                .any(|e| e.starts_with(&format!("/etc/volt/vms/{vm}.toml:3:"))
                    && e.contains(
                        "its network is defined in /etc/volt/networks/lab.toml, which has errors"
                    )),
            "{text:?}"
        );
    }
    // A file that is not even TOML (a key twice): its bridge is read from its line, or is
    // its name when it gives none.
    for (net, bridge) in [
        (
            "subnet = \"10.50.0.0/24\"\nbridge = \"brlab\"\nmtu = 1500\nmtu = 1400\n",
            "brlab",
        ),
        ("subnet = \"10.50.0.0/24\"\nmtu = 1500\nmtu = 1400\n", "lab"),
        (
            "subnet = \"10.50.0.0/24\"\nbridge = 'br7'\nmtu = 1500\nmtu = 1400\n",
            "br7",
        ),
    ] {
        std::fs::write(etc.join("networks/lab.toml"), net).expect("write");
        std::fs::write(
            etc.join("vms/a.toml"),
            format!("kernel = \"/k\"\n[[network]]\nbridge = \"{bridge}\"\n"),
        )
        .expect("write");
        let text = error_texts(tmp.path());
        assert!(
            text.iter().any(|e| e.starts_with("/etc/volt/vms/a.toml:3:")
                && e.contains("/etc/volt/networks/lab.toml, which has errors")),
            "{text:?}"
        );
    }
}

/// A zone file with errors is told to the NICs that name the zone, as a network file is.
#[test]
fn a_nic_on_a_zone_whose_file_is_broken_is_told_to_fix_that_file() {
    let tmp = root_with(&[
        (
            "etc/voltainer/network/dmz.yaml",
            "kind: NetworkZone\nname: dmz\nsubnet: 10.60.0.0/24\nmtu: big\n",
        ),
        (
            "etc/volt/vms/a.toml",
            "kernel = \"/k\"\n[[network]]\nzone = \"dmz\"\n",
        ),
    ]);
    let text = error_texts(tmp.path());
    assert!(
        text.iter().any(|e| e.starts_with("/etc/volt/vms/a.toml:3:8: network[0].zone: its network is defined in /etc/voltainer/network/dmz.yaml, which has errors")),
        "{text:?}"
    );
}

#[test]
fn a_network_colliding_with_another_is_told_where_both_write_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let nets = tmp.path().join("etc/volt/networks");
    let zones = tmp.path().join("etc/voltainer/network");
    std::fs::create_dir_all(&nets).expect("mkdir");
    std::fs::create_dir_all(&zones).expect("mkdir");
    std::fs::write(
        nets.join("a.toml"),
        "# lab\nbridge = \"lab0\"\nsubnet = \"10.50.0.0/24\"\n",
    )
    .expect("write");
    // The same bridge, and a subnet inside a's.
    std::fs::write(
        nets.join("b.toml"),
        "subnet = \"10.51.0.0/24\"\nbridge = \"lab0\"\n",
    )
    .expect("write");
    std::fs::write(nets.join("c.toml"), "subnet = \"10.50.0.128/25\"\n").expect("write");
    // The built-in volt0's subnet.
    std::fs::write(nets.join("d.toml"), "\n\nsubnet = \"10.42.0.0/16\"\n").expect("write");
    // A zone named like a.toml's network, its name on line 3.
    std::fs::write(
        zones.join("z.yaml"),
        "apiVersion: v1\nkind: NetworkZone\nname: a\nsubnet: 10.60.0.0/24\n",
    )
    .expect("write");
    let set = ConfigSet::load(tmp.path());
    let mut text: Vec<String> = set.errors.iter().map(|e| e.to_string()).collect();
    text.sort();
    assert_eq!(
        text,
        vec![
            "/etc/volt/networks/b.toml:2:10: bridge: bridge \"lab0\": already defined by /etc/volt/networks/a.toml:2:10",
            "/etc/volt/networks/c.toml:1:10: subnet: subnet 10.50.0.128/25 overlaps 10.50.0.0/24: already defined by /etc/volt/networks/a.toml:3:10",
            "/etc/volt/networks/d.toml:3:10: subnet: subnet 10.42.0.0/16 overlaps 10.42.0.0/24: that is the built-in network volt0; use another, or redefine volt0 with bridge = \"volt0\"",
            "/etc/voltainer/network/z.yaml:3:7: name: the name \"a\": already defined by /etc/volt/networks/a.toml",
        ],
    );
    let names: Vec<&str> = set.networks.list.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["a", "volt0"],
        "the first of each collision stays"
    );
}

/// A clustered NIC whose own MTU is larger than the overlay's is told where it writes it.
#[test]
fn a_nic_mtu_above_the_overlay_is_told_where_it_is_written() {
    let tmp = root_with(&[
        (
            "etc/volt/cluster.toml",
            "host = \"a\"\nunderlay = \"192.168.50.11\"\n[etcd]\nendpoints = [\"http://192.168.50.11:2379\"]\n[[network]]\nname = \"volt0\"\nvni = 42\n",
        ),
        ("etc/volt/vms/a.toml", "kernel = \"/k\"\n[[network]]\nmtu = 9000\n"),
    ]);
    let text = error_texts(tmp.path());
    assert!(
        text.iter().any(|e| e.starts_with(
            "/etc/volt/vms/a.toml:3:7: network[0].mtu: 9000 is larger than the cluster overlay's MTU 1450 (underlay_mtu = 1500 in /etc/volt/cluster.toml, minus 50 bytes of VXLAN): set it to at most 1450"
        )),
        "{text:?}"
    );
    // So is a clustered network's own mtu.
    std::fs::create_dir_all(tmp.path().join("etc/volt/networks")).expect("mkdir");
    std::fs::write(
        tmp.path().join("etc/volt/networks/volt0.toml"),
        "subnet = \"10.42.0.0/24\"\nmtu = 9000\n",
    )
    .expect("write");
    let text = error_texts(tmp.path());
    assert!(
        text.iter()
            .any(|e| e.starts_with("/etc/volt/networks/volt0.toml:2:7: mtu: volt0 is clustered")),
        "{text:?}"
    );
}
