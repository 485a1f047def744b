//! Loop devices over image files (block devices for the disk tests), detached on drop.

use std::path::Path;
use std::process::Command;

/// A loop device (its `/dev/loopN` path), detached when dropped.
pub struct Loop(pub String);

impl Loop {
    /// A loop device over `backing` (`losetup` with `args` too, e.g. `--sector-size 4096`);
    /// `None`, the test recorded as skipped, where none can be attached.
    pub fn attach(backing: &Path, args: &[&str]) -> Option<Loop> {
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .args(args)
            .arg(backing)
            .output();
        match o {
            Ok(o) if o.status.success() => {
                Some(Loop(String::from_utf8_lossy(&o.stdout).trim().to_string()))
            }
            Ok(o) => {
                let how = std::iter::once("losetup").chain(args.iter().copied());
                super::report::skip(format!(
                    "{} cannot attach a loop device here: {}",
                    how.collect::<Vec<_>>().join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                super::report::skip(format!("losetup is missing: {e}"));
                None
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}
