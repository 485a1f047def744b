//! Boot-protocol structures: the PVH `hvm_start_info` with its memmap and module list, the
//! Linux zero page (`boot_params` with e820), and the GDT and identity-mapped page tables the
//! 64-bit Linux entry needs.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    BootError, InitrdPlacement, BOOT_GDT_ADDR, BOOT_IDT_ADDR, CMDLINE_ADDR, PDE_ADDR, PDPTE_ADDR,
    PML4_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR,
};
use crate::vmm::memory::MemoryMapEntry;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
pub(super) const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
/// loadflags: CAN_USE_HEAP.
const CAN_USE_HEAP: u8 = 0x80;

/// PVH start info, memory map and module list for `map`.
pub fn build_start_info(
    map: &[MemoryMapEntry],
    initrd: Option<InitrdPlacement>,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<_> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_ADDR
        },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: 0,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    (info, memmap, modules)
}

/// Linux zero page for `map`, the command line length and the initrd.
pub fn build_boot_params(
    hdr: Option<setup_header>,
    map: &[MemoryMapEntry],
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> boot_params {
    let mut p = boot_params::default();
    if let Some(h) = hdr {
        p.hdr = h;
    }
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.loadflags |= CAN_USE_HEAP;
    p.hdr.heap_end_ptr = 0xfe00;
    if p.hdr.kernel_alignment == 0 {
        p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some(i) = initrd {
        p.hdr.ramdisk_image = i.addr as u32;
        p.hdr.ramdisk_size = i.size as u32;
    }
    for (slot, e) in p.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    p.e820_entries = map.len().min(p.e820_table.len()) as u8;
    p
}

/// Flat GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18).
pub const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff, // code: present, DPL0, exec/read, accessed, L=1, G=1
    0x00cf_9300_0000_ffff, // data: present, DPL0, read/write, accessed, D/B=1, G=1
    0x008f_8b00_0000_ffff, // TSS: present, busy 64-bit TSS
];

pub(super) fn write_gdt_and_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))
            .map_err(|_| BootError::WriteTables("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_ADDR))
        .map_err(|_| BootError::WriteTables("IDT"))?;
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> 2 MiB page i (present, writable, PS).
    mem.write_obj(PDPTE_ADDR | 0x03, GuestAddress(PML4_ADDR))
        .map_err(|_| BootError::WriteTables("page tables"))?;
    mem.write_obj(PDE_ADDR | 0x03, GuestAddress(PDPTE_ADDR))
        .map_err(|_| BootError::WriteTables("page tables"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_ADDR + i * 8))
            .map_err(|_| BootError::WriteTables("page tables"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::{memory_map, E820_RAM, HIMEM_START};

    #[test]
    fn start_info_layout_matches_the_pvh_abi() {
        assert_eq!(std::mem::size_of::<hvm_start_info>(), 56);
        assert_eq!(std::mem::size_of::<hvm_memmap_table_entry>(), 24);
        assert_eq!(std::mem::size_of::<hvm_modlist_entry>(), 32);
        let map = memory_map(64 << 20);
        let initrd = InitrdPlacement {
            addr: 0x300_0000,
            size: 0x1000,
        };
        let (info, memmap, mods) = build_start_info(&map, Some(initrd));
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_ADDR);
        assert_eq!(memmap[2].addr, HIMEM_START);
        assert_eq!(memmap[2].type_, E820_RAM);
        assert_eq!(mods[0].paddr, 0x300_0000);
    }

    #[test]
    fn boot_params_carry_e820_cmdline_and_initrd() {
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
        let map = memory_map(256 << 20);
        let initrd = InitrdPlacement {
            addr: 0xf00_0000,
            size: 0x12345,
        };
        let p = build_boot_params(None, &map, 42, Some(initrd));
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0xf00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x12345);
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table[2];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM)
        );
    }
}
