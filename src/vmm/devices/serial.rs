//! COM1: a 16550A UART (vm-superio) with both directions.
//!
//! Output, byte by byte as the guest writes THR, goes to three places: whole lines to the
//! log ([`LineSink`]: journal entries of their own under systemd, stdout otherwise), whole
//! lines to an optional file, and every byte unchanged to the attached console client
//! ([`OutputQueue`], bounded, never blocking the vCPU). Input comes from the console server
//! through [`SerialDevice::enqueue_input`] into the 64-byte receive FIFO; the UART signals
//! [`SerialDevice::input_room`] when the guest has emptied it.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::coalesced::{Poker, Switch};
use super::{BusDevice, IrqLine};
use crate::log_limited;
use crate::logging::JournalSocket;
use crate::vmm::console::output::OutputQueue;
use crate::vmm::ratelimit::{Allowed, LogLimiter, TokenBucket};

/// COM1 I/O base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1 register window length.
pub const COM1_LEN: u64 = 8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;
/// Longest line buffered before it is written out anyway.
const MAX_LINE: usize = 4096;
/// Guest console lines let into the journal per [`JOURNAL_WINDOW`] (a kernel's boot
/// messages pass; a guest printing in a loop is cut and the cut counted).
const JOURNAL_BURST: u32 = 1000;
/// See [`JOURNAL_BURST`].
const JOURNAL_WINDOW: Duration = Duration::from_secs(5);
/// Guest console bytes let into the journal at once (a kernel's boot messages, with room)
/// and per second after that: lines of any length, in a loop, cannot rotate the host's
/// journal (other workloads' and the host's own entries) out.
const JOURNAL_BYTES_BURST: u64 = 1 << 20;
/// See [`JOURNAL_BYTES_BURST`].
const JOURNAL_BYTES_PER_SEC: u64 = 4096;
/// `SYSLOG_IDENTIFIER` of guest console lines in the journal (the VMM's own are `volt-vmm`).
pub const GUEST_IDENTIFIER: &str = "volt-guest";

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

/// Where whole guest console lines go.
pub enum LineSink {
    /// Nowhere (tests).
    None,
    /// Stdout, unlimited (a terminal or a pipe the caller reads).
    Stdout,
    /// journald's native socket: one entry per line with `SYSLOG_IDENTIFIER=volt-guest`,
    /// `VOLT_VM=` and `VOLT_UUID=`, rate-limited.
    Journal {
        sock: JournalSocket,
        vm: String,
        uuid: String,
        limiter: LogLimiter,
        bytes: TokenBucket,
        /// Lines the bytes budget cut since the last one logged.
        cut: u64,
    },
}

impl LineSink {
    /// The journal when stdout is a journal stream (under systemd), else stdout.
    pub fn for_vm(vm: &str, uuid: &str) -> LineSink {
        if crate::logging::stdout_is_journal() {
            if let Ok(sock) = JournalSocket::new() {
                return LineSink::Journal {
                    sock,
                    vm: vm.to_string(),
                    uuid: uuid.to_string(),
                    limiter: LogLimiter::with_limits(JOURNAL_BURST, JOURNAL_WINDOW),
                    bytes: TokenBucket::with_burst(
                        JOURNAL_BYTES_PER_SEC,
                        JOURNAL_BYTES_BURST,
                        Instant::now(),
                    ),
                    cut: 0,
                };
            }
        }
        LineSink::Stdout
    }

    fn emit(&mut self, line: &[u8], errors: &mut LogLimiter) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        match self {
            LineSink::None => {}
            LineSink::Stdout => {
                let mut out = std::io::stdout().lock();
                let r = out
                    .write_all(line)
                    .and_then(|_| out.write_all(b"\n"))
                    .and_then(|_| out.flush());
                if let Err(e) = r {
                    log_limited!(
                        errors,
                        log::Level::Warn,
                        "writing guest console to stdout failed: {e}"
                    );
                }
            }
            LineSink::Journal {
                sock,
                vm,
                uuid,
                limiter,
                bytes,
                cut,
            } => {
                let Some(suppressed) =
                    journal_admits(limiter, bytes, cut, line.len(), Instant::now())
                else {
                    return;
                };
                let mut fields: Vec<(&str, &[u8])> = vec![
                    ("PRIORITY", b"6"),
                    ("SYSLOG_IDENTIFIER", GUEST_IDENTIFIER.as_bytes()),
                    ("VOLT_VM", vm.as_bytes()),
                ];
                if !uuid.is_empty() {
                    fields.push(("VOLT_UUID", uuid.as_bytes()));
                }
                if suppressed > 0 {
                    let note = format!(
                        "{suppressed} guest console lines not logged (more than {JOURNAL_BURST} lines in {}s, or {} KiB at once and {} KiB/s after)",
                        JOURNAL_WINDOW.as_secs(),
                        JOURNAL_BYTES_BURST >> 10,
                        JOURNAL_BYTES_PER_SEC >> 10
                    );
                    let mut f = fields.clone();
                    f.push(("MESSAGE", note.as_bytes()));
                    let _ = sock.send(&f);
                }
                fields.push(("MESSAGE", line));
                if let Err(e) = sock.send(&fields) {
                    log_limited!(
                        errors,
                        log::Level::Warn,
                        "writing guest console to the journal failed: {e}"
                    );
                }
            }
        }
    }
}

/// Whether a guest console line of `len` bytes goes into the journal: within the lines'
/// window and the bytes' budget. `Some(n)`: yes, and `n` lines were cut since the last one.
fn journal_admits(
    lines: &mut LogLimiter,
    bytes: &mut TokenBucket,
    cut: &mut u64,
    len: usize,
    now: Instant,
) -> Option<u64> {
    // The bytes first: a line they cut takes no place in the lines' window.
    if bytes.wait_for(len as u64, now) > Duration::ZERO {
        *cut += 1;
        return None;
    }
    match lines.check() {
        Allowed::No => None,
        Allowed::Yes { suppressed } => {
            bytes.take(len as u64);
            Some(suppressed + std::mem::take(cut))
        }
    }
}

/// MCR bit 4: loopback mode (what the guest transmits comes back as input; the UART takes no
/// input from outside).
const MCR_LOOP: u8 = 0x10;

/// Most a console file (`--serial-file`) grows to: a guest printing in a loop must not fill
/// the host's disk. Past it, one line says so and the rest of the output is not written.
pub const FILE_LIMIT: u64 = 64 << 20;

/// The UART's output side: line-buffered sinks plus the raw byte stream to a console client.
pub struct ConsoleOut {
    line: Vec<u8>,
    file: Option<File>,
    /// Bytes the file may still take ([`FILE_LIMIT`] in all, what it held counted).
    file_room: u64,
    sink: LineSink,
    client: Option<Arc<OutputQueue>>,
    errors: LogLimiter,
}

impl ConsoleOut {
    /// Lines to `sink` and to `file` (appending) when given; raw bytes to `client`.
    pub fn new(
        sink: LineSink,
        file: Option<&Path>,
        client: Option<Arc<OutputQueue>>,
    ) -> Result<Self, SerialError> {
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
        let held = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Ok(ConsoleOut {
            line: Vec::with_capacity(256),
            file,
            file_room: FILE_LIMIT.saturating_sub(held),
            sink,
            client,
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
        self.sink.emit(&self.line, &mut self.errors);
        if let Some(f) = &mut self.file {
            let r = if (self.line.len() as u64) < self.file_room {
                self.file_room -= self.line.len() as u64;
                f.write_all(&self.line)
            } else {
                // Full: say so once in the file and the log, then write nothing more there.
                log::warn!(
                    "the guest console file reached its limit of {FILE_LIMIT} bytes; the rest of the console output is not written there"
                );
                let note = format!(
                    "\n[volt: the guest console reached this file's limit of {FILE_LIMIT} bytes; the rest is not written]\n"
                );
                let r = f.write_all(note.as_bytes());
                self.file = None;
                r
            };
            if let Err(e) = r {
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
        if let Some(c) = &self.client {
            c.push(buf);
        }
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

    /// A no-op: the UART flushes after every byte, and a console line must reach the log
    /// whole. Lines go out at `\n`, [`MAX_LINE`] or [`ConsoleOut::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Signals an eventfd when the guest has read the receive FIFO empty.
pub struct InputEvents {
    room: Arc<EventFd>,
}

impl SerialEvents for InputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.room.write(1);
    }
}

/// The COM1 device on the PIO bus.
pub struct SerialDevice {
    uart: Serial<IrqLine, InputEvents, ConsoleOut>,
    room: Arc<EventFd>,
    errors: LogLimiter,
    /// THR writes queued by KVM instead of exiting, while the guest does not wait for the
    /// THR-empty interrupt (see [`super::coalesced`]).
    zone: Option<Box<dyn Switch>>,
    /// Wakes the ring's flusher when input arrives (the guest's echo is queued).
    poker: Option<Poker>,
    /// The guest's LCR (its DLAB bit decides what offset 1 is) and IER, as written.
    lcr: u8,
    ier: u8,
}

/// LCR bit 7: offsets 0 and 1 are the divisor latch.
const LCR_DLAB: u8 = 0x80;
/// IER bit 1: interrupt when the transmit holding register is empty.
const IER_THRI: u8 = 0x02;

impl SerialDevice {
    /// COM1 raising `irq` and writing to `out`.
    pub fn new(irq: IrqLine, out: ConsoleOut) -> Result<Self, SerialError> {
        let room = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?);
        let events = InputEvents { room: room.clone() };
        Ok(SerialDevice {
            uart: Serial::with_events(irq, events, out),
            room,
            errors: LogLimiter::new(),
            zone: None,
            poker: None,
            lcr: 0,
            ier: 0,
        })
    }

    /// Let KVM queue THR writes in `zone` whenever the guest does not wait for the THR-empty
    /// interrupt.
    pub fn coalesce(&mut self, zone: Box<dyn Switch>) {
        self.zone = Some(zone);
        self.update_zone();
    }

    /// Wake `poker` whenever input is put into the receive FIFO.
    pub fn poke_on_input(&mut self, poker: Poker) {
        self.poker = Some(poker);
    }

    /// Whether THR writes are queued by KVM now.
    pub fn coalescing(&self) -> bool {
        self.zone.as_ref().is_some_and(|z| z.is_on())
    }

    fn update_zone(&mut self) {
        let want = self.ier & IER_THRI == 0;
        if let Some(z) = &mut self.zone {
            if let Err(e) = z.set(want) {
                // Off failed: THR-empty interrupts come only when the ring is replayed.
                log_limited!(
                    self.errors,
                    log::Level::Warn,
                    "cannot turn coalesced THR writes {}: {e}",
                    if want { "on" } else { "off" }
                );
            }
        }
    }

    /// The interrupt line (to register as irqfd).
    pub fn irq(&self) -> &IrqLine {
        self.uart.interrupt_evt()
    }

    /// Signalled when the guest has emptied the receive FIFO (room for more input).
    pub fn input_room(&self) -> Arc<EventFd> {
        self.room.clone()
    }

    /// Puts as much of `input` into the receive FIFO as fits (raising the interrupt the
    /// guest enabled); returns how many bytes were taken (0 when the FIFO is full).
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if input.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => {
                if let Some(p) = &self.poker {
                    p.poke();
                }
                n
            }
            Err(e) => {
                log_limited!(self.errors, log::Level::Warn, "serial input failed: {e:?}");
                0
            }
        }
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
        match offset {
            3 => self.lcr = data[0],
            1 if self.lcr & LCR_DLAB == 0 => {
                self.ier = data[0];
                self.update_zone();
            }
            // Out of loopback mode: the UART takes input again. Input refused meanwhile waits
            // in the console for `room`, which only the guest draining the FIFO signals, and
            // it may have been empty all along (Linux's 8250 probe loops the UART at boot).
            4 if data[0] & MCR_LOOP == 0 && self.uart.fifo_capacity() > 0 => {
                let _ = self.room.write(1);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "serial_tests.rs"]
mod tests;
