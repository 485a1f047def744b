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
#[path = "../../guest/src/rt.rs"]
mod rt;

mod blk;
mod hal;
mod net;
mod vsock;

use core::arch::asm;
use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

/// Incremented by the ring-0 handler of every 8259 IRQ (entry.rs).
#[no_mangle]
pub static VOLT_IRQ_COUNT: AtomicU32 = AtomicU32::new(0);
/// Incremented by the ring-0 handler of IRQ 1 (entry.rs).
#[no_mangle]
pub static VOLT_KBD_COUNT: AtomicU32 = AtomicU32::new(0);

/// Bumped by the shared entry stub's COM1 input handler (IRQ 4); this guest reads no input.
#[no_mangle]
pub static VOLT_COM_COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" {
    /// Idle gate (entry.rs): sleeps unless the IRQ counter differs from `seen`.
    fn volt_idle_wait(seen: u32);
}

const COM1: u16 = 0x3f8;
const DEBUG_EXIT: u16 = 0xf4;
const START_INFO_MAGIC: u32 = 0x336e_c578;
const MAX_CMDLINE: usize = 4096;
/// Debug-exit value of a Rust panic (exceptions use 0x70).
const EXIT_PANIC: u8 = 0x71;

#[repr(C)]
pub struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O is allowed at ring 3 by the TSS I/O bitmap; touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// The serial port as a `fmt::Write` (THR only: the emulated UARTs are always ready).
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            outb(COM1, b);
        }
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

pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT, code);
    idle_forever()
}

pub fn idle_forever() -> ! {
    loop {
        // SAFETY: the idle gate only sleeps until the next interrupt.
        unsafe { volt_idle_wait(VOLT_IRQ_COUNT.load(Ordering::Relaxed)) }
    }
}

/// Sleeps until an interrupt arrives after `seen` was read from [`VOLT_IRQ_COUNT`].
pub fn wait_irq(seen: u32) {
    // SAFETY: as above.
    unsafe { volt_idle_wait(seen) }
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

pub fn words(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmdline
        .split(|&c| c == b' ' || c == b'\t' || c == b'\n')
        .filter(|w| !w.is_empty())
}

/// Decimal or `0x` hex with an optional K/M/G suffix when `suffix`; value and rest.
pub fn parse_num(s: &[u8], suffix: bool) -> Option<(u64, &[u8])> {
    let (radix, digits) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (16, rest),
        _ => (10, s),
    };
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' if radix == 16 => c - b'a' + 10,
            b'A'..=b'F' if radix == 16 => c - b'A' + 10,
            _ => break,
        };
        v = v.checked_mul(radix)?.checked_add(d as u64)?;
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let mut rest = &digits[n..];
    if suffix {
        let shift = match rest.first() {
            Some(b'k' | b'K') => 10,
            Some(b'm' | b'M') => 20,
            Some(b'g' | b'G') => 30,
            _ => 0,
        };
        if shift != 0 {
            v = v.checked_mul(1 << shift)?;
            rest = &rest[1..];
        }
    }
    Some((v, rest))
}

/// The value of `key=` on the command line, if any.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    words(cmdline).find_map(|w| w.strip_prefix(key)?.strip_prefix(b"="))
}

/// A numeric `key=` parameter.
pub fn num_param(cmdline: &[u8], key: &[u8]) -> Option<u64> {
    parse_num(param(cmdline, key)?, false).map(|(v, _)| v)
}

/// `<size>@<addr>:<irq>[:<id>]`.
fn parse_virtio(s: &[u8]) -> Option<(u64, u64, u64)> {
    let (size, rest) = parse_num(s, true)?;
    let (addr, rest) = parse_num(rest.strip_prefix(b"@")?, false)?;
    let (irq, rest) = parse_num(rest.strip_prefix(b":")?, false)?;
    if !(rest.is_empty() || rest.starts_with(b":")) {
        return None;
    }
    Some((size, addr, irq))
}

fn cmdline_of(si: &StartInfo) -> &'static [u8] {
    if si.magic != START_INFO_MAGIC || si.cmdline_paddr == 0 {
        return b"";
    }
    let p = si.cmdline_paddr as *const u8;
    let mut n = 0;
    // SAFETY: the PVH loader put a NUL-terminated command line there (bounded scan).
    while n < MAX_CMDLINE && unsafe { p.add(n).read_volatile() } != 0 {
        n += 1;
    }
    // SAFETY: n bytes were just read from p.
    unsafe { core::slice::from_raw_parts(p, n) }
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
