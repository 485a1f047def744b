//! Where attach gets addresses from: the host's lease files ([`Ipam`], one host, as without
//! a cluster) or, for a network the cluster shares, etcd claims ([`Cluster`]) mirrored into
//! the lease files (so `volt ipam list`, port maps and `volt container show` read one place).
//! The cluster also claims workload names.

use super::{Attach, AttachError};
use crate::cluster::{Cluster, ClusterError};
use crate::config::Network;
use crate::net::ipam::{Ask, Holding, Ipam, IpamError, Lease, Owner};
use crate::plan::Workload;

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error(transparent)]
    Local(#[from] IpamError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl BookError {
    /// Whether the address itself is refused (another owner holds or is reserved it, or it
    /// is no address of the network), not the store that failed to answer.
    pub fn refuses_the_address(&self) -> bool {
        let local = |e: &IpamError| {
            matches!(
                e,
                IpamError::Taken { .. }
                    | IpamError::Reserved { .. }
                    | IpamError::OutOfNetwork { .. }
            )
        };
        match self {
            BookError::Local(e) | BookError::Cluster(ClusterError::Ipam(e)) => local(e),
            BookError::Cluster(e) => matches!(e, ClusterError::Taken { .. }),
        }
    }
}

/// An address book: allocate, record, release and list leases of one network.
pub trait AddressBook {
    /// An address for `ask.owner`: `Static(ip)`, or its reservation, else a free one of its
    /// pool (not one of `ask.configured`, the addresses other workloads' files name).
    fn allocate(&self, ask: Ask) -> Result<Lease, BookError>;
    /// `h.owner` holds `h.ip`, got elsewhere (a DHCP lease, a static address set at start).
    fn record(&self, h: Holding) -> Result<Lease, BookError>;
    /// Give up `owner`'s lease on `network`.
    fn release(&self, network: &str, owner: &Owner) -> Result<Option<Lease>, BookError>;
    /// [`AddressBook::record`] of an address the host's DHCP server gave `h.owner` from the
    /// pool (`h.fixed` false), which the book gives to another owner: networkd's server keeps
    /// no leases across its restarts, so it may hand out a stopped workload's pool address.
    /// That owner's lease gives way when it is from the pool, held on this host, and `runs`
    /// says its workload does not run here. Returns the lease and the owner that gave way.
    fn record_displacing(
        &self,
        h: Holding,
        runs: &dyn Fn(&Owner) -> bool,
    ) -> Result<(Lease, Option<Owner>), BookError>;
}

impl AddressBook for Ipam {
    fn allocate(&self, ask: Ask) -> Result<Lease, BookError> {
        Ok(Ipam::allocate(self, ask)?)
    }

    fn record(&self, h: Holding) -> Result<Lease, BookError> {
        Ok(Ipam::record(self, h)?)
    }

    fn release(&self, network: &str, owner: &Owner) -> Result<Option<Lease>, BookError> {
        Ok(Ipam::release(self, network, owner)?)
    }

    fn record_displacing(
        &self,
        h: Holding,
        runs: &dyn Fn(&Owner) -> bool,
    ) -> Result<(Lease, Option<Owner>), BookError> {
        Ok(Ipam::record_displacing(self, h, &|o| !runs(o))?)
    }
}

/// Cluster claims, mirrored into the local lease files (best effort: the claim in etcd is
/// what counts).
pub struct ClusterBook {
    pub cluster: Cluster,
    pub local: Ipam,
}

impl ClusterBook {
    fn mirror(&self, net: &Network, l: &Lease) {
        let h = Holding::new(net, &l.owner, l.ip, l.fixed);
        if let Err(e) = self.local.mirror(h) {
            log::warn!(
                "the local lease file does not mirror {} of {}: {}",
                l.ip,
                l.owner,
                crate::error_chain(&e)
            );
        }
    }
}

impl AddressBook for ClusterBook {
    fn allocate(&self, ask: Ask) -> Result<Lease, BookError> {
        let l = self.cluster.allocate(ask)?;
        self.mirror(ask.net, &l);
        Ok(l)
    }

    fn record(&self, h: Holding) -> Result<Lease, BookError> {
        let l = self.cluster.record(h)?;
        self.mirror(h.net, &l);
        Ok(l)
    }

    fn release(&self, network: &str, owner: &Owner) -> Result<Option<Lease>, BookError> {
        let l = self.cluster.release(network, owner)?;
        if let Err(e) = self.local.release(network, owner) {
            log::warn!("{}", crate::error_chain(&e));
        }
        Ok(l)
    }

    /// The claim in the store is what gives way (only this host's: see
    /// [`Cluster::record_displacing`]); the lease file follows it.
    fn record_displacing(
        &self,
        h: Holding,
        runs: &dyn Fn(&Owner) -> bool,
    ) -> Result<(Lease, Option<Owner>), BookError> {
        let (l, holder) = self.cluster.record_displacing(h, &|o| !runs(o))?;
        self.mirror(h.net, &l);
        Ok((l, holder))
    }
}

impl Attach {
    /// This host's cluster handle, when `/etc/volt/cluster.toml` is there and valid.
    pub fn cluster(&self) -> Result<Option<Cluster>, AttachError> {
        let Some(c) = &self.set.cluster else {
            return Ok(None);
        };
        Cluster::new(c)
            .map(Some)
            .map_err(|source| AttachError::Cluster {
                what: format!("cluster {}", c.path.display()),
                source: Box::new(source),
            })
    }

    /// The address book of `network`: the cluster's when it shares the network.
    pub fn book(&self, network: &str) -> Result<Box<dyn AddressBook>, AttachError> {
        match self.cluster()? {
            Some(c) if c.shares(network) => Ok(Box::new(ClusterBook {
                cluster: c,
                local: self.ipam(),
            })),
            _ => Ok(Box::new(self.ipam())),
        }
    }

    /// Claim `w`'s name cluster-wide (nothing without a cluster): a second start of the same
    /// name on another host fails here, naming the host that runs it.
    pub fn claim_name(&self, w: &Workload) -> Result<(), AttachError> {
        let Some(c) = self.cluster()? else {
            return Ok(());
        };
        c.claim_name(&w.name, w.kind.as_str())
            .map_err(|source| AttachError::Cluster {
                what: format!("cannot start {} {}", w.kind.noun(), w.name),
                source: Box::new(source),
            })
    }

    /// Give up `w`'s name claim (after its last link went down).
    pub fn release_name(&self, name: &str) {
        match self.cluster() {
            Ok(Some(c)) => match c.release_name(name) {
                Ok(true) => log::info!("released the cluster name {name}"),
                Ok(false) => {}
                Err(e) => log::warn!(
                    "cannot release the cluster name {name}: {}",
                    crate::error_chain(&e)
                ),
            },
            Ok(None) => {}
            Err(e) => log::warn!("{}", crate::error_chain(&e)),
        }
    }
}

/// An attach error for a failed address book call.
pub fn book_error(what: String) -> impl FnOnce(BookError) -> AttachError {
    move |e| match e {
        BookError::Local(source) => AttachError::Ipam {
            what,
            source: Box::new(source),
        },
        BookError::Cluster(source) => AttachError::Cluster {
            what,
            source: Box::new(source),
        },
    }
}
