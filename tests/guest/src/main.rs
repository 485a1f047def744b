//! volt-test-guest: a freestanding PVH guest for the Volt VMM's tests.
//!
//! `entry.rs` does the minimal ring-0 setup and drops to ring 3, where `volt_main` runs: it
//! prints a fixed set of serial lines (see README.md: they are a contract the VMM's tests grep
//! for), then exits, resets, faults or idles as the kernel command line asks.
#![no_std]
#![no_main]

mod console;
mod entry;
mod net;
mod rt;
mod vsock;

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

/// A device the main loop serves: polled while there is work, armed before sleeping.
pub trait Poll {
    /// Does what there is to do; returns how much (0: nothing).
    fn poll(&mut self) -> usize;
    /// Has work it can do right now without waiting for the device (never sleep).
    fn busy(&self) -> bool {
        false
    }
    /// Before sleeping: acknowledge interrupts (IRQ count `seen`), turn them on; returns
    /// whether work arrived meanwhile (then do not sleep).
    fn arm(&mut self, seen: u32) -> bool;
    /// After waking: interrupts off again.
    fn disarm(&mut self);
}

/// Poll this long without work before sleeping.
const IDLE_US: u64 = 100;

extern "C" {
    /// Idle gate (entry.rs): `ud2` trapping to ring 0, which sleeps (`sti; hlt`) unless the IRQ
    /// counter already differs from `seen`; returns after an interrupt (or at once).
    fn volt_idle_wait(seen: u32);
}

const COM1: u16 = 0x3f8;
const DEBUG_EXIT: u16 = 0xf4;
const I8042_DATA: u16 = 0x60;
const I8042_CMD: u16 = 0x64;
/// Debug-exit code for a Rust panic (exceptions use 0x70, see entry.rs).
const EXIT_PANIC: u8 = 0x71;
const START_INFO_MAGIC: u32 = 0x336e_c578;
const VIRTIO_MAGIC: u32 = 0x7472_6976;
const MAX_CMDLINE: usize = 4096;

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

#[repr(C)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

// ---- port I/O (ring 3, allowed by the TSS I/O bitmap; every access is a VM exit) ----

#[inline(always)]
fn outb(port: u16, val: u8) {
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
fn inb(port: u16) -> u8 {
    let v: u8;
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

// ---- serial: write THR directly, no LSR polling (the emulated UARTs are always ready) ----

fn put(s: &[u8]) {
    for &b in s {
        outb(COM1, b);
    }
}

fn put_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&buf[i..]);
}

/// `0x` + exactly `digits` lowercase hex digits.
fn put_hex(v: u64, digits: u32) {
    let mut buf = [0u8; 18];
    buf[0] = b'0';
    buf[1] = b'x';
    for i in 0..digits as usize {
        let nib = ((v >> (4 * (digits as usize - 1 - i))) & 0xf) as u8;
        buf[2 + i] = if nib < 10 {
            b'0' + nib
        } else {
            b'a' + nib - 10
        };
    }
    put(&buf[..2 + digits as usize]);
}

const PREFIX: &[u8] = b"volt-test-guest: ";

fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT, code);
    // The VMM (or QEMU's isa-debug-exit) ends the VM here; if nothing is listening, sleep.
    halt_forever()
}

fn halt_forever() -> ! {
    loop {
        unsafe { volt_idle_wait(VOLT_IRQ_COUNT.load(Ordering::Relaxed)) }
    }
}

// ---- command line ----

fn words(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmdline
        .split(|&c| c == b' ' || c == b'\t' || c == b'\n')
        .filter(|w| !w.is_empty())
}

/// Decimal or `0x` hex, with an optional K/M/G suffix when `suffix` is set; returns the value
/// and the rest of the input.
fn parse_num(s: &[u8], suffix: bool) -> Option<(u64, &[u8])> {
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
fn parse_virtio(s: &[u8]) -> Option<(u64, u64, u64)> {
    let (size, rest) = parse_num(s, true)?;
    let rest = rest.strip_prefix(b"@")?;
    let (addr, rest) = parse_num(rest, false)?;
    let rest = rest.strip_prefix(b":")?;
    let (irq, rest) = parse_num(rest, false)?;
    if !(rest.is_empty() || rest.starts_with(b":")) {
        return None;
    }
    Some((size, addr, irq))
}

fn probe_virtio(spec: &[u8]) {
    put(PREFIX);
    put(b"virtio-mmio ");
    put(spec);
    let Some((size, addr, _irq)) = parse_virtio(spec) else {
        put(b" unparsable\n");
        return;
    };
    // Only 0-4 GiB is mapped.
    if size < 0x10 || addr.checked_add(0x10).is_none_or(|end| end > 1 << 32) {
        put(b" not mapped\n");
        return;
    }
    let reg = |off: u64| unsafe { core::ptr::read_volatile((addr + off) as *const u32) };
    let magic = reg(0x000);
    if magic != VIRTIO_MAGIC {
        put(b" no device (magic=");
        put_hex(magic as u64, 8);
        put(b")\n");
        return;
    }
    let version = reg(0x004);
    let device_id = reg(0x008);
    let _vendor_id = reg(0x00c);
    put(b" magic=");
    put_hex(magic as u64, 8);
    put(b" version=");
    put_dec(version as u64);
    put(b" device-id=");
    put_dec(device_id as u64);
    put(b"\n");
}

/// `volt.flood=N`: a hostile driver. For every virtio-mmio device, N times: reset it, mark it
/// FAILED, reset it, then negotiate VERSION_1 and set DRIVER_OK with queue 0's descriptors
/// outside guest memory, so its activation fails. Each step is one the VMM may log about;
/// it must rate-limit those lines (the VMM's tests count them).
fn flood(cmdline: &[u8], n: u64) {
    for w in words(cmdline) {
        let Some(spec) = w.strip_prefix(b"virtio_mmio.device=") else {
            continue;
        };
        let Some((size, addr, _irq)) = parse_virtio(spec) else {
            continue;
        };
        if size < 0x100 || addr.checked_add(0x100).is_none_or(|end| end > 1 << 32) {
            continue;
        }
        let w32 = |off: u64, v: u32| unsafe {
            core::ptr::write_volatile((addr + off) as *mut u32, v);
        };
        for _ in 0..n {
            w32(0x070, 0); // Status: reset
            w32(0x070, 0x80); // FAILED
            w32(0x070, 0);
            w32(0x070, 1); // ACKNOWLEDGE
            w32(0x070, 3); // DRIVER
            w32(0x024, 1); // DriverFeaturesSel: bits 32-63
            w32(0x020, 1); // VIRTIO_F_VERSION_1
            w32(0x070, 0xb); // FEATURES_OK
            w32(0x030, 0); // QueueSel
            w32(0x038, 8); // QueueNum
            w32(0x080, 0xffff_f000); // QueueDescLow
            w32(0x084, 0xff); // QueueDescHigh: ~1 TiB, outside guest memory
            w32(0x044, 1); // QueueReady
            w32(0x070, 0xf); // DRIVER_OK: the activation fails
        }
    }
    put(PREFIX);
    put(b"flood done ");
    put_dec(n);
    put(b"\n");
}

fn report_memory(si: &StartInfo) {
    if si.version < 1 || si.memmap_paddr == 0 || si.memmap_entries == 0 {
        return;
    }
    let n = si.memmap_entries.min(128) as usize;
    let map = unsafe { core::slice::from_raw_parts(si.memmap_paddr as *const MemmapEntry, n) };
    let (mut bytes, mut regions) = (0u64, 0u64);
    for e in map.iter().filter(|e| e.kind == 1) {
        bytes = bytes.saturating_add(e.size);
        regions += 1;
    }
    put(PREFIX);
    put(b"memory ");
    put_dec((bytes + (1 << 19)) >> 20); // nearest MiB: 640 KiB + 63 MiB reads as 64
    put(b" MiB in ");
    put_dec(regions);
    put(b" regions\n");
}

// ---- Ctrl-Alt-Del over the i8042 (IRQ 1) ----

#[derive(Default)]
struct Keyboard {
    ctrl: bool,
    alt: bool,
    e0: bool,
    f0: bool,
}

impl Keyboard {
    /// Feeds one scancode (set 1, as the brief's VMM sends; set 2 as Firecracker sends, too);
    /// returns true on Ctrl+Alt+Del.
    fn feed(&mut self, b: u8) -> bool {
        match b {
            0xe0 => {
                self.e0 = true;
                return false;
            }
            0xf0 => {
                self.f0 = true; // set 2 break prefix
                return false;
            }
            _ => {}
        }
        let (e0, f0) = (core::mem::take(&mut self.e0), core::mem::take(&mut self.f0));
        let (code, make) = if f0 {
            (b, false)
        } else if b & 0x80 != 0 && b != 0x80 {
            (b & 0x7f, false)
        } else {
            (b, true)
        };
        match code {
            0x1d | 0x14 => self.ctrl = make, // set 1 / set 2 Ctrl (left or right)
            0x38 | 0x11 => self.alt = make,  // set 1 / set 2 Alt
            0x53 | 0x71 if e0 => return make && self.ctrl && self.alt, // Del (e0 53 / e0 71)
            _ => {}
        }
        false
    }
}

/// Reads whatever the i8042 holds (bounded; a missing controller reads as 0xff); powers off on
/// Ctrl+Alt+Del.
fn drain_keyboard(kbd: &mut Keyboard) {
    for _ in 0..32 {
        let status = inb(I8042_CMD);
        if status == 0xff || status & 1 == 0 {
            break;
        }
        if kbd.feed(inb(I8042_DATA)) {
            put(PREFIX);
            put(b"ctrl-alt-del, powering off\n");
            exit(0);
        }
    }
}

/// Serves the devices, the console and the keyboard forever: polls while there is work
/// (and `IDLE_US` after it), then arms every device and sleeps in the idle gate; an IRQ
/// after the count was read makes the gate return at once, so no wake-up is lost.
fn serve(devs: &mut [&mut dyn Poll], console: &mut console::Console) -> ! {
    let idle_ticks = IDLE_US * net::tsc_per_us_cached();
    let mut kbd = Keyboard::default();
    // Bytes that arrived before the PIC was set up raised no IRQ we could see: look once.
    drain_keyboard(&mut kbd);
    console.poll();
    let (mut kbd_seen, mut com_seen) = (0, 0);
    let mut last_work = net::rdtsc();
    loop {
        let mut work = 0;
        for d in devs.iter_mut() {
            work += d.poll();
        }
        let k = VOLT_KBD_COUNT.load(Ordering::Acquire);
        if k != kbd_seen {
            kbd_seen = k;
            drain_keyboard(&mut kbd);
        }
        let c = VOLT_COM_COUNT.load(Ordering::Acquire);
        if c != com_seen {
            com_seen = c;
            work += console.poll();
        }
        let now = net::rdtsc();
        if work > 0 {
            last_work = now;
        }
        if devs.iter().any(|d| d.busy()) || now.wrapping_sub(last_work) < idle_ticks {
            core::hint::spin_loop();
            continue;
        }
        let seen = VOLT_IRQ_COUNT.load(Ordering::Acquire);
        let mut pending = false;
        for d in devs.iter_mut() {
            pending |= d.arm(seen);
        }
        pending |= VOLT_KBD_COUNT.load(Ordering::Acquire) != kbd_seen
            || VOLT_COM_COUNT.load(Ordering::Acquire) != com_seen;
        if !pending {
            // Sleeps in ring 0 unless an IRQ came in since `seen` was read (checked with IF=0).
            unsafe { volt_idle_wait(seen) };
        }
        for d in devs.iter_mut() {
            d.disarm();
        }
        last_work = net::rdtsc();
    }
}

enum Action<'a> {
    Exit(u8),
    Reset,
    Fault(&'a [u8]),
}

fn action(cmdline: &[u8]) -> Option<Action<'_>> {
    for w in words(cmdline) {
        if let Some(v) = w.strip_prefix(b"volt.exit=") {
            let n = parse_num(v, false).map_or(0xff, |(n, _)| n.min(0xff) as u8);
            return Some(Action::Exit(n));
        }
        if w == b"volt.reset" {
            return Some(Action::Reset);
        }
        if let Some(v) = w.strip_prefix(b"volt.fault=") {
            return Some(Action::Fault(v));
        }
    }
    None
}

fn fault(kind: &[u8]) {
    match kind {
        b"ud" => unsafe { asm!("ud2", options(nomem, nostack)) },
        // `cli` at ring 3 raises #GP(0).
        b"gp" => unsafe { asm!("cli", options(nomem, nostack)) },
        // Nothing is mapped above 4 GiB (512 GiB is canonical, so this is a #PF, not a #GP).
        b"pf" => unsafe {
            core::ptr::read_volatile(0x80_0000_0000u64 as *const u8);
        },
        _ => {
            put(PREFIX);
            put(b"unknown volt.fault=");
            put(kind);
            put(b"\n");
        }
    }
}

fn cmdline_of(si: &StartInfo) -> &'static [u8] {
    if si.magic != START_INFO_MAGIC || si.cmdline_paddr == 0 {
        return b"";
    }
    let p = si.cmdline_paddr as *const u8;
    let mut n = 0;
    while n < MAX_CMDLINE && unsafe { p.add(n).read_volatile() } != 0 {
        n += 1;
    }
    unsafe { core::slice::from_raw_parts(p, n) }
}

/// Ring-3 entry, called from entry.rs with the physical (= virtual) address of hvm_start_info.
///
/// # Safety
/// `si` is null or points to a valid `hvm_start_info` (the PVH boot ABI).
#[no_mangle]
pub unsafe extern "C" fn volt_main(si: *const StartInfo) -> ! {
    const NONE: StartInfo = StartInfo {
        magic: 0,
        version: 0,
        flags: 0,
        nr_modules: 0,
        modlist_paddr: 0,
        cmdline_paddr: 0,
        rsdp_paddr: 0,
        memmap_paddr: 0,
        memmap_entries: 0,
        reserved: 0,
    };
    let si = if si.is_null() { &NONE } else { unsafe { &*si } };
    let cmdline = cmdline_of(si);
    put(PREFIX);
    put(b"booted cmdline=\"");
    put(cmdline);
    put(b"\"\n");
    if si.magic != START_INFO_MAGIC {
        put(PREFIX);
        put(b"bad hvm_start_info magic=");
        put_hex(si.magic as u64, 8);
        put(b"\n");
    }
    for w in words(cmdline) {
        if let Some(spec) = w.strip_prefix(b"virtio_mmio.device=") {
            probe_virtio(spec);
        }
    }
    if si.magic == START_INFO_MAGIC {
        report_memory(si);
    }
    // virtio-net devices (one `net` line each), then a virtio-vsock device (one `vsock` line),
    // from one allocator over the RAM after the image.
    let mut alloc = None;
    let mut net = net::setup(cmdline, &mut alloc, si);
    let mut vsock = if words(cmdline).any(|w| w.starts_with(b"virtio_mmio.device=")) {
        vsock::setup(
            cmdline,
            alloc.get_or_insert_with(|| net::Alloc::new(si, cmdline)),
        )
    } else {
        None
    };
    put(PREFIX);
    put(b"ready\n");
    for w in words(cmdline) {
        if let Some((n, _)) = w.strip_prefix(b"volt.flood=").and_then(|v| parse_num(v, false)) {
            flood(cmdline, n);
        }
    }
    match action(cmdline) {
        Some(Action::Exit(n)) => exit(n),
        Some(Action::Reset) => {
            outb(I8042_CMD, 0xfe);
            halt_forever()
        }
        Some(Action::Fault(kind)) => fault(kind),
        None => {}
    }
    let mut console = console::Console::enable(cmdline);
    let mut devs: [&mut dyn Poll; 2] = [&mut net, &mut vsock];
    let n = devs.len();
    serve(&mut devs[..n], &mut console)
}

/// No vsock device: nothing to poll.
impl Poll for Option<vsock::Vsock> {
    fn poll(&mut self) -> usize {
        self.as_mut().map_or(0, |v| v.poll())
    }
    fn busy(&self) -> bool {
        self.as_ref().is_some_and(|v| v.busy())
    }
    fn arm(&mut self, seen: u32) -> bool {
        self.as_mut().is_some_and(|v| v.arm(seen))
    }
    fn disarm(&mut self) {
        if let Some(v) = self {
            v.disarm()
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    put(b"\n");
    put(PREFIX);
    put(b"panic\n");
    exit(EXIT_PANIC)
}
