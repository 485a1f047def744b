//! systemd integration: `sd_notify` state changes, watchdog pings, and logging to the
//! journal (with `VOLT_VM`/`VOLT_UUID` fields) when stderr is connected to it.

use std::io::Write;
use std::time::Duration;

use log::{LevelFilter, Log, Metadata, Record};
use sd_notify::NotifyState;

/// Sends state changes to the service manager; a no-op outside systemd (`NOTIFY_SOCKET`
/// unset).
#[derive(Debug, Clone)]
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        Notifier {
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            log::warn!("sd_notify to the service manager failed: {e}");
        }
    }

    /// `READY=1` with a `STATUS=` line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=` line.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1` with a `STATUS=` line.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// `WATCHDOG=1`.
    pub fn watchdog_ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// A minimal stderr logger: `<level>: <message>`, prefixed with the VM name.
struct StderrLog {
    prefix: String,
    level: LevelFilter,
}

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = format!(
                "{}{}: {}\n",
                self.prefix,
                r.level().as_str().to_lowercase(),
                r.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Level from `VOLT_LOG` (error, warn, info, debug, trace; default info).
pub fn level_from_env() -> LevelFilter {
    std::env::var("VOLT_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Installs the process logger: journald (native protocol, with `VOLT_VM` and `VOLT_UUID`
/// fields) when stderr is the journal stream, else plain stderr. Returns whether the journal
/// is used. A second call keeps the first logger.
pub fn init_logging(vm_name: &str, uuid: &str, level: LevelFilter) -> bool {
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            let mut fields = vec![("VOLT_VM", vm_name)];
            if !uuid.is_empty() {
                fields.push(("VOLT_UUID", uuid));
            }
            let journal = journal
                .with_extra_fields(fields)
                .with_syslog_identifier("volt-vmm".to_string());
            let limited = crate::vmm::ratelimit::ForeignLimited::new(journal);
            if log::set_boxed_logger(Box::new(limited)).is_ok() {
                log::set_max_level(level);
                return true;
            }
        }
    }
    let logger = crate::vmm::ratelimit::ForeignLimited::new(StderrLog {
        prefix: format!("volt-vmm[{vm_name}]: "),
        level,
    });
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    // What the notifier sends (READY/STATUS/WATCHDOG/STOPPING, and nothing without
    // NOTIFY_SOCKET) is checked on the real binary in tests/vmm_boot.rs
    // (systemd_notifications_ready_status_watchdog_stopping).

    #[test]
    fn watchdog_pings_at_half_the_timeout_and_not_at_all_when_off() {
        let on = Notifier {
            watchdog: Some(Duration::from_secs(10)),
        };
        assert_eq!(on.watchdog_interval(), Some(Duration::from_secs(5)));
        let off = Notifier { watchdog: None };
        assert_eq!(off.watchdog_interval(), None);
    }
}
