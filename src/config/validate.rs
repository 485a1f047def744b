//! Checks across VM and container files: one name, UUID, MAC, address and link name per
//! workload.
//!
//! Files are taken in name order; when two collide, the later file gets the error and is
//! left out, so the earlier VM still starts; except that workloads the generator made units
//! for last time go first (a new file cannot displace a running VM).

use std::collections::{HashMap, HashSet};

use super::container::ContainerConfig;
use super::derive::MacAddr;
use super::error::{ConfigError, Location};
use super::nic::NicSpans;
use super::vm::VmConfig;
use ipnet::Ipv4Net;

/// What a claim says when another workload holds its key already: (field, where, what).
type Describe<'a> = Box<dyn Fn() -> (String, Location, String) + 'a>;

/// One thing a workload takes: its key (e.g. a MAC on a bridge), and what to say about it,
/// made only when it collides (a thousand files make 14 000 messages nobody reads).
type Claim<'a> = (String, Describe<'a>);

/// What is taken, and by whom: key → index into `owners` ("VM web (/etc/volt/vms/web.toml)").
struct Taken {
    keys: HashMap<String, usize>,
    owners: Vec<String>,
}

impl Taken {
    fn holder(&self, key: &str) -> Option<&str> {
        self.keys
            .get(key)
            .and_then(|&i| self.owners.get(i))
            .map(String::as_str)
    }

    /// The claims' conflicts as errors; if there are none, take every claim for `owner`.
    fn claim(&mut self, claims: Vec<Claim>, owner: usize) -> Vec<ConfigError> {
        let errs: Vec<ConfigError> = claims
            .iter()
            .filter_map(|(key, describe)| {
                self.holder(key).map(|holder| {
                    let (field, at, what) = describe();
                    ConfigError::Invalid {
                        at,
                        field,
                        message: format!("{what} is already used by {holder}"),
                    }
                })
            })
            .collect();
        if errs.is_empty() {
            for (key, _) in claims {
                self.keys.insert(key, owner);
            }
        }
        errs
    }

    /// A new owner's index.
    fn owner(&mut self, text: String) -> usize {
        self.owners.push(text);
        self.owners.len() - 1
    }
}

/// What one NIC of a workload takes.
struct NicClaim<'a> {
    path: &'a std::path::Path,
    spans: Option<&'a NicSpans>,
    index: usize,
    /// Its host-side link names (a container's veth has two).
    links: Vec<String>,
    /// The bridge or parent its MAC must be unique on.
    segment: &'a str,
    mac: &'a MacAddr,
    /// Its static address and the network that holds it.
    ipv4: Option<(Ipv4Net, &'a str)>,
}

/// A NIC's claims: each link name, its MAC on its segment, its static address on its network.
fn nic_claims<'a>(claims: &mut Vec<Claim<'a>>, n: NicClaim<'a>) {
    let NicClaim {
        path,
        spans,
        index,
        links,
        segment,
        mac,
        ipv4,
    } = n;
    let nic_at = move || {
        spans
            .and_then(|s| s.at.clone())
            .unwrap_or_else(|| Location::file(path))
    };
    let at = move |pick: fn(&NicSpans) -> &Option<Location>| {
        spans.and_then(|s| pick(s).clone()).unwrap_or_else(nic_at)
    };
    let f = move |name: &str| format!("network[{index}].{name}");
    for link in links {
        claims.push((
            format!("link:{link}"),
            Box::new(move || (f("id"), nic_at(), format!("link name {link}"))),
        ));
    }
    claims.push((
        format!("mac:{segment}:{mac}"),
        Box::new(move || (f("mac"), at(|s| &s.mac), format!("MAC {mac}"))),
    ));
    if let Some((ip, net)) = ipv4 {
        claims.push((
            format!("ip:{net}:{}", ip.addr()),
            Box::new(move || {
                (
                    f("ipv4"),
                    at(|s| &s.ipv4),
                    format!("{} on {net}", ip.addr()),
                )
            }),
        ));
    }
}

/// Which workloads keep what they claim when two files collide. VMs first, then containers,
/// each in file name order; but when there is a collision and `incumbents` (the workloads
/// the generator made units for last time: `vm/web`, `container/db`) names some, those go
/// first, so a running VM is not displaced by a new file that copied its address (the new
/// file gets the error). Workload names are one namespace: a container may not share a VM's
/// name (port maps and reservations name workloads).
pub(super) fn check_across(
    vms: Vec<VmConfig>,
    containers: Vec<ContainerConfig>,
    incumbents: impl FnOnce() -> HashSet<String>,
) -> (Vec<VmConfig>, Vec<ContainerConfig>, Vec<ConfigError>) {
    let mut r = assign(&vms, &containers, None);
    if !r.2.is_empty() {
        let first = incumbents();
        if !first.is_empty() {
            r = assign(&vms, &containers, Some(&first));
        }
    }
    let (vm_ok, ct_ok, errors) = r;
    let keep = |ok: Vec<bool>| ok.into_iter();
    let vms = vms
        .into_iter()
        .zip(keep(vm_ok))
        .filter_map(|(v, ok)| ok.then_some(v))
        .collect();
    let containers = containers
        .into_iter()
        .zip(keep(ct_ok))
        .filter_map(|(c, ok)| ok.then_some(c))
        .collect();
    (vms, containers, errors)
}

/// What VM and container files checked on their own (`volt validate FILE...`) collide with,
/// among the installed workloads of `set` and each other: their errors as the generator would
/// give them, the installed ones going first (a new file does not displace a workload that
/// runs). An installed file of the same kind and name is the one a file would replace.
pub fn collisions_with_installed(
    set: &super::ConfigSet,
    root: &std::path::Path,
    mut vms: Vec<VmConfig>,
    mut cts: Vec<ContainerConfig>,
) -> Vec<ConfigError> {
    // The installed ones' images and trees were looked at when they were loaded; the named
    // ones' now, so one image or tree behind two paths is one here too.
    super::disk::identify(&mut vms, root);
    super::container::identify(&mut cts, root);
    let named: HashSet<std::path::PathBuf> = vms
        .iter()
        .map(|v| v.path.clone())
        .chain(cts.iter().map(|c| c.path.clone()))
        .collect();
    // The installed ones a named file does not replace.
    fn kept<T: Clone>(installed: &[T], named: &[T], name: fn(&T) -> &str) -> Vec<T> {
        installed
            .iter()
            .filter(|i| !named.iter().any(|n| name(n) == name(i)))
            .cloned()
            .collect()
    }
    let mut all_vms = kept(&set.vms, &vms, |v| &v.name);
    let mut all_cts = kept(&set.containers, &cts, |c| &c.name);
    let installed: HashSet<String> = all_vms
        .iter()
        .map(|v| format!("vm/{}", v.name))
        .chain(all_cts.iter().map(|c| format!("container/{}", c.name)))
        .collect();
    all_vms.extend(vms);
    all_cts.extend(cts);
    let (_, _, mut errors) = check_across(all_vms, all_cts, || installed);
    errors.retain(|e| named.contains(e.file()));
    errors
}

/// The workloads in the generator's last record (see [`super::GENERATOR_RECORD`]), or, when
/// there is none (the first run after boot), in its copy kept across reboots
/// ([`super::CLAIMS_RECORD`]); none when neither can be read.
pub(super) fn incumbents(root: &std::path::Path) -> std::collections::HashSet<String> {
    match std::fs::read(root.join(super::GENERATOR_RECORD)) {
        Ok(text) => serde_json::from_slice::<HashMap<String, serde::de::IgnoredAny>>(&text)
            .map(|m| m.into_keys().collect())
            .unwrap_or_default(),
        Err(_) => std::fs::read(root.join(super::CLAIMS_RECORD))
            .ok()
            .and_then(|text| serde_json::from_slice::<Vec<String>>(&text).ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default(),
    }
}

/// One pass of claims in order (see [`check_across`]): which VMs and containers keep theirs,
/// and the errors of the others.
fn assign(
    vms: &[VmConfig],
    containers: &[ContainerConfig],
    first: Option<&HashSet<String>>,
) -> (Vec<bool>, Vec<bool>, Vec<ConfigError>) {
    // About five claims per workload; sized once instead of rehashed as it grows.
    let mut taken = Taken {
        keys: HashMap::with_capacity(6 * (vms.len() + containers.len())),
        owners: Vec::with_capacity(vms.len() + containers.len()),
    };
    let mut order: Vec<(bool, usize)> = (0..vms.len())
        .map(|i| (true, i))
        .chain((0..containers.len()).map(|i| (false, i)))
        .collect();
    if let Some(first) = first {
        // Stable: incumbents first, each group in the usual order.
        order.sort_by_key(|&(vm, i)| {
            let key = if vm {
                format!("vm/{}", vms[i].name)
            } else {
                format!("container/{}", containers[i].name)
            };
            !first.contains(&key)
        });
    }
    let (mut vm_ok, mut ct_ok) = (vec![false; vms.len()], vec![false; containers.len()]);
    let mut errors = Vec::new();
    for (vm, i) in order {
        let errs = if vm {
            claim_vm(&vms[i], &mut taken)
        } else {
            claim_container(&containers[i], &mut taken)
        };
        if !errs.is_empty() {
            errors.extend(errs);
        } else if vm {
            vm_ok[i] = true;
        } else {
            ct_ok[i] = true;
        }
    }
    (vm_ok, ct_ok, errors)
}

/// What VM `vm` takes (name, vsock CID, UUID, NICs, disks), or why it cannot.
fn claim_vm(vm: &VmConfig, taken: &mut Taken) -> Vec<ConfigError> {
    let file_at = || Location::file(&vm.path);
    let mut claims: Vec<Claim> = vec![(
        format!("name:{}", vm.name),
        Box::new(|| {
            (
                "name".into(),
                file_at(),
                format!("the workload name {}", vm.name),
            )
        }),
    )];
    if let Some(cid) = vm.vsock_cid {
        let vsock_at = &vm.spans.vsock;
        let derived = if vm.spans.cid_given {
            ""
        } else {
            " (derived from the VM's UUID; choose another with [vsock] cid = N)"
        };
        claims.push((
            format!("cid:{cid}"),
            Box::new(move || {
                (
                    "vsock".into(),
                    vsock_at.clone().unwrap_or_else(file_at),
                    format!("vsock CID {cid}{derived}"),
                )
            }),
        ));
    }
    claims.push((
        format!("uuid:{}", vm.uuid),
        Box::new(|| {
            (
                "uuid".into(),
                vm.spans.uuid.clone().unwrap_or_else(file_at),
                format!("UUID {}", vm.uuid),
            )
        }),
    ));
    for nic in &vm.nics {
        let segment = nic.bridge.as_ref().or(nic.parent.as_ref());
        nic_claims(
            &mut claims,
            NicClaim {
                path: &vm.path,
                spans: vm.spans.nics.get(nic.index),
                index: nic.index,
                links: vec![nic.link.clone()],
                segment: segment.map_or("", |s| s.as_str()),
                mac: &nic.mac,
                ipv4: nic.ipv4.zip(nic.network.as_deref()),
            },
        );
    }
    // An image is used read-write by one VM, or read-only by any number; and once per VM.
    // Known by what it is, not how its path is spelled (see `disk::identify`).
    let mut disk_errs: Vec<ConfigError> = Vec::new();
    for (i, d) in vm.disks.iter().enumerate() {
        let p = d.path.display();
        let key = d.image_key();
        let at = || d.at.clone().unwrap_or_else(file_at);
        if let Some(first) = vm.disks[..i].iter().find(|o| o.image_key() == key) {
            disk_errs.push(ConfigError::Invalid {
                at: at(),
                field: format!("disk[{}].path", d.index),
                message: format!(
                    "{p} is the image of disk[{}] ({}) again: a VM has each image once",
                    first.index,
                    first.path.display()
                ),
            });
            continue;
        }
        let holder = if d.readonly {
            taken.holder(&format!("disk-rw:{key}"))
        } else {
            taken.holder(&format!("disk:{key}"))
        };
        if let Some(holder) = holder {
            disk_errs.push(ConfigError::Invalid {
                at: at(),
                field: format!("disk[{}].path", d.index),
                message: format!(
                    "{p} is already used by {holder}{}",
                    if d.readonly { " (read-write)" } else { "" }
                ),
            });
        }
    }
    let owner = taken.owner(format!("VM {} ({})", vm.name, vm.path.display()));
    let mut errs = taken.claim(claims, owner);
    if errs.is_empty() && disk_errs.is_empty() {
        for d in &vm.disks {
            let key = d.image_key();
            taken.keys.entry(format!("disk:{key}")).or_insert(owner);
            if !d.readonly {
                taken.keys.insert(format!("disk-rw:{key}"), owner);
            }
        }
    }
    errs.extend(disk_errs);
    errs
}

/// What container `ct` takes (name, NICs), or why it cannot.
fn claim_container(ct: &ContainerConfig, taken: &mut Taken) -> Vec<ConfigError> {
    let file_at = || Location::file(&ct.path);
    let mut claims: Vec<Claim> = vec![(
        format!("name:{}", ct.name),
        Box::new(|| {
            (
                "name".into(),
                file_at(),
                format!("the workload name {}", ct.name),
            )
        }),
    )];
    for nic in &ct.nics {
        nic_claims(
            &mut claims,
            NicClaim {
                path: &ct.path,
                spans: ct.spans.nics.get(nic.index),
                index: nic.index,
                links: vec![nic.host_link.clone(), nic.container_link.clone()],
                segment: nic.bridge.as_deref().unwrap_or_default(),
                mac: &nic.mac,
                ipv4: nic.ipv4.zip(nic.network.as_deref()),
            },
        );
    }
    // A tree is written by one container (nspawn locks it), or read by any number (volatile
    // modes keep it read-only). Known by what it is where it can be looked at, as nspawn's
    // lock knows it, else by its path.
    let writable = ct.volatile == super::container::Volatile::No;
    let shown = format!(
        "{}",
        ct.root
            .components()
            .collect::<std::path::PathBuf>()
            .display()
    );
    let tree = ct.tree_identity.clone().unwrap_or_else(|| shown.clone());
    let holder = if writable {
        taken.holder(&format!("tree:{tree}"))
    } else {
        taken.holder(&format!("tree-rw:{tree}"))
    };
    let tree_err = holder.map(|holder| ConfigError::Invalid {
        at: ct.spans.root.clone().unwrap_or_else(file_at),
        field: match ct.root_kind {
            super::container::RootKind::Directory => "directory".into(),
            super::container::RootKind::Image => "image".into(),
        },
        message: format!(
            "{shown} is already the root of {holder}{}",
            if writable {
                " (a tree one container writes is that container's alone; volatile = \"overlay\" shares it read-only)"
            } else {
                ", which writes it"
            }
        ),
    });
    // Its host end (in the host's namespace unless isolated) carries the container's name as
    // an altname, among the interface names: a TAP or veth of that name could then not be
    // made. (Two altnames alike only cost one of them its altname: no claim on those.)
    if ct.nics.first().is_some_and(|n| !n.isolated) {
        claims.push((
            format!("link:{}", ct.name),
            Box::new(|| {
                (
                    "name".into(),
                    file_at(),
                    format!(
                        "the name {} (its host link's altname) as a link name",
                        ct.name
                    ),
                )
            }),
        ));
    }
    let owner = taken.owner(format!("container {} ({})", ct.name, ct.path.display()));
    let mut errs = taken.claim(claims, owner);
    if errs.is_empty() && tree_err.is_none() {
        taken.keys.entry(format!("tree:{tree}")).or_insert(owner);
        if writable {
            taken.keys.insert(format!("tree-rw:{tree}"), owner);
        }
    }
    errs.extend(tree_err);
    errs
}

/// Every port map must reach a configured VM or container with a NIC on the map's network
/// (or one whose file is `broken`: its own errors say what to fix).
pub(super) fn check_port_maps(
    networks: &super::Networks,
    vms: &[VmConfig],
    containers: &[ContainerConfig],
    errors_so_far: &[ConfigError],
) -> Vec<ConfigError> {
    // The workloads whose files have errors.
    let broken: HashSet<String> = errors_so_far
        .iter()
        .filter_map(|e| super::workload_of(e.file()).map(|(_, name)| name))
        .collect();
    let mut errors = Vec::new();
    for net in &networks.list {
        for (i, pm) in net.port_maps.iter().enumerate() {
            let on_net = |n: &Option<String>| n.as_deref() == Some(net.name.as_str());
            let vm = vms.iter().find(|v| v.name == pm.target);
            let ct = containers.iter().find(|c| c.name == pm.target);
            let problem = match (vm, ct) {
                // Its file has errors of its own, said there; the map waits for it.
                (None, None) if broken.contains(&pm.target) => None,
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
#[path = "validate_tests.rs"]
mod tests;
