//! A minimal i8042 keyboard controller at ports 0x60/0x64.
//!
//! Enough for a guest to reset the machine (`0xFE` to the command port ends the VM cleanly)
//! and for the VMM to deliver Ctrl-Alt-Del (set-1 scancodes on port 0x60, IRQ 1), which is
//! how `systemctl stop` asks the guest to power off. It answers the controller and keyboard
//! commands Linux's i8042/atkbd drivers issue while probing.

use std::collections::VecDeque;

use super::{BusDevice, IrqLine};
use crate::log_limited;
use crate::vmm::event::{EventSender, VmEvent};
use crate::vmm::ratelimit::LogLimiter;

/// Data port.
pub const I8042_DATA_PORT: u64 = 0x60;
/// Status/command port.
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// Keyboard IRQ.
pub const I8042_KBD_IRQ: u32 = 1;

/// Status: output buffer full.
const SB_OUT_FULL: u8 = 0x01;
/// Status: system flag (self-test passed).
const SB_SYSTEM: u8 = 0x04;
/// Status: last write was a command.
const SB_CMD: u8 = 0x08;
/// Status: keyboard not inhibited.
const SB_KBD_ENABLED: u8 = 0x10;

/// Command byte: keyboard interrupt enabled.
const CB_KBD_INT: u8 = 0x01;
/// Command byte: system flag.
const CB_POST_OK: u8 = 0x04;
/// Command byte: scancode translation to set 1.
const CB_TRANSLATE: u8 = 0x40;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
const CMD_RESET_CPU: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_SELF_TEST_OK: u8 = 0xaa;

/// Ctrl-Alt-Del as set-1 make codes followed by the break codes.
pub const CTRL_ALT_DEL: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Bound on queued output bytes (a guest that never reads must not grow it).
const MAX_QUEUED: usize = 64;

/// The i8042 controller.
pub struct I8042 {
    out: VecDeque<u8>,
    command_byte: u8,
    pending: Option<u8>,
    last_was_cmd: bool,
    irq: IrqLine,
    events: EventSender,
    errors: LogLimiter,
}

impl I8042 {
    /// A controller raising `irq` (GSI 1) and reporting resets to `events`.
    pub fn new(irq: IrqLine, events: EventSender) -> Self {
        I8042 {
            out: VecDeque::new(),
            command_byte: CB_KBD_INT | CB_POST_OK | CB_TRANSLATE,
            pending: None,
            last_was_cmd: false,
            irq,
            events,
            errors: LogLimiter::new(),
        }
    }

    /// The keyboard interrupt line (to register as irqfd).
    pub fn irq(&self) -> &IrqLine {
        &self.irq
    }

    /// Queues Ctrl-Alt-Del and raises IRQ 1.
    pub fn trigger_ctrl_alt_del(&mut self) {
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
        self.kick();
    }

    fn push(&mut self, b: u8) {
        if self.out.len() < MAX_QUEUED {
            self.out.push_back(b);
        }
    }

    /// Raises IRQ 1 if a byte waits and the guest enabled keyboard interrupts.
    fn kick(&mut self) {
        if !self.out.is_empty() && self.command_byte & CB_KBD_INT != 0 {
            if let Err(e) = self.irq.raise() {
                log_limited!(
                    self.errors,
                    log::Level::Warn,
                    "raising the i8042 interrupt failed: {e}"
                );
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = SB_SYSTEM | SB_KBD_ENABLED;
        if !self.out.is_empty() {
            s |= SB_OUT_FULL;
        }
        if self.last_was_cmd {
            s |= SB_CMD;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_cmd = true;
        match cmd {
            CMD_RESET_CPU => self.events.send(VmEvent::GuestReset),
            CMD_READ_CTR => self.push(self.command_byte),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUTBUF => self.pending = Some(cmd),
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            // No aux port: its test reports "clock line stuck low".
            CMD_AUX_TEST => self.push(0x01),
            CMD_READ_OUTP => self.push(0x01),
            CMD_KBD_DISABLE | CMD_KBD_ENABLE | CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            _ => {}
        }
        self.kick();
    }

    fn data(&mut self, v: u8) {
        self.last_was_cmd = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.command_byte = v,
            Some(CMD_WRITE_OUTP) => {
                // Output port bit 0 low resets the CPU.
                if v & 1 == 0 {
                    self.events.send(VmEvent::GuestReset);
                }
            }
            Some(CMD_WRITE_KBD_OUTBUF) => self.push(v),
            _ => {
                // A keyboard command: acknowledge; reset also reports self-test success.
                self.push(KBD_ACK);
                if v == KBD_RESET {
                    self.push(KBD_SELF_TEST_OK);
                }
            }
        }
        self.kick();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => {
                let v = self.out.pop_front().unwrap_or(0);
                self.kick();
                v
            }
            4 => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.data(v),
            4 => self.command(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::event::event_channel;

    fn dev() -> (I8042, std::sync::mpsc::Receiver<VmEvent>) {
        let (tx, rx) = event_channel();
        (I8042::new(IrqLine::new(1).unwrap(), tx), rx)
    }

    fn read(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_requests_vm_reset() {
        let (mut d, rx) = dev();
        d.write(4, &[0xfe]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::GuestReset));
    }

    #[test]
    fn ctrl_alt_del_is_queued_with_interrupt() {
        let (mut d, _rx) = dev();
        assert_eq!(read(&mut d, 4) & SB_OUT_FULL, 0);
        d.trigger_ctrl_alt_del();
        assert!(d.irq().eventfd().read().unwrap() >= 1);
        let mut got = vec![];
        while read(&mut d, 4) & SB_OUT_FULL != 0 {
            got.push(read(&mut d, 0));
        }
        assert_eq!(got, CTRL_ALT_DEL);
    }

    #[test]
    fn probe_commands_answer() {
        let (mut d, _rx) = dev();
        d.write(4, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, 0), 0x55);
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0x00]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, 0), 0x00);
        // Interrupts now disabled: Ctrl-Alt-Del is queued without an interrupt.
        while d.irq().eventfd().read().is_ok() {}
        d.trigger_ctrl_alt_del();
        assert!(d.irq().eventfd().read().is_err());
        assert_eq!(read(&mut d, 0), 0x1d);
        d.write(0, &[KBD_RESET]);
    }
}
