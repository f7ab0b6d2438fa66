//! Data cache maintenance by virtual address, for memory that a CPU running
//! with its MMU off (a secondary starting, the host just entered) reads.

use core::arch::asm;

fn dcache_line_size() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Cleans `[start, start + len)` to the point of coherency.
pub fn clean_to_poc(start: usize, len: usize) {
    let line = dcache_line_size();
    let mut addr = start & !(line - 1);
    while addr < start + len {
        // SAFETY: `dc cvac` only writes back a line of memory we can address;
        // it does not change its contents.
        unsafe { asm!("dc cvac, {}", in(reg) addr, options(nostack, preserves_flags)) };
        addr += line;
    }
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
}

/// Cleans an object to the point of coherency.
pub fn clean_object<T>(object: &T) {
    clean_to_poc(object as *const T as usize, core::mem::size_of::<T>());
}
