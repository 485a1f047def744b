//! Guest physical memory: layout, the memfd that backs it, and its KVM memory slots.
//!
//! Layout (x86_64):
//!
//! ```text
//! 0            .. 0x9fc00       RAM (boot structures, page tables, cmdline)
//! 0x9fc00      .. 0x100000      reserved (EBDA, VGA hole, BIOS area)
//! 0x100000     .. low_end       RAM (kernel, initrd at the top)
//! 0xc0000000   .. 0x100000000   32-bit MMIO hole: virtio-mmio windows from 0xd0000000,
//!                               IOAPIC 0xfec00000, LAPIC 0xfee00000, KVM TSS 0xfffbd000
//! 0x100000000  .. +rest         RAM above 4 GiB when the guest is larger than the hole start
//! ```
//!
//! All RAM is one memfd (so it can be shared with a vhost backend or kept in the fd store
//! later), mapped as one region per RAM range at consecutive file offsets.

use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

/// Start of the 32-bit MMIO hole: no RAM between here and 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above 4 GiB, where RAM continues.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window (4 KiB apart).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// End (exclusive) of the virtio-mmio window area.
pub const VIRTIO_MMIO_END: u64 = 0xe000_0000;
/// IOAPIC MMIO base (in-kernel irqchip).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base (in-kernel irqchip).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Three pages KVM needs for the real-mode TSS (`KVM_SET_TSS_ADDR`).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Start of the Extended BIOS Data Area; RAM below it is usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of "high" memory (1 MiB), where kernels load.
pub const HIMEM_START: u64 = 0x10_0000;

/// e820 / PVH memmap entry type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 / PVH memmap entry type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One memory map entry, shared by the e820 table (Linux boot) and the PVH memmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Failure while creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `memfd_create` failed.
    #[error("memfd_create for guest RAM failed")]
    Memfd(#[source] std::io::Error),
    /// `ftruncate` of the memfd failed.
    #[error("ftruncate of the guest RAM memfd to {size} bytes failed")]
    Truncate {
        /// Requested size.
        size: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Duplicating the memfd for a second region failed.
    #[error("dup of the guest RAM memfd failed")]
    Dup(#[source] std::io::Error),
    /// mmap of a region failed.
    #[error("mmap of guest RAM failed")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} at {addr:#x} failed")]
    SetUserMemoryRegion {
        /// Slot number.
        slot: u32,
        /// Guest physical start.
        addr: u64,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A region's host address could not be resolved.
    #[error("guest RAM region at {0:#x} has no host mapping")]
    HostAddress(u64),
}

/// Guest RAM ranges `(start, len)` for `mem_bytes` of RAM, split around the MMIO hole.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut v = vec![(0, low)];
    if mem_bytes > MMIO_HOLE_START {
        v.push((HIGH_RAM_START, mem_bytes - MMIO_HOLE_START));
    }
    v
}

/// End (exclusive) of RAM below the MMIO hole.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_HOLE_START)
}

/// The memory map reported to the guest (e820 or PVH memmap) for `mem_bytes` of RAM.
/// `mem_bytes` must be above [`HIMEM_START`] (the spec enforces a minimum).
pub fn memory_map(mem_bytes: u64) -> Vec<MemoryMapEntry> {
    let low_end = low_ram_end(mem_bytes);
    let mut v = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
        MemoryMapEntry {
            addr: HIMEM_START,
            size: low_end.saturating_sub(HIMEM_START),
            kind: E820_RAM,
        },
    ];
    if mem_bytes > MMIO_HOLE_START {
        v.push(MemoryMapEntry {
            addr: HIGH_RAM_START,
            size: mem_bytes - MMIO_HOLE_START,
            kind: E820_RAM,
        });
    }
    v
}

/// Guest RAM and the memfd behind it.
pub struct GuestRam {
    /// The mapped guest memory (cheap to clone: regions are reference counted).
    pub mem: GuestMemoryMmap,
    /// The memfd holding all RAM, ranges at consecutive offsets.
    pub memfd: File,
}

/// Creates `mem_bytes` of guest RAM in a memfd and maps it.
pub fn create_guest_ram(mem_bytes: u64) -> Result<GuestRam, MemoryError> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1
    // and touches no memory of ours beyond reading the name.
    let fd = unsafe { libc::memfd_create(c"volt-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let memfd = unsafe { File::from_raw_fd(fd) };
    memfd
        .set_len(mem_bytes)
        .map_err(|source| MemoryError::Truncate {
            size: mem_bytes,
            source,
        })?;
    let mut offset = 0u64;
    let mut ranges = Vec::new();
    for (start, len) in ram_ranges(mem_bytes) {
        let file = memfd.try_clone().map_err(MemoryError::Dup)?;
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(file, offset)),
        ));
        offset += len;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(MemoryError::Mmap)?;
    Ok(GuestRam { mem, memfd })
}

/// Registers every RAM region of `mem` as a KVM memory slot.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let addr = region.start_addr().raw_value();
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| MemoryError::HostAddress(addr))?;
        let slot = slot as u32;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: addr,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region maps `memory_size` bytes at `userspace_addr` and stays mapped for
        // the VM's lifetime: `mem` (which the VMM keeps until the VM fd is closed) owns it.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|source| MemoryError::SetUserMemoryRegion { slot, addr, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_guest_has_one_range_and_three_map_entries() {
        let m = 128 << 20;
        assert_eq!(ram_ranges(m), vec![(0, m)]);
        let map = memory_map(m);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            MemoryMapEntry {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[1].addr + map[1].size, HIMEM_START);
        assert_eq!(
            map[2],
            MemoryMapEntry {
                addr: HIMEM_START,
                size: m - HIMEM_START,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn large_guest_splits_around_the_hole() {
        let m = 4u64 << 30;
        assert_eq!(
            ram_ranges(m),
            vec![(0, MMIO_HOLE_START), (HIGH_RAM_START, m - MMIO_HOLE_START)]
        );
        let map = memory_map(m);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_HOLE_START);
        assert_eq!(
            map[3],
            MemoryMapEntry {
                addr: HIGH_RAM_START,
                size: 1 << 30,
                kind: E820_RAM
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, m - (HIMEM_START - EBDA_START));
        // Device windows and interrupt controllers never overlap RAM.
        for e in &map {
            for a in [VIRTIO_MMIO_BASE, IOAPIC_ADDR, LAPIC_ADDR, KVM_TSS_ADDR] {
                assert!(!(e.addr..e.addr + e.size).contains(&a));
            }
        }
    }

    #[test]
    fn memfd_backed_ram_is_shared_with_the_fd() {
        let ram = create_guest_ram(16 << 20).unwrap();
        ram.mem
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        ram.memfd.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.memfd.metadata().unwrap().len(), 16 << 20);
    }
}
