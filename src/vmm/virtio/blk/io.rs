//! The I/O engine: synchronous `preadv`/`pwritev` straight between guest memory and the
//! image, `fdatasync` for FLUSH, `fallocate` for DISCARD (punch hole) and WRITE_ZEROES (zero
//! range, or punch hole when the guest allows unmapping). Behind a trait so the request
//! path is tested and fuzzed on any file, and a different engine (io_uring) can replace it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::vmm::disk::SECTOR_SIZE;

pub use super::image::{describe, open_image, Image, OpenError};

/// Most iovecs one `preadv`/`pwritev` takes (Linux's UIO_MAXIOV).
pub const MAX_IOV: usize = 1024;

/// Block I/O on an open image.
pub trait DiskIo: Send {
    /// Fills the buffers in `iov` from `offset`, entirely.
    ///
    /// # Safety
    /// Every iovec must be valid for writes of `iov_len` bytes for the whole call.
    unsafe fn read_iov(&self, iov: &[libc::iovec], offset: u64) -> io::Result<()>;
    /// Writes the buffers in `iov` at `offset`, entirely.
    ///
    /// # Safety
    /// Every iovec must be valid for reads of `iov_len` bytes for the whole call.
    unsafe fn write_iov(&self, iov: &[libc::iovec], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Deallocates `[offset, offset + len)`; reads of it return zeroes afterwards.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Zeroes `[offset, offset + len)`, deallocating it when `unmap` is allowed.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

/// An engine whose first failed flush fails every later one. When fdatasync reports a write
/// error, Linux marks the pages it could not write clean (or drops them), and the next
/// fdatasync succeeds though those writes are lost: answering a later FLUSH with OK would
/// tell the guest its data is safe. `failed` belongs to the device, so it outlives the
/// engine of one activation (a reset hands the next one a fresh fd on the same image).
pub struct StickyFlush {
    inner: Box<dyn DiskIo>,
    failed: Arc<AtomicBool>,
    /// The disk, for the one log line.
    name: String,
}

impl StickyFlush {
    pub fn new(inner: Box<dyn DiskIo>, failed: Arc<AtomicBool>, name: &str) -> StickyFlush {
        StickyFlush {
            inner,
            failed,
            name: name.to_string(),
        }
    }
}

impl DiskIo for StickyFlush {
    unsafe fn read_iov(&self, iov: &[libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from our caller.
        unsafe { self.inner.read_iov(iov, offset) }
    }

    unsafe fn write_iov(&self, iov: &[libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from our caller.
        unsafe { self.inner.write_iov(iov, offset) }
    }

    fn flush(&self) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let r = self.inner.flush();
        if let Err(e) = &r {
            // Logged once per device (the guest cannot repeat it): every later flush fails
            // without a word.
            if !self.failed.swap(true, Ordering::AcqRel) {
                log::error!(
                    "{}: flushing the image failed ({e}): writes may be lost; every later \
                     flush of this disk fails",
                    self.name
                );
            }
        }
        r
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.inner.write_zeroes(offset, len, unmap)
    }
}

/// The synchronous engine on an image file.
pub struct SyncIo {
    file: File,
    /// Opened with O_DIRECT: transfers the kernel refuses (EINVAL: buffers, offsets or
    /// lengths not aligned) go through an aligned bounce buffer, widened to whole blocks
    /// (read-modify-write for a write).
    direct: Option<Direct>,
    /// A block device's block ([`Image::block`]): its fallocate takes whole ones. `None` for
    /// a file, whose EINVAL from fallocate means something else.
    device_block: Option<u64>,
}

/// An image opened with O_DIRECT.
#[derive(Debug, Clone, Copy)]
pub struct Direct {
    /// Its block ([`Image::block`]).
    pub block: u64,
    /// Its size in bytes: a widened transfer never reaches past it (a file would grow).
    pub size: u64,
}

impl SyncIo {
    /// The engine on `file`; `direct`: opened with O_DIRECT.
    pub fn new(file: File, direct: Option<Direct>) -> SyncIo {
        SyncIo {
            file,
            direct,
            device_block: None,
        }
    }

    /// The engine on a block device whose block ([`Image::block`]) its fallocate needs whole
    /// (a 4Kn disk), whatever the page cache.
    pub fn on_device_of_block(mut self, block: u64) -> SyncIo {
        self.device_block = Some(block);
        self
    }

    /// A buffer of `len` bytes aligned to `align` (at least a page; inside a larger Vec),
    /// for O_DIRECT retries.
    fn bounce(len: usize, align: usize) -> (Vec<u8>, usize) {
        let align = align.max(4096);
        let v = vec![0u8; len + align];
        let start = v.as_ptr().align_offset(align);
        (v, start)
    }

    /// The O_DIRECT retry of a transfer the kernel refused (buffers, offset or length not
    /// aligned): through an aligned buffer of at most [`BOUNCE_MAX`] bytes, piece by piece,
    /// so a request's size (which the guest chooses, up to `max_transfer`) is never
    /// allocated at once. The transfer is widened to whole blocks of `align` (a 512-byte
    /// request on a 4Kn device, as QEMU pads one): a write reads the blocks it covers only in
    /// part first. One I/O thread per disk runs its requests in turn, and the image is locked,
    /// so nothing writes those blocks in between.
    ///
    /// # Safety
    /// As [`DiskIo::read_iov`] / [`DiskIo::write_iov`].
    unsafe fn bounced(
        &self,
        iov: &[libc::iovec],
        offset: u64,
        direct: Direct,
        dir: Direction,
    ) -> io::Result<()> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let align = direct.block;
        let total = iov.iter().map(|v| v.iov_len as u64).sum::<u64>();
        if !align.is_power_of_two() || align > BOUNCE_MAX as u64 {
            return Err(einval());
        }
        let end = offset.checked_add(total).ok_or_else(einval)?;
        let lo = offset & !(align - 1);
        let hi = end.checked_next_multiple_of(align).ok_or_else(einval)?;
        // A block the image ends inside cannot be moved whole (a file would grow).
        if hi > direct.size {
            return Err(einval());
        }
        let (mut buf, start) =
            Self::bounce((hi - lo).min(BOUNCE_MAX as u64) as usize, align as usize);
        let base = buf[start..].as_mut_ptr();
        let fd = self.file.as_raw_fd();
        let piece = |k: u64, len: u64| {
            [libc::iovec {
                // SAFETY: k + len <= the piece's length, which `buf` holds from `base`.
                iov_base: unsafe { base.add(k as usize) }.cast(),
                iov_len: len as usize,
            }]
        };
        let mut at = lo;
        while at < hi {
            // A multiple of `align` (BOUNCE_MAX is one), so every piece stays aligned.
            let n = (hi - at).min(BOUNCE_MAX as u64);
            let one = piece(0, n);
            // The part of this piece the request covers: from `inner` in the piece, at `pos`
            // in the request's iovecs, `len` bytes.
            let (from, to) = (at.max(offset), (at + n).min(end));
            let (pos, inner, len) = (
                (from - offset) as usize,
                (from - at) as usize,
                (to - from) as usize,
            );
            match dir {
                Direction::Read => {
                    // SAFETY: `buf` is valid for writes of n bytes from `base`.
                    unsafe { all(fd, libc::preadv, &one, at)? };
                    // SAFETY: the caller guarantees the iovecs; `base` holds n bytes, of which
                    // `inner + len` are used.
                    unsafe { copy_iov(iov, pos, base.add(inner), len, Direction::Read) };
                }
                Direction::Write => {
                    // The blocks the request covers in part keep the rest of their bytes:
                    // the first and the last block of the piece, read first.
                    if from > at {
                        // SAFETY: the piece's first block lies in `buf`.
                        unsafe { all(fd, libc::preadv, &piece(0, align), at)? };
                    }
                    if to < at + n && (n > align || from == at) {
                        // SAFETY: the piece's last block lies in `buf`.
                        unsafe { all(fd, libc::preadv, &piece(n - align, align), at + n - align)? };
                    }
                    // SAFETY: as above, the other way round.
                    unsafe { copy_iov(iov, pos, base.add(inner), len, Direction::Write) };
                    // SAFETY: `buf` is valid for reads of n bytes from `base`.
                    unsafe { all(fd, libc::pwritev, &one, at)? };
                }
            }
            at += n;
        }
        Ok(())
    }
}

/// Largest O_DIRECT bounce buffer.
pub(super) const BOUNCE_MAX: usize = 1 << 20;

/// fallocate's mode for a DISCARD: punch a hole, keep the size.
const DISCARD_MODE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

#[derive(Clone, Copy)]
enum Direction {
    /// Disk to the iovecs.
    Read,
    /// The iovecs to disk.
    Write,
}

/// Copies `n` bytes between `buf` and the iovecs' bytes from position `pos` of their
/// concatenation: into the iovecs for [`Direction::Read`], out of them for `Write`.
///
/// # Safety
/// Every iovec must be valid for the access (writes for `Read`, reads for `Write`) and `buf`
/// for `n` bytes; `pos + n` must not pass the iovecs' total length.
unsafe fn copy_iov(iov: &[libc::iovec], mut pos: usize, buf: *mut u8, n: usize, dir: Direction) {
    let mut copied = 0usize;
    for v in iov {
        if copied == n {
            break;
        }
        if pos >= v.iov_len {
            pos -= v.iov_len;
            continue;
        }
        let k = (v.iov_len - pos).min(n - copied);
        // SAFETY: pos + k <= iov_len and copied + k <= n, so both ranges are inside the
        // buffers the caller vouches for; they do not overlap (guest memory and our buffer).
        unsafe {
            let piece = v.iov_base.cast::<u8>().add(pos);
            match dir {
                Direction::Read => std::ptr::copy_nonoverlapping(buf.add(copied), piece, k),
                Direction::Write => std::ptr::copy_nonoverlapping(piece, buf.add(copied), k),
            }
        }
        copied += k;
        pos = 0;
    }
}

fn is_einval(r: &io::Result<()>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
}

/// Drops the first `n` bytes from the front of `iov` (after a short transfer).
fn advance(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut drop = 0;
    for v in iov.iter_mut() {
        if n >= v.iov_len {
            n -= v.iov_len;
            drop += 1;
        } else {
            // SAFETY: n < iov_len, so the new base stays inside the same buffer.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            break;
        }
    }
    iov.drain(..drop);
}

type VecIo =
    unsafe extern "C" fn(libc::c_int, *const libc::iovec, libc::c_int, libc::off_t) -> isize;

/// Runs `call` (preadv or pwritev) until every byte moved.
///
/// # Safety
/// As [`DiskIo::read_iov`] / [`DiskIo::write_iov`].
unsafe fn all(fd: libc::c_int, call: VecIo, iov: &[libc::iovec], offset: u64) -> io::Result<()> {
    let mut rest: Vec<libc::iovec> = iov.iter().copied().filter(|v| v.iov_len > 0).collect();
    let mut off = offset;
    while !rest.is_empty() {
        let n = rest.len().min(MAX_IOV);
        let pos = libc::off_t::try_from(off)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: the caller guarantees the buffers; n ≤ rest.len() fits a c_int.
        let r = unsafe { call(fd, rest.as_ptr(), n as libc::c_int, pos) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            // End of file inside the disk's capacity: the image shrank under us.
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        advance(&mut rest, r as usize);
        off += r as u64;
    }
    Ok(())
}

impl DiskIo for SyncIo {
    unsafe fn read_iov(&self, iov: &[libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from our caller.
        let r = unsafe { all(self.file.as_raw_fd(), libc::preadv, iov, offset) };
        match self.direct {
            // SAFETY: forwarded from our caller.
            Some(direct) if is_einval(&r) => unsafe {
                self.bounced(iov, offset, direct, Direction::Read)
            },
            _ => r,
        }
    }

    unsafe fn write_iov(&self, iov: &[libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from our caller.
        let r = unsafe { all(self.file.as_raw_fd(), libc::pwritev, iov, offset) };
        match self.direct {
            // SAFETY: forwarded from our caller.
            Some(direct) if is_einval(&r) => unsafe {
                self.bounced(iov, offset, direct, Direction::Write)
            },
            _ => r,
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match fallocate(&self.file, DISCARD_MODE, offset, len) {
            // A block device takes whole logical blocks only (a 4Kn disk, a guest discarding
            // in 512-byte sectors).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.device_block.is_some() => {
                self.fallocate_blocks(DISCARD_MODE, offset, len, false)
            }
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            DISCARD_MODE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match fallocate(&self.file, mode, offset, len) {
            // The file system cannot: write the zeroes.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.zero_fill(offset, len),
            // The block device takes whole logical blocks only.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.device_block.is_some() => {
                self.fallocate_blocks(mode, offset, len, true)
            }
            r => r,
        }
    }
}

impl SyncIo {
    /// fallocate `mode` over the whole blocks inside `[offset, offset + len)`, and zeroes
    /// written over the parts of blocks at its ends (at most two blocks): a range a block
    /// device refuses because it is not whole blocks. A hostile guest's 2 GiB discard from an
    /// odd sector so costs two blocks written, not 2 GiB of zeroes.
    fn fallocate_blocks(
        &self,
        mode: libc::c_int,
        offset: u64,
        len: u64,
        must_zero: bool,
    ) -> io::Result<()> {
        let b = self.device_block.unwrap_or(SECTOR_SIZE).max(SECTOR_SIZE);
        let end = offset.saturating_add(len);
        let (lo, hi) = (offset.next_multiple_of(b), end / b * b);
        if lo >= hi {
            return self.zero_fill(offset, len);
        }
        // The middle first: a device that cannot (EOPNOTSUPP) leaves the ends untouched.
        match fallocate(&self.file, mode, lo, hi - lo) {
            // WRITE_ZEROES must zero whatever the device offers (a DISCARD is advisory:
            // its refusal stands, as for an aligned one).
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && must_zero => {
                self.zero_fill(lo, hi - lo)?
            }
            r => r?,
        }
        self.zero_fill(offset, lo - offset)?;
        self.zero_fill(hi, end - hi)
    }

    /// Write zeroes over `[offset, offset + len)`, a MiB at a time (through the padding of
    /// [`DiskIo::write_iov`] where the image needs whole blocks).
    fn zero_fill(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // One buffer, aligned for O_DIRECT, and pieces that end on block boundaries after the
        // first: only the first and the last piece can need padding.
        let block = self
            .direct
            .map_or(SECTOR_SIZE, |d| d.block)
            .max(SECTOR_SIZE);
        let (zeroes, start) = Self::bounce(len.min(BOUNCE_MAX as u64) as usize, block as usize);
        let base = zeroes[start..].as_ptr();
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let to_boundary = (at.next_multiple_of(block) - at).min(len - done);
            let n = if to_boundary > 0 && done == 0 {
                to_boundary
            } else {
                (len - done).min(BOUNCE_MAX as u64)
            } as usize;
            let iov = [libc::iovec {
                iov_base: base.cast_mut().cast(),
                iov_len: n,
            }];
            // SAFETY: `zeroes` holds at least BOUNCE_MAX (or `len`) bytes from `base`, n no more.
            unsafe { self.write_iov(&iov, at)? };
            done += n as u64;
        }
        Ok(())
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    let l =
        libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: fallocate on an open fd; no memory involved.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, l) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[path = "io_tests.rs"]
mod tests;
