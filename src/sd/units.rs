//! The service manager: a unit's state, and start/stop/restart as `systemctl` does them
//! (queue the job, wait for it to finish, report its result).

use futures::StreamExt;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

use super::SdError;

/// A unit's state as `systemctl show` would give it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    pub unit: String,
    /// `loaded`, `not-found`, ...
    pub load: String,
    /// `active`, `inactive`, `activating`, `deactivating`, `failed`, `reloading`.
    pub active: String,
    /// `running`, `dead`, `auto-restart`, ...
    pub sub: String,
    pub main_pid: u32,
    pub n_restarts: u32,
    /// The last run's result: `success`, `exit-code`, `signal`, ...
    pub result: String,
}

impl UnitState {
    pub fn is_active(&self) -> bool {
        self.active == "active" || self.active == "reloading"
    }
}

/// `unit` loaded (on demand) and its object path; errors say `what()` was being done.
async fn load<'c>(
    conn: &'c zbus::Connection,
    unit: &str,
    what: impl Fn() -> String,
) -> Result<(zbus::OwnedObjectPath, UnitProxy<'c>), SdError> {
    let mgr = ManagerProxy::new(conn)
        .await
        .map_err(SdError::call(what()))?;
    let path = mgr
        .load_unit(unit.to_string())
        .await
        .map_err(SdError::call(what()))?;
    let u = UnitProxy::builder(conn)
        .path(path.clone())
        .build()
        .await
        .map_err(SdError::call(what()))?;
    Ok((path, u))
}

/// The state of `unit` (loaded on demand, as `systemctl status` does).
pub fn state(conn: &zbus::Connection, unit: &str) -> Result<UnitState, SdError> {
    zbus::block_on(async {
        let what = || format!("reading the state of {unit}");
        let (path, u) = load(conn, unit, what).await?;
        let s = ServiceProxy::builder(conn)
            .path(path)
            .build()
            .await
            .map_err(SdError::call(what()))?;
        Ok(UnitState {
            unit: unit.to_string(),
            load: u.load_state().await.map_err(SdError::call(what()))?,
            active: u.active_state().await.map_err(SdError::call(what()))?,
            sub: u.sub_state().await.map_err(SdError::call(what()))?,
            main_pid: s.main_pid().await.unwrap_or(0),
            n_restarts: s.n_restarts().await.unwrap_or(0),
            result: s.result().await.unwrap_or_default(),
        })
    })
}

/// What to do with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

impl Verb {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        }
    }
}

/// Queue `verb` for `unit` (mode `replace`) and wait until the job is done, as `systemctl
/// start|stop|restart` does. A job that ends other than `done` is an error naming its result.
pub fn run_job(conn: &zbus::Connection, unit: &str, verb: Verb) -> Result<(), SdError> {
    zbus::block_on(async {
        let what = format!("{} {unit}", verb.as_str());
        let mgr = ManagerProxy::new(conn)
            .await
            .map_err(SdError::call(what.clone()))?;
        // Subscribe before queueing, so the job's end cannot be missed.
        let mut removed = mgr
            .receive_job_removed()
            .await
            .map_err(SdError::call(what.clone()))?;
        let (name, mode) = (unit.to_string(), "replace".to_string());
        let job = match verb {
            Verb::Start => mgr.start_unit(name, mode).await,
            Verb::Stop => mgr.stop_unit(name, mode).await,
            Verb::Restart => mgr.restart_unit(name, mode).await,
        }
        .map_err(SdError::call(what.clone()))?;
        while let Some(signal) = removed.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.job.as_str() == job.as_str() {
                if args.result == "done" {
                    return Ok(());
                }
                return Err(SdError::Job {
                    unit: unit.to_string(),
                    verb: verb.as_str(),
                    result: args.result.clone(),
                });
            }
        }
        Err(SdError::Job {
            unit: unit.to_string(),
            verb: verb.as_str(),
            result: "unknown (the bus connection closed)".into(),
        })
    })
}

/// `systemctl daemon-reload`: systemd reruns the generators and reloads every unit; returns
/// when that is done.
pub fn daemon_reload(conn: &zbus::Connection) -> Result<(), SdError> {
    zbus::block_on(async {
        let what = || "daemon-reload".to_string();
        let mgr = ManagerProxy::new(conn)
            .await
            .map_err(SdError::call(what()))?;
        mgr.reload().await.map_err(SdError::call(what()))
    })
}

/// The invocation ID of `unit`'s current (or last) run, as 32 hex digits, the value of its
/// journal entries' `_SYSTEMD_INVOCATION_ID=`; `None` when it never ran.
pub fn invocation_id(conn: &zbus::Connection, unit: &str) -> Result<Option<String>, SdError> {
    zbus::block_on(async {
        let what = || format!("reading the invocation ID of {unit}");
        let (_, u) = load(conn, unit, what).await?;
        let id = u.invocation_id().await.map_err(SdError::call(what()))?;
        if id.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        Ok(Some(id.iter().map(|b| format!("{b:02x}")).collect()))
    })
}

/// The units matching `patterns` (globs, as `systemctl list-units PATTERN...`) in one of
/// `states` (every loaded one when empty): each with its active state and whether a job is
/// queued for it.
fn list(
    conn: &zbus::Connection,
    states: &[&str],
    patterns: &[&str],
) -> Result<Vec<(String, String, bool)>, SdError> {
    zbus::block_on(async {
        let what = || format!("listing the units {}", patterns.join(" "));
        let mgr = ManagerProxy::new(conn)
            .await
            .map_err(SdError::call(what()))?;
        let units = mgr
            .list_units_by_patterns(
                states.iter().map(|s| s.to_string()).collect(),
                patterns.iter().map(|p| p.to_string()).collect(),
            )
            .await
            .map_err(SdError::call(what()))?;
        Ok(units.into_iter().map(|u| (u.0, u.3, u.7 != 0)).collect())
    })
}

/// The units matching `patterns` (globs, as `systemctl list-units PATTERN...`) that run or
/// are about to run again: active, activating (a restart pending included) or reloading. Not
/// deactivating: a unit on its way down gives its claims up.
pub fn running_units(conn: &zbus::Connection, patterns: &[&str]) -> Result<Vec<String>, SdError> {
    let states = ["active", "activating", "reloading"];
    Ok(list(conn, &states, patterns)?
        .into_iter()
        .map(|u| u.0)
        .collect())
}

/// The units matching `patterns` that are not at rest: every state but inactive and failed
/// (so deactivating, a stop still running its ExecStopPost=, too), and those with a job
/// queued (a start waiting for the units it comes after is still inactive).
pub fn busy_units(conn: &zbus::Connection, patterns: &[&str]) -> Result<Vec<String>, SdError> {
    Ok(list(conn, &[], patterns)?
        .into_iter()
        .filter(|(_, active, job)| *job || !matches!(active.as_str(), "inactive" | "failed"))
        .map(|u| u.0)
        .collect())
}
