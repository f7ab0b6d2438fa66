//! The EL2 configuration every CPU gets before it enters the host.

use aarch64_cpu::registers::*;

/// `SCTLR_EL1` with the MMU and caches off (RES1 bits only): the host starts
/// from this.
const SCTLR_EL1_MMU_OFF: u64 = 0x30d0_0800;
/// `CPTR_EL2` (nVHE): RES1 bits, SVE trapped (TZ), FP/SIMD not trapped.
const CPTR_EL2_HOST: u64 = 0x33ff;

/// Whether the CPU has the GICv3 system-register CPU interface.
pub fn has_gic_sysregs() -> bool {
    (ID_AA64PFR0_EL1.get() >> 24) & 0xf != 0
}

/// Sets the EL2 registers that shape the host's EL1: no stage 2, SMC trapped
/// to el2 (so a host `smc` for PSCI reaches us), physical interrupts to EL1,
/// the EL1 physical timer and counter for the host, no FP/SIMD or debug traps.
pub fn configure_for_host() {
    let mut hcr = HCR_EL2::RW::EL1IsAarch64 + HCR_EL2::TSC::EnableTrapEl1SmcToEl2;
    if ID_AA64ISAR1_EL1.read(ID_AA64ISAR1_EL1::APA) != 0
        || ID_AA64ISAR1_EL1.read(ID_AA64ISAR1_EL1::API) != 0
        || (id_aa64isar2() >> 12) & 0xf != 0
    {
        hcr += HCR_EL2::API::DisableTrapPointerAuthInstToEl2 + HCR_EL2::APK::DisableTrapPointerAuthKeyRegsToEl2;
    }
    HCR_EL2.write(hcr);
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCTEN::SET + CNTHCTL_EL2::EL1PCEN::SET);
    CNTVOFF_EL2.set(0);
    CPTR_EL2.set(CPTR_EL2_HOST);
    let pmu = ID_AA64DFR0_EL1.read(ID_AA64DFR0_EL1::PMUVer);
    let hpmn = if pmu != 0 && pmu != 0xf { (read_pmcr_el0() >> 11) & 0x1f } else { 0 };
    MDCR_EL2.set(hpmn);
    VTTBR_EL2.set(0);
    write_vpidr_el2(MIDR_EL1.get());
    VMPIDR_EL2.set(MPIDR_EL1.get());
    SCTLR_EL1.set(SCTLR_EL1_MMU_OFF);
    // FP/SIMD usable at EL1 from the first instruction.
    CPACR_EL1.write(CPACR_EL1::FPEN::TrapNothing);
    if has_gic_sysregs() {
        ICC_SRE_EL2.write(ICC_SRE_EL2::SRE::SET + ICC_SRE_EL2::ENABLE::SET);
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
        write_ich_hcr_el2(0);
    }
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// Installs el2's vectors.
pub fn set_vectors(vectors: u64) {
    VBAR_EL2.set(vectors);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// `ID_AA64ISAR2_EL1`.
pub fn id_aa64isar2() -> u64 {
    let v: u64;
    // SAFETY: reading an ID register has no side effects. aarch64-cpu has no
    // accessor for ID_AA64ISAR2_EL1.
    unsafe { core::arch::asm!("mrs {}, id_aa64isar2_el1", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn read_pmcr_el0() -> u64 {
    let v: u64;
    // SAFETY: reading PMCR_EL0 at EL2 has no side effects; only called when
    // ID_AA64DFR0_EL1 reports a PMU.
    unsafe { core::arch::asm!("mrs {}, pmcr_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

fn write_ich_hcr_el2(v: u64) {
    ICH_HCR_EL2.set(v);
}

fn write_vpidr_el2(v: u64) {
    // SAFETY: VPIDR_EL2 only changes what EL1 reads as MIDR_EL1; aarch64-cpu
    // has no accessor for it.
    unsafe { core::arch::asm!("msr vpidr_el2, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}
