//! The guest's PMUv3, passed through (docs/pmu.md): while a vCPU whose PMU
//! is active runs, the hardware counters are its own; el2 stops them at
//! every exit (`PMCR_EL0.E` = 0, so the host's EL1 is never counted and the
//! overflow interrupt request drops), saves them, and loads the next vCPU's
//! at entry. `MDCR_EL2.HPMD` (and `HCCD` from PMUv3p5) keep el2's own
//! instructions out of the counts (Arm ARM D13.1.2, "Prohibiting event
//! counting at EL2"). A vCPU that has not touched its PMU traps every access
//! (`MDCR_EL2.TPM`/`TPMCR`); the first one activates it here and runs again.

use ferrovisor_shared::esr::SysReg;
use ferrovisor_shared::vcpu::PMU_MAX_COUNTERS;

pub const MDCR_HPMN: u64 = 0x1f;
pub const MDCR_TPMCR: u64 = 1 << 5;
pub const MDCR_TPM: u64 = 1 << 6;
/// PMUv3p1: event counting prohibited at EL2.
const MDCR_HPMD: u64 = 1 << 17;
/// PMUv3p5: the cycle counter does not count at EL2.
const MDCR_HCCD: u64 = 1 << 23;

/// `ID_AA64DFR0_EL1.PMUVer` values (Arm ARM D19.2.59).
pub const PMUVER_V3: u64 = 1;
pub const PMUVER_V3P1: u64 = 4;
pub const PMUVER_V3P5: u64 = 6;
const PMUVER_IMPDEF: u64 = 0xf;

/// Whether `pmuver` is a PMUv3 that el2 can switch.
pub fn is_pmuv3(pmuver: u64) -> bool {
    pmuver >= PMUVER_V3 && pmuver != PMUVER_IMPDEF
}

/// The `MDCR_EL2` bits a guest runs with, on top of the host's (whose HPMN
/// gives the guest every counter).
pub fn guest_mdcr(pmuver: u64, active: bool) -> u64 {
    if !active || !is_pmuv3(pmuver) {
        return MDCR_TPM | MDCR_TPMCR;
    }
    let mut v = 0;
    if pmuver >= PMUVER_V3P1 {
        v |= MDCR_HPMD;
    }
    if pmuver >= PMUVER_V3P5 {
        v |= MDCR_HCCD;
    }
    v
}

/// Whether a trapped system register access is one of the PMU's (what
/// `MDCR_EL2.TPM` and `TPMCR` trap: op0 3 and CRn 9 with op1 3 and CRm 12
/// to 14, `PMINTEN{SET,CLR}_EL1` and `PMMIR_EL1` at op1 0 CRm 14, and the
/// `PMEVCNTR`/`PMEVTYPER` block at CRn 14, CRm 8 to 15).
pub fn is_pmu_reg(r: SysReg) -> bool {
    r.op0 == 3
        && match (r.op1, r.crn, r.crm) {
            (3, 9, 12..=14) => true,
            (0, 9, 14) => matches!(r.op2, 1 | 2 | 6),
            (3, 14, 8..=15) => true,
            _ => false,
        }
}

/// The mask of counters that exist: event counters `0..n` and the cycle
/// counter (bit 31).
pub fn counter_mask(n: usize) -> u64 {
    (1u64 << 31) | ((1u64 << n.min(PMU_MAX_COUNTERS)) - 1)
}

#[cfg(target_os = "none")]
pub use hw::{restore, save};

#[cfg(target_os = "none")]
mod hw {
    use super::counter_mask;
    use core::arch::asm;
    use ferrovisor_shared::vcpu::{PmuState, PMU_MAX_COUNTERS};

    macro_rules! mrs {
        ($($reg:tt)+) => {{
            let v: u64;
            // SAFETY: reading a PMU register at EL2 has no side effects; only
            // called on a CPU with PMUv3.
            unsafe { asm!(concat!("mrs {}, ", $($reg)+), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }};
    }

    macro_rules! msr {
        ($v:expr, $($reg:tt)+) => {{
            let v: u64 = $v;
            // SAFETY: PMU registers only change what the PMU counts and
            // signals; el2 and the host do not use the PMU, and a guest's state
            // is only loaded while that guest is about to run.
            unsafe { asm!(concat!("msr ", $($reg)+, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
        }};
    }

    /// `PMEVCNTR<n>_EL0` and `PMEVTYPER<n>_EL0` by index: direct accesses, not
    /// `PMSELR_EL0` + `PMXEV*`, which need an ISB between them.
    macro_rules! by_index {
        ($($n:literal)*) => {
            fn read_evcntr(n: usize) -> u64 {
                match n { $($n => mrs!(concat!("pmevcntr", $n, "_el0")),)* _ => 0 }
            }
            fn read_evtyper(n: usize) -> u64 {
                match n { $($n => mrs!(concat!("pmevtyper", $n, "_el0")),)* _ => 0 }
            }
            fn write_evcntr(n: usize, v: u64) {
                match n { $($n => msr!(v, concat!("pmevcntr", $n, "_el0")),)* _ => {} }
            }
            fn write_evtyper(n: usize, v: u64) {
                match n { $($n => msr!(v, concat!("pmevtyper", $n, "_el0")),)* _ => {} }
            }
        };
    }
    by_index!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30);

    /// `PMCR_EL0.P`/`C`: write-only resets, never set when restoring.
    const PMCR_P: u64 = 1 << 1;
    const PMCR_C: u64 = 1 << 2;

    /// Loads a guest's PMU state, counters enabled last.
    #[inline(never)]
    pub fn restore(p: &PmuState, n: usize) {
        let all = counter_mask(n);
        msr!(p.pmcr & !(PmuState::PMCR_E | PMCR_P | PMCR_C), "pmcr_el0");
        for i in 0..n.min(PMU_MAX_COUNTERS) {
            write_evtyper(i, p.evtyper[i]);
            write_evcntr(i, p.evcntr[i]);
        }
        msr!(p.pmccfiltr, "pmccfiltr_el0");
        msr!(p.pmccntr, "pmccntr_el0");
        msr!(p.pmselr, "pmselr_el0");
        msr!(p.pmuserenr, "pmuserenr_el0");
        msr!(all, "pmcntenclr_el0");
        msr!(p.pmcnten & all, "pmcntenset_el0");
        msr!(all, "pmintenclr_el1");
        msr!(p.pminten & all, "pmintenset_el1");
        msr!(all, "pmovsclr_el0");
        msr!(p.pmovs & all, "pmovsset_el0");
        msr!(p.pmcr & !(PMCR_P | PMCR_C), "pmcr_el0");
    }

    /// Stops the guest's counters and saves them: after this nothing counts,
    /// and the PMU's interrupt request is low.
    #[inline(never)]
    pub fn save(p: &mut PmuState, n: usize) {
        let pmcr = mrs!("pmcr_el0");
        msr!(pmcr & !(PmuState::PMCR_E | PMCR_P | PMCR_C), "pmcr_el0");
        p.pmcr = pmcr;
        for i in 0..n.min(PMU_MAX_COUNTERS) {
            p.evcntr[i] = read_evcntr(i);
            p.evtyper[i] = read_evtyper(i);
        }
        p.pmccntr = mrs!("pmccntr_el0");
        p.pmccfiltr = mrs!("pmccfiltr_el0");
        p.pmselr = mrs!("pmselr_el0");
        p.pmuserenr = mrs!("pmuserenr_el0");
        p.pmcnten = mrs!("pmcntenset_el0");
        p.pminten = mrs!("pmintenset_el1");
        p.pmovs = mrs!("pmovsset_el0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pmu_registers_are_recognised() {
        // PMCR_EL0, PMCNTENSET_EL0, PMCCNTR_EL0, PMUSERENR_EL0, PMOVSSET_EL0.
        for (op1, crn, crm, op2) in [(3, 9, 12, 0), (3, 9, 12, 1), (3, 9, 13, 0), (3, 9, 14, 0), (3, 9, 14, 3)] {
            assert!(is_pmu_reg(SysReg::new(3, op1, crn, crm, op2)), "{op1} {crn} {crm} {op2}");
        }
        // PMINTENSET_EL1, PMINTENCLR_EL1, PMMIR_EL1; PMEVCNTR0/30, PMEVTYPER0/30, PMCCFILTR.
        for (op1, crn, crm, op2) in [(0, 9, 14, 1), (0, 9, 14, 2), (0, 9, 14, 6), (3, 14, 8, 0), (3, 14, 11, 6)] {
            assert!(is_pmu_reg(SysReg::new(3, op1, crn, crm, op2)), "{op1} {crn} {crm} {op2}");
        }
        assert!(is_pmu_reg(SysReg::new(3, 3, 14, 12, 0)) && is_pmu_reg(SysReg::new(3, 3, 14, 15, 7)));
        // CNTV_CTL_EL0 (3,3,14,3,1), MDSCR_EL1-like and ID registers are not.
        assert!(!is_pmu_reg(SysReg::new(3, 3, 14, 3, 1)));
        assert!(!is_pmu_reg(SysReg::new(3, 0, 9, 14, 0)));
        assert!(!is_pmu_reg(SysReg::new(3, 0, 0, 5, 0)));
        assert!(!is_pmu_reg(SysReg::new(2, 3, 9, 12, 0)));
    }

    #[test]
    fn guests_run_with_el2_filtered_out_or_everything_trapped() {
        assert_eq!(guest_mdcr(0, true), MDCR_TPM | MDCR_TPMCR, "no PMU: trapped");
        assert_eq!(guest_mdcr(0xf, true), MDCR_TPM | MDCR_TPMCR, "IMPLEMENTATION DEFINED PMU: trapped");
        assert_eq!(guest_mdcr(PMUVER_V3P5, false), MDCR_TPM | MDCR_TPMCR, "not yet used: trapped");
        assert_eq!(guest_mdcr(PMUVER_V3, true), 0);
        assert_eq!(guest_mdcr(PMUVER_V3P1, true), MDCR_HPMD);
        assert_eq!(guest_mdcr(PMUVER_V3P5, true), MDCR_HPMD | MDCR_HCCD);
        assert_eq!(counter_mask(6), 0x8000_003f);
        assert_eq!(counter_mask(0), 0x8000_0000);
        assert_eq!(counter_mask(31), 0xffff_ffff);
    }
}
