//! Writing files so that a crash at any point leaves either the old or the new content.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Replace `path` atomically with `content` (temporary file, fsync, rename, directory fsync)
/// unless it already has exactly that content (networkd compares files on reload; an
/// unchanged file must stay untouched). Returns whether it wrote.
pub fn write_atomic_if_changed(path: &Path, content: &str) -> Result<bool, FsError> {
    if std::fs::read(path).ok().as_deref() == Some(content.as_bytes()) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| FsError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(FsError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_on_change() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("a/b.conf");
        assert!(write_atomic_if_changed(&p, "x\n").expect("write"));
        assert!(!write_atomic_if_changed(&p, "x\n").expect("same"));
        assert!(write_atomic_if_changed(&p, "y\n").expect("change"));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "y\n");
        let left: Vec<_> = std::fs::read_dir(p.parent().expect("dir"))
            .expect("ls")
            .collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }
}
