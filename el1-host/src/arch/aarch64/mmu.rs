//! The host's stage-1 translation at EL1: an identity map of RAM (normal,
//! cacheable) and of the rest of the low 4 GiB (device), from a fixed pool,
//! built before the heap exists. The same tables serve every CPU.

use super::boot::HOST_SECONDARY_BOOT;
use aarch64_cpu::registers::{Readable, Writeable, ID_AA64MMFR0_EL1, MAIR_EL1, SCTLR_EL1, TCR_EL1};
use aarch64_paging::descriptor::El1Attributes;
use aarch64_paging::paging::{El1And0, VaRange};
use aarch64_paging::{MapError, Mapping};
use core::sync::atomic::Ordering;
use ferrovisor_shared::paging::{map_identity, PoolTranslation, TablePage};

const POOL_PAGES: usize = 64;
const ROOT_LEVEL: usize = 1;
const T0SZ: u64 = 64 - 39;
const SCTLR_EL1_RES1: u64 = 0x30d0_0800;
/// MAIR index 0: Device-nGnRE; index 1: Normal write-back, read/write-allocate.
const MAIR: u64 = 0x04 | (0xff << 8);

static mut POOL: [TablePage; POOL_PAGES] = [TablePage::ZERO; POOL_PAGES];
static mut HOST_MAP: Option<Mapping<PoolTranslation<'static>, El1And0>> = None;

const DEVICE: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_0)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN)
    .union(El1Attributes::PXN);
const NORMAL: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_1)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::UXN);

/// Builds the map and turns the MMU on, on the boot CPU; publishes the
/// register values secondary CPUs load.
///
/// # Errors
/// A memory map the tables cannot describe.
///
/// # Safety
/// Boot CPU, once, MMU off; `ram` covers the host's code, data and stacks.
pub unsafe fn init(ram: &[(u64, u64)]) -> Result<(), MapError> {
    // SAFETY: boot CPU only, once; the pool is zero (BSS).
    #[allow(static_mut_refs)]
    let pool = unsafe { &mut POOL };
    let mut map = Mapping::with_asid_and_va_range(PoolTranslation::new(pool), 0, ROOT_LEVEL, El1And0, VaRange::Lower);
    map_identity(&mut map, ram, DEVICE, NORMAL)?;
    let ttbr = map.root_address().0 as u64;
    // SAFETY: as above; the map is never dropped.
    unsafe { HOST_MAP = Some(map) };

    let ips = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(5);
    // EPD1: no TTBR1 walks; 4 KiB granule, inner shareable, write-back walks.
    let tcr = (ips << 32) | (1 << 23) | (3 << 12) | (1 << 10) | (1 << 8) | T0SZ;
    let sctlr = SCTLR_EL1_RES1 | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 12);
    HOST_SECONDARY_BOOT.mair.store(MAIR, Ordering::Relaxed);
    HOST_SECONDARY_BOOT.tcr.store(tcr, Ordering::Relaxed);
    HOST_SECONDARY_BOOT.ttbr.store(ttbr, Ordering::Relaxed);
    HOST_SECONDARY_BOOT.sctlr.store(sctlr, Ordering::Relaxed);

    MAIR_EL1.set(MAIR);
    TCR_EL1.set(tcr);
    // SAFETY: the identity map covers everything the host touches.
    unsafe {
        #[allow(static_mut_refs)]
        HOST_MAP.as_ref().unwrap().activate();
        core::arch::asm!("tlbi vmalle1", "dsb nsh", "isb", options(nostack, preserves_flags));
    }
    SCTLR_EL1.set(sctlr);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    // Secondary CPUs read these with their MMU off.
    clean_to_poc(&HOST_SECONDARY_BOOT as *const _ as usize, core::mem::size_of_val(&HOST_SECONDARY_BOOT));
    Ok(())
}

/// Cleans `[start, start + len)` to the point of coherency, for data a CPU
/// with its MMU off reads.
pub fn clean_to_poc(start: usize, len: usize) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    let line = 4usize << ((ctr >> 16) & 0xf);
    let mut addr = start & !(line - 1);
    while addr < start + len {
        // SAFETY: `dc cvac` writes back a line without changing memory.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) addr, options(nostack, preserves_flags)) };
        addr += line;
    }
    aarch64_cpu::asm::barrier::dsb(aarch64_cpu::asm::barrier::SY);
}
