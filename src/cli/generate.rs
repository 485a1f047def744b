//! `volt generate`: the generator, run by hand.

use std::path::Path;

use anyhow::Result;

use super::Outcome;
use crate::generator::{self, OutputDirs};

pub fn exec(root: &Path, outdir: &Path) -> Result<Outcome> {
    let out = OutputDirs {
        normal: outdir.to_path_buf(),
        early: outdir.to_path_buf(),
        late: outdir.to_path_buf(),
    };
    let report = generator::run(root, &out);
    println!(
        "{} VM(s), {} link unit(s) generated in {}; {} file(s) skipped",
        report.vms,
        report.links,
        outdir.display(),
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
