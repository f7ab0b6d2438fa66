//! Cache maintenance the host does for guests: a guest starts with its MMU and
//! caches off, so what the host wrote into its memory must reach the point of
//! coherency first.

use core::arch::asm;

fn dcache_line() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4usize << ((ctr >> 16) & 0xf)
}

/// Cleans and invalidates `[start, start + len)` to the point of coherency.
pub fn clean_inval_poc(start: usize, len: usize) {
    let line = dcache_line();
    let mut addr = start & !(line - 1);
    let end = start.saturating_add(len);
    while addr < end {
        // SAFETY: `dc civac` writes back and drops a line; memory contents
        // are unchanged.
        unsafe { asm!("dc civac, {}", in(reg) addr, options(nostack, preserves_flags)) };
        addr += line;
    }
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISH);
}

/// Invalidates every instruction cache in the inner-shareable domain.
pub fn invalidate_icache() {
    // SAFETY: invalidating instruction caches only costs refetches.
    unsafe { asm!("ic ialluis", options(nostack, preserves_flags)) };
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::ISH);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
