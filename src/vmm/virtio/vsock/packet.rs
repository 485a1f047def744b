//! virtio-vsock packets (virtio 1.2 §5.10.6): the 44-byte header, and descriptor chains read
//! and written with every guest-supplied length bounded. Nothing here trusts the guest: a
//! chain that is too short, writable where it must be readable (or the other way round), or
//! announces more payload than [`MAX_PKT_LEN`] or than it carries is an error, never a panic
//! and never an allocation sized by the guest.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Header length.
pub const HDR_LEN: usize = 44;
/// Largest payload the device accepts in one TX packet and puts in one RX packet (what
/// Linux's virtio transport uses, `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_LEN: u32 = 64 * 1024;
/// Most descriptors of one chain the device looks at (more is a malformed packet).
pub const MAX_SEGMENTS: usize = 64;

/// The only socket type the device supports.
pub const TYPE_STREAM: u16 = 1;

/// Operations.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// See [`SHUTDOWN_RCV`].
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`, little endian on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | (u64::from(le32(b, o + 4)) << 32)
}

impl Header {
    /// Decodes the wire form.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    /// Encodes the wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// What is wrong with a descriptor chain (the guest's fault; the packet is dropped and, when
/// its header could be read, answered with RST).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain shorter than the {HDR_LEN}-byte header ({0} bytes)")]
    ShortHeader(u64),
    #[error("TX descriptor chain has a device-writable descriptor")]
    WritableInTx,
    #[error("RX descriptor chain has a device-readable descriptor")]
    ReadableInRx,
    #[error("descriptor chain has more than {MAX_SEGMENTS} descriptors")]
    TooManySegments,
    #[error("descriptor at {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("packet announces {len} payload bytes, more than the {MAX_PKT_LEN}-byte limit")]
    TooLong { len: u32 },
    #[error("packet announces {len} payload bytes but its chain carries only {have}")]
    Truncated { len: u32, have: u64 },
}

/// A chain's buffers as (address, length) pairs, all inside guest memory.
#[derive(Debug, Default, Clone)]
pub struct Segments {
    segs: Vec<(GuestAddress, u32)>,
    total: u64,
    /// Descriptors walked, empty ones included: a chain of empty descriptors (an indirect
    /// table holds up to 65535) must hit the limit too, or one pass walks millions of them.
    descs: usize,
}

impl Segments {
    /// Collects the descriptors of `chain`, which must all be device-writable (`writable`)
    /// or all device-readable.
    pub fn collect<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        writable: bool,
    ) -> Result<Segments, PacketError>
    where
        M: std::ops::Deref,
        M::Target: GuestMemory,
    {
        let mut s = Segments::default();
        for d in chain {
            s.push(&d, mem, writable)?;
        }
        Ok(s)
    }

    fn push(
        &mut self,
        d: &Descriptor,
        mem: &GuestMemoryMmap,
        writable: bool,
    ) -> Result<(), PacketError> {
        if d.is_write_only() != writable {
            return Err(if writable {
                PacketError::ReadableInRx
            } else {
                PacketError::WritableInTx
            });
        }
        if self.descs == MAX_SEGMENTS {
            return Err(PacketError::TooManySegments);
        }
        self.descs += 1;
        let (addr, len) = (d.addr(), d.len());
        if len == 0 {
            return Ok(());
        }
        if !vm_memory::GuestMemoryBackend::check_range(mem, addr, len as usize) {
            return Err(PacketError::OutsideMemory {
                addr: addr.raw_value(),
                len,
            });
        }
        self.segs.push((addr, len));
        self.total += u64::from(len);
        Ok(())
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Copies `buf.len()` bytes starting `offset` bytes into the chain; false if the chain
    /// is too short or memory fails.
    pub fn read_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> bool {
        self.walk(offset, buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range], addr).is_ok()
        })
    }

    /// Copies `buf` into the chain starting `offset` bytes in; false if it does not fit.
    pub fn write_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &[u8]) -> bool {
        self.walk(offset, buf.len(), |addr, range| {
            mem.write_slice(&buf[range], addr).is_ok()
        })
    }

    /// Calls `f(guest address, range of the caller's buffer)` for each piece of
    /// `offset..offset+len`.
    fn walk(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> bool {
        let Some(end) = offset.checked_add(len as u64) else {
            return false;
        };
        if end > self.total {
            return false;
        }
        let mut pos = 0u64; // chain offset of the current segment
        let mut done = 0usize; // bytes of the caller's buffer handled
        for &(addr, seg_len) in &self.segs {
            let seg_end = pos + u64::from(seg_len);
            let want = offset + done as u64;
            if done < len && want < seg_end {
                let skip = want - pos;
                let n = ((seg_end - want) as usize).min(len - done);
                if !f(addr.unchecked_add(skip), done..done + n) {
                    return false;
                }
                done += n;
            }
            pos = seg_end;
        }
        done == len
    }
}

/// A packet the guest sent: its header and where its payload lies.
#[derive(Debug, Clone)]
pub struct TxPacket {
    pub hdr: Header,
    /// The whole chain; the payload is `HDR_LEN..HDR_LEN + hdr.len`.
    pub segs: Segments,
}

impl TxPacket {
    /// Parses a TX chain. On a chain whose header could be read but which is otherwise bad,
    /// the error comes with that header (to answer with RST).
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
    ) -> Result<TxPacket, (Option<Header>, PacketError)>
    where
        M: std::ops::Deref,
        M::Target: GuestMemory,
    {
        let segs = Segments::collect(chain, mem, false).map_err(|e| (None, e))?;
        let mut raw = [0u8; HDR_LEN];
        if !segs.read_at(mem, 0, &mut raw) {
            return Err((None, PacketError::ShortHeader(segs.len())));
        }
        let hdr = Header::from_bytes(&raw);
        if hdr.len > MAX_PKT_LEN {
            return Err((Some(hdr), PacketError::TooLong { len: hdr.len }));
        }
        let have = segs.len() - HDR_LEN as u64;
        if u64::from(hdr.len) > have {
            return Err((Some(hdr), PacketError::Truncated { len: hdr.len, have }));
        }
        Ok(TxPacket { hdr, segs })
    }

    /// Copies the payload into `buf` (which must hold `hdr.len` bytes); false on a memory
    /// error.
    pub fn read_payload(&self, mem: &GuestMemoryMmap, buf: &mut [u8]) -> bool {
        let n = self.hdr.len as usize;
        buf.len() >= n && self.segs.read_at(mem, HDR_LEN as u64, &mut buf[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len: 77,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 3,
            buf_alloc: 1 << 18,
            fwd_cnt: 0xdead_beef,
        };
        let b = h.to_bytes();
        assert_eq!(&b[16..20], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn empty_descriptors_count_against_the_segment_limit() {
        use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use virtio_queue::QueueT;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 256);
        let hdr = Header {
            type_: TYPE_STREAM,
            op: op::RW,
            ..Header::default()
        };
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x8_0000))
            .unwrap();
        let chain = |empty: u16| -> Vec<RawDescriptor> {
            let mut d = vec![RawDescriptor::from(SplitDescriptor::new(
                0x8_0000,
                HDR_LEN as u32,
                1,
                1,
            ))];
            for i in 1..=empty {
                let flags = if i == empty { 0 } else { 1 };
                d.push(RawDescriptor::from(SplitDescriptor::new(
                    0x9_0000,
                    0,
                    flags,
                    i + 1,
                )));
            }
            d
        };
        let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
        // The header and 63 empty descriptors: within the limit.
        vq.add_desc_chains(&chain(MAX_SEGMENTS as u16 - 1), 0)
            .unwrap();
        let c = q.pop_descriptor_chain(&mem).unwrap();
        assert!(TxPacket::parse(c, &mem).is_ok());
        // One more empty one: refused, like any chain of more than 64 descriptors.
        vq.add_desc_chains(&chain(MAX_SEGMENTS as u16), 0).unwrap();
        let c = q.pop_descriptor_chain(&mem).unwrap();
        assert!(matches!(
            TxPacket::parse(c, &mem),
            Err((None, PacketError::TooManySegments))
        ));
    }

    #[test]
    fn segments_read_and_write_across_descriptors() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let s = Segments {
            segs: vec![(GuestAddress(0x1000), 3), (GuestAddress(0x2000), 5)],
            total: 8,
            descs: 2,
        };
        assert!(s.write_at(&mem, 1, b"abcdef"));
        let mut out = [0u8; 8];
        assert!(s.read_at(&mem, 0, &mut out));
        assert_eq!(&out[1..7], b"abcdef");
        let mut b = [0u8; 2];
        mem.read_slice(&mut b, GuestAddress(0x1001)).unwrap();
        assert_eq!(&b, b"ab");
        assert!(!s.write_at(&mem, 4, b"12345"), "past the end");
        assert!(!s.read_at(&mem, u64::MAX, &mut b), "offset overflow");
    }
}
