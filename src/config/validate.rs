//! Checks across VM files: one UUID, MAC, address and TAP name per workload.
//!
//! Files are taken in name order; when two collide, the later file gets the error and is
//! left out, so the earlier VM still starts.

use std::collections::HashMap;

use super::error::{ConfigError, Location};
use super::vm::VmConfig;

pub(super) fn check_across(vms: Vec<VmConfig>) -> (Vec<VmConfig>, Vec<ConfigError>) {
    let mut ok: Vec<VmConfig> = Vec::new();
    let mut errors = Vec::new();
    // What is taken, and by whom: key → (vm name, file).
    let mut taken: HashMap<String, String> = HashMap::new();
    for vm in vms {
        let mut errs = Vec::new();
        let file_at = || Location::file(&vm.path);
        let mut claims: Vec<(String, String, Location, String)> = Vec::new();
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
        for (key, field, at, what) in &claims {
            if let Some(owner) = taken.get(key) {
                errs.push(ConfigError::Invalid {
                    at: at.clone(),
                    field: field.clone(),
                    message: format!("{what} is already used by {owner}"),
                });
            }
        }
        if errs.is_empty() {
            for (key, _, _, _) in claims {
                taken.insert(key, format!("VM {} ({})", vm.name, vm.path.display()));
            }
            ok.push(vm);
        } else {
            errors.extend(errs);
        }
    }
    (ok, errors)
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
        let (ok, errs) = super::check_across(vms);
        (
            ok.into_iter().map(|v| v.name).collect(),
            errs.iter().map(|e| e.to_string()).collect(),
        )
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
}
