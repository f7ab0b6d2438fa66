//! The aarch64 side of el2: early boot and vectors (assembly, because nothing
//! else can run there), the EL2 stage-1 page tables, trap configuration and
//! cache maintenance.

pub mod boot;
pub mod cache;
pub mod mmu;
pub mod regs;

use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTPCT_EL0};

/// Physical counter in ticks, and its frequency.
pub fn now_ticks() -> u64 {
    CNTPCT_EL0.get()
}

pub fn ticks_per_sec() -> u64 {
    CNTFRQ_EL0.get().max(1)
}

/// Waits for an event (`WFE`).
pub fn wait_for_event() {
    aarch64_cpu::asm::wfe();
}

/// Signals an event to all CPUs (`SEV`), after making prior stores visible.
pub fn send_event() {
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISH);
    aarch64_cpu::asm::sev();
}

/// Stops this CPU for good.
pub fn halt() -> ! {
    loop {
        aarch64_cpu::asm::wfi();
    }
}
