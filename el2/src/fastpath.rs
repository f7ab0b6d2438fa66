//! Guest exits el2 finishes without the host: the SMCCC calls whose answer is
//! fixed, and reads of the ID registers (trapped by `HCR_EL2.TID3`), which
//! guests see with the features Ferrovisor does not virtualise removed.
//!
//! Pure decisions; the world switch applies them.

use ferrovisor_shared::esr::SysReg;
use ferrovisor_shared::hypercall::{
    guest_psci_features, is_psci, is_smccc_arch, PSCI_VERSION_1_1, SMCCC_NOT_SUPPORTED, SMCCC_VERSION,
    SMCCC_VERSION_1_1,
};
use smccc::psci::*;

/// PSCI functions the host implements for guests: these exits go to the host.
const HOST_PSCI: [u32; 7] = [
    PSCI_CPU_ON_32,
    PSCI_CPU_ON_64,
    PSCI_CPU_OFF,
    PSCI_AFFINITY_INFO_32,
    PSCI_AFFINITY_INFO_64,
    PSCI_SYSTEM_OFF,
    PSCI_SYSTEM_RESET,
];

/// `MIGRATE_INFO_TYPE`: no Trusted OS needs migrating.
const MIGRATE_INFO_NOT_PRESENT: i64 = 2;

/// The answer to an SMCCC call from a guest if el2 can give it, `None` if the
/// host must.
pub fn smccc(function: u32, x1: u64) -> Option<i64> {
    if HOST_PSCI.contains(&function) {
        return None;
    }
    Some(match function {
        SMCCC_VERSION => SMCCC_VERSION_1_1,
        PSCI_VERSION => PSCI_VERSION_1_1,
        PSCI_MIGRATE_INFO_TYPE => MIGRATE_INFO_NOT_PRESENT,
        PSCI_FEATURES => guest_psci_features(x1 as u32),
        // SMCCC_ARCH_FEATURES and the workaround calls: none offered.
        f if is_smccc_arch(f) => SMCCC_NOT_SUPPORTED,
        f if is_psci(f) => SMCCC_NOT_SUPPORTED,
        _ => SMCCC_NOT_SUPPORTED,
    })
}

/// Whether `reg` is one of the ID registers `HCR_EL2.TID3` traps
/// (op0 3, op1 0, CRn 0, CRm 1..=7).
pub fn is_id_reg(reg: SysReg) -> bool {
    reg.op0 == 3 && reg.op1 == 0 && reg.crn == 0 && (1..=7).contains(&reg.crm)
}

/// The ID registers el2 reads for guests (others read as zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdReg {
    Pfr0,
    Pfr1,
    Dfr0,
    Isar0,
    Isar1,
    Isar2,
    Mmfr0,
    Mmfr1,
    Mmfr2,
}

impl IdReg {
    pub fn from_sys_reg(reg: SysReg) -> Option<Self> {
        if !is_id_reg(reg) {
            return None;
        }
        Some(match (reg.crm, reg.op2) {
            (4, 0) => Self::Pfr0,
            (4, 1) => Self::Pfr1,
            (5, 0) => Self::Dfr0,
            (6, 0) => Self::Isar0,
            (6, 1) => Self::Isar1,
            (6, 2) => Self::Isar2,
            (7, 0) => Self::Mmfr0,
            (7, 1) => Self::Mmfr1,
            (7, 2) => Self::Mmfr2,
            _ => return None,
        })
    }
}

const fn field(shift: u32) -> u64 {
    0xf << shift
}

/// What a guest has beyond the base the ID registers always show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestFeatures {
    /// A GICv3 (the system-register CPU interface).
    pub gicv3: bool,
    /// A PMUv3 that el2 switches (`CONFIG_PMU` on a CPU with PMUv3).
    pub pmu: bool,
}

/// The highest PMU version guests are shown: PMUv3p5 (64-bit event
/// counters, `MDCR_EL2.HCCD`). Later versions add state el2 does not switch.
const PMUVER_MAX: u64 = 6;

/// What a guest reads for an ID register whose real value is `value`:
/// features with state Ferrovisor does not switch or emulate (SVE, SME, MTE,
/// AMU, MPAM, RAS, trace, SPE, LORegions, AArch32) are removed, the GIC
/// system registers are shown only to a GICv3 guest, the PMU only to a guest
/// that has one (at most PMUv3p5), and the physical address size is capped
/// at the guest's 40-bit IPA space.
pub fn sanitize_id_reg(reg: IdReg, value: u64, features: GuestFeatures) -> u64 {
    let gicv3 = features.gicv3;
    match reg {
        IdReg::Pfr0 => {
            // Keep EL0..EL3 (forced AArch64-only at EL0/EL1), FP, AdvSIMD,
            // GIC, CSV2, CSV3, DIT.
            let keep = field(8) | field(12) | field(16) | field(20) | field(24) | field(48) | field(56) | field(60);
            let mut v = value & keep;
            v = (v & !(field(0) | field(4))) | 1 | (1 << 4);
            if !gicv3 {
                v &= !field(24);
            }
            v
        }
        // BT, SSBS, CSV2_frac.
        IdReg::Pfr1 => value & (field(0) | field(4) | field(32)),
        // DebugVer, BRPs, WRPs, CTX_CMPs, PMUVer if the guest has a PMU;
        // no trace, SPE, BRBE.
        IdReg::Dfr0 => {
            let pmuver = (value >> 8) & 0xf;
            let pmu = if features.pmu && pmuver != 0xf { pmuver.min(PMUVER_MAX) << 8 } else { 0 };
            (value & (field(0) | field(12) | field(20) | field(28))) | pmu
        }
        IdReg::Isar0 | IdReg::Isar1 => value,
        // No WFxT. The host honours a trapped WFIT's timeout from its syndrome
        // (ISS.TI, RV, RN), but QEMU (10.x, TCG) reports a trapped WFIT as a
        // WFI (TI 0, RV 0) and drops the register: a guest shown WFxT there
        // would sleep past its timeout, for ever with no interrupt due.
        IdReg::Isar2 => value & !field(0),
        IdReg::Mmfr0 => {
            const PARANGE_40_BITS: u64 = 2;
            let pa = (value & 0xf).min(PARANGE_40_BITS);
            (value & !0xf) | pa
        }
        // No LORegions.
        IdReg::Mmfr1 => value & !field(16),
        IdReg::Mmfr2 => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_smccc_answers() {
        assert_eq!(smccc(SMCCC_VERSION, 0), Some(0x1_0001));
        assert_eq!(smccc(PSCI_VERSION, 0), Some(0x1_0001));
        assert_eq!(smccc(PSCI_FEATURES, PSCI_CPU_ON_64 as u64), Some(0));
        assert_eq!(smccc(PSCI_FEATURES, PSCI_CPU_SUSPEND_64 as u64), Some(-1));
        assert_eq!(smccc(PSCI_FEATURES, 0x8400_00ff), Some(-1));
        assert_eq!(smccc(PSCI_MIGRATE_INFO_TYPE, 0), Some(2));
        assert_eq!(smccc(0x8000_0001, 0x8000_8000), Some(-1), "SMCCC_ARCH_FEATURES");
        assert_eq!(smccc(0x4b00_0000, 0), Some(-1), "micro-bench's hypercall");
        assert_eq!(smccc(0xc300_0099, 0), Some(-1));
        assert_eq!(smccc(PSCI_CPU_SUSPEND_64, 0), Some(-1));
    }

    #[test]
    fn host_psci_goes_to_the_host() {
        for f in HOST_PSCI {
            assert_eq!(smccc(f, 0), None, "{f:#x}");
        }
    }

    #[test]
    fn id_registers_are_recognised() {
        assert_eq!(IdReg::from_sys_reg(SysReg::new(3, 0, 0, 4, 0)), Some(IdReg::Pfr0));
        assert_eq!(IdReg::from_sys_reg(SysReg::new(3, 0, 0, 7, 2)), Some(IdReg::Mmfr2));
        // ID_AA64MMFR3_EL1 and the AArch32 ID registers read as zero.
        assert!(is_id_reg(SysReg::new(3, 0, 0, 7, 3)));
        assert_eq!(IdReg::from_sys_reg(SysReg::new(3, 0, 0, 7, 3)), None);
        assert!(is_id_reg(SysReg::new(3, 0, 0, 1, 0)));
        assert!(!is_id_reg(SysReg::new(3, 0, 0, 0, 5)), "MPIDR_EL1 is not TID3's");
        assert!(!is_id_reg(SysReg::new(3, 3, 14, 2, 1)));
    }

    const V3: GuestFeatures = GuestFeatures { gicv3: true, pmu: false };

    #[test]
    fn sanitizing_removes_what_guests_cannot_use() {
        // QEMU -cpu max's ID_AA64PFR0_EL1: SVE, AMU, RAS, GIC, AArch32 EL0.
        let pfr0 = 0x1201_1011_1111_2122u64;
        let v = sanitize_id_reg(IdReg::Pfr0, pfr0, V3);
        assert_eq!(v & 0xf, 1, "EL0 AArch64 only");
        assert_eq!((v >> 4) & 0xf, 1, "EL1 AArch64 only");
        assert_eq!((v >> 32) & 0xf, 0, "no SVE");
        assert_eq!((v >> 28) & 0xf, 0, "no RAS");
        assert_eq!((v >> 44) & 0xf, 0, "no AMU");
        assert_eq!((v >> 24) & 0xf, 1, "GICv3 system registers for a GICv3 guest");
        assert_eq!((sanitize_id_reg(IdReg::Pfr0, pfr0, GuestFeatures::default()) >> 24) & 0xf, 0);
        assert_eq!((v >> 16) & 0xff, (pfr0 >> 16) & 0xff, "FP and AdvSIMD kept");
        // PMUVer (bits 11:8) gone without a PMU, TraceVer gone, DebugVer kept.
        let dfr0 = 0x0000_0001_f210_5319u64;
        let d = sanitize_id_reg(IdReg::Dfr0, dfr0, V3);
        assert_eq!((d >> 8) & 0xf, 0);
        assert_eq!((d >> 4) & 0xf, 0);
        assert_eq!(d & 0xf, 9);
        // With a PMU: a version up to PMUv3p5 shown as it is, PMUv3p7 as PMUv3p5, an
        // IMPLEMENTATION DEFINED PMU (0xf) not at all.
        let pmu = GuestFeatures { gicv3: true, pmu: true };
        assert_eq!((sanitize_id_reg(IdReg::Dfr0, dfr0, pmu) >> 8) & 0xf, 3);
        assert_eq!((sanitize_id_reg(IdReg::Dfr0, 0x0000_0710, pmu) >> 8) & 0xf, 6);
        assert_eq!((sanitize_id_reg(IdReg::Dfr0, 0x0000_0410, pmu) >> 8) & 0xf, 4);
        assert_eq!((sanitize_id_reg(IdReg::Dfr0, 0x0000_0f10, pmu) >> 8) & 0xf, 0);
        assert_eq!((sanitize_id_reg(IdReg::Dfr0, 0x0000_0f10, pmu) >> 4) & 0xf, 0, "TraceVer gone");
        // PARange 48 bits capped at 40.
        assert_eq!(sanitize_id_reg(IdReg::Mmfr0, 0x1000_0000_0010_1125, V3) & 0xf, 2);
        assert_eq!(sanitize_id_reg(IdReg::Mmfr0, 0x1, V3) & 0xf, 1);
        // MTE (PFR1 bits 11:8) and SME (27:24) gone, BT kept.
        let p1 = sanitize_id_reg(IdReg::Pfr1, 0x0000_0000_0100_0321, V3);
        assert_eq!(p1, 0x21);
        // WFxT (ISAR2 bits 3:0) gone, MOPS (19:16) and the rest kept.
        assert_eq!(sanitize_id_reg(IdReg::Isar2, 0x0001_0012, V3), 0x0001_0010);
    }
}
