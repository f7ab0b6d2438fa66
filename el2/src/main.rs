#![no_std]
#![no_main]
use core::arch::global_asm;
global_asm!(r#"
.section .text.head, "ax"
.global _start
_start:
    adr x9, __image_start
    adr x10, __rela_start
    adr x11, __rela_end
1:  cmp x10, x11
    b.hs 2f
    ldp x12, x13, [x10], #16
    ldr x14, [x10], #8
    add x14, x14, x9
    str x14, [x9, x12]
    b 1b
2:  adr x12, stack_top
    mov sp, x12
    bl rust_main
3:  wfe
    b 3b
.section .bss
.balign 16
stack: .space 16384
stack_top:
"#);
static MSG: &str = "hello from pie\n";
static PTR: &&str = &MSG;
#[unsafe(no_mangle)]
extern "C" fn rust_main() -> ! {
    let uart = 0x0900_0000 as *mut u32;
    for b in PTR.bytes() { unsafe { uart.write_volatile(b as u32) }; }
    loop {}
}
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! { loop {} }
