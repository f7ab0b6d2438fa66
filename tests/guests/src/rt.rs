//! Entry points and start-up.
//!
//! `_start` is the first instruction of the flat file. It is entered at EL1h
//! with x0 = the device tree, the MMU and caches off and DAIF masked, from a
//! 64 KiB aligned address with free memory after the image. It applies the
//! image's own relocations, clears the BSS, enables FP/SIMD, takes the boot
//! stack, installs the vectors and calls Rust. Secondary CPUs enter
//! `guest_secondary_entry` through PSCI `CPU_ON` with their device-tree index
//! as the context id (x0) and take stack `index` of [`MAX_CPUS`].
//!
//! The MMU stays off: every data access is Device-nGnRnE, so code must not
//! make unaligned accesses (the target is built with `+strict-align`).

use core::arch::global_asm;

use aarch64_cpu::registers::{Readable, Writeable, MPIDR_EL1, TPIDR_EL1};
use ferrovisor_shared::boot::MAX_CPUS;
use ferrovisor_shared::dt::{Board, PsciMethod, UartDesc, UartKind};
use spin::Once;

use crate::args::Args;
use crate::{console, cpus, psci, Env};

/// Each CPU's stack; the boot CPU has one more of its own.
pub const STACK_SIZE: usize = 64 * 1024;

/// QEMU virt's PL011, which the hypervisor's guest map copies: where a
/// message goes when the device tree cannot be read.
const FALLBACK_UART: UartDesc = UartDesc { kind: UartKind::Pl011, base: 0x0900_0000, size: 0x1000 };

/// CPACR_EL1.FPEN = 0b11: FP/SIMD does not trap at EL0 or EL1. Needed before
/// any Rust code: the target is hard-float.
const CPACR_FPEN: u64 = 3 << 20;

unsafe extern "C" {
    /// Where `CPU_ON` starts a secondary CPU (x0 = its index).
    pub fn guest_secondary_entry();
}

global_asm!(
    r#"
.section .text.head, "ax"
.global _start
_start:
    msr     daifset, #0xf
    mov     x19, x0
"#,
    ferrovisor_shared::relocate_and_clear_bss_asm!(),
    r#"
    mov     x9, #{cpacr}
    msr     cpacr_el1, x9
    isb
    adrp    x9, guest_boot_stack
    add     x9, x9, :lo12:guest_boot_stack
    mov     x10, #{stack_size}
    add     sp, x9, x10
    msr     tpidr_el1, xzr
    adrp    x9, guest_vectors
    add     x9, x9, :lo12:guest_vectors
    msr     vbar_el1, x9
    isb
    mov     x0, x19
    bl      guest_primary_main
2:  wfi
    b       2b

.text
.global guest_secondary_entry
guest_secondary_entry:
    msr     daifset, #0xf
    cmp     x0, #{max_cpus}
    b.hs    3f
    mov     x9, #{cpacr}
    msr     cpacr_el1, x9
    isb
    adrp    x10, guest_stacks
    add     x10, x10, :lo12:guest_stacks
    mov     x11, #{stack_size}
    madd    x10, x11, x0, x10
    add     sp, x10, x11
    msr     tpidr_el1, x0
    adrp    x9, guest_vectors
    add     x9, x9, :lo12:guest_vectors
    msr     vbar_el1, x9
    isb
    bl      guest_secondary_main
3:  wfi
    b       3b

.section .bss.stacks, "aw", @nobits
.balign 16
guest_boot_stack:
    .space  {stack_size}
guest_stacks:
    .space  {stack_size} * {max_cpus}
"#,
    cpacr = const CPACR_FPEN,
    stack_size = const STACK_SIZE,
    max_cpus = const MAX_CPUS,
);

unsafe extern "Rust" {
    /// Defined by the test binary through [`crate::guest_main!`].
    safe fn __ferrovisor_guest_main(env: &'static Env);
}

static ENV: Once<Env> = Once::new();

/// What the test runs with (set before the test's main runs).
pub fn env() -> &'static Env {
    ENV.get().unwrap_or_else(|| console::fail_and_exit(format_args!("env() called before start-up")))
}

/// This CPU's device-tree index (the boot CPU's is set once the device tree is read).
pub fn cpu_index() -> usize {
    TPIDR_EL1.get() as usize
}

/// This CPU's `MPIDR_EL1` affinity.
pub fn mpidr() -> u64 {
    MPIDR_EL1.get() & cpus::MPIDR_AFFINITY_MASK
}

/// Boot CPU, from `_start`: relocated, BSS clear, on the boot stack.
#[unsafe(no_mangle)]
extern "C" fn guest_primary_main(dtb: usize) -> ! {
    // SAFETY: x0 at entry is the device tree's address by the boot protocol;
    // the loader placed it above the image, where nothing writes.
    let board = match unsafe { Board::from_addr(dtb) } {
        Ok(b) => b,
        Err(e) => {
            // SAFETY: without a device tree, QEMU virt's map is the best guess
            // (the hypervisor's guest map copies it).
            unsafe { console::init(&FALLBACK_UART) };
            psci::set_method(PsciMethod::Hvc);
            console::fail_and_exit(format_args!("device tree at {dtb:#x}: {e}"));
        }
    };
    let uart = board.console().unwrap_or(FALLBACK_UART);
    // SAFETY: the device tree names this UART as the console; with the MMU off
    // its registers are reachable at their physical address, and only the
    // console drives them.
    unsafe { console::init(&uart) };
    match board.psci() {
        Some(p) => psci::set_method(p.method),
        None => {
            psci::set_method(PsciMethod::Hvc);
            console::report_info("the device tree has no psci node; using hvc");
        }
    }
    let boot_cpu = match cpus::index_of(board.cpus(), mpidr()) {
        Some(i) => i,
        None => console::fail_and_exit(format_args!(
            "the boot CPU's MPIDR {:#x} is not in the device tree's /cpus",
            mpidr()
        )),
    };
    TPIDR_EL1.set(boot_cpu as u64);
    let env = ENV.call_once(|| Env { board, args: Args::new(board.bootargs()), dtb, boot_cpu });
    __ferrovisor_guest_main(env);
    console::exit()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::panic(info)
}
