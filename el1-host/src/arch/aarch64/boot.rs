//! The host's entry points and EL1 vectors.
//!
//! el2 enters `_start` on the boot CPU (x0 = device tree, x1 = `BootInfo`).
//! The code applies the host's own relocations, clears the BSS and calls
//! Rust on CPU 0's stack. Secondary CPUs enter `host_secondary_entry` through
//! PSCI `CPU_ON` with their index in x0; they turn the MMU on with the boot
//! CPU's tables (published in [`SECONDARY_BOOT`], cleaned to the point of
//! coherency) before any Rust code runs.

use core::arch::global_asm;
use core::sync::atomic::AtomicU64;
use ferrovisor_shared::boot::MAX_CPUS;

pub const STACK_SIZE: usize = 64 * 1024;

/// What a secondary CPU needs before it can run Rust, read with the MMU off.
#[repr(C)]
pub struct SecondaryBoot {
    pub mair: AtomicU64,
    pub tcr: AtomicU64,
    pub ttbr: AtomicU64,
    pub sctlr: AtomicU64,
}

#[unsafe(no_mangle)]
pub static HOST_SECONDARY_BOOT: SecondaryBoot = SecondaryBoot {
    mair: AtomicU64::new(0),
    tcr: AtomicU64::new(0),
    ttbr: AtomicU64::new(0),
    sctlr: AtomicU64::new(0),
};

const _: () = assert!(core::mem::offset_of!(SecondaryBoot, tcr) == 8);
const _: () = assert!(core::mem::offset_of!(SecondaryBoot, ttbr) == 16);
const _: () = assert!(core::mem::offset_of!(SecondaryBoot, sctlr) == 24);

unsafe extern "C" {
    pub fn host_secondary_entry();
}

global_asm!(
    r#"
.section .text.head, "ax"
.global _start
_start:
    msr     daifset, #0xf
    mov     x19, x0
    mov     x20, x1
    adrp    x9, __image_start
    add     x9, x9, :lo12:__image_start
    adrp    x10, __rela_start
    add     x10, x10, :lo12:__rela_start
    adrp    x11, __rela_end
    add     x11, x11, :lo12:__rela_end
1:  cmp     x10, x11
    b.hs    2f
    ldp     x12, x13, [x10], #16
    ldr     x14, [x10], #8
    add     x14, x14, x9
    str     x14, [x9, x12]
    b       1b
2:  adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
3:  cmp     x9, x10
    b.hs    4f
    stp     xzr, xzr, [x9], #16
    b       3b
4:  adrp    x9, host_stacks
    add     x9, x9, :lo12:host_stacks
    mov     x10, #{stack_size}
    add     sp, x9, x10
    msr     tpidr_el1, xzr
    adrp    x9, host_vectors
    add     x9, x9, :lo12:host_vectors
    msr     vbar_el1, x9
    isb
    mov     x0, x19
    mov     x1, x20
    bl      host_primary_main
5:  wfe
    b       5b

.text
.global host_secondary_entry
host_secondary_entry:
    msr     daifset, #0xf
    cmp     x0, #{max_cpus}
    b.hs    9f
    mov     x12, x0
    adrp    x9, HOST_SECONDARY_BOOT
    add     x9, x9, :lo12:HOST_SECONDARY_BOOT
    ldr     x10, [x9, #0]
    msr     mair_el1, x10
    ldr     x10, [x9, #8]
    msr     tcr_el1, x10
    ldr     x10, [x9, #16]
    msr     ttbr0_el1, x10
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x10, [x9, #24]
    msr     sctlr_el1, x10
    isb
    adrp    x10, host_stacks
    add     x10, x10, :lo12:host_stacks
    mov     x11, #{stack_size}
    madd    x10, x11, x12, x10
    add     sp, x10, x11
    msr     tpidr_el1, x12
    adrp    x9, host_vectors
    add     x9, x9, :lo12:host_vectors
    msr     vbar_el1, x9
    isb
    mov     x0, x12
    bl      host_secondary_main
9:  wfe
    b       9b

// EL1 vectors. Each saves x0/x1, puts its number in x0 and joins the common
// path, which saves the rest as a `GeneralRegs`.
.macro host_vector kind
    .balign 0x80
    sub     sp, sp, #256
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       host_trap_common
.endm

.balign 0x800
.global host_vectors
host_vectors:
    host_vector 0
    host_vector 1
    host_vector 2
    host_vector 3
    host_vector 4
    host_vector 5
    host_vector 6
    host_vector 7
    host_vector 8
    host_vector 9
    host_vector 10
    host_vector 11
    host_vector 12
    host_vector 13
    host_vector 14
    host_vector 15

host_trap_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    add     x2, sp, #256
    stp     x30, x2, [sp, #240]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x2, x3, [sp, #-16]!
    add     x1, sp, #16
    bl      host_trap
    ldp     x2, x3, [sp], #16
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #256
    eret

.section .bss.stacks, "aw", @nobits
.balign 16
host_stacks:
    .space  {stack_size} * {max_cpus}
"#,
    stack_size = const STACK_SIZE,
    max_cpus = const MAX_CPUS,
);
