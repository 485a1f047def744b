//! Log sinks for Volt's programs, all behind the `log` facade: `/dev/kmsg` for the
//! generator (the journal is not up when generators run), stderr for the CLI.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// Where log records go.
enum Sink {
    /// journald's native socket, written without blocking (never waits on another process).
    Journal(std::os::unix::net::UnixDatagram),
    Kmsg(Mutex<std::fs::File>),
    Stderr,
}

/// journald's native protocol socket.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// One native-protocol datagram; values are single-line (newlines become spaces).
fn journal_datagram(ident: &str, priority: u8, message: &str) -> Vec<u8> {
    let message = message.replace('\n', " ");
    format!(
        "PRIORITY={priority}\nSYSLOG_IDENTIFIER={ident}\nSYSLOG_PID={}\nMESSAGE={message}\n",
        std::process::id()
    )
    .into_bytes()
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
            Sink::Journal(sock) => {
                let dgram = journal_datagram(
                    self.ident,
                    syslog_priority(record.level()),
                    &record.args().to_string(),
                );
                if sock.send_to(&dgram, JOURNAL_SOCKET).is_err() {
                    let _ = writeln!(std::io::stderr(), "{}: {}", self.ident, record.args());
                }
            }
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

/// Logging for a generator: lines must reach `journalctl -b`. At boot journald is not up
/// and its socket does not exist yet: log to `/dev/kmsg`, which journald reads later. On
/// `daemon-reload` journald's socket exists: send it non-blocking datagrams (containers have
/// no /dev/kmsg). Otherwise, and when run by hand at a terminal, stderr ($VOLT_LOG_STDERR
/// forces stderr, for tests).
pub fn init_generator(ident: &'static str) {
    let level = level_from_env(log::LevelFilter::Info);
    install(Logger {
        ident,
        sink: generator_sink(),
        level,
    });
}

fn generator_sink() -> Sink {
    // Run by hand at a terminal, the person running it reads the lines there. systemd sets
    // $SYSTEMD_SCOPE for generators (since 251); at boot their stderr may be the console,
    // which is a terminal too but not where the lines belong.
    let by_hand = std::io::stderr().is_terminal() && std::env::var_os("SYSTEMD_SCOPE").is_none();
    if std::env::var_os("VOLT_LOG_STDERR").is_some() || by_hand {
        return Sink::Stderr;
    }
    if std::fs::symlink_metadata(JOURNAL_SOCKET)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
            if sock.set_nonblocking(true).is_ok() {
                return Sink::Journal(sock);
            }
        }
    }
    // Only a real character device: in containers a stray /dev/kmsg may be a plain file.
    let is_chardev = std::fs::metadata("/dev/kmsg")
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()));
    if is_chardev {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            return Sink::Kmsg(Mutex::new(f));
        }
    }
    Sink::Stderr
}

/// Log to stderr, prefixed with the program name.
pub fn init_stderr(ident: &'static str, verbose: bool) {
    // Under systemd (the units' commands) every info line goes to the journal; at a terminal
    // the commands print their own results, so only warnings and errors are logged unless
    // -v.
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let level = level_from_env(if verbose {
        log::LevelFilter::Debug
    } else if under_systemd {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    });
    install(Logger {
        ident,
        sink: Sink::Stderr,
        level,
    });
}

/// One native-protocol journal entry whose values may hold any bytes (newlines included):
/// each field is `NAME\n`, its length as a little-endian u64, the value, `\n`.
pub fn journal_entry(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|(k, v)| k.len() + v.len() + 10).sum());
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// A non-blocking datagram socket to journald's native protocol socket.
pub struct JournalSocket(std::os::unix::net::UnixDatagram);

impl JournalSocket {
    /// An unbound, non-blocking socket (a full journal drops the entry instead of waiting).
    pub fn new() -> std::io::Result<Self> {
        let s = std::os::unix::net::UnixDatagram::unbound()?;
        s.set_nonblocking(true)?;
        Ok(JournalSocket(s))
    }

    /// Sends one entry (see [`journal_entry`]).
    pub fn send(&self, fields: &[(&str, &[u8])]) -> std::io::Result<()> {
        self.0
            .send_to(&journal_entry(fields), JOURNAL_SOCKET)
            .map(|_| ())
    }
}

/// Whether stdout is a journal stream (`$JOURNAL_STREAM` names its device and inode), as
/// under a systemd unit with the default `StandardOutput=journal`.
pub fn stdout_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // /proc/self/fd/1 follows the fd to the socket inode (fstat without unsafe).
    std::fs::metadata("/proc/self/fd/1")
        .map(|m| format!("{}:{}", m.dev(), m.ino()) == stream.to_string_lossy())
        .unwrap_or(false)
}

#[cfg(test)]
mod journal_tests {
    use super::*;

    #[test]
    fn entries_are_binary_safe() {
        let e = journal_entry(&[("MESSAGE", b"a\nb"), ("VOLT_VM", b"web")]);
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\nVOLT_VM\n");
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"web\n");
        assert_eq!(e, want);
    }
}
