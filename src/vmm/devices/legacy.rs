//! Small PIO devices: the debug-exit port and inert stubs for ports guests probe.

use super::BusDevice;
use crate::vmm::event::{EventSender, VmEvent};

/// Debug-exit port: a byte `n` written here ends the VMM with exit status `n`.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// Width of the debug-exit window (QEMU's `isa-debug-exit` iosize).
pub const DEBUG_EXIT_LEN: u64 = 4;

/// The debug-exit device.
pub struct DebugExit {
    events: EventSender,
}

impl DebugExit {
    /// A device reporting to `events`.
    pub fn new(events: EventSender) -> Self {
        DebugExit { events }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&n) = data.first() {
            self.events.send(VmEvent::GuestExit(n));
        }
    }
}

/// A port range that ignores writes and reads a fixed byte.
pub struct Stub {
    value: u8,
}

impl Stub {
    /// Reads return `value` in every byte.
    pub fn new(value: u8) -> Self {
        Stub { value }
    }
}

impl BusDevice for Stub {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.value);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// Ports that get a [`Stub`]: `(base, len, read value, what)`. The PIC, PIT, speaker port and
/// ELCR are emulated in the kernel and not listed.
pub const STUB_PORTS: &[(u64, u64, u8, &str)] = &[
    (0x70, 2, 0x00, "CMOS/RTC"),
    (0x80, 1, 0x00, "POST code"),
    (0x87, 1, 0x00, "DMA page"),
    (0x92, 1, 0x00, "system control A"),
    (0x2e8, 8, 0xff, "COM4"),
    (0x2f8, 8, 0xff, "COM2"),
    (0x3e8, 8, 0xff, "COM3"),
    (0xcf8, 8, 0xff, "PCI config (no PCI)"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::event::event_channel;

    #[test]
    fn debug_exit_reports_the_byte() {
        let (tx, rx) = event_channel();
        let mut d = DebugExit::new(tx);
        d.write(0, &[3, 0, 0, 0]);
        assert_eq!(rx.try_recv(), Ok(VmEvent::GuestExit(3)));
    }

    #[test]
    fn stub_ports_do_not_overlap() {
        let mut bus = super::super::Bus::new();
        for &(base, len, v, _) in STUB_PORTS {
            bus.insert(
                base,
                len,
                std::sync::Arc::new(std::sync::Mutex::new(Stub::new(v))),
            )
            .unwrap();
        }
        let mut b = [0u8; 4];
        assert!(bus.read(0xcfc, &mut b));
        assert_eq!(b, [0xff; 4]);
    }
}
