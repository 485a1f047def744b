//! Kernel, initrd and boot-protocol setup in guest memory.
//!
//! Three kernel formats, picked from the file's magic:
//! - ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note: PVH boot (`hvm_start_info` + memmap, the vCPU
//!   enters the note's address in 32-bit protected mode with `ebx` = start info);
//! - ELF without the note: 64-bit Linux boot protocol at the ELF entry (zero page, e820);
//! - bzImage: linux-loader's `BzImage`, 64-bit entry at `code32_start + 0x200`.
//!
//! Low-memory layout of the boot structures:
//!
//! ```text
//! 0x500   GDT          0x520  IDT (empty)
//! 0x6000  hvm_start_info, 0x6040 PVH module list, 0x7000 PVH memmap  (PVH)
//! 0x7000  zero page (boot_params)                                    (Linux)
//! 0x8ff0  boot stack   0x9000 PML4  0xa000 PDPT  0xb000 PD (identity map of 1 GiB)
//! 0x20000 kernel command line
//! 0x9fc00 MP table (mptable.rs; reserved in the e820 map)
//! ```

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub mod mptable;
mod params;

pub use params::{build_boot_params, build_start_info, GDT};
use params::{write_gdt_and_page_tables, KERNEL_HDR_MAGIC};

use super::memory::{self, HIMEM_START};

/// GDT address.
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// IDT address (an empty IDT: the kernel installs its own).
pub const BOOT_IDT_ADDR: u64 = 0x520;
/// `hvm_start_info` address (PVH).
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
/// PVH module list (initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// Zero page (`boot_params`, Linux boot protocol).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer (Linux boot protocol).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_ADDR: u64 = 0xa000;
/// Page directory (512 x 2 MiB pages = 1 GiB identity map).
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line address.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Command line capacity in bytes (with the NUL).
pub const CMDLINE_CAPACITY: usize = 4096;

const PAGE_SIZE: u64 = 0x1000;

// The boot structures must not overlap each other (start info 56 bytes, one 32-byte module,
// at most 4 memmap entries of 24 bytes, page tables, command line).
const _: () = assert!(PVH_START_INFO_ADDR + 56 <= PVH_MODLIST_ADDR);
const _: () = assert!(PVH_MODLIST_ADDR + 32 <= PVH_MEMMAP_ADDR);
const _: () = assert!(PVH_MEMMAP_ADDR + 24 * 4 <= BOOT_STACK_POINTER);
const _: () = assert!(ZERO_PAGE_ADDR + 4096 <= BOOT_STACK_POINTER + 0x10);
const _: () = assert!(PDE_ADDR + 4096 <= CMDLINE_ADDR);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_CAPACITY as u64 <= memory::EBDA_START);

/// Failure while loading the kernel or writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel image {path}")]
    ReadKernel {
        /// Kernel path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither ELF nor bzImage.
    #[error("kernel image {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat(String),
    /// linux-loader refused the image.
    #[error("loading kernel image {path} into guest memory failed")]
    Load {
        /// Kernel path.
        path: String,
        /// Cause.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd could not be read.
    #[error("cannot read initrd {path}")]
    ReadInitrd {
        /// Initrd path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("initrd of {size} bytes does not fit in guest memory below {limit:#x} (kernel ends at {kernel_end:#x})")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Highest usable address.
        limit: u64,
        /// Kernel end.
        kernel_end: u64,
    },
    /// Copying the initrd to guest memory failed.
    #[error("writing initrd to guest memory at {0:#x} failed")]
    WriteInitrd(u64),
    /// The command line could not be built.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// The command line could not be written.
    #[error("writing the kernel command line to guest memory failed")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// linux-loader's configurator could not write boot parameters.
    #[error("writing boot parameters to guest memory failed")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// GDT or page tables could not be written.
    #[error("writing {0} to guest memory failed")]
    WriteTables(&'static str),
    /// The MP table could not be built or written.
    #[error("setting up the MP table failed")]
    MpTable(#[from] mptable::MptableError),
}

/// How the kernel was loaded and how its first vCPU must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF with a PVH entry note.
    PvhElf,
    /// ELF without PVH note: 64-bit Linux boot protocol.
    Elf64,
    /// bzImage: 64-bit Linux boot protocol.
    BzImage,
}

/// The boot CPU's entry state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// 32-bit protected mode at `entry`, `ebx` = `start_info`.
    Pvh {
        /// PVH entry point.
        entry: u64,
        /// `hvm_start_info` address.
        start_info: u64,
    },
    /// 64-bit long mode at `entry`, `rsi` = `zero_page`.
    Linux64 {
        /// 64-bit entry point.
        entry: u64,
        /// `boot_params` address.
        zero_page: u64,
    },
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Detected format.
    pub format: KernelFormat,
    /// Entry point for the format's protocol.
    pub entry: u64,
    /// First address past the kernel image.
    pub end: u64,
    /// bzImage setup header, passed on in the zero page.
    pub setup_header: Option<setup_header>,
}

/// Initrd placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest address (page aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Loads the kernel at `path` into `mem`, detecting its format.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let read_err = |source| BootError::ReadKernel {
        path: path_str(path),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).map_err(read_err)?;
    let mut hdr_magic = [0u8; 4];
    let is_bzimage = f.seek(SeekFrom::Start(0x202)).is_ok()
        && f.read_exact(&mut hdr_magic).is_ok()
        && u32::from_le_bytes(hdr_magic) == KERNEL_HDR_MAGIC;
    f.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let load_err = |source| BootError::Load {
        path: path_str(path),
        source,
    };
    if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        let (format, entry) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) => (KernelFormat::PvhElf, a.0),
            _ => (KernelFormat::Elf64, r.kernel_load.0),
        };
        Ok(LoadedKernel {
            format,
            entry,
            end: r.kernel_end,
            setup_header: None,
        })
    } else if is_bzimage {
        let r =
            BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        Ok(LoadedKernel {
            format: KernelFormat::BzImage,
            // The 64-bit entry sits 0x200 past the start of the protected-mode kernel.
            entry: r.kernel_load.0 + 0x200,
            end: r.kernel_end,
            setup_header: r.setup_header,
        })
    } else {
        Err(BootError::UnknownFormat(path_str(path)))
    }
}

/// Where an initrd of `size` bytes goes: as high as possible below `limit`, page aligned,
/// above `kernel_end`.
pub fn place_initrd(size: u64, kernel_end: u64, limit: u64) -> Result<InitrdPlacement, BootError> {
    let too_large = BootError::InitrdTooLarge {
        size,
        limit,
        kernel_end,
    };
    let addr = limit.checked_sub(size).ok_or(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(BootError::InitrdTooLarge {
            size,
            limit,
            kernel_end,
        });
    }
    Ok(InitrdPlacement { addr, size })
}

/// Loads the initrd at `path` high in low memory, below `limit`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdPlacement, BootError> {
    let read_err = |source| BootError::ReadInitrd {
        path: path_str(path),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let size = f.metadata().map_err(read_err)?.len();
    let place = place_initrd(size, kernel_end, limit)?;
    mem.read_exact_volatile_from(GuestAddress(place.addr), &mut f, size as usize)
        .map_err(|_| BootError::WriteInitrd(place.addr))?;
    Ok(place)
}

/// Builds the command line from the user's text (checked by linux-loader).
pub fn build_cmdline(user: &str) -> Result<Cmdline, BootError> {
    let user = user.trim();
    if user.is_empty() {
        return Cmdline::new(CMDLINE_CAPACITY).map_err(BootError::Cmdline);
    }
    Cmdline::try_from(user, CMDLINE_CAPACITY).map_err(BootError::Cmdline)
}

/// Writes the command line at [`CMDLINE_ADDR`].
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline).map_err(BootError::WriteCmdline)
}

/// Highest address (exclusive) an initrd may end at for this kernel and memory size.
pub fn initrd_limit(kernel: &LoadedKernel, mem_bytes: u64) -> u64 {
    let low = memory::low_ram_end(mem_bytes);
    match kernel.setup_header {
        Some(h) if h.initrd_addr_max != 0 => low.min(u64::from(h.initrd_addr_max) + 1),
        _ => low,
    }
}

/// Writes the boot-protocol structures and returns the boot CPU's entry state.
pub fn configure_boot(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    mem_bytes: u64,
    initrd: Option<InitrdPlacement>,
) -> Result<BootEntry, BootError> {
    write_cmdline(mem, cmdline)?;
    let map = memory::memory_map(mem_bytes);
    match kernel.format {
        KernelFormat::PvhElf => {
            let (info, memmap, modules) = build_start_info(&map, initrd);
            let mut params = BootParams::new(&info, GuestAddress(PVH_START_INFO_ADDR));
            params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
            if !modules.is_empty() {
                params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
            }
            PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::BootParams)?;
            Ok(BootEntry::Pvh {
                entry: kernel.entry,
                start_info: PVH_START_INFO_ADDR,
            })
        }
        KernelFormat::Elf64 | KernelFormat::BzImage => {
            let len = cmdline
                .as_cstring()
                .map(|c| c.as_bytes().len())
                .map_err(BootError::Cmdline)?;
            let zp = build_boot_params(kernel.setup_header, &map, len, initrd);
            let params = BootParams::new(&zp, GuestAddress(ZERO_PAGE_ADDR));
            LinuxBootConfigurator::write_bootparams(&params, mem).map_err(BootError::BootParams)?;
            write_gdt_and_page_tables(mem)?;
            Ok(BootEntry::Linux64 {
                entry: kernel.entry,
                zero_page: ZERO_PAGE_ADDR,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::create_guest_ram;

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let p = place_initrd(0x1800, 0x20_0000, 0x800_0000).unwrap();
        assert_eq!(p.addr, 0x800_0000 - 0x2000);
        assert_eq!(p.addr % 4096, 0);
        assert!(p.addr + p.size <= 0x800_0000);
        assert!(place_initrd(0x800_0000, 0x20_0000, 0x800_0000).is_err());
        assert!(place_initrd(0x100, 0x800_0000, 0x800_0000).is_err());
    }

    #[test]
    fn cmdline_is_built_and_written() {
        let mut c = build_cmdline("  console=ttyS0 volt.exit=3 ").unwrap();
        c.add_virtio_mmio_device(0x1000, GuestAddress(0xd000_0000), 5, None)
            .unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 volt.exit=3 virtio_mmio.device=4K@0xd0000000:5"
        );
        let ram = create_guest_ram(16 << 20).unwrap();
        write_cmdline(&ram.mem, &c).unwrap();
        let mut buf = [0u8; 13];
        ram.mem
            .read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0");
        assert!(build_cmdline("")
            .unwrap()
            .as_cstring()
            .unwrap()
            .as_bytes()
            .is_empty());
    }

    #[test]
    fn unknown_kernel_format_is_rejected() {
        let dir = std::env::temp_dir().join(format!("volt-boot-test-{}", std::process::id()));
        std::fs::write(&dir, [0u8; 1024]).unwrap();
        let ram = create_guest_ram(16 << 20).unwrap();
        let e = load_kernel(&ram.mem, &dir).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(e, BootError::UnknownFormat(_)), "{e}");
    }
}
