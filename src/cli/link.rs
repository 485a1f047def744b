//! `volt link run|up|down`: what `volt-tap@<link>.service` and `volt-veth@<link>.service` run.
//! Thin: the policy is `crate::attach`.

use std::path::Path;

use anyhow::Result;

use super::Outcome;
use crate::attach::{Attach, AttachError, Watch};

fn report(at: &Attach, e: &AttachError) {
    if matches!(e, AttachError::Unknown { .. }) {
        for err in at.errors() {
            log::error!("{}", err.report());
        }
    }
    log::error!("{}", crate::error_chain(e));
}

/// Bring the link up (and record it).
pub fn up(root: &Path, name: &str) -> Result<Outcome> {
    let at = Attach::load(root);
    match at.up(name) {
        Ok(_) => Ok(Outcome::Ok),
        Err(e) => {
            report(&at, &e);
            Ok(Outcome::Failed)
        }
    }
}

/// Tear the link down, collecting every failure; refuse links Volt does not own.
pub fn down(root: &Path, name: &str) -> Result<Outcome> {
    let at = Attach::load(root);
    match at.down(name) {
        Ok(()) => Ok(Outcome::Ok),
        Err(e) => {
            report(&at, &e);
            Ok(Outcome::Failed)
        }
    }
}

/// `volt link run`: bring the link up, tell systemd it is ready, then stay until the link is
/// deleted (exit 1: the owner unit fails and `BindsTo=` stops the workload; a VM's address
/// lease is released) or systemd stops us (exit 0; `ExecStopPost=volt link down` tears down).
pub fn run(root: &Path, name: &str) -> Result<Outcome> {
    let at = Attach::load(root);
    let ready = |r: &crate::attach::LinkRecord| {
        let status = format!(
            "{name}: host link of {} {} NIC {}",
            r.kind, r.workload, r.nic
        );
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
    };
    match at.run(name, &ready) {
        Ok(Watch::Stopped) => Ok(Outcome::Ok),
        Ok(Watch::Deleted) => {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                "{name} was deleted"
            ))]);
            Ok(Outcome::Failed)
        }
        Err(e) => {
            report(&at, &e);
            Ok(Outcome::Failed)
        }
    }
}
