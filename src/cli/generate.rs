//! `volt generate`: the generator, run by hand for debugging. It writes only below OUTDIR:
//! unit drop-ins into OUTDIR, networkd files into OUTDIR/network (never into the host's
//! /run/systemd/network), its record of last good units into OUTDIR/kept, the bridges of
//! networks whose files are gone into OUTDIR/bridges-left. Run again into
//! the same OUTDIR it replaces the units it wrote there, as a `daemon-reload` does.

use std::path::Path;

use anyhow::Result;

use super::Outcome;
use crate::generator::{self, OutputDirs};

pub fn exec(root: &Path, outdir: &Path) -> Result<Outcome> {
    // OUTDIR itself may be new, but not a whole path (a typo would make it at /).
    let parent = outdir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if outdir.exists() && !outdir.is_dir() {
        log::error!("{}: not a directory", outdir.display());
        return Ok(Outcome::Failed);
    }
    if !outdir.exists() && !parent.is_dir() {
        let what = if parent.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        log::error!(
            "{}: its parent {} {what} (OUTDIR may be new, its parent not)",
            outdir.display(),
            parent.display()
        );
        return Ok(Outcome::Failed);
    }
    let networkd = outdir.join("network");
    let targets = generator::Targets {
        networkd: networkd.clone(),
        keep: outdir.join("kept"),
        left_bridges: outdir.join("bridges-left"),
        claims: outdir.join("kept").join("claims.json"),
        every_link: true,
    };
    // Run again into the same OUTDIR, as on a daemon-reload: the earlier run's units go (its
    // networkd files and record stay, as /run's do).
    generator::clear_previous(outdir, &targets.keep);
    let report = generator::run(root, &OutputDirs::single(outdir), &targets);
    println!(
        "{} VM(s), {} container(s), {} link unit(s) generated in {} (networkd files in {}); {} file(s) skipped",
        report.vms,
        report.containers,
        report.links,
        outdir.display(),
        networkd.display(),
        report.skipped_files
    );
    for p in &report.removed_stale {
        println!("removed stale {}", p.display());
    }
    Ok(if report.errors.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}
