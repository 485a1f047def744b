//! systemd's own services over D-Bus, for the CLI: the service manager (start, stop, restart
//! and the state of Volt's units) and systemd-machined (registering VMs so `machinectl` shows
//! them). Mechanism only; the CLI decides what to call.

pub mod machined;
pub mod units;

#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error("cannot connect to the system bus")]
    Bus(#[source] zbus::Error),
    #[error("{service} is not available on the system bus ({name} has no owner and cannot be activated)")]
    Unavailable {
        service: &'static str,
        name: &'static str,
    },
    #[error("{what} failed")]
    Call {
        what: String,
        #[source]
        source: zbus::Error,
    },
    #[error("{unit}: the {verb} job ended with result {result:?}; see journalctl -u {unit}")]
    Job {
        unit: String,
        verb: &'static str,
        result: String,
    },
}

impl SdError {
    pub(crate) fn call(what: impl Into<String>) -> impl FnOnce(zbus::Error) -> SdError {
        let what = what.into();
        move |source| SdError::Call { what, source }
    }
}

/// A system bus connection.
pub fn system_bus() -> Result<zbus::Connection, SdError> {
    zbus::block_on(zbus::Connection::system()).map_err(SdError::Bus)
}

/// Whether `name` has an owner on the bus or can be bus-activated.
pub fn available(conn: &zbus::Connection, name: &'static str) -> Result<bool, SdError> {
    zbus::block_on(async {
        let dbus = zbus::fdo::DBusProxy::new(conn)
            .await
            .map_err(SdError::Bus)?;
        let bus_name = zbus::names::BusName::try_from(name).map_err(SdError::Bus)?;
        if dbus
            .name_has_owner(bus_name)
            .await
            .map_err(|e| SdError::Bus(e.into()))?
        {
            return Ok(true);
        }
        let activatable = dbus
            .list_activatable_names()
            .await
            .map_err(|e| SdError::Bus(e.into()))?;
        Ok(activatable.iter().any(|n| n.as_str() == name))
    })
}
