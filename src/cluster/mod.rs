//! Cluster: one shared network across hosts, on etcd. Host membership under leases, address
//! claims and workload name claims as create-if-absent transactions ([`Cluster`]), and the
//! daemon `volt cluster run` (`volt-cluster.service`) that keeps a VXLAN port on each
//! clustered bridge with FDB entries, routes and filter rules from the store ([`daemon`]).
//! Absent `/etc/volt/cluster.toml`, none of this runs.

mod agree;
mod conflicts;
pub mod daemon;
mod displace;
pub mod etcd;
pub mod http;
mod leftovers;
mod membership;
mod orphans;
mod overlay;
pub use overlay::stale_ports;
mod resolve;
mod shared;
pub mod status;
pub mod store;
mod threads;

use std::net::Ipv4Addr;

use crate::config::ClusterConfig;
use crate::net::ipam::{self, Ask, Holding, IpamError, Lease, Owner, Request};
use etcd::{Etcd, EtcdError};
use store::{AddrClaim, HostRecord, NameClaim};

/// How often a claim is retried when another host changed the same network meanwhile.
const CLAIM_TRIES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(
        "host {host} is not registered in the cluster (is volt-cluster.service running on it?)"
    )]
    NotRegistered { host: String },
    #[error("not a workload name, so no cluster name: {message}")]
    BadName { message: String },
    #[error("{name} already runs on host {host}")]
    NameTaken { name: String, host: String },
    #[error("{ip} on {network} is already claimed by {owner} on host {host}")]
    Taken {
        ip: Ipv4Addr,
        network: String,
        owner: String,
        host: String,
    },
    #[error("{owner} already holds {ip} on {network} on host {host}")]
    OwnerElsewhere {
        owner: String,
        ip: Ipv4Addr,
        network: String,
        host: String,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("could not claim an address on {network} in {CLAIM_TRIES} tries: other hosts keep changing it")]
    Contention { network: String },
    #[error("{what}")]
    Setup { what: String },
    #[error("host name {host} is registered from underlay {underlay}, not this host's {ours}: two hosts cannot share a name (set `host = \"...\"` in /etc/volt/cluster.toml); if this host's underlay changed, its old registration lapses within {ttl} s")]
    HostNameInUse {
        host: String,
        underlay: Ipv4Addr,
        ours: Ipv4Addr,
        ttl: u32,
    },
}

/// This host's handle on the cluster store.
#[derive(Clone)]
pub struct Cluster {
    pub config: ClusterConfig,
    pub etcd: Etcd,
}

fn as_lease(ip: Ipv4Addr, c: &AddrClaim) -> Lease {
    let owner = c.owner.parse::<Owner>().unwrap_or_else(|_| Owner {
        kind: ipam::Kind::Vm,
        name: format!("{}@{}", c.owner, c.host),
        nic: String::new(),
    });
    Lease {
        ip,
        owner,
        fixed: c.fixed,
        since: c.since,
    }
}

/// A name key is `names/<name>`: only a workload name (no `/`, no `..`) may make one.
fn check_name(name: &str) -> Result<(), ClusterError> {
    crate::config::check_workload_name(name).map_err(|message| ClusterError::BadName { message })
}

/// A pause of 1-20 ms after a lost race, so that hosts that keep losing to each other do
/// not hammer the store (each try reads it) back to back.
fn backoff() {
    std::thread::sleep(std::time::Duration::from_millis(
        1 + random_below(20) as u64,
    ));
}

/// A number in `0..n` from the standard library's per-process random hash keys.
fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() % n.max(1) as u64) as usize
}

impl Cluster {
    /// This host's registration, still alive in the store (its daemon restarted within the
    /// lease's TTL): the lease to adopt, kept alive once more. A live registration of this
    /// host's name from another underlay address is another host with the same name (a
    /// cloned image's hostname): adopting its lease would merge the two, so that is an error.
    pub fn live_registration(&self) -> Result<Option<i64>, ClusterError> {
        let Some(kv) = self.etcd.get(&store::host_key(self.host()))? else {
            return Ok(None);
        };
        if kv.lease == 0 || self.etcd.ttl_left(kv.lease)? <= 0 {
            return Ok(None);
        }
        let theirs = serde_json::from_slice::<store::HostRecord>(&kv.value)
            .ok()
            .map(|r| r.underlay);
        match theirs {
            Some(underlay) if underlay != self.config.underlay => {
                Err(ClusterError::HostNameInUse {
                    host: self.host().to_string(),
                    underlay,
                    ours: self.config.underlay,
                    ttl: self.config.lease_ttl,
                })
            }
            _ => Ok((self.etcd.keepalive(kv.lease)? > 0).then_some(kv.lease)),
        }
    }

    /// Register this host with `record`: adopt its live registration (a restarted daemon
    /// keeps its claims), else a new lease; then write the record (see
    /// [`Cluster::put_host_record`]). Returns the lease and whether it was adopted. A lease
    /// granted here is ended again when the record cannot be written.
    pub fn register(&self, record: &HostRecord) -> Result<(i64, bool), ClusterError> {
        if let Some(lease) = self.live_registration()? {
            self.put_host_record(record, lease)?;
            return Ok((lease, true));
        }
        let lease = self.etcd.grant(self.config.lease_ttl)?;
        if let Err(e) = self.put_host_record(record, lease) {
            if let Err(r) = self.etcd.revoke(lease) {
                log::warn!(
                    "cannot end the lease {lease:x} (it expires by itself): {}",
                    crate::error_chain(&r)
                );
            }
            return Err(e);
        }
        Ok((lease, false))
    }

    /// Write this host's record under `lease`, in one transaction: created when the name is
    /// free, replaced when the record there is this host's (on `lease`, or from this host's
    /// underlay address). Two hosts that start with the same name at once: one creates it,
    /// the other is refused ([`ClusterError::HostNameInUse`]), never both registered.
    pub fn put_host_record(&self, record: &HostRecord, lease: i64) -> Result<(), ClusterError> {
        let key = store::host_key(self.host());
        let put = etcd::Op::Put {
            key: key.clone(),
            value: serde_json::to_vec(record).unwrap_or_default(),
            lease,
        };
        for _ in 0..CLAIM_TRIES {
            let absent = etcd::Compare::Absent(key.clone());
            if self.etcd.txn(&[absent], std::slice::from_ref(&put), &[])? {
                return Ok(());
            }
            let Some(kv) = self.etcd.get(&key)? else {
                backoff();
                continue;
            };
            let theirs = serde_json::from_slice::<HostRecord>(&kv.value)
                .ok()
                .map(|r| r.underlay);
            if kv.lease != lease && theirs != Some(self.config.underlay) {
                return Err(match theirs {
                    Some(underlay) => ClusterError::HostNameInUse {
                        host: self.host().to_string(),
                        underlay,
                        ours: self.config.underlay,
                        ttl: self.config.lease_ttl,
                    },
                    None => ClusterError::Setup {
                        what: format!(
                            "the store's record of host {} ({key}) is not a record Volt wrote; if no host runs with that name, remove it (etcdctl del {key})",
                            self.host()
                        ),
                    },
                });
            }
            let same = etcd::Compare::ModRevision(key.clone(), kv.mod_revision);
            if self.etcd.txn(&[same], std::slice::from_ref(&put), &[])? {
                return Ok(());
            }
            backoff();
        }
        Err(ClusterError::Contention {
            network: "hosts".into(),
        })
    }

    pub fn new(config: &ClusterConfig) -> Result<Cluster, ClusterError> {
        Ok(Cluster {
            config: config.clone(),
            etcd: Etcd::new(&config.etcd)?,
        })
    }

    pub fn host(&self) -> &str {
        &self.config.host
    }

    /// Whether `network` is shared across the cluster.
    pub fn shares(&self, network: &str) -> bool {
        self.config.network(network).is_some()
    }

    /// The lease this host's claims live under (its registration's).
    pub fn host_lease(&self) -> Result<i64, ClusterError> {
        match self.etcd.get(&store::host_key(self.host()))? {
            Some(kv) if kv.lease != 0 => Ok(kv.lease),
            _ => Err(ClusterError::NotRegistered {
                host: self.host().into(),
            }),
        }
    }

    /// Claim workload `name` for this host: `Ok` when it is free or already ours (then
    /// written again, see [`store::renew`]).
    pub fn claim_name(&self, name: &str, kind: &str) -> Result<(), ClusterError> {
        check_name(name)?;
        let lease = self.host_lease()?;
        let key = store::name_key(name);
        let claim = NameClaim {
            host: self.host().into(),
            kind: kind.into(),
            since: store::now(),
        };
        let value = serde_json::to_vec(&claim).unwrap_or_default();
        for _ in 0..CLAIM_TRIES {
            let put = etcd::Op::Put {
                key: key.clone(),
                value: value.clone(),
                lease,
            };
            if self
                .etcd
                .txn(&[etcd::Compare::Absent(key.clone())], &[put], &[])?
            {
                log::info!("claimed the name {name} for host {}", self.host());
                return Ok(());
            }
            if let Some(kv) = self.etcd.get(&key)? {
                let held: Option<NameClaim> = serde_json::from_slice(&kv.value).ok();
                match held {
                    // Held already: written again all the same (see store::renew), onto
                    // this lease if it was on another of this host's (registered anew while
                    // the old one lived), where it would lapse with that one.
                    Some(h) if h.host == self.host() => {
                        if store::renew(&self.etcd, &kv, lease)? {
                            if kv.lease != lease {
                                log::info!(
                                    "the claim on the name {name} moved to this host's lease {lease:x}"
                                );
                            }
                            return Ok(());
                        }
                        // Changed meanwhile: read it again.
                        continue;
                    }
                    Some(h) => {
                        return Err(ClusterError::NameTaken {
                            name: name.into(),
                            host: h.host,
                        })
                    }
                    None => {
                        return Err(ClusterError::Setup {
                            what: format!(
                                "the store's claim on the name {name} ({key}) is not a claim Volt wrote; if no host runs {name}, remove it (etcdctl del {key})"
                            ),
                        })
                    }
                }
            }
            // Lost a race with a claim that is gone again: try again after a short pause.
            backoff();
        }
        Err(ClusterError::Contention {
            network: "names".into(),
        })
    }

    /// Give up the claim on `name` if this host holds it.
    pub fn release_name(&self, name: &str) -> Result<bool, ClusterError> {
        check_name(name)?;
        let key = store::name_key(name);
        let Some(kv) = self.etcd.get(&key)? else {
            return Ok(false);
        };
        let held: Option<NameClaim> = serde_json::from_slice(&kv.value).ok();
        if held.is_none_or(|h| h.host != self.host()) {
            return Ok(false);
        }
        Ok(self.etcd.txn(
            &[etcd::Compare::ModRevision(key.clone(), kv.mod_revision)],
            &[etcd::Op::Delete(key)],
            &[],
        )?)
    }

    /// An address on `ask.net` for `ask.owner` (its static address, its reservation, else a
    /// free one of its pool), claimed cluster-wide. The same claim again is the same address.
    pub fn allocate(&self, ask: Ask) -> Result<Lease, ClusterError> {
        self.claim_address(ask, None)
    }

    /// [`Cluster::allocate`]; `fixed_as`: what the claim says of itself (static or from a pool)
    /// when the caller knows better than the request (an address recorded from elsewhere).
    /// An existing claim of the owner gets its MAC (and that) filled in or corrected: an
    /// address claimed before its MAC was known (`volt ipam allocate`) must not stay
    /// without one, or peers have no forwarding entry for it and their filter drops it.
    fn claim_address(&self, ask: Ask, fixed_as: Option<bool>) -> Result<Lease, ClusterError> {
        let (net, owner, request) = (ask.net, ask.owner, ask.request);
        let lease = self.host_lease()?;
        let me = self.host().to_string();
        let owner_s = owner.to_string();
        // After a lost race, skip a random number of free addresses, so hosts that keep
        // racing for the lowest free one spread out instead of taking turns.
        let mut skip = 0usize;
        for attempt in 0..CLAIM_TRIES {
            let snap = store::snapshot(&self.etcd)?;
            let claims: Vec<(Ipv4Addr, &AddrClaim, i64)> = snap.addrs_on(&net.name).collect();
            if let Some((ip, c, rev)) = claims.iter().find(|(_, c, _)| c.owner == owner_s) {
                if c.host != me {
                    return Err(ClusterError::OwnerElsewhere {
                        owner: owner_s,
                        ip: *ip,
                        network: net.name.clone(),
                        host: c.host.clone(),
                    });
                }
                match request {
                    Request::Static(want) if want != *ip => {
                        store::drop_claim(&self.etcd, &net.name, *ip, &owner_s, *rev)?;
                        continue;
                    }
                    _ => {}
                }
                let mut now = AddrClaim::clone(c);
                now.mac = ask.mac.map(|m| m.to_string()).or(now.mac);
                now.fixed = fixed_as.unwrap_or(now.fixed);
                // Written again even when nothing changed (see store::renew); on another
                // lease of this host's (registered anew while the old one lived) the claim
                // would lapse with it: it moves to this one.
                let on_lease = snap.addr_lease(&net.name, *ip) == Some(lease);
                if store::update_claim(&self.etcd, &net.name, *ip, &now, *rev, lease)? {
                    if now != **c {
                        log::info!(
                            "{ip} on {}: {owner_s}'s claim now says MAC {}",
                            net.name,
                            now.mac.as_deref().unwrap_or("(none)")
                        );
                    }
                    if !on_lease {
                        log::info!(
                            "{ip} on {}: {owner_s}'s claim moved to this host's lease {lease:x}",
                            net.name
                        );
                    }
                    return Ok(as_lease(*ip, &now));
                }
                // Changed meanwhile: read again.
                continue;
            }
            if let Request::Static(want) = request {
                if let Some((_, c, _)) = claims.iter().find(|(ip, ..)| *ip == want) {
                    return Err(ClusterError::Taken {
                        ip: want,
                        network: net.name.clone(),
                        owner: c.owner.clone(),
                        host: c.host.clone(),
                    });
                }
            }
            let leases: Vec<Lease> = claims.iter().map(|(ip, c, _)| as_lease(*ip, c)).collect();
            let mut excluded = ask.configured.clone();
            for _ in 0..skip {
                match ipam::pick(ask.with_configured(&excluded), &leases) {
                    Ok((ip, false)) => {
                        excluded.insert(ip);
                    }
                    _ => break,
                }
            }
            let (ip, fixed) = ipam::pick(ask.with_configured(&excluded), &leases)
                .or_else(|_| ipam::pick(ask, &leases))?;
            let claim = AddrClaim {
                owner: owner_s.clone(),
                host: me.clone(),
                fixed: fixed_as.unwrap_or(fixed),
                mac: ask.mac.map(|m| m.to_string()),
                since: store::now(),
            };
            if store::try_claim(&self.etcd, &net.name, ip, &claim, lease)? {
                log::info!("claimed {ip} on {} for {owner_s} (host {me})", net.name);
                return Ok(as_lease(ip, &claim));
            }
            skip = random_below(attempt.min(15) + 2);
            backoff();
        }
        Err(ClusterError::Contention {
            network: net.name.clone(),
        })
    }

    /// Record that `h.owner` holds `h.ip` (an address it got elsewhere: a DHCP lease).
    pub fn record(&self, h: Holding) -> Result<Lease, ClusterError> {
        if !h.net.is_host_addr(h.ip) {
            return Err(IpamError::OutOfNetwork {
                ip: h.ip,
                network: h.net.name.clone(),
                subnet: h.net.subnet,
            }
            .into());
        }
        let ask = Ask {
            mac: h.mac,
            ..Ask::new(h.net, h.owner, Request::Static(h.ip))
        };
        self.claim_address(ask, Some(h.fixed))
    }

    /// Give up `owner`'s address on `network`, if this host holds it.
    pub fn release(&self, network: &str, owner: &Owner) -> Result<Option<Lease>, ClusterError> {
        let snap = store::snapshot(&self.etcd)?;
        let owner_s = owner.to_string();
        let found = snap
            .addrs_on(network)
            .find(|(_, c, _)| c.owner == owner_s && c.host == self.host())
            .map(|(ip, c, rev)| (ip, c.clone(), rev));
        let Some((ip, c, rev)) = found else {
            return Ok(None);
        };
        store::drop_claim(&self.etcd, network, ip, &owner_s, rev)?;
        log::info!("released {ip} on {network} from {owner_s}");
        Ok(Some(as_lease(ip, &c)))
    }

    /// The claims on `network`, every host's.
    pub fn list(&self, network: &str) -> Result<Vec<(Lease, String)>, ClusterError> {
        let snap = store::snapshot(&self.etcd)?;
        Ok(snap
            .addrs_on(network)
            .map(|(ip, c, _)| (as_lease(ip, c), c.host.clone()))
            .collect())
    }
}
