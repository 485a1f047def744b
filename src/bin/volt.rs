//! `volt`: validate configs, list VMs, run the generator by hand, manage host links.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Output into a closed pipe (`volt vm list | head -1`) ends the command quietly, as
    // every Unix tool does, instead of a panic on EPIPE.
    // SAFETY: restoring the default disposition of one signal before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
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
