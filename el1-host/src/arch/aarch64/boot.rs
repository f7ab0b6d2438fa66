//! The host's entry points and EL1 vectors.
//!
//! el2 enters `_start` on the boot CPU (x0 = device tree, x1 = `BootInfo`).
//! The code applies the host's own relocations, clears the BSS and calls
//! Rust on CPU 0's stack. Secondary CPUs enter `host_secondary_entry` through
//! PSCI `CPU_ON` with their index in x0; they turn the MMU on with the boot
//! CPU's tables (published in [`SECONDARY_BOOT`], cleaned to the point of
//! coherency) before any Rust code runs.

use core::arch::global_asm;
use ferrovisor_shared::boot::{SecondaryMmu, MAX_CPUS};

pub const STACK_SIZE: usize = 64 * 1024;

/// The MMU set-up secondary CPUs load before running Rust.
#[unsafe(no_mangle)]
pub static HOST_SECONDARY_BOOT: SecondaryMmu = SecondaryMmu::new();

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
"#,
    ferrovisor_shared::relocate_and_clear_bss_asm!(),
    r#"
    adrp    x9, host_stacks
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

// EL1 vectors: each saves x0/x1, puts its number in x0 and joins the common
// path, which saves the rest as a `GeneralRegs`.
.balign 0x800
.global host_vectors
host_vectors:
"#,
    ferrovisor_shared::vector_table_asm!("host_trap_common"),
    r#"
host_trap_common:
"#,
    ferrovisor_shared::save_x2_x29_asm!(),
    r#"
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
"#,
    ferrovisor_shared::restore_all_and_eret_asm!(),
    r#"

.section .bss.stacks, "aw", @nobits
.balign 16
host_stacks:
    .space  {stack_size} * {max_cpus}
"#,
    stack_size = const STACK_SIZE,
    max_cpus = const MAX_CPUS,
);
