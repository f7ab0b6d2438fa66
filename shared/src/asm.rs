//! Assembly both binaries' entry code uses, as string-literal macros for
//! `global_asm!`.

/// Applies the binary's own `R_AARCH64_RELATIVE` relocations
/// (`*(base + offset) = base + addend` for each entry between `__rela_start`
/// and `__rela_end`, with `base = __image_start`), then clears
/// `__bss_start..__bss_end`. Uses x9-x14 only; runs with the MMU off.
#[macro_export]
macro_rules! relocate_and_clear_bss_asm {
    () => {
        r#"
    adrp    x9, __image_start
    add     x9, x9, :lo12:__image_start
    adrp    x10, __rela_start
    add     x10, x10, :lo12:__rela_start
    adrp    x11, __rela_end
    add     x11, x11, :lo12:__rela_end
91: cmp     x10, x11
    b.hs    92f
    ldp     x12, x13, [x10], #16
    ldr     x14, [x10], #8
    add     x14, x14, x9
    str     x14, [x9, x12]
    b       91b
92: adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
93: cmp     x9, x10
    b.hs    94f
    stp     xzr, xzr, [x9], #16
    b       93b
94:
"#
    };
}

/// The 16 vector entries: each makes room for a `GeneralRegs` (256 bytes),
/// saves x0/x1, puts its number in x0 and branches to `$common`.
#[macro_export]
macro_rules! vector_table_asm {
    ($common:literal) => {
        concat!(
            ".macro vector_entry kind\n",
            "    .balign 0x80\n",
            "    sub     sp, sp, #256\n",
            "    stp     x0, x1, [sp, #0]\n",
            "    mov     x0, #\\kind\n",
            "    b       ",
            $common,
            "\n",
            ".endm\n",
            "    vector_entry 0\n    vector_entry 1\n    vector_entry 2\n    vector_entry 3\n",
            "    vector_entry 4\n    vector_entry 5\n    vector_entry 6\n    vector_entry 7\n",
            "    vector_entry 8\n    vector_entry 9\n    vector_entry 10\n    vector_entry 11\n",
            "    vector_entry 12\n    vector_entry 13\n    vector_entry 14\n    vector_entry 15\n",
            ".purgem vector_entry\n",
        )
    };
}

/// Saves x2-x29 into the frame the vector entry made (x30 is the caller's).
#[macro_export]
macro_rules! save_x2_x29_asm {
    () => {
        r#"
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
"#
    };
}

/// Restores x0-x30 from the frame, frees it and returns from the exception.
#[macro_export]
macro_rules! restore_all_and_eret_asm {
    () => {
        r#"
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
"#
    };
}
