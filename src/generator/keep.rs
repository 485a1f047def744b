//! The last good units of each workload. When a workload's file breaks while it runs (a typo
//! and a `daemon-reload`), dropping its generated drop-ins would drop the `BindsTo=` on its
//! link owners, which have `StopWhenUnneeded=yes`: systemd would stop them and delete the
//! running VM's TAP. So every run records what it generated per workload, and a workload
//! whose file exists but is broken gets its last good units again until the file is fixed or
//! removed.
//!
//! The record is one file, `<dir>/kept.json` (a runtime file: `/run/volt/generator`), read
//! and compared once per run: a file per workload cost a thousand reads on every
//! `daemon-reload` with a thousand VMs. Records an older Volt left, one file per workload
//! (`<dir>/vm/<name>.json`, `<dir>/container/<name>.json`), are read when `kept.json` does
//! not exist yet and removed once it does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What one workload got in the output directory: drop-ins (path relative to the output
/// directory, text) and symlinks (link relative to the output directory, target).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub files: Vec<(PathBuf, String)>,
    pub links: Vec<(PathBuf, PathBuf)>,
    /// Its DHCP static leases (network, MAC, address): kept in its networks' lease lists
    /// while it runs on these units, so networkd hands its address to nobody else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<(String, String, std::net::Ipv4Addr)>,
}

impl Kept {
    /// Whether the workload starts at boot: a link in `machines.target.wants/`.
    pub fn autostarts(&self) -> bool {
        let wants = format!("{}.wants", crate::plan::names::MACHINES_TARGET);
        self.links
            .iter()
            .any(|(rel, _)| rel.parent().is_some_and(|d| d == Path::new(&wants)))
    }
}

/// Every workload's last good units, by `<kind>/<name>` (`vm/web`, `container/db`).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record(BTreeMap<String, Kept>);

const FILE: &str = "kept.json";
const KINDS: [&str; 2] = ["vm", "container"];

fn key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

impl Record {
    /// Record what workload `kind`/`name` got.
    pub fn insert(&mut self, kind: &str, name: &str, kept: Kept) {
        self.0.insert(key(kind, name), kept);
    }

    /// Take over every entry of `other`.
    pub fn extend(&mut self, other: Record) {
        self.0.extend(other.0);
    }

    /// What workload `kind`/`name` got.
    pub fn get(&self, kind: &str, name: &str) -> Option<&Kept> {
        self.0.get(&key(kind, name))
    }

    /// Every workload's units.
    pub fn all(&self) -> impl Iterator<Item = &Kept> {
        self.0.values()
    }

    /// The names and units of the workloads of `kind` (`vm`, `container`).
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Kept)> {
        self.0.iter().filter_map(move |(k, kept)| {
            k.split_once('/')
                .filter(|(kd, _)| *kd == kind)
                .map(|(_, name)| (name, kept))
        })
    }

    /// Take over the entries of `last` this record lacks whose workloads still exist
    /// (`exists(kind, name)`): workloads whose file is broken now, or whose units could not
    /// be written this time. Entries of workloads whose file is gone are dropped.
    pub fn carry_over(&mut self, last: Record, exists: &dyn Fn(&str, &str) -> bool) {
        for (k, kept) in last.0 {
            let Some((kind, name)) = k.split_once('/') else {
                continue;
            };
            if !self.0.contains_key(&k) && exists(kind, name) {
                self.0.insert(k, kept);
            }
        }
    }

    /// The record in `dir` (empty when there is none). A record that does not parse as a
    /// whole (cut short, or written by another version) is logged, and every entry that
    /// still parses is used: an empty record would drop the units of a running workload
    /// whose file breaks at that moment.
    pub fn load(dir: &Path) -> Record {
        let path = dir.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Record::load_legacy(dir),
            Err(e) => {
                log::error!("cannot read {}: {e}", path.display());
                return Record::load_legacy(dir);
            }
        };
        let e = match serde_json::from_str(&text) {
            Ok(r) => return r,
            Err(e) => e,
        };
        let entries: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_default();
        let mut r = Record::default();
        for (k, v) in entries {
            if let Ok(kept) = serde_json::from_value(v) {
                r.0.insert(k, kept);
            }
        }
        log::error!(
            "{} is not a valid record of the last good units ({e}); using the {} entries that still parse",
            path.display(),
            r.0.len()
        );
        r
    }

    /// One file per workload, as an older Volt wrote them.
    fn load_legacy(dir: &Path) -> Record {
        let mut r = Record::default();
        for kind in KINDS {
            let Ok(entries) = std::fs::read_dir(dir.join(kind)) else {
                continue;
            };
            for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
                let Some(name) = p.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                if p.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let kept = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
                if let Some(kept) = kept {
                    r.insert(kind, name, kept);
                }
            }
        }
        r
    }

    /// Write the record to `dir` unless it holds exactly this already; then remove an older
    /// Volt's per-workload files.
    pub fn save(&self, dir: &Path) -> Result<(), crate::fsutil::FsError> {
        let text = serde_json::to_string(self).unwrap_or_default();
        crate::fsutil::write_runtime_if_changed(&dir.join(FILE), &text)?;
        for kind in KINDS {
            // Absent but for the first run after an upgrade.
            let _ = std::fs::remove_dir_all(dir.join(kind));
        }
        Ok(())
    }
}

/// Write `keys` (`vm/web`, ...) to `path` (durably, when they changed): the workloads the
/// config loader takes as keeping their claims when the runtime record is gone, after a
/// reboot (see [`crate::config::CLAIMS_RECORD`]).
fn save_claims<'a>(
    keys: impl Iterator<Item = &'a String>,
    path: &Path,
) -> Result<(), crate::fsutil::FsError> {
    let keys: Vec<&String> = keys.collect();
    let text = serde_json::to_string(&keys).unwrap_or_default();
    crate::fsutil::write_atomic_if_changed(path, &text).map(|_| ())
}

/// The generator's copy of the claims record: best effort. systemd 253 and later run
/// generators on a read-only `/` (and at boot it may be read-only anyway), so every workload
/// start copies it too ([`keep_claims`]).
pub(super) fn save_claims_from_generator(record: &Record, path: &Path) {
    match save_claims(record.0.keys(), path) {
        Ok(()) => {}
        Err(e) if read_only(&e) => log::debug!("{}", crate::error_chain(&e)),
        Err(e) => log::warn!("{}", crate::error_chain(&e)),
    }
}

/// Copy the generator's last record under `root` to the claims record kept across reboots:
/// run by every VM and container start (a process that may write `/var/lib/volt`, unlike
/// the generator on systemd 253 and later). Nothing when the generator left no record.
pub fn keep_claims(root: &Path) {
    let t = super::Targets::under_root(root);
    // The keys alone (a start must not parse every workload's units), and only from a
    // record that reads whole: a part of one would drop workloads' claims.
    let Ok(text) = std::fs::read(t.keep.join(FILE)) else {
        return;
    };
    let Ok(keys) = serde_json::from_slice::<BTreeMap<String, serde::de::IgnoredAny>>(&text) else {
        log::warn!(
            "{} does not parse; the claims kept across reboots are left as they are",
            t.keep.join(FILE).display()
        );
        return;
    };
    if let Err(e) = save_claims(keys.keys(), &t.claims) {
        log::warn!(
            "{} (which workloads keep their claims after a reboot)",
            crate::error_chain(&e)
        );
    }
}

fn read_only(e: &crate::fsutil::FsError) -> bool {
    use std::error::Error;
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
}

pub use crate::config::workload_of;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_where_the_config_loader_looks_for_incumbents() {
        let root = Path::new("/r");
        assert_eq!(
            super::super::Targets::under_root(root).keep.join(FILE),
            root.join(crate::config::GENERATOR_RECORD)
        );
    }

    fn kept(text: &str) -> Kept {
        Kept {
            files: vec![("a.service.d/x.conf".into(), text.into())],
            links: vec![("m.target.wants/a.service".into(), "/usr/lib/a".into())],
            leases: vec![(
                "volt0".into(),
                "52:54:00:00:00:01".into(),
                [10, 42, 0, 150].into(),
            )],
        }
    }

    #[test]
    fn round_trip_and_carry_over() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut r = Record::default();
        r.insert("vm", "web", kept("1"));
        r.insert("vm", "gone", kept("2"));
        r.insert("container", "db", kept("3"));
        r.save(tmp.path()).expect("save");
        let back = Record::load(tmp.path());
        assert_eq!(back, r);
        // This run generated web anew; db is broken (its file exists), gone's file is gone.
        let mut now = Record::default();
        now.insert("vm", "web", kept("4"));
        now.carry_over(back, &|kind, name| (kind, name) != ("vm", "gone"));
        assert_eq!(now.get("vm", "web"), Some(&kept("4")));
        assert_eq!(now.get("container", "db"), Some(&kept("3")));
        assert_eq!(now.get("vm", "gone"), None);
        assert_eq!(
            workload_of(Path::new("/etc/volt/vms/web.toml")),
            Some(("vm", "web".to_string()))
        );
        assert_eq!(workload_of(Path::new("/etc/volt/networks/lab.toml")), None);
    }

    #[test]
    fn a_record_with_a_bad_entry_keeps_the_good_ones() {
        let tmp = tempfile::tempdir().expect("tmp");
        let good = serde_json::to_string(&kept("1")).expect("json");
        std::fs::write(
            tmp.path().join(FILE),
            format!("{{\"vm/web\":{good},\"vm/new\":{{\"files\":7}}}}"),
        )
        .expect("write");
        let r = Record::load(tmp.path());
        assert_eq!(r.get("vm", "web"), Some(&kept("1")));
        assert_eq!(r.0.len(), 1);
        assert_eq!(r.of_kind("vm").count(), 1);
        assert_eq!(r.of_kind("container").count(), 0);
    }

    #[test]
    fn an_older_volts_files_are_read_then_removed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let vm = tmp.path().join("vm");
        std::fs::create_dir_all(&vm).expect("mkdir");
        let text = serde_json::to_string(&kept("old")).expect("json");
        std::fs::write(vm.join("web.json"), text).expect("write");
        std::fs::write(vm.join("notes.txt"), "x").expect("write");
        let r = Record::load(tmp.path());
        assert_eq!(r.get("vm", "web"), Some(&kept("old")));
        assert_eq!(r.0.len(), 1);
        r.save(tmp.path()).expect("save");
        assert!(
            !vm.exists(),
            "the per-workload files are gone once kept.json is written"
        );
        assert_eq!(Record::load(tmp.path()), r);
    }
}
