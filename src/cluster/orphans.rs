//! Claims this host holds for workloads that do not run here: what a `volt link down` cut
//! short left behind (killed between its steps, or its release met a store without quorum,
//! which is a warning: the stop goes on), and the name of a workload without NICs whose
//! unit failed for good (its ExecStopPost= keeps the name for a restart that never comes).
//! Nothing else gives those up while this host's lease lives, and they block the workload's
//! start on every other host. The inverse of `reclaim`: on a resync (at most every
//! [`RESYNC`]), this host's name and address claims whose workload is not at work here are
//! released, each said once.
//!
//! A start must never lose its claim to this. Three rules see to it:
//! - At work is a workload whose unit is in any state but inactive and failed, or has a job
//!   queued (`volt-vm@web` waits inactive for its link owners, which claim first), or that
//!   has a link up: a record whose link exists (or lives in a namespace of its own). A start
//!   by its unit is at work from before its first claim until its stop has run. A record
//!   whose link is gone is what a `volt link down` cut short leaves: it does not count.
//! - The release is a transaction on the claim's mod revision, read before the workloads
//!   were looked at, and every claim a start makes writes its key even when this host holds
//!   it already (`store::renew`): a start that claims after that read makes the release fail.
//! - A claim is released only after it was found unbacked, at one and the same revision, for
//!   [`GRACE`]: a start by hand (`volt link up`, `volt cluster claim`, no unit) has that long
//!   from its claim to its link record.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::daemon::{Daemon, RESYNC};
use super::etcd::{Compare, EtcdError, Op};
use super::store::{self, Snapshot};
use crate::net::ipam::{Ipam, Kind, Owner};
use crate::plan::{names, Paths};

/// How long a claim stays unbacked before it is released.
pub(super) const GRACE: Duration = Duration::from_secs(30);

/// A workload as its claims name it: (`vm` or `container`, name).
pub(super) type Workload = (String, String);

/// One of this host's claims.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Claim {
    Name {
        name: String,
        kind: String,
    },
    Addr {
        net: String,
        ip: Ipv4Addr,
        owner: String,
    },
}

impl Claim {
    fn what(&self) -> String {
        match self {
            Claim::Name { name, kind } => format!("the name {name} ({kind})"),
            Claim::Addr { net, ip, owner } => format!("{ip} on {net} ({owner})"),
        }
    }
}

/// The workload an address claim's owner (`vm/<name>/<nic>`, `container/<name>/<nic>`) is
/// part of; `None` for the host's own address (`host/<host>`) and what Volt did not write.
fn owner_workload(owner: &str) -> Option<(Workload, Owner)> {
    let o = owner.parse::<Owner>().ok()?;
    let kind = match o.kind {
        Kind::Vm => "vm",
        Kind::Container => "container",
    };
    Some(((kind.to_string(), o.name.clone()), o))
}

/// This host's claims in `snap` (names, and addresses of workloads) whose workload is not in
/// `busy`, each with its mod revision.
pub(super) fn unbacked(snap: &Snapshot, me: &str, busy: &BTreeSet<Workload>) -> Vec<(Claim, i64)> {
    let names = snap
        .names
        .iter()
        .filter(|(_, c, _)| c.host == me && matches!(c.kind.as_str(), "vm" | "container"))
        .filter(|(name, c, _)| !busy.contains(&(c.kind.clone(), name.clone())))
        .map(|(name, c, rev)| {
            let claim = Claim::Name {
                name: name.clone(),
                kind: c.kind.clone(),
            };
            (claim, *rev)
        });
    let addrs = snap
        .addrs
        .iter()
        .filter(|(_, _, c, _, _)| c.host == me)
        .filter(|(_, _, c, _, _)| owner_workload(&c.owner).is_some_and(|(w, _)| !busy.contains(&w)))
        .map(|(net, ip, c, rev, _)| {
            let claim = Claim::Addr {
                net: net.clone(),
                ip: *ip,
                owner: c.owner.clone(),
            };
            (claim, *rev)
        });
    names.chain(addrs).collect()
}

/// The claims found unbacked, each with the revision it had and since when it was found so.
#[derive(Default)]
pub(super) struct Orphans {
    seen: BTreeMap<Claim, (i64, Instant)>,
    last_pass: Option<Instant>,
    /// The last failure said (said again only when it changes).
    failure: Option<String>,
}

impl Orphans {
    /// Take `found` as the claims unbacked now; returns those among them that were unbacked at
    /// the same revision for `grace` or longer. A claim that changed (claimed again) starts
    /// over; one not found now is forgotten.
    pub(super) fn due(
        &mut self,
        found: Vec<(Claim, i64)>,
        now: Instant,
        grace: Duration,
    ) -> Vec<(Claim, i64)> {
        let mut seen = BTreeMap::new();
        let mut due = Vec::new();
        for (claim, rev) in found {
            let since = match self.seen.get(&claim) {
                Some((r, t)) if *r == rev => *t,
                _ => now,
            };
            if now.saturating_duration_since(since) >= grace {
                due.push((claim.clone(), rev));
            }
            seen.insert(claim, (rev, since));
        }
        self.seen = seen;
        due
    }
}

/// A link record as this pass reads it (`attach::LinkRecord`'s fields that say whose link
/// it is and where it lives).
#[derive(serde::Deserialize)]
struct RecordOf {
    link: String,
    kind: String,
    workload: String,
    #[serde(default)]
    netns: Option<String>,
}

/// The patterns of the workload units: `volt-vm@*.service`, `volt-container@*.service`.
pub(super) fn workload_unit_patterns() -> [String; 2] {
    [names::vm_unit("*"), names::container_unit("*")]
}

impl Daemon {
    /// The workloads at work here (see the module's comment).
    pub(super) fn busy_workloads(&self) -> Result<BTreeSet<Workload>, crate::sd::SdError> {
        let patterns = workload_unit_patterns();
        let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let units =
            crate::sd::system_bus().and_then(|c| crate::sd::units::busy_units(&c, &patterns))?;
        let mut busy: BTreeSet<Workload> = units
            .iter()
            .filter_map(|u| names::workload_of_unit(u))
            .map(|(kind, name)| (kind.to_string(), name))
            .collect();
        busy.extend(
            self.record_files()
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .filter_map(|t| serde_json::from_str::<RecordOf>(&t).ok())
                .filter(|r| r.netns.is_some() || crate::net::link::index(&r.link).is_some())
                .map(|r| (r.kind, r.workload)),
        );
        Ok(busy)
    }

    /// What keeps this host's lease when the daemon stops (`None`: nothing does): the
    /// workloads at work here, as [`Daemon::busy_workloads`] says, and any link record (a
    /// stop errs on the side of keeping). When systemd cannot say which units run, the names
    /// this host holds stand for them: a workload without NICs has nothing but its unit and
    /// its name claim.
    pub(super) fn what_runs_here(&self) -> Option<String> {
        let links = self.record_files().len();
        let records = match links {
            0 => String::new(),
            n => format!(" ({n} link record(s))"),
        };
        let listed = |w: &BTreeSet<Workload>| {
            w.iter()
                .map(|(kind, name)| format!("{kind} {name}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let e = match self.busy_workloads() {
            Ok(busy) if busy.is_empty() && links == 0 => return None,
            Ok(busy) if busy.is_empty() => return Some(format!("{links} link record(s) here")),
            Ok(busy) => {
                let verb = if busy.len() == 1 { "runs" } else { "run" };
                return Some(format!("{} {verb} here{records}", listed(&busy)));
            }
            Err(e) => crate::error_chain(&e),
        };
        let held: BTreeSet<Workload> = match store::snapshot(&self.cluster.etcd) {
            Ok(snap) => snap
                .names
                .into_iter()
                .filter(|(_, c, _)| c.host == self.cluster.host())
                .map(|(name, c, _)| (c.kind, name))
                .collect(),
            Err(s) => {
                return Some(format!(
                    "neither systemd ({e}) nor the store ({}) says what runs here",
                    crate::error_chain(&s)
                ))
            }
        };
        match (held.is_empty(), links) {
            (true, 0) => None,
            (true, _) => Some(format!("{links} link record(s) here")),
            (false, _) => Some(format!(
                "systemd cannot say which workloads run ({e}), and this host holds the names of {}{records}",
                listed(&held)
            )),
        }
    }

    /// Release this host's claims that no workload at work here backs (see the module's
    /// comment). At most once per resync; nothing when systemd cannot say what runs.
    pub(super) fn release_unbacked(&mut self, snap: &Snapshot) {
        if self.orphans.last_pass.is_some_and(|t| t.elapsed() < RESYNC) {
            return;
        }
        self.orphans.last_pass = Some(Instant::now());
        let me = self.cluster.host().to_string();
        if unbacked(snap, &me, &BTreeSet::new()).is_empty() {
            self.orphans.seen.clear();
            return;
        }
        let busy = match self.busy_workloads() {
            Ok(b) => b,
            Err(e) => {
                self.orphans.seen.clear();
                self.say_failure(format!(
                    "cannot ask systemd which workloads run here, so no claim of a workload that stopped is given up: {}",
                    crate::error_chain(&e)
                ));
                return;
            }
        };
        let found = unbacked(snap, &me, &busy);
        let mut failed = false;
        for (claim, rev) in self.orphans.due(found, Instant::now(), GRACE) {
            match self.release_claim(&claim, rev) {
                Ok(true) => log::info!(
                    "released {}: it does not run here (no unit of it at work, no link of it up) for {} s; a stop cut short or a release that failed left it",
                    claim.what(),
                    GRACE.as_secs()
                ),
                // Claimed again meanwhile (a start), or released by its owner.
                Ok(false) => {}
                Err(e) => {
                    failed = true;
                    self.say_failure(format!(
                        "cannot release {} (trying again at the next resync): {}",
                        claim.what(),
                        crate::error_chain(&e)
                    ));
                }
            }
        }
        if !failed {
            self.orphans.failure = None;
        }
    }

    fn say_failure(&mut self, text: String) {
        if self.orphans.failure.as_deref() != Some(text.as_str()) {
            log::warn!("{text}");
            self.orphans.failure = Some(text);
        }
    }

    /// Delete `claim` if it is still at `rev`; an address's local lease (its mirror) goes too.
    fn release_claim(&self, claim: &Claim, rev: i64) -> Result<bool, EtcdError> {
        let etcd = &self.cluster.etcd;
        match claim {
            Claim::Name { name, .. } => {
                let key = store::name_key(name);
                etcd.txn(
                    &[Compare::ModRevision(key.clone(), rev)],
                    &[Op::Delete(key)],
                    &[],
                )
            }
            Claim::Addr { net, ip, owner } => {
                let done = store::drop_claim(etcd, net, *ip, owner, rev)?;
                if let (true, Some((_, o))) = (done, owner_workload(owner)) {
                    let ipam = Ipam::new(Paths::new(&self.root).ipam_dir());
                    if let Err(e) = ipam.release(net, &o) {
                        log::warn!("{}", crate::error_chain(&e));
                    }
                }
                Ok(done)
            }
        }
    }
}

#[cfg(test)]
#[path = "orphans_tests.rs"]
mod tests;
