//! volt-conformance-guest: drives virtio-mmio devices with the `virtio-drivers` crate (a
//! driver stack nobody in this project wrote) and reports what it saw on the serial port, so
//! the same ELF can be booted under volt-vmm and under QEMU and the two compared.
//!
//! The ring-0 entry stub, linker script and C runtime are the test guest's (tests/guest):
//! Rust runs only at ring 3 (see TESTING.md "Guests"). See README.md for the serial contract.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../../guest/src/entry.rs"]
mod entry;
#[path = "../../guest/src/pvh.rs"]
mod pvh;
#[path = "../../guest/src/rt.rs"]
mod rt;

mod blk;
mod hal;
mod net;
mod pattern;
mod vsock;

use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use pvh::{
    cmdline_of, exit, inb, outb, parse_num, parse_virtio, wait_irq, words, StartInfo,
    VOLT_IRQ_COUNT,
};

/// Debug-exit value of a Rust panic (exceptions use 0x70).
const EXIT_PANIC: u8 = 0x71;

/// The serial port as a `fmt::Write` (THR only: the emulated UARTs are always ready).
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        pvh::put(s.as_bytes());
        Ok(())
    }
}

/// `conformance: <formatted>\n`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::Serial, format_args!("conformance: {}\n", format_args!($($arg)*)));
    }};
}

/// Unmasks `irq` (< 16) in the 8259 pair that entry.rs set up.
pub fn unmask_irq(irq: u64) {
    if irq < 8 {
        outb(0x21, inb(0x21) & !(1 << irq));
    } else if irq < 16 {
        outb(0x21, inb(0x21) & !(1 << 2));
        outb(0xa1, inb(0xa1) & !(1 << (irq - 8)));
    }
}

// ---- command line ----

/// The value of `key=` on the command line, if any.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    words(cmdline).find_map(|w| w.strip_prefix(key)?.strip_prefix(b"="))
}

/// A numeric `key=` parameter.
pub fn num_param(cmdline: &[u8], key: &[u8]) -> Option<u64> {
    parse_num(param(cmdline, key)?, false).map(|(v, _)| v)
}

/// Ring-3 entry from entry.rs.
///
/// # Safety
/// `si` is null or points to a valid `hvm_start_info`.
#[no_mangle]
pub unsafe extern "C" fn volt_main(si: *const StartInfo) -> ! {
    let cmdline = if si.is_null() {
        &b""[..]
    } else {
        // SAFETY: the caller passes the PVH start info.
        cmdline_of(unsafe { &*si })
    };
    say!("booted");
    let mut disks = 0usize;
    let mut nics = net::Nics::new(cmdline);
    let mut socket: Option<vsock::Vsock> = None;
    for w in words(cmdline) {
        let Some(spec) = w.strip_prefix(b"virtio_mmio.device=") else {
            continue;
        };
        let Some((size, addr, irq)) = parse_virtio(spec) else {
            continue;
        };
        let Some(header) = NonNull::new(addr as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: the command line names a virtio-mmio window of `size` bytes at `addr`,
        // identity-mapped by entry.rs and used by nothing else.
        let transport = match unsafe { MmioTransport::new(header, size as usize) } {
            Ok(t) => t,
            Err(e) => {
                say!("device at {addr:#x} unusable: {e}");
                continue;
            }
        };
        match transport.device_type() {
            DeviceType::Block => {
                blk::run(transport, disks, cmdline);
                disks += 1;
            }
            DeviceType::Network => nics.add(transport, irq),
            DeviceType::Socket if socket.is_none() => {
                socket = vsock::Vsock::new(transport, addr, irq);
                if let Some(v) = socket.as_mut() {
                    v.client_check(cmdline);
                }
            }
            t => say!("device at {addr:#x} type {t:?} ignored"),
        }
    }
    say!("done disks={disks} nics={}", nics.count());
    if let Some(code) = num_param(cmdline, b"conf.exit") {
        exit(code.min(255) as u8);
    }
    if let Some(v) = socket.as_mut() {
        v.listen(cmdline);
    }
    serve(nics, socket)
}

/// Serves the network and the vsock echo until the VM is stopped; between events the vCPU
/// sleeps in the idle gate.
fn serve(mut nics: net::Nics, mut socket: Option<vsock::Vsock>) -> ! {
    say!("serving");
    loop {
        let seen = VOLT_IRQ_COUNT.load(Ordering::Acquire);
        let mut busy = nics.poll();
        if let Some(v) = socket.as_mut() {
            busy |= v.poll();
        }
        if !busy {
            wait_irq(seen);
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("panic: {info}");
    exit(EXIT_PANIC)
}
