//! Architectural vCPU state: CPUID, MSRs, LAPIC, FPU and the boot registers.
//!
//! The boot CPU (id 0) gets the entry state of its protocol; the other vCPUs only get CPUID,
//! MSRs, LAPIC and FPU and wait in the in-kernel LAPIC for INIT/SIPI from the guest.

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};

use super::boot::{BootEntry, BOOT_GDT_ADDR, BOOT_IDT_ADDR, BOOT_STACK_POINTER, GDT, PML4_ADDR};

/// Failure while setting up a vCPU's architectural state.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    GetSupportedCpuid(#[source] kvm_ioctls::Error),
    /// `KVM_SET_CPUID2` failed.
    #[error("KVM_SET_CPUID2 on vCPU {0} failed")]
    SetCpuid(u8, #[source] kvm_ioctls::Error),
    /// Building the MSR list failed.
    #[error("building the boot MSR list failed")]
    MsrList,
    /// `KVM_SET_MSRS` failed or set fewer MSRs than asked.
    #[error("KVM_SET_MSRS on vCPU {0} failed")]
    SetMsrs(u8, #[source] kvm_ioctls::Error),
    /// `KVM_SET_MSRS` accepted only some MSRs.
    #[error("KVM_SET_MSRS on vCPU {vcpu} set {set} of {wanted} MSRs")]
    PartialMsrs {
        /// vCPU id.
        vcpu: u8,
        /// MSRs set.
        set: usize,
        /// MSRs asked.
        wanted: usize,
    },
    /// `KVM_GET_LAPIC` failed.
    #[error("KVM_GET_LAPIC on vCPU {0} failed")]
    GetLapic(u8, #[source] kvm_ioctls::Error),
    /// `KVM_SET_LAPIC` failed.
    #[error("KVM_SET_LAPIC on vCPU {0} failed")]
    SetLapic(u8, #[source] kvm_ioctls::Error),
    /// `KVM_SET_FPU` failed.
    #[error("KVM_SET_FPU on vCPU {0} failed")]
    SetFpu(u8, #[source] kvm_ioctls::Error),
    /// `KVM_GET_SREGS` failed.
    #[error("KVM_GET_SREGS on vCPU {0} failed")]
    GetSregs(u8, #[source] kvm_ioctls::Error),
    /// `KVM_SET_SREGS` failed.
    #[error("KVM_SET_SREGS on vCPU {0} failed")]
    SetSregs(u8, #[source] kvm_ioctls::Error),
    /// `KVM_SET_REGS` failed.
    #[error("KVM_SET_REGS on vCPU {0} failed")]
    SetRegs(u8, #[source] kvm_ioctls::Error),
}

/// CPUID function: version and feature information.
const LEAF_FEATURES: u32 = 0x1;
/// CPUID function: deterministic cache parameters.
const LEAF_CACHE: u32 = 0x4;
/// CPUID function: extended topology.
const LEAF_TOPOLOGY: u32 = 0xb;
/// CPUID function: V2 extended topology.
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: HTT (the logical-processor count field is valid).
const EDX_HTT: u32 = 1 << 28;

/// The host's supported CPUID, read once per VM.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::GetSupportedCpuid)
}

/// Number of bits needed to hold ids `0..count`.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Adjusts the supported CPUID for vCPU `id` of `count`: APIC ids, hypervisor bit, one
/// package of `count` single-threaded cores in leaves 0x1, 0x4, 0xb and 0x1f.
pub fn adjust_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    let count32 = u32::from(count);
    let apic = u32::from(id);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (count32 << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count32 - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count32 - 1) << 26) | (sharing << 14);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: `count` cores in the package.
                        e.eax = id_bits(count32);
                        e.ebx = count32;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i & 0xff;
                    }
                }
            }
            _ => {}
        }
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_DEF_WB_ENABLED: u64 = (1 << 11) | 6;

/// The MSRs the boot protocols expect. IA32_ARCH_CAPABILITIES (0x10a) is deliberately absent:
/// this host's nested KVM refuses it.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_WB_ENABLED),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(regs: &[std::os::raw::c_char; 1024], off: usize) -> u32 {
    let b = |i: usize| regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as std::os::raw::c_char;
    }
}

/// LVT value with delivery mode `mode` (bits 10:8).
fn lvt_with_mode(v: u32, mode: u32) -> u32 {
    (v & !0x700) | (mode << 8)
}

/// Configures CPUID, MSRs, LAPIC (LINT0 = ExtINT, LINT1 = NMI) and the FPU of vCPU `id`.
pub fn setup_common(vcpu: &VcpuFd, base_cpuid: &CpuId, id: u8, count: u8) -> Result<(), CpuError> {
    let mut cpuid = base_cpuid.clone();
    adjust_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| CpuError::SetCpuid(id, e))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(|e| CpuError::SetMsrs(id, e))?;
    if set != entries.len() {
        return Err(CpuError::PartialMsrs {
            vcpu: id,
            set,
            wanted: entries.len(),
        });
    }

    let mut lapic = vcpu.get_lapic().map_err(|e| CpuError::GetLapic(id, e))?;
    let lint0 = lvt_with_mode(lapic_reg(&lapic.regs, APIC_LVT0), APIC_MODE_EXTINT);
    let lint1 = lvt_with_mode(lapic_reg(&lapic.regs, APIC_LVT1), APIC_MODE_NMI);
    set_lapic_reg(&mut lapic.regs, APIC_LVT0, lint0);
    set_lapic_reg(&mut lapic.regs, APIC_LVT1, lint1);
    vcpu.set_lapic(&lapic)
        .map_err(|e| CpuError::SetLapic(id, e))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| CpuError::SetFpu(id, e))?;
    Ok(())
}

/// A flat segment built from a GDT entry.
fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
    }
}

/// A flat 4 GiB 32-bit segment for PVH entry.
fn flat32(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Puts the boot vCPU in its protocol's entry state.
pub fn setup_boot_cpu(vcpu: &VcpuFd, id: u8, entry: BootEntry) -> Result<(), CpuError> {
    let mut sregs = vcpu.get_sregs().map_err(|e| CpuError::GetSregs(id, e))?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Pvh { entry, start_info } => {
            // PVH ABI: 32-bit protected mode, paging off, flat CS (exec/read) and data segments.
            sregs.cs = flat32(0x08, 0xb);
            let ds = flat32(0x10, 0x3);
            sregs.ds = ds;
            sregs.es = ds;
            sregs.fs = ds;
            sregs.gs = ds;
            sregs.ss = ds;
            sregs.tr = kvm_segment {
                limit: 0xffff,
                type_: 11,
                present: 1,
                ..Default::default()
            };
            sregs.ldt = kvm_segment {
                limit: 0xffff,
                type_: 2,
                present: 1,
                ..Default::default()
            };
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        BootEntry::Linux64 { entry, zero_page } => {
            let code = segment_from_gdt(GDT[1], 1);
            let data = segment_from_gdt(GDT[2], 2);
            sregs.gdt.base = BOOT_GDT_ADDR;
            sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
            sregs.idt.base = BOOT_IDT_ADDR;
            sregs.idt.limit = 7;
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = segment_from_gdt(GDT[3], 3);
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = zero_page;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| CpuError::SetSregs(id, e))?;
    vcpu.set_regs(&regs).map_err(|e| CpuError::SetRegs(id, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            padding: [0; 3],
        }
    }

    #[test]
    fn cpuid_gets_apic_ids_and_topology() {
        let mut c =
            CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)])
                .unwrap();
        adjust_cpuid(&mut c, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].edx, e[1].ecx >> 8), (1, 3, 1));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8), (2, 4, 2));
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (0, 0, 2));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn no_arch_capabilities_msr() {
        assert!(boot_msrs().iter().all(|m| m.index != 0x10a));
    }

    #[test]
    fn gdt_segments_decode() {
        let cs = segment_from_gdt(GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.present, cs.limit),
            (8, 0xb, 1, 0, 1, 0xffff_ffff)
        );
        let ds = segment_from_gdt(GDT[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.s), (0x10, 3, 1, 1));
        let tr = segment_from_gdt(GDT[3], 3);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
    }
}
