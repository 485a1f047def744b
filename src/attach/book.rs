//! Where attach gets addresses from: the host's lease files ([`Ipam`], one host, as without
//! a cluster) or, for a network the cluster shares, etcd claims ([`Cluster`]) mirrored into
//! the lease files (so `volt ipam list`, port maps and `volt container show` read one place).
//! The cluster also claims workload names.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{Attach, AttachError};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{MacAddr, Network};
use crate::net::ipam::{Ipam, IpamError, Lease, Owner, Request};
use crate::plan::Workload;

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error(transparent)]
    Local(#[from] IpamError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// An address book: allocate, record, release and list leases of one network.
pub trait AddressBook {
    /// An address for `owner`: `Static(ip)`, or its reservation, else a free one of its pool
    /// (`configured`: addresses other workloads' files name). `mac`: the workload's MAC.
    fn allocate(
        &self,
        net: &Network,
        owner: &Owner,
        request: Request,
        configured: &BTreeSet<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Result<Lease, BookError>;
    /// `owner` holds `ip`, got elsewhere (a DHCP lease, a static address set at start).
    fn record(
        &self,
        net: &Network,
        owner: &Owner,
        ip: Ipv4Addr,
        fixed: bool,
        mac: Option<MacAddr>,
    ) -> Result<Lease, BookError>;
    /// Give up `owner`'s lease on `network`.
    fn release(&self, network: &str, owner: &Owner) -> Result<Option<Lease>, BookError>;
}

impl AddressBook for Ipam {
    fn allocate(
        &self,
        net: &Network,
        owner: &Owner,
        request: Request,
        configured: &BTreeSet<Ipv4Addr>,
        _mac: Option<MacAddr>,
    ) -> Result<Lease, BookError> {
        Ok(Ipam::allocate(self, net, owner, request, configured)?)
    }

    fn record(
        &self,
        net: &Network,
        owner: &Owner,
        ip: Ipv4Addr,
        fixed: bool,
        _mac: Option<MacAddr>,
    ) -> Result<Lease, BookError> {
        Ok(Ipam::record(self, net, owner, ip, fixed)?)
    }

    fn release(&self, network: &str, owner: &Owner) -> Result<Option<Lease>, BookError> {
        Ok(Ipam::release(self, network, owner)?)
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
        if let Err(e) = self.local.mirror(net, &l.owner, l.ip, l.fixed) {
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
    fn allocate(
        &self,
        net: &Network,
        owner: &Owner,
        request: Request,
        configured: &BTreeSet<Ipv4Addr>,
        mac: Option<MacAddr>,
    ) -> Result<Lease, BookError> {
        let l = self
            .cluster
            .allocate(net, owner, request, configured, mac)?;
        self.mirror(net, &l);
        Ok(l)
    }

    fn record(
        &self,
        net: &Network,
        owner: &Owner,
        ip: Ipv4Addr,
        fixed: bool,
        mac: Option<MacAddr>,
    ) -> Result<Lease, BookError> {
        let l = self.cluster.record(net, owner, ip, fixed, mac)?;
        self.mirror(net, &l);
        Ok(l)
    }

    fn release(&self, network: &str, owner: &Owner) -> Result<Option<Lease>, BookError> {
        let l = self.cluster.release(network, owner)?;
        if let Err(e) = self.local.release(network, owner) {
            log::warn!("{}", crate::error_chain(&e));
        }
        Ok(l)
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
