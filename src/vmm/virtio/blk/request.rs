//! A virtio-blk request: parsed from a descriptor chain and checked, in one place, before the
//! I/O engine sees it (virtio 1.x §5.2.6).
//!
//! The chain is taken as the spec frames it, without assuming descriptor boundaries
//! (VIRTIO_F_VERSION_1 implies ANY_LAYOUT): device-readable bytes first (the 16-byte header,
//! then data for OUT/DISCARD/WRITE_ZEROES), then device-writable bytes (data for IN/GET_ID),
//! whose last byte is the status. Every piece must lie inside one guest memory region;
//! every length is summed with checked arithmetic; sector ranges are checked against the
//! disk's capacity. A chain with no writable status byte cannot be answered and goes back
//! used with length 0; anything else wrong is answered with IOERR or UNSUPP.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::vmm::disk::SECTOR_SIZE;

/// Size of `struct virtio_blk_outhdr`.
pub const HDR_LEN: u64 = 16;
/// Size of one DISCARD / WRITE_ZEROES segment.
pub const DWZ_SEG_LEN: u64 = 16;
/// Bytes GET_ID writes at most.
pub const ID_BYTES: u64 = 20;
/// Flag of a WRITE_ZEROES segment: the device may deallocate the range.
pub const DWZ_FLAG_UNMAP: u32 = 1;
/// Most descriptors in one chain: `seg_max` data segments, the header and the status, as
/// Linux builds them (its scatterlists hold seg_max + 2 entries). A direct chain cannot be
/// longer (the queue holds SEG_MAX + 2), but virtio-queue follows indirect tables of up to
/// 65535 descriptors although VIRTIO_RING_F_INDIRECT_DESC is not offered: such a chain is
/// answered IOERR instead of being collected and served.
pub const MAX_DESCS: usize = super::SEG_MAX as usize + 2;

/// Request types.
pub mod kind {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values.
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// One descriptor as the chain gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A piece of guest memory, checked to lie in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u64,
}

/// A parsed request: header fields, where its data is and where its status goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `type` from the header.
    pub kind: u32,
    /// `sector` from the header (512-byte units).
    pub sector: u64,
    /// Data: device-readable bytes after the header (OUT, DISCARD, WRITE_ZEROES) or
    /// device-writable bytes before the status (IN, GET_ID); empty for the others.
    pub data: Vec<Segment>,
    /// Sum of `data` lengths.
    pub data_len: u64,
    /// The status byte.
    pub status: GuestAddress,
    /// DISCARD / WRITE_ZEROES: the segment, read from guest memory once, here. The throttle's
    /// charge and the I/O both use this copy: read again at execution, another vCPU could
    /// have enlarged the range after it was charged.
    pub dwz: Option<DwzSegment>,
}

/// What is wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// No device-writable byte at the end for the status: unanswerable.
    NoStatus,
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// Fewer than 16 device-readable bytes.
    ShortHeader(u64),
    /// A descriptor outside guest memory (or across a region boundary).
    OutOfMemory(u64),
    /// More than [`MAX_DESCS`] descriptors.
    TooLong,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::NoStatus => write!(f, "has no writable status byte"),
            Fault::ReadableAfterWritable => {
                write!(f, "has a device-readable buffer after a writable one")
            }
            Fault::ShortHeader(n) => write!(f, "has a {n}-byte header (16 needed)"),
            Fault::OutOfMemory(a) => write!(f, "points outside guest memory ({a:#x})"),
            Fault::TooLong => write!(f, "has more than {MAX_DESCS} descriptors"),
        }
    }
}

/// Why [`parse`] failed: the fault, and the status byte when there is one to answer on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub fault: Fault,
    pub status: Option<GuestAddress>,
}

fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> bool {
    len == 0
        || usize::try_from(len)
            .ok()
            .is_some_and(|l| mem.get_slice(addr, l).is_ok())
}

/// Pushes the part `[from, to)` of the concatenation of `descs` (byte offsets) as segments.
fn take_range(descs: &[Desc], from: u64, to: u64, out: &mut Vec<Segment>) {
    let mut off = 0u64;
    for d in descs {
        let len = u64::from(d.len);
        let (start, end) = (off, off + len);
        off = end;
        let (s, e) = (start.max(from), end.min(to));
        if s < e {
            out.push(Segment {
                addr: GuestAddress(d.addr.0 + (s - start)),
                len: e - s,
            });
        }
    }
}

/// Parses a chain (its descriptors in order) against guest memory.
pub fn parse(descs: &[Desc], mem: &GuestMemoryMmap) -> Result<Request, ParseError> {
    // The status byte: the last byte of the last descriptor, which must be writable.
    let status = match descs.last() {
        Some(d) if d.write && d.len > 0 => {
            let a = d.addr.0.checked_add(u64::from(d.len) - 1);
            match a.map(GuestAddress) {
                Some(a) if in_memory(mem, a, 1) => a,
                _ => {
                    return Err(ParseError {
                        fault: Fault::NoStatus,
                        status: None,
                    })
                }
            }
        }
        _ => {
            return Err(ParseError {
                fault: Fault::NoStatus,
                status: None,
            })
        }
    };
    let err = |fault| ParseError {
        fault,
        status: Some(status),
    };
    if descs.len() > MAX_DESCS {
        return Err(err(Fault::TooLong));
    }
    let split = descs.iter().position(|d| d.write).unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(split);
    if writable.iter().any(|d| !d.write) {
        return Err(err(Fault::ReadableAfterWritable));
    }
    for d in descs {
        if !in_memory(mem, d.addr, u64::from(d.len)) {
            return Err(err(Fault::OutOfMemory(d.addr.0)));
        }
    }
    // Lengths are u32 and a chain is at most MAX_DESCS long: u64 cannot overflow.
    let readable_len: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
    let writable_len: u64 = writable.iter().map(|d| u64::from(d.len)).sum();
    if readable_len < HDR_LEN {
        return Err(err(Fault::ShortHeader(readable_len)));
    }
    let mut hdr = [0u8; HDR_LEN as usize];
    let mut hdr_segs = Vec::with_capacity(2);
    take_range(readable, 0, HDR_LEN, &mut hdr_segs);
    let mut off = 0usize;
    for s in &hdr_segs {
        let n = s.len as usize;
        if mem.read_slice(&mut hdr[off..off + n], s.addr).is_err() {
            return Err(err(Fault::OutOfMemory(s.addr.0)));
        }
        off += n;
    }
    let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    let mut data = Vec::new();
    match kind {
        kind::OUT | kind::DISCARD | kind::WRITE_ZEROES => {
            take_range(readable, HDR_LEN, readable_len, &mut data)
        }
        kind::IN | kind::GET_ID => take_range(writable, 0, writable_len - 1, &mut data),
        _ => {}
    }
    let data_len = data.iter().map(|s| s.len).sum();
    let dwz = match kind {
        kind::DISCARD | kind::WRITE_ZEROES if data_len == DWZ_SEG_LEN => {
            let mut raw = [0u8; DWZ_SEG_LEN as usize];
            let mut off = 0usize;
            for s in &data {
                let n = s.len as usize;
                if mem.read_slice(&mut raw[off..off + n], s.addr).is_err() {
                    return Err(err(Fault::OutOfMemory(s.addr.0)));
                }
                off += n;
            }
            Some(DwzSegment::from_bytes(&raw))
        }
        _ => None,
    };
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
        dwz,
    })
}

/// What the device offers and the driver accepted, for [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    pub read_only: bool,
    /// VIRTIO_BLK_F_DISCARD negotiated.
    pub discard: bool,
    /// VIRTIO_BLK_F_WRITE_ZEROES negotiated.
    pub write_zeroes: bool,
    /// Largest data transfer of one IN/OUT request, in bytes.
    pub max_transfer: u64,
    /// Largest data segment of an IN/OUT request, in bytes: `size_max` when the driver
    /// accepted VIRTIO_BLK_F_SIZE_MAX (it is then bound by it: Linux makes it the queue's
    /// max_segment_size, so it never sends more), else unbounded.
    pub max_segment: u64,
    /// `max_discard_sectors` / `max_write_zeroes_sectors`.
    pub max_dwz_sectors: u32,
    /// What a transfer is padded to on the host (bytes): the image's block without the page
    /// cache (4096 on a 4Kn disk), else 512. The throttle charges what the host really moves.
    pub pad_to: u64,
}

/// Whether `[sector, sector + sectors)` lies on the disk.
pub fn range_ok(sector: u64, sectors: u64, capacity: u64) -> bool {
    sector
        .checked_add(sectors)
        .is_some_and(|end| end <= capacity)
}

/// Checks a parsed request against the disk; `Err(status)` answers it without I/O.
pub fn check(req: &Request, disk: &DiskInfo) -> Result<(), u8> {
    match req.kind {
        kind::IN | kind::OUT => {
            if !req.data_len.is_multiple_of(SECTOR_SIZE)
                || req.data_len > disk.max_transfer
                || req.data.iter().any(|s| s.len > disk.max_segment)
            {
                return Err(status::IOERR);
            }
            if !range_ok(req.sector, req.data_len / SECTOR_SIZE, disk.capacity) {
                return Err(status::IOERR);
            }
            if req.kind == kind::OUT && disk.read_only {
                return Err(status::IOERR);
            }
            Ok(())
        }
        kind::FLUSH | kind::GET_ID => Ok(()),
        kind::DISCARD | kind::WRITE_ZEROES => {
            let negotiated = if req.kind == kind::DISCARD {
                disk.discard
            } else {
                disk.write_zeroes
            };
            // One segment per request (max_*_seg = 1), as QEMU.
            if !negotiated || req.data_len != DWZ_SEG_LEN {
                return Err(status::UNSUPP);
            }
            if disk.read_only {
                return Err(status::IOERR);
            }
            Ok(())
        }
        _ => Err(status::UNSUPP),
    }
}

/// One DISCARD / WRITE_ZEROES segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwzSegment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}

impl DwzSegment {
    /// Decodes the 16 little-endian bytes of a segment.
    pub fn from_bytes(b: &[u8; 16]) -> DwzSegment {
        DwzSegment {
            sector: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            num_sectors: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Checks a segment of a request of type `kind`; `Ok` gives the byte range.
    pub fn check(&self, kind: u32, disk: &DiskInfo) -> Result<(u64, u64), u8> {
        let allowed = if kind == self::kind::WRITE_ZEROES {
            DWZ_FLAG_UNMAP
        } else {
            0
        };
        if self.flags & !allowed != 0 {
            return Err(status::UNSUPP);
        }
        if self.num_sectors > disk.max_dwz_sectors
            || !range_ok(self.sector, u64::from(self.num_sectors), disk.capacity)
        {
            return Err(status::IOERR);
        }
        // In range of a capacity that is a byte count / 512: the products cannot overflow.
        Ok((
            self.sector * SECTOR_SIZE,
            u64::from(self.num_sectors) * SECTOR_SIZE,
        ))
    }
}
