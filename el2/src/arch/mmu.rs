//! el2's own stage-1 translation: an identity map of RAM as normal cacheable
//! memory and of the rest of the low 4 GiB as device memory, built with
//! `aarch64-paging` from a fixed pool of tables (el2 never allocates).

use super::boot::{SCTLR_EL2_RES1, SECONDARY_BOOT};
use aarch64_cpu::registers::{Readable, Writeable, ID_AA64MMFR0_EL1, MAIR_EL2, SCTLR_EL2, TCR_EL2};
use aarch64_paging::descriptor::El23Attributes;
use aarch64_paging::paging::El2;
use aarch64_paging::{MapError, Mapping};
use core::sync::atomic::Ordering;
use ferrovisor_shared::paging::{map_identity, PoolTranslation, TablePage};

const POOL_PAGES: usize = 64;
/// 39-bit virtual addresses: root table at level 1.
const ROOT_LEVEL: usize = 1;
const T0SZ: u64 = 64 - 39;

static mut POOL: [TablePage; POOL_PAGES] = [TablePage::ZERO; POOL_PAGES];

static mut EL2_MAP: Option<Mapping<PoolTranslation<'static>, El2>> = None;

const DEVICE: El23Attributes = El23Attributes::VALID
    .union(El23Attributes::ATTRIBUTE_INDEX_0)
    .union(El23Attributes::ACCESSED)
    .union(El23Attributes::XN);
const NORMAL: El23Attributes = El23Attributes::VALID
    .union(El23Attributes::ATTRIBUTE_INDEX_1)
    .union(El23Attributes::INNER_SHAREABLE)
    .union(El23Attributes::ACCESSED);

/// MAIR index 0: Device-nGnRE; index 1: Normal write-back, read/write-allocate.
const MAIR: u64 = 0x04 | (0xff << 8);

/// Builds the identity map and turns the MMU on, on the boot CPU.
///
/// # Errors
/// A region the tables cannot describe (outside the 39-bit range), or a pool
/// too small for the memory map.
///
/// # Safety
/// Called once, on the boot CPU, with the MMU off; `ram` must cover all of
/// el2's code, data and stacks.
pub unsafe fn init(ram: &[(u64, u64)]) -> Result<(), MapError> {
    // SAFETY: boot CPU only, once; the pool is zero (BSS).
    #[allow(static_mut_refs)]
    let pool = unsafe { &mut POOL };
    let mut map = Mapping::new(PoolTranslation::new(pool), ROOT_LEVEL, El2);
    map_identity(&mut map, ram, DEVICE, NORMAL)?;
    let ttbr = map.root_address().0 as u64;
    // SAFETY: boot CPU only, before any other CPU runs el2.
    #[allow(static_mut_refs)]
    let map = unsafe { EL2_MAP.insert(map) };

    let pa_range = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(5);
    // RES1 bits 31 and 23; 4 KiB granule, inner shareable, write-back walks.
    let tcr = (1 << 31) | (1 << 23) | (pa_range << 16) | (3 << 12) | (1 << 10) | (1 << 8) | T0SZ;
    let sctlr = SCTLR_EL2_RES1 | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 12);
    SECONDARY_BOOT.mair.store(MAIR, Ordering::Relaxed);
    SECONDARY_BOOT.tcr.store(tcr, Ordering::Relaxed);
    SECONDARY_BOOT.ttbr.store(ttbr, Ordering::Relaxed);
    SECONDARY_BOOT.sctlr.store(sctlr, Ordering::Relaxed);

    MAIR_EL2.set(MAIR);
    TCR_EL2.set(tcr);
    // SAFETY: the map covers everything el2 touches (our caller's promise) and
    // lives in a static that is never dropped.
    unsafe {
        map.activate();
        core::arch::asm!("tlbi alle2", "dsb nsh", "isb", options(nostack, preserves_flags));
    }
    SCTLR_EL2.set(sctlr);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    Ok(())
}
