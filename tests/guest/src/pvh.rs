//! Ring-3 plumbing around entry.rs that the test guest and the conformance guest share (the
//! conformance guest includes this file with `#[path]`, as it does entry.rs and rt.rs): the
//! interrupt counters and idle gate of entry.rs, port I/O, the serial port, the debug-exit
//! port, `hvm_start_info` and the kernel command line. No virtio here: each guest drives its
//! devices with its own code.

use core::arch::asm;
use core::sync::atomic::{AtomicU32, Ordering};

/// Incremented by the ring-0 handler of every 8259 IRQ (vectors 0x20-0x2f).
#[no_mangle]
pub static VOLT_IRQ_COUNT: AtomicU32 = AtomicU32::new(0);

/// Incremented by the ring-0 handler of 8259 IRQ 1 (the i8042), besides `VOLT_IRQ_COUNT`.
#[no_mangle]
pub static VOLT_KBD_COUNT: AtomicU32 = AtomicU32::new(0);

/// Incremented by the ring-0 handler of 8259 IRQ 4 (COM1 input), besides `VOLT_IRQ_COUNT`.
#[no_mangle]
pub static VOLT_COM_COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" {
    /// Idle gate (entry.rs): `ud2` trapping to ring 0, which sleeps (`sti; hlt`) unless the IRQ
    /// counter already differs from `seen`; returns after an interrupt (or at once).
    fn volt_idle_wait(seen: u32);
}

pub const COM1: u16 = 0x3f8;
const DEBUG_EXIT: u16 = 0xf4;
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
const MAX_CMDLINE: usize = 4096;

// ---- port I/O (ring 3, allowed by the TSS I/O bitmap; every access is a VM exit) ----

#[inline(always)]
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O is allowed at ring 3 by the TSS I/O bitmap; touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes `s` to COM1's THR directly, no LSR polling (the emulated UARTs are always ready).
pub fn put(s: &[u8]) {
    for &b in s {
        outb(COM1, b);
    }
}

// ---- sleeping and exiting ----

/// Sleeps in ring 0 until an interrupt arrives after `seen` was read from
/// [`VOLT_IRQ_COUNT`] (returns at once if one already did: checked with IF=0).
pub fn wait_irq(seen: u32) {
    // SAFETY: the idle gate only sleeps until the next interrupt; it touches no Rust memory.
    unsafe { volt_idle_wait(seen) }
}

/// Writes `code` to the debug-exit port. The VMM (or QEMU's isa-debug-exit) ends the VM there;
/// if nothing is listening, sleeps forever.
pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT, code);
    idle_forever()
}

pub fn idle_forever() -> ! {
    loop {
        wait_irq(VOLT_IRQ_COUNT.load(Ordering::Relaxed))
    }
}

// ---- hvm_start_info and the command line ----

/// `hvm_start_info` of the PVH boot ABI.
#[repr(C)]
pub struct StartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// The command line the start info points at (empty if the magic is wrong or there is none).
pub fn cmdline_of(si: &StartInfo) -> &'static [u8] {
    if si.magic != START_INFO_MAGIC || si.cmdline_paddr == 0 {
        return b"";
    }
    let p = si.cmdline_paddr as *const u8;
    let mut n = 0;
    // SAFETY: the PVH loader put a NUL-terminated command line there (bounded scan).
    while n < MAX_CMDLINE && unsafe { p.add(n).read_volatile() } != 0 {
        n += 1;
    }
    // SAFETY: n bytes were just read from p; the loader's memory is never written again.
    unsafe { core::slice::from_raw_parts(p, n) }
}

pub fn words(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmdline
        .split(|&c| c == b' ' || c == b'\t' || c == b'\n')
        .filter(|w| !w.is_empty())
}

/// Decimal or `0x` hex, with an optional K/M/G suffix when `suffix` is set; returns the value
/// and the rest of the input.
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

/// `<size>@<addr>:<irq>[:<id>]` as Linux's `virtio_mmio.device=` takes it.
pub fn parse_virtio(s: &[u8]) -> Option<(u64, u64, u64)> {
    let (size, rest) = parse_num(s, true)?;
    let (addr, rest) = parse_num(rest.strip_prefix(b"@")?, false)?;
    let (irq, rest) = parse_num(rest.strip_prefix(b":")?, false)?;
    if !(rest.is_empty() || rest.starts_with(b":")) {
        return None;
    }
    Some((size, addr, irq))
}
