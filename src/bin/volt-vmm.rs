//! `volt-vmm`: runs one KVM microVM in the foreground until it ends. Parses its command line
//! and hands over to `volt::vmm::launch` (exit statuses documented there; 2 for usage errors).

use std::process::ExitCode;

use clap::Parser;
use volt::vmm::cli::VmmCli;
use volt::vmm::launch;

fn main() -> ExitCode {
    match VmmCli::try_parse() {
        Ok(cli) => ExitCode::from(launch::main(&cli)),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(launch::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
