//! Address leases as policy: which leases are still held (a workload in the plan, a running
//! one whose link is up, or one whose file exists but is broken and may run on its last good
//! units), reconciliation of the rest when a link comes up, and the leases the running
//! workloads hold, which rebuild a corrupt lease file.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{owner_of, Attach, LinkRecord};
use crate::config::{Network, CONTAINERS_DIR, VMS_DIR};
use crate::net::ipam::{Ipam, Kind, Lease, Owner};
use crate::plan::Kind as WorkloadKind;

/// Every link record under `dir` (the links that are up now).
pub(super) fn records(dir: &Path) -> Vec<LinkRecord> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<LinkRecord>(&t).ok())
        .collect()
}

pub(super) fn record_owner(r: &LinkRecord) -> Option<Owner> {
    match r.kind.as_str() {
        "vm" => Some(Owner::vm(&r.workload, &r.nic)),
        "container" => Some(Owner::container(&r.workload, &r.nic)),
        _ => None,
    }
}

/// What rebuilds a network's corrupt lease file: the addresses in the records of the links
/// that are up (a VM's pool lease is in its record, a container's DHCP address once it got
/// one), on that network's subnet. Addresses the
/// plan knows (static, reserved) are marked as asked for.
fn rebuild_source(
    links: PathBuf,
    nets: Vec<Network>,
    known: Vec<(Owner, Ipv4Addr)>,
) -> impl Fn(&str) -> Vec<Lease> + Send + Sync + 'static {
    move |network| {
        let Some(subnet) = nets.iter().find(|n| n.name == network).map(|n| n.subnet) else {
            return Vec::new();
        };
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        records(&links)
            .iter()
            .filter_map(|r| {
                let ip = r.ipv4.map(|n| n.addr()).or(r.dhcp)?;
                let owner = record_owner(r)?;
                subnet.contains(&ip).then(|| Lease {
                    fixed: known.contains(&(owner.clone(), ip)),
                    ip,
                    owner,
                    since,
                })
            })
            .collect()
    }
}

impl Attach {
    /// The lease store, rebuilding a corrupt file from the running workloads.
    pub fn ipam(&self) -> Ipam {
        let known = self
            .plan
            .workloads
            .iter()
            .flat_map(|w| w.attachments.iter().map(move |a| (w, a)))
            .filter_map(|(w, a)| Some((owner_of(w, a), a.addressing.known()?.addr())))
            .collect();
        let nets = self.plan.networks.list.clone();
        Ipam::with_rebuild(
            self.paths.ipam_dir(),
            rebuild_source(self.paths.links_dir(), nets.clone(), known),
        )
        .keeping_only(move |network, ip| {
            nets.iter().any(|n| n.name == network && n.is_host_addr(ip))
        })
    }

    /// Whether `owner` still holds its lease on `network`: one of its workload's NICs in the
    /// plan on that network, its link up (a record: it runs, even if its file was removed or
    /// moved the NIC meanwhile), or its file there but broken (it may run on its last good
    /// units). A NIC removed from a valid file or moved to another network, or a workload
    /// whose file is gone and whose links are down, does not.
    pub fn lease_alive(&self, network: &str, owner: &Owner) -> bool {
        let planned = self.plan.workloads.iter().any(|w| {
            w.attachments
                .iter()
                .any(|a| owner_of(w, a) == *owner && a.network.as_deref() == Some(network))
        });
        if planned {
            return true;
        }
        if records(&self.paths.links_dir())
            .iter()
            .any(|r| record_owner(r).as_ref() == Some(owner))
        {
            return true;
        }
        let (kind, dir) = match owner.kind {
            Kind::Vm => (WorkloadKind::Vm, VMS_DIR),
            Kind::Container => (WorkloadKind::Container, CONTAINERS_DIR),
        };
        if self.plan.workload(kind, &owner.name).is_some() {
            return false;
        }
        crate::config::check_workload_name(&owner.name).is_ok()
            && self
                .paths
                .root()
                .join(dir)
                .join(format!("{}.toml", owner.name))
                .exists()
    }

    /// Release the leases on `net` that [`Attach::lease_alive`] says nobody holds.
    pub fn reconcile_leases(&self, net: &Network) -> Result<Vec<Lease>, super::AttachError> {
        let gone = self
            .ipam()
            .reconcile(&net.name, &|o| self.lease_alive(&net.name, o))
            .map_err(|source| super::AttachError::Ipam {
                what: format!("network {}", net.name),
                source: Box::new(source),
            })?;
        for l in &gone {
            log::info!(
                "released {} on {} from {} (its workload or NIC is gone)",
                l.ip,
                net.name,
                l.owner
            );
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ipam::Holding;

    /// A running DHCP container's lease is rebuilt with a corrupt lease file: `volt container
    /// net-up` keeps the address it saw in the link's record.
    #[test]
    fn a_rebuild_keeps_a_running_dhcp_containers_lease() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        let cts = root.join(CONTAINERS_DIR);
        std::fs::create_dir_all(&cts).expect("mkdir");
        std::fs::create_dir_all(root.join("srv/app")).expect("mkdir");
        std::fs::write(
            cts.join("app.toml"),
            "directory = \"/srv/app\"\nboot = true\n[[network]]\n",
        )
        .expect("write");
        let at = Attach::load(root);
        let w = at
            .plan
            .workload(WorkloadKind::Container, "app")
            .expect("app");
        let a = &w.attachments[0];
        // What the veth's owner saves for a DHCP NIC: no address.
        let rec = LinkRecord {
            link: a.link.clone(),
            kind: "container".into(),
            workload: "app".into(),
            nic: a.nic.clone(),
            mac: a.mac.to_string(),
            ipv4: a.addressing.known(),
            gateway: a.gateway,
            netns: None,
            created_by: "direct".into(),
            dhcp: None,
        };
        rec.save(&at.paths).expect("save");
        // What net-up does once the DHCP address is there.
        let net = at.plan.networks.list[0].clone();
        let owner = Owner::container("app", &a.nic);
        let ip: Ipv4Addr = "10.42.0.120".parse().expect("ip");
        at.ipam()
            .record(Holding::new(&net, &owner, ip, false))
            .expect("record");
        super::super::container::remember_dhcp(&at, &a.link, ip);
        let file = at.paths.ipam_dir().join("volt0.json");
        let text = std::fs::read(&file).expect("read");
        std::fs::write(&file, &text[..text.len() / 2]).expect("cut short");
        let after = at.ipam().list("volt0").expect("list after the rebuild");
        assert!(
            after.iter().any(|l| l.owner == owner && l.ip == ip),
            "{after:?}"
        );
    }

    /// A DHCP address the lease file gives to a container's pool lease gives way to it
    /// through the network's address book while that container does not run (no record of
    /// its link), and not while it runs.
    #[test]
    fn a_stale_pool_lease_gives_way_only_while_its_holder_does_not_run() {
        let tmp = tempfile::tempdir().expect("tmp");
        let at = Attach::load(tmp.path());
        let net = at.plan.networks.list[0].clone();
        let (old, new) = (
            Owner::container("old", "eth0"),
            Owner::container("new", "eth0"),
        );
        let ip: Ipv4Addr = "10.42.0.120".parse().expect("ip");
        at.ipam()
            .record(Holding::new(&net, &old, ip, false))
            .expect("old's lease");
        let book = at.book(&net.name).expect("book");
        let h = Holding::new(&net, &new, ip, false);
        let e = book.record(h).expect_err("old's address");
        let displaced = || super::super::container::displaced_a_stale_lease(&at, &*book, h, &e);
        let rec = LinkRecord {
            link: "veth-0ld0ld00-h".into(),
            kind: "container".into(),
            workload: "old".into(),
            nic: "eth0".into(),
            mac: "52:54:00:00:00:01".into(),
            ipv4: None,
            gateway: None,
            netns: None,
            created_by: "direct".into(),
            dhcp: Some(ip),
        };
        rec.save(&at.paths).expect("save");
        assert!(!displaced(), "old runs");
        LinkRecord::remove(&at.paths, &rec.link).expect("remove");
        assert!(displaced(), "old does not run");
        let leases = at.ipam().list(&net.name).expect("list");
        assert_eq!(
            leases.iter().map(|l| (&l.owner, l.ip)).collect::<Vec<_>>(),
            [(&new, ip)]
        );
    }
}
