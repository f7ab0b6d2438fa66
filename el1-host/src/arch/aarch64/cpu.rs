//! CPU primitives: which CPU this is, interrupt masking, waiting.

use aarch64_cpu::registers::{ReadWriteable, Readable, Writeable, DAIF, TPIDR_EL1};

/// The host's index of the running CPU (its slot in `BootInfo::cpus`).
pub fn current() -> usize {
    TPIDR_EL1.get() as usize
}

pub fn set_current(index: usize) {
    TPIDR_EL1.set(index as u64);
}

/// Unmasks IRQs at EL1.
pub fn irq_enable() {
    DAIF.modify(DAIF::I::Unmasked);
}

/// Masks IRQs at EL1.
pub fn irq_disable() {
    DAIF.modify(DAIF::I::Masked);
}

pub fn irqs_enabled() -> bool {
    !DAIF.is_set(DAIF::I)
}

pub fn wait_for_interrupt() {
    aarch64_cpu::asm::wfi();
}

pub fn halt() -> ! {
    irq_disable();
    loop {
        aarch64_cpu::asm::wfi();
    }
}

/// `ID_AA64MMFR1_EL1` (its VMIDBits field sizes the VMID allocator).
pub fn id_aa64mmfr1() -> u64 {
    aarch64_cpu::registers::ID_AA64MMFR1_EL1.get()
}

/// Whether this CPU has a PMUv3 el2 can give guests (`ID_AA64DFR0_EL1.PMUVer`
/// neither 0 nor IMPLEMENTATION DEFINED).
pub fn has_pmuv3() -> bool {
    use aarch64_cpu::registers::{Readable, ID_AA64DFR0_EL1};
    let v = ID_AA64DFR0_EL1.read(ID_AA64DFR0_EL1::PMUVer);
    v != 0 && v != 0xf
}

/// The virtual counter (`CNTVCT_EL0`); with `CNTVOFF_EL2` zero while the host
/// runs, it equals the physical count.
pub fn virtual_count() -> u64 {
    aarch64_cpu::registers::CNTVCT_EL0.get()
}
