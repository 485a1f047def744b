//! The block check, through virtio-drivers' `VirtIOBlk`: identify, write a pattern, FLUSH,
//! read it back, and probe the end of the disk. Each step prints one line (README.md).

use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::mmio::MmioTransport;

use crate::hal::IdHal;
use crate::pattern::pattern_byte;
use crate::{num_param, say};

/// Sectors per request of the pattern write and read-back (4 KiB).
const CHUNK: usize = 8;

/// FNV-1a, 64 bits.
pub fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn status(r: &Result<(), virtio_drivers::Error>) -> &'static str {
    use virtio_drivers::Error as E;
    match r {
        Ok(()) => "ok",
        Err(E::IoError) => "ioerr",
        Err(E::Unsupported) => "unsupp",
        Err(E::NotReady) => "not-ready",
        Err(E::QueueFull) => "queue-full",
        Err(E::WrongToken) => "wrong-token",
        Err(E::InvalidParam) => "invalid-param",
        Err(_) => "other-error",
    }
}

fn name(index: usize) -> [u8; 3] {
    [b'v', b'd', b'a' + (index % 26) as u8]
}

/// The time stamp counter (the host's, unscaled: volt-vmm and QEMU read the same clock).
fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; CR4.TSD is clear, so it works at ring 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// xorshift64.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The load generator for the benchmark (`conf.blk.bench=<mode>[,<mode>...]`, each
/// `conf.blk.bench.ops=` requests, default 2000, queue depth 1): `randread` / `randwrite`
/// (4 KiB at random 4 KiB-aligned offsets; writes FLUSH every 32), `seqread` / `seqwrite`
/// (1 MiB requests from sector 0, wrapping; writes FLUSH at the end). Prints
/// `blk vdX bench <mode> start` and `blk vdX bench <mode> done ops=<n> bytes=<n> errors=<n>`;
/// the host times the two lines.
fn bench(blk: &mut VirtIOBlk<IdHal, MmioTransport<'static>>, dev: &str, modes: &[u8], ops: u64) {
    let capacity = blk.capacity();
    let mut small: Vec<u8> = vec![0x5a; 4096];
    let mut big: Vec<u8> = vec![0xa5; 1 << 20];
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    for mode in modes.split(|&c| c == b',') {
        let name = core::str::from_utf8(mode).unwrap_or("?");
        let (bytes_per, big_req) = match mode {
            b"randread" | b"randwrite" => (4096u64, false),
            b"seqread" | b"seqwrite" => (1u64 << 20, true),
            _ => {
                say!("blk {dev} bench {name} unknown");
                continue;
            }
        };
        let blocks = capacity / (bytes_per / SECTOR_SIZE as u64);
        if blocks == 0 {
            say!("blk {dev} bench {name} disk too small");
            continue;
        }
        let write = mode.ends_with(b"write");
        say!("blk {dev} bench {name} start");
        let mut errors = 0u64;
        let mut lat: Vec<u64> = Vec::with_capacity(ops as usize);
        for i in 0..ops {
            let t0 = rdtsc();
            let block = if big_req {
                i % blocks
            } else {
                next(&mut rng) % blocks
            };
            let sector = (block * (bytes_per / SECTOR_SIZE as u64)) as usize;
            let buf: &mut [u8] = if big_req { &mut big } else { &mut small };
            let r = if write {
                blk.write_blocks(sector, buf)
            } else {
                blk.read_blocks(sector, buf)
            };
            errors += u64::from(r.is_err());
            lat.push(rdtsc().wrapping_sub(t0));
            if write && !big_req && i % 32 == 31 {
                errors += u64::from(blk.flush().is_err());
            }
        }
        if write {
            errors += u64::from(blk.flush().is_err());
        }
        lat.sort_unstable();
        let at = |q: usize| {
            lat.get(lat.len().saturating_sub(1) * q / 100)
                .copied()
                .unwrap_or(0)
        };
        say!(
            "blk {dev} bench {name} done ops={ops} bytes={} errors={errors} tsc_min={} tsc_p50={} tsc_p90={}",
            ops * bytes_per,
            at(0),
            at(50),
            at(90)
        );
    }
}

/// Runs the check on disk number `index`, as the command line says:
/// `conf.blk.start=` (first sector, default 0), `conf.blk.sectors=` (default 64),
/// `conf.blk.seed=` (default 1).
pub fn run(transport: MmioTransport<'static>, index: usize, cmdline: &[u8]) {
    let n = name(index);
    let dev = core::str::from_utf8(&n).unwrap_or("vd?");
    let mut blk = match VirtIOBlk::<IdHal, _>::new(transport) {
        Ok(b) => b,
        Err(e) => {
            say!("blk {dev} init failed: {e}");
            return;
        }
    };
    let capacity = blk.capacity();
    let mut id = [0u8; 20];
    let id_text = match blk.device_id(&mut id) {
        Ok(len) => core::str::from_utf8(&id[..len]).unwrap_or("<not ascii>"),
        Err(_) => "<error>",
    };
    say!(
        "blk {dev} capacity={capacity} readonly={} id=\"{id_text}\"",
        u8::from(blk.readonly())
    );
    if let Some(modes) = crate::param(cmdline, b"conf.blk.bench") {
        let ops = num_param(cmdline, b"conf.blk.bench.ops").unwrap_or(2000);
        bench(&mut blk, dev, modes, ops);
        return;
    }
    let start = num_param(cmdline, b"conf.blk.start").unwrap_or(0);
    let sectors = num_param(cmdline, b"conf.blk.sectors")
        .unwrap_or(64)
        .min(capacity.saturating_sub(start));
    let seed = num_param(cmdline, b"conf.blk.seed").unwrap_or(1);

    // Write the pattern, CHUNK sectors per request.
    let mut buf: Vec<u8> = vec![0; CHUNK * SECTOR_SIZE];
    let mut write = Ok(());
    let mut s = start;
    while s < start + sectors && write.is_ok() {
        let k = (CHUNK as u64).min(start + sectors - s) as usize;
        for (i, sector) in buf[..k * SECTOR_SIZE].chunks_mut(SECTOR_SIZE).enumerate() {
            for (j, b) in sector.iter_mut().enumerate() {
                *b = pattern_byte(seed, s + i as u64, j);
            }
        }
        write = blk.write_blocks(s as usize, &buf[..k * SECTOR_SIZE]);
        s += k as u64;
    }
    say!(
        "blk {dev} write sectors={sectors} status={}",
        status(&write)
    );
    let flush = blk.flush();
    say!("blk {dev} flush status={}", status(&flush));

    // Read back: does it hold the pattern, and what does it hash to (the host compares).
    let mut all: Vec<u8> = vec![0; sectors as usize * SECTOR_SIZE];
    let mut read = Ok(());
    let mut off = 0usize;
    while off < all.len() && read.is_ok() {
        let k = (CHUNK * SECTOR_SIZE).min(all.len() - off);
        read = blk.read_blocks(start as usize + off / SECTOR_SIZE, &mut all[off..off + k]);
        off += k;
    }
    let matches = all.chunks(SECTOR_SIZE).enumerate().all(|(i, sec)| {
        sec.iter()
            .enumerate()
            .all(|(j, &b)| b == pattern_byte(seed, start + i as u64, j))
    });
    say!(
        "blk {dev} readback status={} pattern={} fnv={:#018x}",
        status(&read),
        if matches { "match" } else { "differs" },
        fnv(&all)
    );

    // The end of the disk: the last sector reads, one past it and one straddling it fail.
    let mut one = [0u8; SECTOR_SIZE];
    let last = blk.read_blocks(capacity.saturating_sub(1) as usize, &mut one);
    let past = blk.read_blocks(capacity as usize, &mut one);
    let mut two = [0u8; 2 * SECTOR_SIZE];
    let straddle = blk.read_blocks(capacity.saturating_sub(1) as usize, &mut two);
    say!(
        "blk {dev} end last={} past={} straddling={}",
        status(&last),
        status(&past),
        status(&straddle)
    );
}
