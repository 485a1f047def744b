//! `volt`: validate configs, list VMs, run the generator by hand, manage host links.

use std::process::ExitCode;

use clap::Parser;

/// Whether stdout is the journal stream systemd connected us to (`$JOURNAL_STREAM` names its
/// device and inode, as systemd.exec(5) says to check).
fn stdout_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    // SAFETY: fstat writes into a zeroed stat struct of the right size.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 1 may be closed; fstat then fails and we say no.
    if unsafe { libc::fstat(1, &mut st) } != 0 {
        return false;
    }
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

fn main() -> ExitCode {
    // A reader that closes the pipe early (`volt vm list | head -1`) ends us quietly, as it
    // ends `ls`: SIGPIPE's default action, instead of Rust's ignored SIGPIPE and a panic in
    // println!. Not when stdout is the journal: a journald restart must not kill a link owner.
    if !stdout_is_journal() {
        // SAFETY: setting a signal's disposition to its default before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // Shell completion (the installed scripts run `COMPLETE=<shell> volt -- <words>`): answer
    // and exit.
    clap_complete::CompleteEnv::with_factory(|| {
        <volt::cli::Opts as clap::CommandFactory>::command()
    })
    .complete();
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
