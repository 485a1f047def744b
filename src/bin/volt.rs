//! `volt`: validate configs, list VMs, run the generator by hand, manage host links.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = volt::cli::Opts::parse();
    volt::logging::init_stderr("volt", opts.verbose);
    match volt::cli::run(opts) {
        Ok(volt::cli::Outcome::Ok) => ExitCode::SUCCESS,
        Ok(volt::cli::Outcome::Failed) => ExitCode::FAILURE,
        Ok(volt::cli::Outcome::Config) => ExitCode::from(78),
        Ok(volt::cli::Outcome::Code(c)) => ExitCode::from(c),
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
