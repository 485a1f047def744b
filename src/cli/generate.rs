//! `volt generate`: the generator, run by hand for debugging. It writes only below OUTDIR:
//! unit drop-ins into OUTDIR, networkd files into OUTDIR/network (never into the host's
//! /run/systemd/network), its record of last good units into OUTDIR/kept.

use std::path::Path;

use anyhow::Result;

use super::Outcome;
use crate::generator::{self, OutputDirs};

pub fn exec(root: &Path, outdir: &Path) -> Result<Outcome> {
    let networkd = outdir.join("network");
    let targets = generator::Targets {
        networkd: networkd.clone(),
        keep: outdir.join("kept"),
    };
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
