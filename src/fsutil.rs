//! Writing files so that a crash at any point leaves either the old or the new content.

use std::io::{Read, Write};
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
    #[error("cannot sync {} to disk", path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Replace `path` atomically with `content` (temporary file, fsync, rename, directory fsync)
/// unless it already has exactly that content (networkd compares files on reload; an
/// unchanged file must stay untouched). Returns whether it wrote.
pub fn write_atomic_if_changed(path: &Path, content: &str) -> Result<bool, FsError> {
    write_if_changed(path, content, true)
}

/// [`write_atomic_if_changed`] for runtime files under `/run` (tmpfs): no fsyncs (nothing
/// there outlives the machine, so a sync buys nothing and costs two syscalls per file), and
/// one read for the comparison. Readers still see the old or the new file, never a part of
/// one.
pub fn write_runtime_if_changed(path: &Path, content: &str) -> Result<bool, FsError> {
    write_if_changed(path, content, false)
}

/// [`write_runtime_if_changed`] for a file somebody else may remove meanwhile (a link
/// owner taking its link down while the generator refreshes the link's networkd files): the
/// new content replaces the file only if it is still there, in one step (the two swapped with
/// `renameat2(RENAME_EXCHANGE)`), so a removal is never undone. Returns whether it wrote.
pub fn refresh_runtime_if_changed(path: &Path, content: &str) -> Result<bool, FsError> {
    use std::os::unix::ffi::OsStrExt;
    // A regular file only (a directory or a link there is not ours to swap).
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(false);
    }
    if has_content(path, content.as_bytes(), true) {
        return Ok(false);
    }
    let (_, tmp) = temp_beside(path);
    let werr = |source| FsError::Write {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::write(&tmp, content) {
        Ok(()) => {}
        // No directory, so no file to refresh.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(werr(e)),
    }
    let c =
        |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let swapped = c(&tmp).and_then(|from| {
        let to = c(path)?;
        // SAFETY: both are valid NUL-terminated paths that live across the call; AT_FDCWD
        // with absolute or cwd-relative paths, as rename(2).
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    });
    let result = match swapped {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // A file system without the exchange: replace it if it is there (a narrow window
        // instead of none).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            match path.exists() {
                true => std::fs::rename(&tmp, path).map(|()| true).map_err(werr),
                false => Ok(false),
            }
        }
        Err(e) => Err(werr(e)),
    };
    // After a swap the temporary name holds the old content; otherwise the new one.
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The comparison's buffer (and the largest file compared in one read).
const CHUNK: usize = 64 * 1024;

/// Whether the file at `path` holds exactly `content` (open and read; no stat). `one_read`:
/// one read of one byte more than `content` is taken to reach the end of the file, which
/// holds on tmpfs (a regular file there reads short only at its end); it saves the read
/// that would return 0.
fn has_content(path: &Path, content: &[u8], one_read: bool) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let want = content.len().saturating_add(1);
    if one_read && want <= CHUNK {
        let mut got = vec![0u8; want];
        return matches!(f.read(&mut got), Ok(n) if got.get(..n) == Some(content));
    }
    // Piece by piece through one buffer: a large file is not read into memory whole.
    let mut buf = vec![0u8; want.min(CHUNK)];
    let mut rest = content;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return rest.is_empty(),
            Ok(n) => match (buf.get(..n), rest.get(..n)) {
                (Some(a), Some(b)) if a == b => rest = rest.get(n..).unwrap_or_default(),
                _ => return false,
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// `path`'s directory, and the temporary file beside it a write goes through first
/// (`.<name>.<pid>.tmp`: hidden, and only [`remove_stale_temps`] looks for it).
pub(crate) fn temp_beside(path: &Path) -> (&Path, PathBuf) {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, dir.join(format!(".{name}.{}.tmp", std::process::id())))
}

/// Which temporary files of `path` (see [`temp_beside`]) a sweep removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// Every one: the caller holds the lock every writer of `path` holds from create to
    /// rename.
    All,
    /// Those older than [`STALE_AFTER`]: a writer holds its temporary file for the moment
    /// between create and rename, so one that old was left by a writer killed in between.
    /// (By age, not by whether the writer's PID is alive: a sandboxed writer may not see
    /// other processes in /proc, and PID namespaces differ.)
    Old,
}

/// How old a temporary file must be for [`Stale::Old`].
pub(crate) const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Remove the temporary files of `path` that writers killed before their rename left
/// behind. Best effort: a leftover costs disk space, never correctness.
pub(crate) fn remove_stale_temps(path: &Path, which: Stale) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = n
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let old = || {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER)
        };
        if which == Stale::All || (pid != std::process::id() && old()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => log::info!(
                    "removed {}, left by a writer that was killed before its rename",
                    e.path().display()
                ),
                Err(err) => log::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
    }
}

fn write_if_changed(path: &Path, content: &str, sync: bool) -> Result<bool, FsError> {
    let (dir, tmp) = temp_beside(path);
    if has_content(path, content.as_bytes(), !sync) {
        if sync {
            // The content may be there only in the page cache: a writer killed between its
            // rename and the directory's fsync leaves exactly this. Make it durable now, or
            // an unchanged write would never do so.
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::File::open(dir)?.sync_all())
                .map_err(|source| FsError::Sync {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        return Ok(false);
    }
    if sync {
        // Durable writes are seldom, and outside /run what a killed writer left would stay
        // for good.
        remove_stale_temps(path, Stale::Old);
    }
    // The directory usually exists: create it only when the file cannot be.
    let file = match std::fs::File::create(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The levels missing now, each made durable by a sync of the one holding it.
            let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
            std::fs::create_dir_all(dir).map_err(|source| FsError::Create {
                path: dir.to_path_buf(),
                source,
            })?;
            for made in missing.iter().rev().filter(|_| sync) {
                if let Some(parent) = made.parent() {
                    std::fs::File::open(parent)
                        .and_then(|f| f.sync_all())
                        .map_err(|source| FsError::Sync {
                            path: parent.to_path_buf(),
                            source,
                        })?;
                }
            }
            std::fs::File::create(&tmp)
        }
        r => r,
    };
    let result = file.and_then(|mut f| {
        f.write_all(content.as_bytes())?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if sync {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    });
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
    fn a_durable_write_removes_what_killed_writers_left_and_no_live_ones() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("claims.json");
        // Left an hour ago (a writer killed before its rename), and one being written now
        // by another process (whose PID this process may not even see in /proc).
        let left = tmp.path().join(".claims.json.4194305.tmp");
        let mine = temp_beside(&path).1;
        let other = tmp.path().join(".other.json.4194305.tmp");
        let live = tmp.path().join(".claims.json.4194306.tmp");
        for f in [&left, &other, &live] {
            std::fs::write(f, "half").expect("leftover");
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for f in [&left, &other] {
            std::fs::File::options()
                .write(true)
                .open(f)
                .and_then(|f| f.set_modified(hour_ago))
                .expect("age");
        }
        assert!(write_atomic_if_changed(&path, "new\n").expect("write"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new\n");
        assert!(!left.exists(), "a killed writer's temp file is removed");
        assert!(!mine.exists());
        assert!(other.exists(), "another file's temp file is not touched");
        assert!(live.exists(), "a live writer's temp file is left");
        // Under the writers' lock every one goes.
        remove_stale_temps(&path, Stale::All);
        assert!(!live.exists());
        assert!(other.exists());
    }

    #[test]
    fn a_refresh_never_brings_back_a_removed_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("10-a.netdev");
        let nodir = tmp.path().join("none/10-a.netdev");
        assert!(!refresh_runtime_if_changed(&nodir, "x\n").expect("no directory"));
        assert!(!refresh_runtime_if_changed(&p, "x\n").expect("absent"));
        assert!(!p.exists(), "not created");
        std::fs::write(&p, "old\n").expect("write");
        assert!(refresh_runtime_if_changed(&p, "new\n").expect("refresh"));
        assert!(!refresh_runtime_if_changed(&p, "new\n").expect("same"));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "new\n");
        let left = std::fs::read_dir(tmp.path()).expect("ls").count();
        assert_eq!(left, 1, "no temporary file left behind");
        // Only a regular file is refreshed: a directory or a link there is left as it is.
        let d = tmp.path().join("d");
        std::fs::create_dir(&d).expect("mkdir");
        assert!(!refresh_runtime_if_changed(&d, "x\n").expect("a directory"));
        assert!(d.is_dir());
        let l = tmp.path().join("l");
        std::os::unix::fs::symlink("nowhere", &l).expect("link");
        assert!(!refresh_runtime_if_changed(&l, "x\n").expect("a link"));
        assert!(std::fs::symlink_metadata(&l).expect("link").is_symlink());
    }

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

    #[test]
    fn runtime_writes_compare_the_whole_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("new/dir/f.network");
        assert!(write_runtime_if_changed(&p, "abc\n").expect("create with its directory"));
        assert!(!write_runtime_if_changed(&p, "abc\n").expect("same"));
        // A prefix or an extension of the content is a change.
        assert!(write_runtime_if_changed(&p, "ab").expect("shorter"));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "ab");
        assert!(write_runtime_if_changed(&p, "abc\n").expect("longer"));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "abc\n");
        assert!(write_runtime_if_changed(&p, "").expect("empty"));
        assert!(!write_runtime_if_changed(&p, "").expect("still empty"));
        assert_eq!(std::fs::read(&p).expect("read").len(), 0);
    }
}
