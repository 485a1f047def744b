//! systemd-machined: register a running VM (`RegisterMachineWithNetwork`, class `vm`, the
//! leader's unit is the machine's unit), so `machinectl list|status|stop|terminate` see it.
//! machined forgets it when the unit stops. Containers register themselves (systemd-nspawn
//! `--register=yes`).

use super::{available, SdError};

/// machined's bus name.
pub const BUS_NAME: &str = "org.freedesktop.machine1";

/// What a machine is, as machined knows it.
#[derive(Debug, Clone)]
pub struct Machine<'a> {
    pub name: &'a str,
    pub uuid: [u8; 16],
    /// `vm` or `container`.
    pub class: &'a str,
    /// The process that runs it; machined finds its unit from its cgroup.
    pub leader: u32,
    /// Host-side interfaces (TAPs) that belong to it.
    pub ifindices: Vec<i32>,
}

/// Whether machined answers: running, or activatable and activated by this call (a masked or
/// missing machined does not answer).
pub fn reachable(conn: &zbus::Connection) -> Result<bool, SdError> {
    use zbus_systemd::machine1::ManagerProxy;
    if !available(conn, BUS_NAME)? {
        return Ok(false);
    }
    zbus::block_on(async {
        let mgr = ManagerProxy::new(conn)
            .await
            .map_err(SdError::call("connecting to machined"))?;
        Ok(mgr.list_machines().await.is_ok())
    })
}

/// Register `m`. A machine of the same name left over from the previous run of the same
/// unit (a restart after a crash: machined keeps it while the unit is active) is
/// unregistered first.
pub fn register(conn: &zbus::Connection, m: &Machine) -> Result<(), SdError> {
    use zbus_systemd::machine1::ManagerProxy;
    zbus::block_on(async {
        let mgr = ManagerProxy::new(conn)
            .await
            .map_err(SdError::call("connecting to machined"))?;
        let call = || {
            mgr.register_machine_with_network(
                m.name.to_string(),
                m.uuid.to_vec(),
                "volt".into(),
                m.class.into(),
                m.leader,
                String::new(),
                m.ifindices.clone(),
            )
        };
        match call().await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.machine1.MachineExists" =>
            {
                log::info!("{}: replacing the registration of its previous run", m.name);
                mgr.unregister_machine(m.name.to_string())
                    .await
                    .map_err(SdError::call(format!("UnregisterMachine({})", m.name)))?;
                call().await.map(|_| ()).map_err(SdError::call(format!(
                    "RegisterMachineWithNetwork({})",
                    m.name
                )))
            }
            Err(e) => Err(SdError::Call {
                what: format!("RegisterMachineWithNetwork({})", m.name),
                source: e,
            }),
        }
    })
}

/// Forget machine `name` if machined still has it for `unit` (left over from the unit's
/// previous run, which a crash ended: machined keeps it while the unit restarts), so the new
/// run can register again. A machine of another unit is left alone.
pub fn unregister_leftover(
    conn: &zbus::Connection,
    name: &str,
    unit: &str,
) -> Result<bool, SdError> {
    use zbus_systemd::machine1::{MachineProxy, ManagerProxy};
    zbus::block_on(async {
        let what = || format!("looking up machine {name}");
        let mgr = ManagerProxy::new(conn)
            .await
            .map_err(SdError::call(what()))?;
        let Ok(path) = mgr.get_machine(name.to_string()).await else {
            return Ok(false);
        };
        let m = MachineProxy::builder(conn)
            .path(path)
            .build()
            .await
            .map_err(SdError::call(what()))?;
        if m.unit().await.map_err(SdError::call(what()))? != unit {
            return Ok(false);
        }
        mgr.unregister_machine(name.to_string())
            .await
            .map_err(SdError::call(format!("UnregisterMachine({name})")))?;
        Ok(true)
    })
}
