//! Ring-0 part of the guest: PVH entry, long mode, descriptor tables, interrupt stubs.
//!
//! Under this machine's KVM (`kvm_pvm`) every ring-0 instruction is emulated (~1 µs each) and
//! SSE at ring 0 fails, so no Rust runs at ring 0: this stub enters long mode with prebuilt
//! page tables, loads the GDT/IDT/TSS, puts the local APIC in virtual-wire mode, remaps the
//! 8259 PIC to vectors 0x20-0x2f (auto-EOI, only IRQ 1 unmasked) and `iretq`s to ring 3 with
//! interrupts enabled. The TSS I/O bitmap allows every port at ring 3.
//!
//! The IDT entries and the TSS descriptor hold addresses split into pieces, which neither the
//! assembler nor the linker can do with relocations. So everything they point at lives in one
//! section, `.text.volt_sys`, that the linker script places first at 0x100000 and keeps below
//! 64 KiB: an address there is `0x100000 + (sym - _start)`, and `sym - _start` is an
//! assembly-time constant.
//!
//! Ring-0 handlers:
//! - #UD (vector 6) at `volt_idle_ud` is the idle gate: if the IRQ counter still equals `edi`
//!   it does `sti; hlt` (the vCPU sleeps in the host until an interrupt), then returns past the
//!   `ud2`. Any other #UD, and every other exception except NMI, prints
//!   `volt-test-guest: exception vector=0xVV error=0x... rip=0x...` and writes
//!   `EXIT_EXCEPTION` (0x70) to the debug-exit port 0xf4.
//! - PIC vectors 0x20-0x2f increment `VOLT_IRQ_COUNT` (auto-EOI: no EOI write needed); IRQ 1
//!   (vector 0x21, the i8042) also increments `VOLT_KBD_COUNT`, IRQ 4 (vector 0x24, COM1
//!   input) `VOLT_COM_COUNT`.
//! - Vectors 0x30-0x3e (IOAPIC-routed device IRQs, programmed edge-triggered from ring 3 by the
//!   virtio-net driver) write the local APIC EOI register, then count like a PIC IRQ.
//! - NMI and vector 0x3f (the APIC spurious vector) just return.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _start
    .balign 4

    .section .text.volt_sys, "awx", @progbits
    .code32
    .globl _start
_start:
    /* PVH: 32-bit protected mode, paging off, ebx = &hvm_start_info */
    mov %ebx, %esi
    lgdt volt_gdt_ptr
    mov $0x620, %eax            /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov $volt_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* EFER.LME */
    mov $0x100, %eax
    xor %edx, %edx
    wrmsr
    mov $0x80000033, %eax       /* CR0: PG | NE | ET | MP | PE (EM clear: SSE usable) */
    mov %eax, %cr0
    ljmp $0x08, $volt_long_entry

    .code64
volt_long_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $volt_kernel_stack_top, %esp
    lidt volt_idt_ptr(%rip)
    mov $0x28, %eax
    ltr %ax
    /* local APIC: software-enabled, spurious vector 0x3f, LINT0 ExtINT, LINT1 NMI */
    mov $0xfee00000, %edi
    movl $0x13f, 0xf0(%rdi)
    movl $0x700, 0x350(%rdi)
    movl $0x400, 0x360(%rdi)
    /* 8259 pair: vectors 0x20/0x28, cascade on IRQ 2, 8086 mode + auto-EOI; unmask IRQ 1 */
    mov $0x11, %al
    out %al, $0x20
    out %al, $0xa0
    mov $0x20, %al
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xa1
    mov $0x04, %al
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xa1
    mov $0x03, %al
    out %al, $0x21
    out %al, $0xa1
    mov $0xfd, %al
    out %al, $0x21
    mov $0xff, %al
    out %al, $0xa1
    /* to ring 3, IF=1, IOPL=0 (ports via the TSS I/O bitmap); esi still = &hvm_start_info */
    pushq $0x1b
    pushq $volt_user_stack_top
    pushq $0x202
    pushq $0x23
    pushq $volt_user_entry
    iretq

    /* ---- ring 3 from here to the handlers ---- */
volt_user_entry:
    mov %esi, %edi
    call volt_main
    ud2

    /* Idle gate, called from ring 3 as volt_idle_wait(seen: u32). */
    .globl volt_idle_wait
volt_idle_wait:
volt_idle_ud:
    ud2
    ret

    /* ---- ring 0 handlers ---- */
volt_vec_6:
    cmpq $volt_idle_ud, (%rsp)
    jne volt_exc_6
    addq $2, (%rsp)
    cmp %edi, VOLT_IRQ_COUNT(%rip)
    jne 1f
    sti
    hlt
1:  iretq

    /* IOAPIC-routed IRQs (vectors 0x30-0x3e, edge-triggered): EOI the local APIC, count */
volt_apic_irq:
    push %rax
    mov $0xfee000b0, %eax
    movl $0, (%rax)
    pop %rax
    jmp volt_irq
volt_irq4:                      /* 8259 IRQ 4 (COM1 input): also counted on its own */
    incl VOLT_COM_COUNT(%rip)
    jmp volt_irq
volt_irq1:                      /* 8259 IRQ 1 (i8042): also counted on its own */
    incl VOLT_KBD_COUNT(%rip)
volt_irq:
    incl VOLT_IRQ_COUNT(%rip)
volt_vec_2:
volt_ignore:
    iretq

    /* exceptions without an error code: push a zero one */
    .irp n, 0,1,3,4,5,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
volt_vec_\n:
    pushq $0
    pushq $\n
    jmp volt_exc_common
    .endr
volt_exc_6:
    pushq $0
    pushq $6
    jmp volt_exc_common
    .irp n, 8,10,11,12,13,14,17,21,29,30
volt_vec_\n:
    pushq $\n
    jmp volt_exc_common
    .endr

    /* stack: vector, error code, rip, cs, rflags, rsp, ss. Fatal: report, then exit. */
volt_exc_common:
    cld
    mov $0x3f8, %edx
    lea volt_msg_vec(%rip), %rsi
    call volt_r0_puts
    mov (%rsp), %rdi
    shl $56, %rdi
    mov $2, %ecx
    call volt_r0_hex
    lea volt_msg_err(%rip), %rsi
    call volt_r0_puts
    mov 8(%rsp), %rdi
    mov $16, %ecx
    call volt_r0_hex
    lea volt_msg_rip(%rip), %rsi
    call volt_r0_puts
    mov 16(%rsp), %rdi
    mov $16, %ecx
    call volt_r0_hex
    mov $10, %al
    out %al, %dx
    mov $0x70, %al              /* EXIT_EXCEPTION */
    out %al, $0xf4
2:  cli
    hlt
    jmp 2b

volt_r0_puts:                   /* rsi = NUL-terminated string, dx = port */
    lodsb
    test %al, %al
    jz 3f
    out %al, %dx
    jmp volt_r0_puts
3:  ret

volt_r0_hex:                    /* top ecx nibbles of rdi, dx = port */
    rol $4, %rdi
    mov %edi, %eax
    and $15, %eax
    cmp $10, %eax
    jb 4f
    add $39, %eax
4:  add $48, %eax
    out %al, %dx
    dec %ecx
    jnz volt_r0_hex
    ret

volt_msg_vec: .asciz "volt-test-guest: exception vector=0x"
volt_msg_err: .asciz " error=0x"
volt_msg_rip: .asciz " rip=0x"

    /* ---- descriptor tables ---- */
    .balign 16
volt_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10 kernel data */
    .quad 0x00cff2000000ffff    /* 0x18 user data (selector 0x1b) */
    .quad 0x00affa000000ffff    /* 0x20 user code, 64-bit (selector 0x23) */
    .word volt_tss_end - volt_tss - 1   /* 0x28 TSS: limit 0-15 */
    .word volt_tss - _start             /* base 0-15 (image at 0x100000) */
    .byte 0x10                          /* base 16-23 */
    .byte 0x89                          /* present, 64-bit TSS (available) */
    .byte 0                             /* limit 16-19, flags */
    .byte 0                             /* base 24-31 */
    .long 0                             /* base 32-63 */
    .long 0
volt_gdt_end:

    .balign 8
volt_gdt_ptr:                   /* loaded in 32-bit mode: limit + low 32 bits of the base */
    .word volt_gdt_end - volt_gdt - 1
    .quad volt_gdt
    .balign 8
volt_idt_ptr:
    .word volt_idt_end - volt_idt - 1
    .quad volt_idt

    .macro VOLT_IDTE handler
    .word \handler - _start     /* offset 0-15 */
    .word 0x08                  /* kernel code selector */
    .byte 0                     /* IST */
    .byte 0x8e                  /* present, DPL 0, 64-bit interrupt gate */
    .word 0x0010                /* offset 16-31 */
    .long 0                     /* offset 32-63 */
    .long 0
    .endm

    .balign 16
volt_idt:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    VOLT_IDTE volt_vec_\n
    .endr
    VOLT_IDTE volt_irq          /* 0x20-0x2f: 8259 IRQs 0-15 (IRQ 1 and 4 also bump their own count) */
    VOLT_IDTE volt_irq1
    VOLT_IDTE volt_irq
    VOLT_IDTE volt_irq
    VOLT_IDTE volt_irq4
    .rept 11
    VOLT_IDTE volt_irq
    .endr
    .rept 15                    /* 0x30-0x3e: IOAPIC-routed device IRQs (virtio-net) */
    VOLT_IDTE volt_apic_irq
    .endr
    VOLT_IDTE volt_ignore       /* 0x3f: APIC spurious */
volt_idt_end:

    .balign 16
volt_tss:
    .long 0
    .quad volt_kernel_stack_top /* rsp0 */
    .quad 0, 0                  /* rsp1, rsp2 */
    .quad 0
    .quad 0, 0, 0, 0, 0, 0, 0   /* ist1-7 */
    .quad 0
    .word 0
    .word 104                   /* I/O permission bitmap offset */
    .fill 8192, 1, 0            /* every port allowed at ring 3 */
    .byte 0xff
volt_tss_end:
    .globl volt_sys_end
volt_sys_end:

    /* ---- identity map of 0-4 GiB, 2 MiB pages, user-accessible, prebuilt ---- */
    .section .data.volt_pt, "aw", @progbits
    .balign 4096
volt_pml4:
    .quad volt_pdpt + 7
    .fill 511, 8, 0
volt_pdpt:
    .quad volt_pd + 7
    .quad volt_pd + 0x1007
    .quad volt_pd + 0x2007
    .quad volt_pd + 0x3007
    .fill 508, 8, 0
volt_pd:
    .set volt_pa, 0
    .rept 2048
    .quad volt_pa + 0x87        /* present | writable | user | 2 MiB */
    .set volt_pa, volt_pa + 0x200000
    .endr

    .section .bss.volt_stacks, "aw", @nobits
    .balign 16
    .space 65536
volt_user_stack_top:
    .space 8192
volt_kernel_stack_top:
"#,
    options(att_syntax)
);
