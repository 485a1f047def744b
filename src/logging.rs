//! Log sinks for Volt's programs, all behind the `log` facade: `/dev/kmsg` for the
//! generator (the journal is not up when generators run), stderr for the CLI.

use std::io::Write;
use std::sync::Mutex;

/// Where log records go.
enum Sink {
    Kmsg(Mutex<std::fs::File>),
    Stderr,
}

struct Logger {
    ident: &'static str,
    sink: Sink,
    level: log::LevelFilter,
}

fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match &self.sink {
            Sink::Kmsg(file) => {
                // One write() per record: kmsg takes each write as one message.
                let line = format!(
                    "<{}>{}[{}]: {}\n",
                    syslog_priority(record.level()),
                    self.ident,
                    std::process::id(),
                    record.args()
                );
                if let Ok(mut f) = file.lock() {
                    if f.write_all(line.as_bytes()).is_err() {
                        let _ = std::io::stderr().write_all(line.as_bytes());
                    }
                }
            }
            Sink::Stderr => {
                let prefix = match record.level() {
                    log::Level::Error => "error: ",
                    log::Level::Warn => "warning: ",
                    _ => "",
                };
                let _ = writeln!(
                    std::io::stderr(),
                    "{}: {prefix}{}",
                    self.ident,
                    record.args()
                );
            }
        }
    }

    fn flush(&self) {}
}

fn level_from_env(default: log::LevelFilter) -> log::LevelFilter {
    std::env::var("VOLT_LOG")
        .or_else(|_| std::env::var("SYSTEMD_LOG_LEVEL"))
        .ok()
        .and_then(|v| match v.as_str() {
            "err" | "error" => Some(log::LevelFilter::Error),
            "warning" | "warn" => Some(log::LevelFilter::Warn),
            "notice" | "info" => Some(log::LevelFilter::Info),
            "debug" => Some(log::LevelFilter::Debug),
            "trace" => Some(log::LevelFilter::Trace),
            _ => None,
        })
        .unwrap_or(default)
}

fn install(logger: Logger) {
    let level = logger.level;
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// Log to `/dev/kmsg` (so lines reach `journalctl -b`), or stderr when kmsg cannot be
/// opened (tests, containers without kmsg).
pub fn init_kmsg(ident: &'static str) {
    let level = level_from_env(log::LevelFilter::Info);
    let sink = match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(f) if std::env::var_os("VOLT_LOG_STDERR").is_none() => Sink::Kmsg(Mutex::new(f)),
        _ => Sink::Stderr,
    };
    install(Logger { ident, sink, level });
}

/// Log to stderr, prefixed with the program name.
pub fn init_stderr(ident: &'static str, verbose: bool) {
    let level = level_from_env(if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    install(Logger {
        ident,
        sink: Sink::Stderr,
        level,
    });
}
