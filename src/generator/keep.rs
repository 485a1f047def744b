//! The last good units of each workload. When a workload's file breaks while it runs (a typo
//! and a `daemon-reload`), dropping its generated drop-ins would drop the `BindsTo=` on its
//! link owners, which have `StopWhenUnneeded=yes`: systemd would stop them and delete the
//! running VM's TAP. So every run records what it generated per workload, and a workload
//! whose file exists but is broken gets its last good units again until the file is fixed or
//! removed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{CONTAINERS_DIR, VMS_DIR};

/// What one workload got in the output directory: drop-ins (path relative to the output
/// directory, text) and symlinks (link relative to the output directory, target).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Kept {
    pub files: Vec<(PathBuf, String)>,
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// `<dir>/vm/<name>.json` or `<dir>/container/<name>.json`.
fn path_for(dir: &Path, kind: &str, name: &str) -> PathBuf {
    dir.join(kind).join(format!("{name}.json"))
}

/// The workload a config file describes: `("vm", name)` for `/etc/volt/vms/<name>.toml`,
/// `("container", name)` for `/etc/volt/containers/<name>.toml`.
pub fn workload_of(file: &Path) -> Option<(&'static str, String)> {
    let parent = file.parent()?;
    let name = crate::config::file_stem(file);
    if parent == Path::new("/").join(VMS_DIR) {
        Some(("vm", name))
    } else if parent == Path::new("/").join(CONTAINERS_DIR) {
        Some(("container", name))
    } else {
        None
    }
}

/// Record what workload `kind`/`name` got.
pub fn save(dir: &Path, kind: &str, name: &str, kept: &Kept) -> Result<(), crate::fsutil::FsError> {
    let text = serde_json::to_string(kept).unwrap_or_default();
    crate::fsutil::write_atomic_if_changed(&path_for(dir, kind, name), &text).map(|_| ())
}

/// What workload `kind`/`name` got the last time its file was good.
pub fn load(dir: &Path, kind: &str, name: &str) -> Option<Kept> {
    let text = std::fs::read_to_string(path_for(dir, kind, name)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Forget every workload whose config file is gone (`exists(kind, name)` false).
pub fn sweep(dir: &Path, exists: &dyn Fn(&str, &str) -> bool) {
    for kind in ["vm", "container"] {
        let Ok(entries) = std::fs::read_dir(dir.join(kind)) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            let Some(name) = p.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if p.extension().is_some_and(|x| x == "json") && !exists(kind, name) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sweep() {
        let tmp = tempfile::tempdir().expect("tmp");
        let k = Kept {
            files: vec![("a.service.d/x.conf".into(), "[Unit]\n".into())],
            links: vec![("m.target.wants/a.service".into(), "/usr/lib/a".into())],
        };
        save(tmp.path(), "vm", "web", &k).expect("save");
        let back = load(tmp.path(), "vm", "web").expect("load");
        assert_eq!(back.files, k.files);
        assert_eq!(back.links, k.links);
        sweep(tmp.path(), &|_, n| n != "web");
        assert!(load(tmp.path(), "vm", "web").is_none());
        assert_eq!(
            workload_of(Path::new("/etc/volt/vms/web.toml")),
            Some(("vm", "web".to_string()))
        );
        assert_eq!(workload_of(Path::new("/etc/volt/networks/lab.toml")), None);
    }
}
