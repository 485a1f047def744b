//! The sweep of networkd runtime files Volt wrote on an earlier run that nothing wants any
//! more, and the bridges it leaves behind: networkd never deletes a link, so the bridge of a
//! removed `10-<bridge>.netdev` is remembered in `left_bridges` for `volt net down`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{GeneratorError, Report};
use crate::plan::names;

/// What the sweep keeps and knows.
pub(super) struct Sweep<'a> {
    /// Files this run wrote or wants.
    pub wanted: &'a HashSet<OsString>,
    /// Whether the config file a file was made from holds on to it (it exists but is broken
    /// now, or its directory cannot be listed).
    pub keep: &'a dyn Fn(&Path) -> bool,
    /// Bridges configured networks name: never remembered as left behind.
    pub bridges: &'a HashSet<String>,
    /// Where left bridges are remembered (`/run/volt/bridges-left`).
    pub left_bridges: &'a Path,
}

impl Sweep<'_> {
    /// Forget bridges that configured networks name again: networkd's or the admin's now,
    /// not leftovers.
    pub(super) fn forget_configured(&self) {
        for bridge in self.bridges {
            let m = self.left_bridges.join(bridge);
            if let Err(e) = std::fs::remove_file(&m) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {e}", m.display());
                }
            }
        }
    }

    /// Remove the files in `dir` with our name and header that are not wanted and that no
    /// config file holds on to.
    pub(super) fn run(&self, dir: &Path, report: &mut Report) {
        let owned = match owned_files(dir) {
            Ok(f) => f,
            Err(source) => {
                report.errors.push(GeneratorError::List {
                    path: dir.to_path_buf(),
                    source,
                });
                return;
            }
        };
        let stale = owned
            .into_iter()
            .filter(|(p, _)| !self.wanted.contains(p.as_os_str()))
            .filter(|(_, text)| !names::networkd_source(text).is_some_and(|s| (self.keep)(&s)));
        for (path, text) in stale {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Remembered before the file goes, so that no crash in between loses the bridge.
            if let Some((bridge, network)) = names::left_bridge(name, &text) {
                if !self.bridges.contains(&bridge) {
                    self.remember(&bridge, &network);
                }
            }
            match remove_owned(&path) {
                Ok(()) => {
                    log::info!("removed stale {}", path.display());
                    report.removed_stale.push(path);
                }
                Err(source) => {
                    let e = GeneratorError::Remove { path, source };
                    log::error!("{}", crate::error_chain(&e));
                    report.errors.push(e);
                }
            }
        }
    }

    /// Remember that networkd's `bridge` of the gone `network` is left.
    fn remember(&self, bridge: &str, network: &str) {
        let m = self.left_bridges.join(bridge);
        match crate::fsutil::write_atomic_if_changed(&m, &format!("{network}\n")) {
            Ok(_) => log::info!(
                "bridge {bridge} of network {network} stays until `volt net down {network}` (its file is gone)"
            ),
            Err(e) => log::warn!(
                "cannot remember bridge {bridge} of network {network} for `volt net down`: {}",
                crate::error_chain(&e)
            ),
        }
    }
}

/// The networkd files in `dir` that carry the generator's header (and its static-lease
/// drop-ins in `*.network.d/`), with their text, in name order. A missing `dir` has none.
pub fn owned_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut owned: Vec<(PathBuf, String)> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            // The entry's type from the listing; a symlink is followed as before.
            let is_dir = match e.file_type() {
                Ok(t) if t.is_symlink() => p.is_dir(),
                Ok(t) => t.is_dir(),
                Err(_) => p.is_dir(),
            };
            let dropin = p.join(names::STATIC_LEASES_NAME);
            if is_dir && dropin.exists() {
                dropin
            } else {
                p
            }
        })
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            names::is_owned_networkd_path(&p, &text).then_some((p, text))
        })
        .collect();
    owned.sort();
    Ok(owned)
}

/// Remove a file of [`owned_files`]: a static-lease drop-in takes its directory with it, if
/// nothing else is in it.
pub fn remove_owned(path: &Path) -> std::io::Result<()> {
    std::fs::remove_file(path)?;
    if path.ends_with(names::STATIC_LEASES_NAME) {
        if let Some(d) = path.parent() {
            let _ = std::fs::remove_dir(d);
        }
    }
    Ok(())
}
