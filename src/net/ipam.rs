//! IP address management: leases per network in `<state>/ipam/<network>.json`.
//!
//! Every change happens under an exclusive lock on `<network>.lock` and is written as a new
//! file (temp + fsync + rename + directory fsync), so concurrent `volt` processes never hand
//! out one address twice and a crash at any point leaves either the old or the new file,
//! both readable. A writer killed before its rename leaves its temp file behind; the next
//! writer removes it (under the lock no other writer is between create and rename).
//! Choosing an address is a pure function ([`pick`]).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Range;

/// What kind of workload holds a lease: it decides the pool dynamic addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Vm,
    Container,
}

/// Who holds a lease: `vm/<name>/<nic>` or `container/<name>/<nic>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub kind: Kind,
    pub name: String,
    pub nic: String,
}

impl Owner {
    pub fn vm(name: &str, nic: &str) -> Owner {
        Owner {
            kind: Kind::Vm,
            name: name.into(),
            nic: nic.into(),
        }
    }

    pub fn container(name: &str, nic: &str) -> Owner {
        Owner {
            kind: Kind::Container,
            name: name.into(),
            nic: nic.into(),
        }
    }

    /// The reservation key for this owner: `vm-<name>` / `ct-<name>`.
    pub fn reservation_key(&self) -> String {
        match self.kind {
            Kind::Vm => format!("vm-{}", self.name),
            Kind::Container => format!("ct-{}", self.name),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = match self.kind {
            Kind::Vm => "vm",
            Kind::Container => "container",
        };
        write!(f, "{k}/{}/{}", self.name, self.nic)
    }
}

impl std::str::FromStr for Owner {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let (kind, name, nic) = match parts.as_slice() {
            [k, n] => (*k, *n, "eth0"),
            [k, n, i] => (*k, *n, *i),
            _ => {
                return Err(format!(
                    "{s:?} is not an owner like vm/<name>/<nic> or container/<name>/<nic> (the NIC is eth0 when left out)"
                ))
            }
        };
        let kind = match kind {
            "vm" => Kind::Vm,
            "container" | "ct" => Kind::Container,
            _ => return Err(format!("{s:?}: the kind must be vm or container")),
        };
        if name.is_empty() || nic.is_empty() {
            return Err(format!("{s:?}: name and NIC must not be empty"));
        }
        Ok(Owner {
            kind,
            name: name.into(),
            nic: nic.into(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub owner: Owner,
    /// Whether the address was asked for (static config or reservation) rather than picked.
    #[serde(rename = "static")]
    pub fixed: bool,
    /// Seconds since the Unix epoch.
    pub since: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    network: String,
    leases: Vec<Lease>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("cannot create the lease directory {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid lease file", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {} (the previous file is intact)", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{ip} is not a usable address of network {network} ({subnet})")]
    OutOfNetwork {
        ip: Ipv4Addr,
        network: String,
        subnet: ipnet::Ipv4Net,
    },
    #[error("{ip} on {network} is already leased to {holder}")]
    Taken {
        ip: Ipv4Addr,
        network: String,
        holder: Owner,
    },
    #[error("{ip} on {network} is reserved for {key}")]
    Reserved {
        ip: Ipv4Addr,
        network: String,
        key: String,
    },
    #[error("no free address left in {network}'s {pool} pool {range}")]
    Exhausted {
        network: String,
        pool: &'static str,
        range: Range,
    },
}

/// What an allocation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// This exact address (static config).
    Static(Ipv4Addr),
    /// The owner's reservation, else any free address of the owner's pool.
    Any,
}

/// The leases of a network as the running workloads hold them, for rebuilding a corrupt
/// lease file (the policy knows the workloads; see `attach`).
pub type Rebuild = std::sync::Arc<dyn Fn(&str) -> Vec<Lease> + Send + Sync>;

/// Whether an address may be leased on a network (`network`, `ip`): what a bad file's
/// entries are checked against before they are kept.
pub type Usable = std::sync::Arc<dyn Fn(&str, Ipv4Addr) -> bool + Send + Sync>;

/// Lease storage for all networks under one directory.
#[derive(Clone)]
pub struct Ipam {
    dir: PathBuf,
    rebuild: Option<Rebuild>,
    usable: Option<Usable>,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam")
            .field("dir", &self.dir)
            .field("rebuild", &self.rebuild.is_some())
            .finish()
    }
}

/// A new lease for `owner` on `ip`, kept in address order.
fn insert_lease(leases: &mut Vec<Lease>, ip: Ipv4Addr, owner: &Owner, fixed: bool) -> Lease {
    let lease = Lease {
        ip,
        owner: owner.clone(),
        fixed,
        since: now(),
    };
    leases.push(lease.clone());
    leases.sort_by_key(|l| l.ip);
    lease
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Ipam {
    /// Leases live in `dir` (normally `/var/lib/volt/ipam`). A lease file that cannot be
    /// read is an error (an empty pool would hand out addresses that are in use).
    pub fn new(dir: impl Into<PathBuf>) -> Ipam {
        Ipam {
            dir: dir.into(),
            rebuild: None,
            usable: None,
        }
    }

    /// Like [`Ipam::new`], but a lease file that is not valid (truncated, empty, garbage) is
    /// moved aside as `<network>.json.corrupt-<unix time>`, said once in the log, and
    /// replaced by the leases `rebuild` gives for the network (what the running workloads
    /// hold), so starts on that network keep working.
    pub fn with_rebuild(
        dir: impl Into<PathBuf>,
        rebuild: impl Fn(&str) -> Vec<Lease> + Send + Sync + 'static,
    ) -> Ipam {
        Ipam {
            dir: dir.into(),
            rebuild: Some(std::sync::Arc::new(rebuild)),
            usable: None,
        }
    }

    /// A bad file's entries are kept in a rebuild only when `usable` says their address may
    /// be leased on their network (in its subnet, not its gateway or broadcast address).
    pub fn keeping_only(
        mut self,
        usable: impl Fn(&str, Ipv4Addr) -> bool + Send + Sync + 'static,
    ) -> Ipam {
        self.usable = Some(std::sync::Arc::new(usable));
        self
    }

    /// The network's lease file, or, when it is corrupt and a rebuild source is set, the
    /// rebuilt leases (the bad file moved aside). The flag says the file must be written.
    fn read_or_rebuild(&self, network: &str, path: &Path) -> Result<(LeaseFile, bool), IpamError> {
        let (source, rebuild) = match (read_file(path), &self.rebuild) {
            (Err(IpamError::Corrupt { source, .. }), Some(r)) => (source, r),
            (r, _) => return r.map(|f| (f, false)),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = path.with_file_name(format!("{name}.corrupt-{}", now()));
        // A second name for the bad file (or a copy), not a rename: until the rebuilt file
        // replaces it, `path` must not go missing, or a crash or a failed write here would
        // leave no file at all, which reads as an empty pool.
        std::fs::hard_link(path, &aside)
            .or_else(|_| std::fs::copy(path, &aside).map(|_| ()))
            .map_err(|e| IpamError::Write {
                path: aside.clone(),
                source: e,
            })?;
        // The running workloads' addresses first (what their links hold now wins), then
        // every entry of the bad file that still reads as a lease and conflicts with none:
        // one bad entry must not cost the leases of the stopped workloads.
        let mut leases: Vec<Lease> = Vec::new();
        let mut add = |l: Lease| {
            let new = !leases.iter().any(|o| o.ip == l.ip || o.owner == l.owner);
            if new {
                leases.push(l);
            }
            new
        };
        let running = rebuild(network)
            .into_iter()
            .filter(|l| add(l.clone()))
            .count();
        let usable = |l: &Lease| self.usable.as_ref().is_none_or(|u| u(network, l.ip));
        let kept = salvage(path)
            .into_iter()
            .filter(|l| usable(l) && add(l.clone()))
            .count();
        leases.sort_by_key(|l| l.ip);
        log::warn!(
            "{} is not a valid lease file ({source}); kept it as {} and rebuilt network {network}'s leases: {running} from the running workloads, {kept} from the entries of the file that still read",
            path.display(),
            aside.display(),
        );
        let file = LeaseFile {
            version: 1,
            network: network.to_string(),
            leases,
        };
        Ok((file, true))
    }

    fn path(&self, network: &str) -> PathBuf {
        self.dir.join(format!("{network}.json"))
    }

    /// Run `f` on the network's leases under its lock; write the result if `f` changed it.
    fn with_leases<T>(
        &self,
        network: &str,
        f: impl FnOnce(&mut Vec<Lease>) -> Result<T, IpamError>,
    ) -> Result<T, IpamError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| IpamError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let lock_path = self.dir.join(format!("{network}.lock"));
        // flock needs no write access: a reader that may not create or write the lock file
        // (a member of group volt, in the 0750 root:volt directory) locks it read-only.
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .and_then(|f| {
                f.set_permissions(std::fs::Permissions::from_mode(LEASE_FILE_MODE))?;
                Ok((f, true))
            })
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => File::open(&lock_path).map(|f| (f, false)),
                _ => Err(e),
            });
        let lock = match lock {
            // A reader in a directory with no lock file yet: no leases written either.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            other => Some(other.map_err(|source| IpamError::Lock {
                path: lock_path.clone(),
                source,
            })?),
        };
        // A reader (it may not write) shares the lock: it never holds a writer up long.
        let _held = match &lock {
            Some((f, true)) => Some(f.lock()),
            Some((f, false)) => Some(f.lock_shared()),
            None => None,
        }
        .transpose()
        .map_err(|source| IpamError::Lock {
            path: lock_path.clone(),
            source,
        })?;
        let path = self.path(network);
        let (mut file, rebuilt) = self.read_or_rebuild(network, &path)?;
        if rebuilt {
            // At once, over the bad file: `f` may still fail.
            write_atomic(&path, &file)?;
        }
        file.network = network.to_string();
        let before = file.leases.clone();
        let out = f(&mut file.leases)?;
        if file.leases != before {
            file.version = 1;
            crate::fsutil::remove_stale_temps(&path, crate::fsutil::Stale::All);
            write_atomic(&path, &file)?;
        } else if matches!(lock, Some((_, true))) && !rebuilt {
            // Unchanged, and what this writer hands out rests on it: a writer killed between
            // its rename and the directory's fsync left it in the page cache only.
            sync_durably(&path)?;
        }
        drop(lock);
        Ok(out)
    }

    /// The leases of `network` as the file holds them now, for a listing: read without the
    /// lock (every write is an atomic rename, so never half a file), so that users who may
    /// read the file but not take its lock see them too; never rebuilt or written.
    pub fn peek(&self, network: &str) -> Result<Vec<Lease>, IpamError> {
        read_file(&self.path(network)).map(|f| f.leases)
    }

    /// The leases of `network` (read under the lock, so never a half-written state).
    pub fn list(&self, network: &str) -> Result<Vec<Lease>, IpamError> {
        self.with_leases(network, |l| Ok(l.clone()))
    }

    /// Give `ask.owner` an address on `ask.net`; returns its existing lease if it has one
    /// (for the same request). The MAC is not kept.
    pub fn allocate(&self, ask: Ask) -> Result<Lease, IpamError> {
        let (net, owner) = (ask.net, ask.owner);
        self.with_leases(&net.name, |leases| {
            if let Some(pos) = leases.iter().position(|l| l.owner == *owner) {
                let held = leases[pos].ip;
                match gives_way(ask, held) {
                    None => return Ok(leases[pos].clone()),
                    Some(why) => {
                        log::info!("{owner} gives up {held} on {}: {why}", net.name);
                        leases.remove(pos);
                    }
                }
            }
            let mut others = ask.configured.clone();
            if let Request::Static(ip) = ask.request {
                others.remove(&ip);
            }
            let (ip, fixed) = pick(ask.with_configured(&others), leases)?;
            Ok(insert_lease(leases, ip, owner, fixed))
        })
    }

    /// Drop `owner`'s lease on `network`. Returns the released lease.
    pub fn release(&self, network: &str, owner: &Owner) -> Result<Option<Lease>, IpamError> {
        self.with_leases(network, |leases| {
            let pos = leases.iter().position(|l| l.owner == *owner);
            Ok(pos.map(|p| leases.remove(p)))
        })
    }

    /// Release every lease on `network` whose owner `alive` says is gone. Returns them.
    pub fn reconcile(
        &self,
        network: &str,
        alive: &dyn Fn(&Owner) -> bool,
    ) -> Result<Vec<Lease>, IpamError> {
        self.with_leases(network, |leases| {
            let (keep, gone): (Vec<Lease>, Vec<Lease>) =
                leases.drain(..).partition(|l| alive(&l.owner));
            *leases = keep;
            Ok(gone)
        })
    }

    /// Networks that have lease files.
    pub fn networks(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(str::to_owned)
                    })
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A lease file's and a lock file's mode: the directory (0750 root:volt) decides who reads.
const LEASE_FILE_MODE: u32 = 0o644;

#[path = "ipam_file.rs"]
mod file;
use file::{read_file, salvage, sync_durably, write_atomic};
#[path = "ipam_ask.rs"]
mod ask;
#[path = "ipam_record.rs"]
mod record;
pub use ask::{Ask, Holding};
#[path = "ipam_pick.rs"]
mod choose;
use choose::gives_way;
pub use choose::pick;

#[cfg(test)]
#[path = "ipam_tests.rs"]
mod tests;
