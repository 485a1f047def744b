//! COM1: a 16550A UART (vm-superio) whose output goes to stdout line by line and optionally
//! to a file. Under systemd, stdout is the journal, so each guest console line becomes one
//! journal entry.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::{BusDevice, IrqLine};
use crate::log_limited;
use crate::vmm::ratelimit::LogLimiter;

/// COM1 I/O base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1 register window length.
pub const COM1_LEN: u64 = 8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;
/// Longest line buffered before it is written out anyway.
const MAX_LINE: usize = 4096;

/// Failure while creating the console.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The serial log file could not be opened.
    #[error("cannot open serial output file {path}")]
    OpenFile {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The interrupt eventfd could not be created.
    #[error("eventfd for the serial interrupt failed")]
    EventFd(#[source] std::io::Error),
}

/// Line-buffered console sink: stdout plus an optional file.
pub struct ConsoleOut {
    line: Vec<u8>,
    file: Option<File>,
    stdout: bool,
    errors: LogLimiter,
}

impl ConsoleOut {
    /// A sink writing to stdout (when `stdout`) and to `file` (appending) when given.
    pub fn new(stdout: bool, file: Option<&Path>) -> Result<Self, SerialError> {
        let file = file
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| SerialError::OpenFile {
                        path: p.display().to_string(),
                        source,
                    })
            })
            .transpose()?;
        Ok(ConsoleOut {
            line: Vec::with_capacity(256),
            file,
            stdout,
            errors: LogLimiter::new(),
        })
    }

    /// Writes out a partial last line (at VM end).
    pub fn finish(&mut self) {
        self.emit();
    }

    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&self.line).and_then(|_| out.flush()) {
                log_limited!(
                    self.errors,
                    log::Level::Warn,
                    "writing guest console to stdout failed: {e}"
                );
            }
        }
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(&self.line) {
                log_limited!(
                    self.errors,
                    log::Level::Warn,
                    "writing guest console to its file failed: {e}"
                );
            }
        }
        self.line.clear();
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            match b {
                b'\r' => {}
                b'\n' => {
                    self.line.push(b'\n');
                    self.emit();
                }
                _ => {
                    self.line.push(b);
                    if self.line.len() >= MAX_LINE {
                        self.emit();
                    }
                }
            }
        }
        Ok(buf.len())
    }

    /// A no-op: the UART flushes after every byte, and a console line must reach stdout
    /// (the journal) whole. Lines go out at `\n`, [`MAX_LINE`] or [`ConsoleOut::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The COM1 device on the PIO bus.
pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, ConsoleOut>,
    errors: LogLimiter,
}

impl SerialDevice {
    /// COM1 raising `irq` and writing to `out`.
    pub fn new(irq: IrqLine, out: ConsoleOut) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
            errors: LogLimiter::new(),
        }
    }

    /// The interrupt line (to register as irqfd).
    pub fn irq(&self) -> &IrqLine {
        self.uart.interrupt_evt()
    }

    /// Writes out a partial last line.
    pub fn flush(&mut self) {
        self.uart.writer_mut().finish();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= COM1_LEN {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            log_limited!(self.errors, log::Level::Warn, "serial write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_writes_whole_lines_to_the_file() {
        let path = std::env::temp_dir().join(format!("volt-serial-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut out = ConsoleOut::new(false, Some(&path)).unwrap();
        out.write_all(b"hello\r\nwor").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        out.write_all(b"ld\n").unwrap();
        out.write_all(b"tail").unwrap();
        out.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\nworld\n");
        out.finish();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "hello\nworld\ntail"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn uart_transmits_through_thr() {
        let path = std::env::temp_dir().join(format!("volt-serial-thr-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let out = ConsoleOut::new(false, Some(&path)).unwrap();
        let mut dev = SerialDevice::new(IrqLine::new(4).unwrap(), out);
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ok\n");
        std::fs::remove_file(&path).unwrap();
    }
}
