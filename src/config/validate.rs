//! Checks across VM and container files: one name, UUID, MAC, address and link name per
//! workload.
//!
//! Files are taken in name order; when two collide, the later file gets the error and is
//! left out, so the earlier VM still starts.

use std::collections::HashMap;

use super::container::ContainerConfig;
use super::error::{ConfigError, Location};
use super::vm::VmConfig;

/// One thing a workload takes: (key, field, where, what), e.g. a MAC on a bridge.
type Claim = (String, String, Location, String);

/// What is taken, and by whom: key → "VM web (/etc/volt/vms/web.toml)".
#[derive(Default)]
struct Taken(HashMap<String, String>);

impl Taken {
    /// The claims' conflicts as errors; if there are none, take every claim for `owner`.
    fn claim(&mut self, claims: Vec<Claim>, owner: String) -> Vec<ConfigError> {
        let errs: Vec<ConfigError> = claims
            .iter()
            .filter_map(|(key, field, at, what)| {
                self.0.get(key).map(|holder| ConfigError::Invalid {
                    at: at.clone(),
                    field: field.clone(),
                    message: format!("{what} is already used by {holder}"),
                })
            })
            .collect();
        if errs.is_empty() {
            for (key, _, _, _) in claims {
                self.0.insert(key, owner.clone());
            }
        }
        errs
    }
}

/// VMs first, then containers, each in file name order. Workload names are one namespace:
/// a container may not share a VM's name (port maps and reservations name workloads).
pub(super) fn check_across(
    vms: Vec<VmConfig>,
    containers: Vec<ContainerConfig>,
) -> (Vec<VmConfig>, Vec<ContainerConfig>, Vec<ConfigError>) {
    let mut ok: Vec<VmConfig> = Vec::new();
    let mut errors = Vec::new();
    let mut taken = Taken::default();
    for vm in vms {
        let file_at = || Location::file(&vm.path);
        let mut claims: Vec<Claim> = vec![(
            format!("name:{}", vm.name),
            "name".into(),
            file_at(),
            format!("the workload name {}", vm.name),
        )];
        if let Some(cid) = vm.vsock_cid {
            claims.push((
                format!("cid:{cid}"),
                "vsock".into(),
                vm.spans.vsock.clone().unwrap_or_else(file_at),
                format!("vsock CID {cid}"),
            ));
        }
        claims.push((
            format!("uuid:{}", vm.uuid),
            "uuid".into(),
            vm.spans.uuid.clone().unwrap_or_else(file_at),
            format!("UUID {}", vm.uuid),
        ));
        for nic in &vm.nics {
            let spans = vm.spans.nics.get(nic.index).cloned().unwrap_or_default();
            let nic_at = spans.at.clone().unwrap_or_else(file_at);
            let f = |name: &str| format!("network[{}].{name}", nic.index);
            claims.push((
                format!("link:{}", nic.link),
                f("id"),
                nic_at.clone(),
                format!("link name {}", nic.link),
            ));
            let segment = nic
                .bridge
                .clone()
                .or_else(|| nic.parent.clone())
                .unwrap_or_default();
            claims.push((
                format!("mac:{segment}:{}", nic.mac),
                f("mac"),
                spans.mac.clone().unwrap_or_else(|| nic_at.clone()),
                format!("MAC {}", nic.mac),
            ));
            if let (Some(ip), Some(net)) = (nic.ipv4, &nic.network) {
                claims.push((
                    format!("ip:{net}:{}", ip.addr()),
                    f("ipv4"),
                    spans.ipv4.clone().unwrap_or(nic_at),
                    format!("{} on {net}", ip.addr()),
                ));
            }
        }
        let owner = format!("VM {} ({})", vm.name, vm.path.display());
        // An image is used read-write by one VM, or read-only by any number.
        let disk_errs: Vec<ConfigError> = vm
            .disks
            .iter()
            .filter_map(|d| {
                let p = d.path.display();
                let holder = if d.readonly {
                    taken.0.get(&format!("disk-rw:{p}"))
                } else {
                    taken.0.get(&format!("disk:{p}"))
                }?;
                Some(ConfigError::Invalid {
                    at: d.at.clone().unwrap_or_else(file_at),
                    field: format!("disk[{}].path", d.index),
                    message: format!(
                        "{p} is already used by {holder}{}",
                        if d.readonly { " (read-write)" } else { "" }
                    ),
                })
            })
            .collect();
        let mut errs = taken.claim(claims, owner.clone());
        if errs.is_empty() && disk_errs.is_empty() {
            for d in &vm.disks {
                let p = d.path.display();
                taken
                    .0
                    .entry(format!("disk:{p}"))
                    .or_insert_with(|| owner.clone());
                if !d.readonly {
                    taken.0.insert(format!("disk-rw:{p}"), owner.clone());
                }
            }
        }
        errs.extend(disk_errs);
        if errs.is_empty() {
            ok.push(vm);
        } else {
            errors.extend(errs);
        }
    }
    let mut ok_containers = Vec::new();
    for ct in containers {
        let file_at = || Location::file(&ct.path);
        let mut claims: Vec<Claim> = vec![(
            format!("name:{}", ct.name),
            "name".into(),
            file_at(),
            format!("the workload name {}", ct.name),
        )];
        for nic in &ct.nics {
            let spans = ct.spans.nics.get(nic.index).cloned().unwrap_or_default();
            let nic_at = spans.at.clone().unwrap_or_else(file_at);
            let f = |name: &str| format!("network[{}].{name}", nic.index);
            for link in [&nic.host_link, &nic.container_link] {
                claims.push((
                    format!("link:{link}"),
                    f("id"),
                    nic_at.clone(),
                    format!("link name {link}"),
                ));
            }
            claims.push((
                format!("mac:{}:{}", nic.bridge.clone().unwrap_or_default(), nic.mac),
                f("mac"),
                spans.mac.clone().unwrap_or_else(|| nic_at.clone()),
                format!("MAC {}", nic.mac),
            ));
            if let (Some(ip), Some(net)) = (nic.ipv4, &nic.network) {
                claims.push((
                    format!("ip:{net}:{}", ip.addr()),
                    f("ipv4"),
                    spans.ipv4.clone().unwrap_or(nic_at),
                    format!("{} on {net}", ip.addr()),
                ));
            }
        }
        let errs = taken.claim(
            claims,
            format!("container {} ({})", ct.name, ct.path.display()),
        );
        if errs.is_empty() {
            ok_containers.push(ct);
        } else {
            errors.extend(errs);
        }
    }
    (ok, ok_containers, errors)
}

/// Every port map must reach a configured VM or container with a NIC on the map's network.
pub(super) fn check_port_maps(
    networks: &super::Networks,
    vms: &[VmConfig],
    containers: &[ContainerConfig],
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for net in &networks.list {
        for (i, pm) in net.port_maps.iter().enumerate() {
            let on_net = |n: &Option<String>| n.as_deref() == Some(net.name.as_str());
            let vm = vms.iter().find(|v| v.name == pm.target);
            let ct = containers.iter().find(|c| c.name == pm.target);
            let problem = match (vm, ct) {
                (None, None) => Some(format!("{} is not a configured VM or container", pm.target)),
                (Some(v), _) if !v.nics.iter().any(|n| on_net(&n.network)) => {
                    Some(format!("VM {} has no NIC on {}", pm.target, net.name))
                }
                (None, Some(c)) if !c.nics.iter().any(|n| on_net(&n.network)) => Some(format!(
                    "container {} has no NIC on {}",
                    pm.target, net.name
                )),
                _ => None,
            };
            if let Some(message) = problem {
                errors.push(ConfigError::Invalid {
                    at: pm.target_at.clone().unwrap_or_else(|| {
                        Location::file(net.source.as_deref().unwrap_or(std::path::Path::new("?")))
                    }),
                    field: format!("port_map[{i}].target"),
                    message,
                });
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{parse_vm_toml, Network, Networks};

    fn load(files: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
        let nets = Networks {
            list: vec![Network::builtin_default()],
        };
        let vms = files
            .iter()
            .map(|(n, t)| {
                parse_vm_toml(&PathBuf::from(format!("/etc/volt/vms/{n}.toml")), t, &nets)
                    .expect("valid")
            })
            .collect();
        let (ok, _, errs) = super::check_across(vms, Vec::new());
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
            errs[0].contains(
                "b.toml:3:7: network[0].mac: MAC 52:54:00:00:00:42 is already used by VM a"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn containers_clash_with_vms_on_names_addresses_and_macs() {
        use crate::config::parse_container_toml;
        let nets = Networks {
            list: vec![Network::builtin_default()],
        };
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
        let base = "directory = \"/srv/c\"\ncommand = [\"/bin/true\"]\n";
        let web_mac = crate::config::nic_mac(&crate::config::vm_uuid("web"), "eth0", 0);
        let (vms, cts, errs) = super::check_across(
            vec![vm("web", "kernel = \"/k\"\n[[network]]\n")],
            vec![
                ct("web", base),
                ct("a", &format!("{base}[[network]]\nipv4 = \"10.42.0.120\"\n")),
                ct("b", &format!("{base}[[network]]\nipv4 = \"10.42.0.120\"\n")),
                ct("c", &format!("{base}[[network]]\nmac = \"{web_mac}\"\n")),
                ct("d", &format!("{base}[[network]]\n")),
            ],
        );
        assert_eq!(vms.len(), 1);
        let names: Vec<&str> = cts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["a", "d"]);
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("/etc/volt/containers/web.toml: name: the workload name web is already used by VM web"), "{errs:?}");
        assert!(errs[1].starts_with("/etc/volt/containers/b.toml:4:8: network[0].ipv4: 10.42.0.120 on volt0 is already used by container a"), "{errs:?}");
        assert!(
            errs[2].starts_with("/etc/volt/containers/c.toml:4:7: network[0].mac: MAC"),
            "{errs:?}"
        );
    }
}
