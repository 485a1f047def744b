//! volt-generator: systemd generator for Volt VMs. See systemd.generator(7).
//!
//! argv: `normal-dir [early-dir late-dir]`. Reads `$VOLT_ROOT` (default `/`). Logs to
//! /dev/kmsg or the journal (to stderr when run by hand at a terminal). Exit status 0 when
//! every file was good, 1 when any was skipped or a write failed (the good VMs are generated
//! either way), 2 on bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    volt::logging::init_generator("volt-generator");
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let Some(out) = volt::generator::OutputDirs::from_args(&args) else {
        log::error!("usage: volt-generator NORMAL-DIR [EARLY-DIR LATE-DIR]");
        return ExitCode::from(2);
    };
    let root = volt::config::root_from_env();
    let targets = volt::generator::Targets::under_root(&root);
    let report = volt::generator::run(&root, &out, &targets);
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
