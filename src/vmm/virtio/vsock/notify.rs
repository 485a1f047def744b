//! The sd_notify service inside the VMM: a guest connection to host port
//! [`crate::vmm::spec::NOTIFY_PORT`] ends here instead of at a Unix socket. systemd in the
//! guest (credential `vmm.notify_socket=vsock-stream:2:<port>`) connects, writes one
//! message of newline-separated assignments (`READY=1`, `STATUS=...`) and closes, as
//! systemd-vmspawn's `--notify-ready` expects. One message per connection, at most
//! [`NOTIFY_MAX`] bytes; a longer one resets the connection and is ignored.

use std::io::ErrorKind;

use super::conn::HostStream;

/// Longest message (systemd-vmspawn's limit: PIPE_BUF).
pub const NOTIFY_MAX: usize = 4096;
/// Longest STATUS= text passed on.
const STATUS_MAX: usize = 200;

/// Collects one message.
#[derive(Debug, Default)]
pub struct NotifySink {
    buf: Vec<u8>,
    complete: bool,
    taken: bool,
}

impl HostStream for NotifySink {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(ErrorKind::WouldBlock.into())
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > NOTIFY_MAX {
            self.buf.clear();
            self.taken = true;
            return Err(std::io::Error::other("notify message too long"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn shutdown_write(&mut self) {
        self.complete = true;
    }

    /// Nothing to close: what the guest sent is read when the connection is dropped.
    fn close(&mut self) {}
}

impl NotifySink {
    /// The message, once: after the guest's shutdown (`closing`: or when the connection ends
    /// in any other way with bytes received).
    pub fn take(&mut self, closing: bool) -> Option<Notification> {
        if self.taken || !(self.complete || closing) || self.buf.is_empty() {
            return None;
        }
        self.taken = true;
        Some(Notification::parse(&std::mem::take(&mut self.buf)))
    }
}

/// What a guest message asks the service manager for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notification {
    /// `READY=1` was in it.
    pub ready: bool,
    /// The first `STATUS=` text (control characters replaced, at most 200 characters).
    pub status: Option<String>,
}

impl Notification {
    /// Splits at `\n` and `\r` like systemd-vmspawn; unknown assignments are ignored.
    pub fn parse(msg: &[u8]) -> Notification {
        let mut n = Notification::default();
        for line in msg.split(|&b| b == b'\n' || b == b'\r') {
            if line == b"READY=1" {
                n.ready = true;
            } else if let Some(v) = line.strip_prefix(b"STATUS=") {
                if n.status.is_none() {
                    let text: String = String::from_utf8_lossy(v)
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .take(STATUS_MAX)
                        .collect();
                    n.status = Some(text);
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_and_the_first_status() {
        let n = Notification::parse(
            b"STATUS=up\x07 now\nX_SYSTEMD_UNIT_ACTIVE=a\r\nREADY=1\nSTATUS=no\n",
        );
        assert!(n.ready);
        assert_eq!(n.status.as_deref(), Some("up  now"));
        assert_eq!(Notification::parse(b"READY=10\n"), Notification::default());
    }

    #[test]
    fn sink_takes_one_bounded_message() {
        let mut s = NotifySink::default();
        assert_eq!(s.write(b"READY=1\n").unwrap(), 8);
        assert_eq!(s.take(false), None, "not complete yet");
        s.shutdown_write();
        assert!(s.take(false).unwrap().ready);
        assert_eq!(s.take(true), None, "only once");
        let mut big = NotifySink::default();
        assert!(big.write(&[b'x'; NOTIFY_MAX + 1]).is_err());
        assert_eq!(big.take(true), None);
    }
}
