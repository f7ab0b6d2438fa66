//! The image header, el2's entry points and its exception vectors.
//!
//! The image is position independent: the primary entry applies el2's own
//! `R_AARCH64_RELATIVE` relocations before any Rust code runs, then clears the
//! BSS and takes CPU 0's stack. Secondary CPUs enter with the MMU off, find
//! their slot by MPIDR in [`SECONDARY_BOOT`] (cleaned to the point of
//! coherency by the boot CPU), turn the MMU on with the boot CPU's tables and
//! call Rust.

use core::arch::global_asm;
use ferrovisor_shared::boot::{SecondaryMmu, MAX_CPUS};
use ferrovisor_shared::image;

/// Bytes of stack each CPU has at EL2.
pub const STACK_SIZE: usize = 16 * 1024;

/// `SCTLR_EL2` with the MMU and caches off: only the RES1 bits.
pub const SCTLR_EL2_RES1: u64 = 0x30c5_0830;

/// The MMU set-up secondary CPUs load before running Rust.
#[unsafe(no_mangle)]
pub static SECONDARY_BOOT: SecondaryMmu = SecondaryMmu::new();

const _: () = assert!(core::mem::size_of::<ferrovisor_shared::trap::GeneralRegs>() == 256);

unsafe extern "C" {
    static el2_stacks: u8;
    static __image_start: u8;
    static __el2_end: u8;
    pub fn el2_secondary_entry();
    pub fn el2_vectors();
    /// Enters the host at EL1h: `ELR_EL2 = entry`, `x0..x2` as given, the
    /// stack pointer reset to `stack_top` for the next trap.
    pub fn el2_enter_host(entry: u64, x0: u64, x1: u64, x2: u64, stack_top: u64) -> !;
}

/// Physical address of el2's first byte (the image start).
pub fn image_start() -> u64 {
    &raw const __image_start as u64
}

/// Physical address just past el2's memory (its BSS end).
pub fn el2_end() -> u64 {
    &raw const __el2_end as u64
}

/// The top of CPU `index`'s EL2 stack.
pub fn stack_top(index: usize) -> u64 {
    &raw const el2_stacks as u64 + ((index + 1) * STACK_SIZE) as u64
}

global_asm!(
    r#"
.section .text.head, "ax"
.global _start
_start:
    b       el2_primary_entry           // code0
    .word   0                           // code1
    .quad   {text_offset}               // text_offset
    .quad   0                           // image_size: written by the packer
    .quad   {flags}                     // flags
    .quad   0, 0, 0                     // res2..res4
    .word   {magic}                     // "ARM\x64"
    .word   0                           // res5
    .fill   64, 1, 0                    // Ferrovisor package header: written by the packer

el2_primary_entry:
    msr     daifset, #0xf
    mov     x19, x0                     // the device tree
    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2
    cmp     x20, #2
    b.ne    1f
    movz    x9, #({sctlr} & 0xffff)
    movk    x9, #({sctlr} >> 16), lsl #16
    msr     sctlr_el2, x9
    isb
1:
"#,
    ferrovisor_shared::relocate_and_clear_bss_asm!(),
    r#"
    adrp    x9, el2_stacks
    add     x9, x9, :lo12:el2_stacks
    add     sp, x9, #{stack_size}
    mov     x0, x19
    mov     x1, x20
    bl      el2_primary_main
6:  wfe
    b       6b

.text
.global el2_secondary_entry
el2_secondary_entry:
    msr     daifset, #0xf
    movz    x9, #({sctlr} & 0xffff)
    movk    x9, #({sctlr} >> 16), lsl #16
    msr     sctlr_el2, x9
    isb
    mrs     x10, mpidr_el1
    movz    x11, #0xffff
    movk    x11, #0xff, lsl #16
    movk    x11, #0xff, lsl #32
    and     x10, x10, x11
    adrp    x13, {cpus}
    add     x13, x13, :lo12:{cpus}
    mov     x12, #0
1:  cmp     x12, #{max_cpus}
    b.hs    9f
    ldr     x14, [x13, x12, lsl #3]
    cmp     x14, x10
    b.eq    2f
    add     x12, x12, #1
    b       1b
2:  adrp    x9, SECONDARY_BOOT
    add     x9, x9, :lo12:SECONDARY_BOOT
    ldr     x10, [x9, #0]
    msr     mair_el2, x10
    ldr     x10, [x9, #8]
    msr     tcr_el2, x10
    ldr     x10, [x9, #16]
    msr     ttbr0_el2, x10
    isb
    tlbi    alle2
    dsb     nsh
    isb
    ldr     x10, [x9, #24]
    msr     sctlr_el2, x10
    isb
    adrp    x10, el2_stacks
    add     x10, x10, :lo12:el2_stacks
    mov     x11, #{stack_size}
    madd    x10, x11, x12, x10
    add     sp, x10, x11
    mov     x0, x12
    bl      el2_secondary_main
9:  wfe
    b       9b

.global el2_enter_host
el2_enter_host:
    msr     elr_el2, x0
    mov     x9, #0x3c5                  // EL1h, D, A, I and F masked
    msr     spsr_el2, x9
    mov     sp, x4
    mov     x0, x1
    mov     x1, x2
    mov     x2, x3
    mov     x3, xzr
    mov     x4, xzr
    eret

// Vectors: each entry saves x0/x1, loads its number into x0 and joins the
// common path, which saves the rest as a `GeneralRegs` on the EL2 stack.
.balign 0x800
.global el2_vectors
el2_vectors:
"#,
    ferrovisor_shared::vector_table_asm!("el2_trap_common"),
    r#"
el2_trap_common:
"#,
    ferrovisor_shared::save_x2_x29_asm!(),
    r#"
    cmp     x0, #8
    b.hs    1f
    add     x2, sp, #256
    b       2f
1:  mrs     x2, sp_el1
2:  stp     x30, x2, [sp, #240]
    mov     x1, sp
    bl      el2_trap
"#,
    ferrovisor_shared::restore_all_and_eret_asm!(),
    r#"

.section .bss.stacks, "aw", @nobits
.balign 16
.global el2_stacks
el2_stacks:
    .space  {stack_size} * {max_cpus}
"#,
    text_offset = const image::TEXT_OFFSET,
    flags = const image::IMAGE_FLAGS,
    magic = const image::ARM64_IMAGE_MAGIC,
    sctlr = const SCTLR_EL2_RES1,
    stack_size = const STACK_SIZE,
    max_cpus = const MAX_CPUS,
    cpus = sym crate::hyp::CPUS,
);
