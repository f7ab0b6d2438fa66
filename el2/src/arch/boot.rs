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
// `el2_guest_enter` and the guest-exit path store x0-x30 at these offsets.
const _: () = assert!(ferrovisor_shared::vcpu::CTX_REGS_X == 0);

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

// x0 = the guest's VcpuContext, ELR_EL2/SPSR_EL2 set. Saves the callee-saved
// registers and el2's sp (in this CPU's El2Cpu), loads the guest's x0-x30
// and enters it. The guest's next exception returns from here (above).
.global el2_guest_enter
el2_guest_enter:
    stp     x29, x30, [sp, #-96]!
    stp     x19, x20, [sp, #16]
    stp     x21, x22, [sp, #32]
    stp     x23, x24, [sp, #48]
    stp     x25, x26, [sp, #64]
    stp     x27, x28, [sp, #80]
    mrs     x1, tpidr_el2
    mov     x2, sp
    str     x2, [x1, #{el2cpu_host_sp}]
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret

.arch_extension fp
.arch_extension simd
.global el2_fp_save
el2_fp_save:
    stp     q0, q1, [x0, #0]
    stp     q2, q3, [x0, #32]
    stp     q4, q5, [x0, #64]
    stp     q6, q7, [x0, #96]
    stp     q8, q9, [x0, #128]
    stp     q10, q11, [x0, #160]
    stp     q12, q13, [x0, #192]
    stp     q14, q15, [x0, #224]
    stp     q16, q17, [x0, #256]
    stp     q18, q19, [x0, #288]
    stp     q20, q21, [x0, #320]
    stp     q22, q23, [x0, #352]
    stp     q24, q25, [x0, #384]
    stp     q26, q27, [x0, #416]
    stp     q28, q29, [x0, #448]
    stp     q30, q31, [x0, #480]
    mrs     x1, fpsr
    str     x1, [x0, #{fp_fpsr}]
    mrs     x1, fpcr
    str     x1, [x0, #{fp_fpcr}]
    ret

.global el2_fp_restore
el2_fp_restore:
    ldp     q0, q1, [x0, #0]
    ldp     q2, q3, [x0, #32]
    ldp     q4, q5, [x0, #64]
    ldp     q6, q7, [x0, #96]
    ldp     q8, q9, [x0, #128]
    ldp     q10, q11, [x0, #160]
    ldp     q12, q13, [x0, #192]
    ldp     q14, q15, [x0, #224]
    ldp     q16, q17, [x0, #256]
    ldp     q18, q19, [x0, #288]
    ldp     q20, q21, [x0, #320]
    ldp     q22, q23, [x0, #352]
    ldp     q24, q25, [x0, #384]
    ldp     q26, q27, [x0, #416]
    ldp     q28, q29, [x0, #448]
    ldp     q30, q31, [x0, #480]
    ldr     x1, [x0, #{fp_fpsr}]
    msr     fpsr, x1
    ldr     x1, [x0, #{fp_fpcr}]
    msr     fpcr, x1
    ret

// Vectors: each entry saves x0/x1, loads its number into x0 and joins the
// common path, which saves the rest as a `GeneralRegs` on the EL2 stack.
.balign 0x800
.global el2_vectors
el2_vectors:
"#,
    ferrovisor_shared::vector_table_asm!("el2_trap_common"),
    r#"
el2_trap_common:
    cmp     x0, #8
    b.lo    3f
    mrs     x1, tpidr_el2
    cbz     x1, 3f
    ldr     x1, [x1, #{el2cpu_guest}]
    cbz     x1, 3f
    // From a guest: its x0/x1 are on the stack, x2-x30 still live.
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp]
    stp     x2, x3, [x1, #0]
    mrs     x2, tpidr_el2
    str     xzr, [x2, #{el2cpu_guest}]
    ldr     x3, [x2, #{el2cpu_host_sp}]
    mov     sp, x3
    ldp     x19, x20, [sp, #16]
    ldp     x21, x22, [sp, #32]
    ldp     x23, x24, [sp, #48]
    ldp     x25, x26, [sp, #64]
    ldp     x27, x28, [sp, #80]
    ldp     x29, x30, [sp], #96
    ret
3:
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
    el2cpu_guest = const crate::world::EL2CPU_GUEST,
    el2cpu_host_sp = const crate::world::EL2CPU_HOST_SP,
    fp_fpsr = const ferrovisor_shared::vcpu::FP_FPSR,
    fp_fpcr = const ferrovisor_shared::vcpu::FP_FPCR,
);
