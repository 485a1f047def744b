//! Workloads that run here while another host holds their claim. After a partition longer
//! than the lease's TTL, this host's claims lapsed and another host may have started the
//! same workload (or given its address away); when this host comes back, its claims fail.
//! Volt stops neither workload: it says so once per conflict, keeps the conflicts in
//! `volt cluster status` (the store's `conflicts/<host>`) and in the daemon's STATUS=, and
//! tries each claim again on every resync (the other host may let it go).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::daemon::Daemon;
use super::etcd::Op;
use super::store::{self, ConflictRecord};
use super::ClusterError;
use crate::config::{MacAddr, Network};
use crate::net::ipam::{Holding, Owner};

/// How to claim again what another host holds.
#[derive(Clone)]
pub(super) enum Retry {
    Name {
        name: String,
        kind: String,
    },
    Addr {
        net: Box<Network>,
        owner: Owner,
        ip: Ipv4Addr,
        fixed: bool,
        mac: Option<MacAddr>,
    },
}

/// A claim another host holds, with what it would take to claim it here.
#[derive(Clone)]
pub(super) struct Conflict {
    pub(super) record: ConflictRecord,
    retry: Retry,
}

/// The conflicts found, by what they are about.
pub(super) type Conflicts = BTreeMap<String, Conflict>;

impl Retry {
    fn what(&self) -> String {
        match self {
            Retry::Name { name, kind } => format!("{name} ({kind})"),
            Retry::Addr { net, owner, ip, .. } => format!("{ip} on {} ({owner})", net.name),
        }
    }
}

/// The host holding what `e` says was refused, if `e` is such a refusal.
fn holder(e: &ClusterError) -> Option<&str> {
    match e {
        ClusterError::NameTaken { host, .. }
        | ClusterError::Taken { host, .. }
        | ClusterError::OwnerElsewhere { host, .. } => Some(host),
        _ => None,
    }
}

impl Daemon {
    fn claim(&self, r: &Retry) -> Result<(), ClusterError> {
        match r {
            Retry::Name { name, kind } => self.cluster.claim_name(name, kind),
            Retry::Addr {
                net,
                owner,
                ip,
                fixed,
                mac,
            } => {
                let h = Holding {
                    net,
                    owner,
                    ip: *ip,
                    fixed: *fixed,
                    mac: *mac,
                };
                self.cluster.record(h).map(|_| ())
            }
        }
    }

    /// Claim what `r` says; a claim another host holds goes into `found`, any other error is
    /// logged. Returns whether it is this host's now.
    pub(super) fn claim_or_note(&self, r: Retry, found: &mut Conflicts) -> bool {
        match self.claim(&r) {
            Ok(()) => true,
            Err(e) => {
                match holder(&e) {
                    Some(h) => {
                        let record = ConflictRecord {
                            what: r.what(),
                            holder: h.to_string(),
                        };
                        found.insert(record.what.clone(), Conflict { record, retry: r });
                    }
                    None => log::error!("{}", crate::error_chain(&e)),
                }
                false
            }
        }
    }

    /// On every resync: claim again what other hosts held. A store error keeps the conflict
    /// as it was.
    pub(super) fn retry_conflicts(&mut self) {
        let mut found = Conflicts::new();
        for (what, c) in &self.conflicts {
            match self.claim(&c.retry) {
                Ok(()) => {}
                Err(e) => match holder(&e) {
                    Some(h) => {
                        let mut c = c.clone();
                        c.record.holder = h.to_string();
                        found.insert(what.clone(), c);
                    }
                    None => {
                        found.insert(what.clone(), c.clone());
                    }
                },
            }
        }
        self.set_conflicts(found);
    }

    /// Take `found` as the conflicts now: each new one said once, each one gone said too;
    /// then the store's record of them.
    pub(super) fn set_conflicts(&mut self, found: Conflicts) {
        for c in found.values() {
            if self.conflicts.get(&c.record.what).map(|o| &o.record) != Some(&c.record) {
                log::error!(
                    "{} runs here, but host {} holds its claim: both hosts run it (a partition outlasted this host's lease). Volt stops neither: stop one of them; this host tries to claim it again every few seconds",
                    c.record.what,
                    c.record.holder
                );
            }
        }
        for c in self.conflicts.values() {
            if !found.contains_key(&c.record.what) {
                log::info!(
                    "{}: the claim is this host's again (host {} let it go)",
                    c.record.what,
                    c.record.holder
                );
            }
        }
        self.conflicts = found;
        self.write_conflicts();
    }

    /// Write the conflicts under `conflicts/<host>` (on this host's lease) when they changed
    /// since the last write (none: the key goes); a failed write is tried on the next resync.
    fn write_conflicts(&mut self) {
        let records: Vec<ConflictRecord> =
            self.conflicts.values().map(|c| c.record.clone()).collect();
        if self.conflicts_written.as_ref() == Some(&records) {
            return;
        }
        let key = store::conflicts_key(self.cluster.host());
        let op = if records.is_empty() {
            Op::Delete(key)
        } else {
            Op::Put {
                key,
                value: serde_json::to_vec(&records).unwrap_or_default(),
                lease: self.lease,
            }
        };
        match self.cluster.etcd.txn(&[], &[op], &[]) {
            Ok(_) => self.conflicts_written = Some(records),
            Err(e) => log::debug!(
                "cannot write this host's conflicts to the store (retrying): {}",
                crate::error_chain(&e)
            ),
        }
    }

    /// For STATUS=: `; CONFLICT: web (vm) held by b, ...`, or nothing.
    pub(super) fn conflict_status(&self) -> String {
        if self.conflicts.is_empty() {
            return String::new();
        }
        let each: Vec<String> = self
            .conflicts
            .values()
            .map(|c| format!("{} held by {}", c.record.what, c.record.holder))
            .collect();
        format!("; CONFLICT: {}", each.join(", "))
    }
}
