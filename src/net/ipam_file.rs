//! A lease file on disk: read (whole, or the entries that still read), written atomically
//! (temporary file, fsync, rename, directory fsync), and made durable as it stands.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Deserialize;

use super::{IpamError, Lease, LeaseFile, LEASE_FILE_MODE};

/// The entries of a lease file that does not parse as a whole which still read as leases
/// (an entry edited by hand, a field of the wrong type). A file that is not JSON has none.
pub(super) fn salvage(path: &Path) -> Vec<Lease> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    match value.get("leases").and_then(|l| l.as_array()) {
        Some(entries) => entries
            .iter()
            .filter_map(|e| Lease::deserialize(e).ok())
            .collect(),
        None => Vec::new(),
    }
}

pub(super) fn read_file(path: &Path) -> Result<LeaseFile, IpamError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LeaseFile::default()),
        Err(source) => Err(IpamError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(super) fn write_atomic(path: &Path, file: &LeaseFile) -> Result<(), IpamError> {
    let err = |source| IpamError::Write {
        path: path.to_path_buf(),
        source,
    };
    let (dir, tmp) = crate::fsutil::temp_beside(path);
    let mut text = serde_json::to_vec_pretty(file).map_err(|e| err(std::io::Error::other(e)))?;
    text.push(b'\n');
    let result = (|| {
        let mut f = File::create(&tmp)?;
        // Whatever the writer's umask (`sudo` keeps a strict one): readable by whoever may
        // enter the directory (0750 root:volt), as the lock file is.
        f.set_permissions(std::fs::Permissions::from_mode(LEASE_FILE_MODE))?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// fsync `path` (where it exists) and its directory.
pub(super) fn sync_durably(path: &Path) -> Result<(), IpamError> {
    let sync = |p: &Path| File::open(p).and_then(|f| f.sync_all());
    match sync(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other,
    }
    .and_then(|()| sync(crate::fsutil::temp_beside(path).0))
    .map_err(|source| IpamError::Write {
        path: path.to_path_buf(),
        source,
    })
}
