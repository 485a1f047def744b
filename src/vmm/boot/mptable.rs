//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its vCPUs,
//! its IOAPIC and the routing of ISA and virtio-mmio interrupts.
//!
//! Written at [`MPTABLE_START`] (0x9fc00, the last KiB of base memory, inside the e820 range
//! the memory map reserves), where Linux's `find_smp_config` scans for the floating pointer:
//!
//! ```text
//! 0x9fc00  MP floating pointer structure (16 bytes, "_MP_", points at the config table)
//! 0x9fc10  MP configuration table header (44 bytes, "PCMP")
//!          processor entries, one per vCPU (20 bytes each; APIC id = vCPU id, vCPU 0 = BSP)
//!          bus entry: bus 0, "ISA   "
//!          IOAPIC entry: id = vCPU count, 0xfec00000
//!          I/O interrupt entries: ISA IRQ n -> IOAPIC pin n, for IRQs 0-15 and the
//!          virtio-mmio IRQs (KVM's default GSI routing maps GSI n to IOAPIC pin n)
//!          local interrupt entries: ExtINT -> BSP LINT0, NMI -> all LINT1
//! ```
//!
//! Only the floating pointer has to lie in that KiB; with many vCPUs the configuration table
//! runs on past 0xa0000, still inside the reserved range (and inside guest RAM).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vmm::memory::{EBDA_START, HIMEM_START, IOAPIC_ADDR, LAPIC_ADDR};
use crate::vmm::virtio::manager::VIRTIO_IRQS;

/// Where the MP floating pointer (and right after it the configuration table) goes.
pub const MPTABLE_START: u64 = EBDA_START;
/// Most vCPUs the table can describe: xAPIC ids are 8 bits, 255 is broadcast and the IOAPIC
/// takes the id after the last vCPU.
pub const MAX_CPUS: u8 = 254;

/// Floating pointer structure size.
pub const MPF_SIZE: usize = 16;
/// Configuration table header size.
pub const MPC_HEADER_SIZE: usize = 44;
/// Processor entry size.
pub const CPU_ENTRY_SIZE: usize = 20;
/// Bus, IOAPIC, I/O interrupt and local interrupt entry size.
pub const SMALL_ENTRY_SIZE: usize = 8;

/// Entry type: processor.
pub const MP_PROCESSOR: u8 = 0;
/// Entry type: bus.
pub const MP_BUS: u8 = 1;
/// Entry type: IOAPIC.
pub const MP_IOAPIC: u8 = 2;
/// Entry type: I/O interrupt assignment.
pub const MP_INTSRC: u8 = 3;
/// Entry type: local interrupt assignment.
pub const MP_LINTSRC: u8 = 4;

/// Interrupt type: vectored interrupt from the IOAPIC.
const MP_INT: u8 = 0;
/// Interrupt type: NMI.
const MP_NMI: u8 = 1;
/// Interrupt type: ExtINT (8259 PIC).
const MP_EXTINT: u8 = 3;
/// Polarity and trigger mode "conforms to the bus" (ISA: active high, edge).
const MP_IRQ_DEFAULT: u16 = 0;
/// Processor flags: enabled, bootstrap processor.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// IOAPIC flags: usable.
const IOAPIC_USABLE: u8 = 1;
/// Local APIC version of KVM's in-kernel xAPIC (integrated APIC).
const LAPIC_VERSION: u8 = 0x14;
/// Version of KVM's in-kernel IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature: family 6 (Linux only reports it).
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX bits reported in the processor entries: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Number of ISA IRQs (legacy PIC lines).
const ISA_IRQS: u8 = 16;
/// IOAPIC pins of KVM's in-kernel IOAPIC.
const IOAPIC_PINS: u32 = 24;

/// Failure while building or writing the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// No vCPUs, or more than [`MAX_CPUS`].
    #[error("an MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    /// The table would reach the kernel's load address.
    #[error("the MP table ({0} bytes) does not fit below 1 MiB")]
    TooLarge(usize),
    /// Guest memory does not hold the table's range.
    #[error("writing the MP table to guest memory at {0:#x} failed")]
    Write(u64),
}

/// The interrupt lines the table routes: ISA IRQs 0-15 plus the virtio-mmio IRQs, sorted,
/// without duplicates, each below the IOAPIC's pin count.
pub fn routed_irqs() -> Vec<u8> {
    let mut irqs: Vec<u8> = (0..ISA_IRQS).collect();
    for &irq in VIRTIO_IRQS {
        if irq < IOAPIC_PINS {
            irqs.push(irq as u8);
        }
    }
    irqs.sort_unstable();
    irqs.dedup();
    irqs
}

/// Size in bytes of the whole structure (floating pointer + configuration table).
pub fn mptable_size(num_cpus: u8, num_irqs: usize) -> usize {
    MPF_SIZE
        + MPC_HEADER_SIZE
        + CPU_ENTRY_SIZE * usize::from(num_cpus)
        + SMALL_ENTRY_SIZE * (1 + 1 + num_irqs + 2)
}

/// Two's complement of the byte sum: the value that makes `bytes` (with it) sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP floating pointer and configuration table for `num_cpus` vCPUs and `irqs`, as the
/// bytes to place at `base`.
pub fn build_mptable(base: u64, num_cpus: u8, irqs: &[u8]) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let size = mptable_size(num_cpus, irqs.len());
    if base + size as u64 > HIMEM_START {
        return Err(MptableError::TooLarge(size));
    }
    let ioapic_id = num_cpus;
    let table_addr = base + MPF_SIZE as u64;

    // Floating pointer: signature, physical address of the configuration table, length in
    // 16-byte units, spec revision 1.4, checksum, feature byte 1 = 0 (a table is present),
    // feature bytes 2-5 = 0 (no IMCR: virtual-wire mode).
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.push(1);
    out.push(4);
    out.push(0); // checksum, below
    out.extend_from_slice(&[0; 5]);
    out[10] = checksum(&out[..MPF_SIZE]);

    // Entries first: the header needs their count and length.
    let mut entries = Vec::with_capacity(size - MPF_SIZE - MPC_HEADER_SIZE);
    let mut count: u16 = 0;
    for id in 0..num_cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_USABLE]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for &irq in irqs {
        entries.extend_from_slice(&[MP_INTSRC, MP_INT]);
        entries.extend_from_slice(&MP_IRQ_DEFAULT.to_le_bytes());
        // source bus 0 (ISA), source IRQ, destination IOAPIC id, destination pin
        entries.extend_from_slice(&[0, irq, ioapic_id, irq]);
        count += 1;
    }
    // The PIC's output on the BSP's LINT0 (virtual-wire mode), NMI on every CPU's LINT1.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT]);
    entries.extend_from_slice(&MP_IRQ_DEFAULT.to_le_bytes());
    entries.extend_from_slice(&[0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI]);
    entries.extend_from_slice(&MP_IRQ_DEFAULT.to_le_bytes());
    entries.extend_from_slice(&[0, 0, 0xff, 1]);
    count += 2;

    // Configuration table header: signature, base table length, spec revision, checksum,
    // OEM id, product id, OEM table pointer and size (none), entry count, local APIC address,
    // extended table length and checksum (none), reserved.
    let table_len = (MPC_HEADER_SIZE + entries.len()) as u16;
    let mut header = Vec::with_capacity(MPC_HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&table_len.to_le_bytes());
    header.push(4);
    header.push(0); // checksum, below
    header.extend_from_slice(b"VOLT    ");
    header.extend_from_slice(b"VOLT-VMM    ");
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.push(0);
    header.push(0);
    debug_assert_eq!(header.len(), MPC_HEADER_SIZE);
    let sum = checksum(&header).wrapping_add(checksum(&entries));
    header[7] = sum;

    out.extend_from_slice(&header);
    out.extend_from_slice(&entries);
    debug_assert_eq!(out.len(), size);
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build_mptable(MPTABLE_START, num_cpus, &routed_irqs())?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| MptableError::Write(MPTABLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::{create_guest_ram, memory_map, E820_RESERVED};

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// Walks the configuration table the way Linux's `smp_read_mpc` does, returning the
    /// entries as (type, bytes).
    fn entries(table: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let len = usize::from(u16_at(table, 4));
        let mut off = MPC_HEADER_SIZE;
        let mut v = Vec::new();
        while off < len {
            let t = table[off];
            let n = match t {
                MP_PROCESSOR => CPU_ENTRY_SIZE,
                MP_BUS | MP_IOAPIC | MP_INTSRC | MP_LINTSRC => SMALL_ENTRY_SIZE,
                _ => panic!("unknown entry type {t} at {off}"),
            };
            assert!(off + n <= len, "entry at {off} runs past the table");
            v.push((t, table[off..off + n].to_vec()));
            off += n;
        }
        assert_eq!(off, len);
        v
    }

    #[test]
    fn floating_pointer_layout_and_checksum() {
        let b = build_mptable(MPTABLE_START, 2, &routed_irqs()).unwrap();
        let mpf = &b[..MPF_SIZE];
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(u64::from(u32_at(mpf, 4)), MPTABLE_START + MPF_SIZE as u64);
        assert_eq!(mpf[8], 1, "length in 16-byte units");
        assert_eq!(mpf[9], 4, "spec revision 1.4");
        assert_eq!(&mpf[11..16], &[0; 5], "config table present, no IMCR");
        assert_eq!(sum(mpf), 0);
        // Linux scans 16-byte aligned addresses in the last KiB of base memory.
        assert_eq!(MPTABLE_START, 639 * 0x400);
        assert_eq!(MPTABLE_START % 16, 0);
    }

    #[test]
    fn config_table_header_and_checksum() {
        for cpus in [1u8, 2, 4, 64, MAX_CPUS] {
            let irqs = routed_irqs();
            let b = build_mptable(MPTABLE_START, cpus, &irqs).unwrap();
            assert_eq!(b.len(), mptable_size(cpus, irqs.len()));
            let t = &b[MPF_SIZE..];
            assert_eq!(&t[..4], b"PCMP");
            assert_eq!(usize::from(u16_at(t, 4)), t.len());
            assert_eq!(t[6], 4);
            assert_eq!(sum(t), 0, "{cpus} vCPUs: table checksum");
            assert_eq!(u64::from(u32_at(t, 36)), LAPIC_ADDR);
            assert_eq!(usize::from(u16_at(t, 34)), entries(t).len(), "entry count");
            assert_eq!(u16_at(t, 40), 0, "no extended table");
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_bsp_first() {
        let b = build_mptable(MPTABLE_START, 4, &routed_irqs()).unwrap();
        let cpus: Vec<_> = entries(&b[MPF_SIZE..])
            .into_iter()
            .filter(|(t, _)| *t == MP_PROCESSOR)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(cpus.len(), 4);
        for (i, e) in cpus.iter().enumerate() {
            assert_eq!(usize::from(e[1]), i, "APIC id = vCPU id");
            assert_eq!(e[2], LAPIC_VERSION);
            assert_eq!(e[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(e[3] & CPU_BOOTPROCESSOR != 0, i == 0);
        }
    }

    #[test]
    fn bus_ioapic_and_interrupt_routing() {
        let irqs = routed_irqs();
        // ISA 0-15 and every virtio-mmio IRQ (up to pin 23) are routed, once each.
        assert_eq!(irqs, (0..24).collect::<Vec<u8>>());
        let b = build_mptable(MPTABLE_START, 2, &irqs).unwrap();
        let e = entries(&b[MPF_SIZE..]);
        let bus: Vec<_> = e.iter().filter(|(t, _)| *t == MP_BUS).collect();
        assert_eq!(bus.len(), 1);
        assert_eq!(&bus[0].1[2..8], b"ISA   ");
        let ioapic: Vec<_> = e.iter().filter(|(t, _)| *t == MP_IOAPIC).collect();
        assert_eq!(ioapic.len(), 1);
        let io = &ioapic[0].1;
        assert_eq!(io[1], 2, "IOAPIC id follows the vCPUs' APIC ids");
        assert_eq!(io[3], IOAPIC_USABLE);
        assert_eq!(u64::from(u32_at(io, 4)), IOAPIC_ADDR);
        let ints: Vec<_> = e.iter().filter(|(t, _)| *t == MP_INTSRC).collect();
        assert_eq!(ints.len(), irqs.len());
        for ((_, i), irq) in ints.iter().zip(&irqs) {
            assert_eq!(i[1], MP_INT);
            assert_eq!((i[4], i[5], i[6], i[7]), (0, *irq, 2, *irq));
        }
        for irq in VIRTIO_IRQS {
            assert!(ints.iter().any(|(_, i)| u32::from(i[5]) == *irq));
        }
        let lints: Vec<_> = e.iter().filter(|(t, _)| *t == MP_LINTSRC).collect();
        assert_eq!(lints.len(), 2);
        assert_eq!(
            (lints[0].1[1], lints[0].1[6], lints[0].1[7]),
            (MP_EXTINT, 0, 0)
        );
        assert_eq!(
            (lints[1].1[1], lints[1].1[6], lints[1].1[7]),
            (MP_NMI, 0xff, 1)
        );
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        assert_eq!(
            build_mptable(MPTABLE_START, 0, &routed_irqs()),
            Err(MptableError::CpuCount(0))
        );
        assert_eq!(
            build_mptable(MPTABLE_START, MAX_CPUS + 1, &routed_irqs()),
            Err(MptableError::CpuCount(MAX_CPUS + 1))
        );
        assert!(matches!(
            build_mptable(HIMEM_START - 64, 1, &routed_irqs()),
            Err(MptableError::TooLarge(_))
        ));
    }

    #[test]
    fn largest_table_stays_in_the_reserved_low_range() {
        let end = MPTABLE_START + mptable_size(MAX_CPUS, routed_irqs().len()) as u64;
        let map = memory_map(256 << 20);
        assert!(map
            .iter()
            .any(|e| e.kind == E820_RESERVED && e.addr <= MPTABLE_START && end <= e.addr + e.size));
    }

    #[test]
    fn written_into_guest_memory() {
        let ram = create_guest_ram(16 << 20).unwrap();
        setup_mptable(&ram.mem, 2).unwrap();
        let mut mpf = [0u8; MPF_SIZE];
        ram.mem
            .read_slice(&mut mpf, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&mpf[..4], b"_MP_");
        let table_addr = u64::from(u32_at(&mpf, 4));
        let mut hdr = [0u8; MPC_HEADER_SIZE];
        ram.mem
            .read_slice(&mut hdr, GuestAddress(table_addr))
            .unwrap();
        let mut table = vec![0u8; usize::from(u16_at(&hdr, 4))];
        ram.mem
            .read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(sum(&table), 0);
    }
}
