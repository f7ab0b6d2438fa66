//! Guest exits el2 finishes without the host: the SMCCC calls whose answer is
//! fixed, and reads of the ID registers (trapped by `HCR_EL2.TID3`), which
//! guests see with the features Ferrovisor does not virtualise removed.
//!
//! Pure decisions; the world switch applies them.

use ferrovisor_shared::esr::{Esr, SysReg};
use ferrovisor_shared::hypercall::{
    guest_psci_features, is_psci, PSCI_VERSION_1_1, SMCCC_NOT_SUPPORTED, SMCCC_VERSION, SMCCC_VERSION_1_1,
};
use ferrovisor_shared::vcpu::ConstRegs;
use smccc::psci::*;

/// PSCI functions the host implements for guests: these exits go to the host.
#[cfg(test)]
const HOST_PSCI: [u32; 7] = [
    PSCI_CPU_ON_32,
    PSCI_CPU_ON_64,
    PSCI_CPU_OFF,
    PSCI_AFFINITY_INFO_32,
    PSCI_AFFINITY_INFO_64,
    PSCI_SYSTEM_OFF,
    PSCI_SYSTEM_RESET,
];

/// [`HOST_PSCI`] as a `match` (a few compares, not a table walk: this is on
/// the hypercall round trip).
fn is_host_psci(function: u32) -> bool {
    matches!(
        function,
        PSCI_CPU_ON_32
            | PSCI_CPU_ON_64
            | PSCI_CPU_OFF
            | PSCI_AFFINITY_INFO_32
            | PSCI_AFFINITY_INFO_64
            | PSCI_SYSTEM_OFF
            | PSCI_SYSTEM_RESET
    )
}

/// `MIGRATE_INFO_TYPE`: no Trusted OS needs migrating.
const MIGRATE_INFO_NOT_PRESENT: i64 = 2;

/// The answer to an SMCCC call from a guest (`HVC` or `SMC` with
/// immediate `imm`) if el2 can give it, `None` if the host must. Only `#0`
/// is SMCCC's (DEN0028 §2.5): other immediates get NOT_SUPPORTED, as on KVM.
/// Every function outside PSCI's range but `SMCCC_VERSION` (the other
/// architecture calls, `SMCCC_ARCH_FEATURES` and the workarounds: none
/// offered; any other owner's) is NOT_SUPPORTED, decided first.
#[inline(always)]
pub fn smccc(imm: u16, function: u32, x1: u64) -> Option<i64> {
    if imm != 0 {
        return Some(SMCCC_NOT_SUPPORTED);
    }
    if !is_psci(function) {
        return Some(if function == SMCCC_VERSION { SMCCC_VERSION_1_1 } else { SMCCC_NOT_SUPPORTED });
    }
    psci(function, x1)
}

/// The PSCI part of [`smccc`].
#[inline(always)]
fn psci(function: u32, x1: u64) -> Option<i64> {
    Some(match function {
        PSCI_VERSION => PSCI_VERSION_1_1,
        PSCI_MIGRATE_INFO_TYPE => MIGRATE_INFO_NOT_PRESENT,
        PSCI_FEATURES => guest_psci_features(x1 as u32),
        f if is_host_psci(f) => return None,
        _ => SMCCC_NOT_SUPPORTED,
    })
}

/// The bits of a data abort's syndrome that make it a load el2 may finish
/// (Arm ARM D24.2.40, "ISS encoding for an exception from a Data Abort"):
/// IL (a 32-bit instruction), ISV (the syndrome names the register and
/// size), and clear: VNCR, FnV (FAR holds the address), EA (no external
/// abort), CM (no cache maintenance), S1PTW (not a stage-1 walk), WnR (a
/// read); DFSC a translation fault at level 0 to 3 (no stage-2 mapping: an
/// emulated device).
const PLAIN_LOAD_MASK: u64 = 1 << 25 | 1 << 24 | 1 << 13 | 1 << 10 | 1 << 9 | 1 << 8 | 1 << 7 | 1 << 6 | 0b11_1100;
const PLAIN_LOAD: u64 = 1 << 25 | 1 << 24 | 0b00_0100;

/// The same for a store (WnR set).
const PLAIN_STORE: u64 = PLAIN_LOAD | 1 << 6;

/// The IPA, register and bytes of a stage-2 data abort that is a plain
/// store by an AArch64 guest (see [`PLAIN_LOAD_MASK`]); `None` otherwise.
#[inline(always)]
pub fn plain_store(esr: Esr, hpfar: u64, far: u64, pstate: u64) -> Option<(u64, u8, u8)> {
    if esr.0 & PLAIN_LOAD_MASK != PLAIN_STORE || pstate & PSTATE_NRW != 0 {
        return None;
    }
    let iss = esr.data_abort()?;
    let ipa = ((hpfar & 0x0fff_ffff_ffff_fff0) << 8) | (far & 0xfff);
    Some((ipa, iss.register, iss.access_size))
}

/// PSTATE.nRW (an AArch32 guest context) and PSTATE.BTYPE.
const PSTATE_NRW: u64 = 1 << 4;
pub const PSTATE_BTYPE: u64 = 0b11 << 10;

/// The register and the value a stage-2 data abort loads when it is a
/// plain load by an AArch64 guest of a register in `consts`; `None` (the
/// host emulates it, as any other access) otherwise. The value is extended
/// as the instruction asks (ISS.SSE, ISS.SF); register 31 is XZR.
#[inline(always)]
pub fn const_load(esr: Esr, hpfar: u64, far: u64, pstate: u64, consts: &ConstRegs) -> Option<(u8, u64)> {
    if esr.0 & PLAIN_LOAD_MASK != PLAIN_LOAD || pstate & PSTATE_NRW != 0 {
        return None;
    }
    let iss = esr.data_abort()?;
    // HPFAR_EL2.FIPA is IPA bits 51:12 in bits 43:4; FAR_EL2 has the rest.
    let ipa = ((hpfar & 0x0fff_ffff_ffff_fff0) << 8) | (far & 0xfff);
    let value = consts.lookup(ipa, iss.access_size)?;
    Some((iss.register, iss.load_value(value)))
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

/// An ID register field a guest may see (Arm ARM D24.2, the ID_AA64*_EL1
/// descriptions), with the reason it is safe to show: the instructions it
/// names run at EL1 without a trap and without state beyond what el2
/// switches (general, FP/SIMD, PAuth, EL1 system registers), or the host
/// emulates what traps. Every other field reads as zero.
pub struct Shown {
    #[cfg_attr(not(test), allow(dead_code, reason = "the tests' names; el2 keeps only the masks"))]
    pub name: &'static str,
    pub shift: u32,
}

/// The bits of `fields`, worked out at build time: el2's image holds the
/// masks, not the tables.
const fn mask(fields: &[Shown]) -> u64 {
    let mut m = 0;
    let mut i = 0;
    while i < fields.len() {
        m |= field(fields[i].shift);
        i += 1;
    }
    m
}

const fn shown(name: &'static str, shift: u32) -> Shown {
    Shown { name, shift }
}

/// `ID_AA64ISAR0_EL1`: all but TME (transactional memory: state el2 does
/// not switch).
pub const ISAR0: &[Shown] = &[
    shown("AES", 4),
    shown("SHA1", 8),
    shown("SHA2", 12),
    shown("CRC32", 16),
    shown("Atomic", 20),
    shown("RDM", 28),
    shown("SHA3", 32),
    shown("SM3", 36),
    shown("SM4", 40),
    shown("DP", 44),
    shown("FHM", 48),
    shown("TS", 52),
    shown("TLB", 56),
    shown("RNDR", 60),
];

/// `ID_AA64ISAR1_EL1`: all but LS64 (64-byte single-copy atomic accesses to
/// device memory, which no emulated device takes and `HCRX_EL2` gates).
/// The PAuth keys are part of a vCPU's context.
pub const ISAR1: &[Shown] = &[
    shown("DPB", 0),
    shown("APA", 4),
    shown("API", 8),
    shown("JSCVT", 12),
    shown("FCMA", 16),
    shown("LRCPC", 20),
    shown("GPA", 24),
    shown("GPI", 28),
    shown("FRINTTS", 32),
    shown("SB", 36),
    shown("SPECRES", 40),
    shown("BF16", 44),
    shown("DGH", 48),
    shown("I8MM", 52),
    shown("XS", 56),
];

/// `ID_AA64ISAR2_EL1`. Not shown: WFxT (QEMU 10.x, TCG, reports a trapped
/// WFIT as a WFI, TI 0 and RV 0, without its register: a guest shown WFxT
/// there would sleep past its timeout, for ever with no interrupt due; the
/// host honours the timeout when the syndrome names it), MOPS (needs
/// `HCRX_EL2.MSCEn`, which el2 leaves clear: UNDEFINED at EL1), the 128-bit
/// system register instructions (their traps, EC 0x14, are not decoded),
/// ATS1A.
pub const ISAR2: &[Shown] = &[
    shown("RPRES", 4),
    shown("GPA3", 8),
    shown("APA3", 12),
    shown("BC", 20),
    shown("PAC_frac", 24),
    shown("CLRBHB", 28),
    shown("PRFMSLC", 40),
    shown("RPRFM", 48),
    shown("CSSC", 52),
    shown("LUT", 56),
];

/// `ID_AA64PFR1_EL1`: BT, SSBS, CSV2_frac; no MTE, SME, RAS_frac, MPAM,
/// NMI, GCS, THE (state or traps el2 does not handle).
pub const PFR1: &[Shown] = &[shown("BT", 0), shown("SSBS", 4), shown("CSV2_frac", 32)];

/// `ID_AA64MMFR0_EL1` (PARange capped at 40 bits apart). Not shown:
/// BigEnd, BigEndEL0 (the host emulates MMIO little-endian only), the
/// stage-2 granule fields (EL2's), FGT and ECV (EL2 features; ECV's
/// self-synchronised counter reads would trap undecoded).
pub const MMFR0: &[Shown] = &[
    shown("PARange", 0),
    shown("ASIDBits", 4),
    shown("SNSMem", 12),
    shown("TGran16", 20),
    shown("TGran64", 24),
    shown("TGran4", 28),
    shown("ExS", 44),
];

/// `ID_AA64MMFR1_EL1`. Not shown: VMIDBits, VH, XNX, TWED, HCX (features
/// of EL2, which a guest does not have), LO (LORegions: its registers trap,
/// `HCR_EL2.TLOR`, and are not emulated).
pub const MMFR1: &[Shown] = &[
    shown("HAFDBS", 0),
    shown("HPDS", 12),
    shown("PAN", 20),
    shown("SpecSEI", 24),
    shown("ETS", 36),
    shown("AFP", 44),
    shown("nTLBPA", 48),
    shown("TIDCP1", 52),
    shown("CMOW", 56),
    shown("ECBHB", 60),
];

/// `ID_AA64MMFR2_EL1`. Not shown: LSM (AArch32), NV, FWB, EVT (features of
/// EL2).
pub const MMFR2: &[Shown] = &[
    shown("CnP", 0),
    shown("UAO", 4),
    shown("IESB", 12),
    shown("VARange", 16),
    shown("CCIDX", 20),
    shown("ST", 28),
    shown("AT", 32),
    shown("IDS", 36),
    shown("TTL", 48),
    shown("BBM", 52),
    shown("E0PD", 60),
];

/// `ID_AA64PFR0_EL1` as shown (EL0 and EL1 forced to AArch64 only, GIC
/// only to a GICv3 guest). Not shown: SVE, RAS, SEL2, MPAM, AMU, RME
/// (state el2 does not switch, or EL2 and EL3 features).
pub const PFR0: &[Shown] = &[
    shown("EL0", 0),
    shown("EL1", 4),
    shown("EL2", 8),
    shown("EL3", 12),
    shown("FP", 16),
    shown("AdvSIMD", 20),
    shown("GIC", 24),
    shown("DIT", 48),
    shown("CSV2", 56),
    shown("CSV3", 60),
];

/// `ID_AA64DFR0_EL1` as shown (PMUVer only with a PMU, at most PMUv3p5).
/// Not shown: TraceVer, PMSVer (SPE), DoubleLock, TraceFilt, TraceBuffer,
/// MTPMU, BRBE and the rest (state el2 does not switch).
pub const DFR0: &[Shown] =
    &[shown("DebugVer", 0), shown("PMUVer", 8), shown("BRPs", 12), shown("WRPs", 20), shown("CTX_CMPs", 28)];

/// The fields of `reg` a guest may see.
#[cfg(test)]
fn shown_fields(reg: IdReg) -> &'static [Shown] {
    match reg {
        IdReg::Pfr0 => PFR0,
        IdReg::Pfr1 => PFR1,
        IdReg::Dfr0 => DFR0,
        IdReg::Isar0 => ISAR0,
        IdReg::Isar1 => ISAR1,
        IdReg::Isar2 => ISAR2,
        IdReg::Mmfr0 => MMFR0,
        IdReg::Mmfr1 => MMFR1,
        IdReg::Mmfr2 => MMFR2,
    }
}

/// The bits of `reg` a guest may see.
const fn shown_mask(reg: IdReg) -> u64 {
    const MASKS: [u64; 9] = [
        mask(PFR0),
        mask(PFR1),
        mask(DFR0),
        mask(ISAR0),
        mask(ISAR1),
        mask(ISAR2),
        mask(MMFR0),
        mask(MMFR1),
        mask(MMFR2),
    ];
    MASKS[reg as usize]
}

/// What a guest reads for an ID register whose real value is `value`: only
/// the fields [`shown_fields`] lists (features Ferrovisor handles), the GIC
/// system registers only for a GICv3 guest, the PMU only for a guest that
/// has one (at most PMUv3p5), and the physical address size capped at the
/// guest's 40-bit IPA space.
pub fn sanitize_id_reg(reg: IdReg, value: u64, features: GuestFeatures) -> u64 {
    let mut v = value & shown_mask(reg);
    match reg {
        IdReg::Pfr0 => {
            v = (v & !(field(0) | field(4))) | 1 | (1 << 4);
            if !features.gicv3 {
                v &= !field(24);
            }
        }
        IdReg::Dfr0 => {
            let pmuver = (value >> 8) & 0xf;
            let pmu = if features.pmu && pmuver != 0xf { pmuver.min(PMUVER_MAX) } else { 0 };
            v = (v & !field(8)) | pmu << 8;
        }
        IdReg::Mmfr0 => {
            const PARANGE_40_BITS: u64 = 2;
            v = (v & !0xf) | (value & 0xf).min(PARANGE_40_BITS);
        }
        _ => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_smccc_answers() {
        assert_eq!(smccc(0, SMCCC_VERSION, 0), Some(0x1_0001));
        assert_eq!(smccc(0, PSCI_VERSION, 0), Some(0x1_0001));
        assert_eq!(smccc(0, PSCI_FEATURES, PSCI_CPU_ON_64 as u64), Some(0));
        assert_eq!(smccc(0, PSCI_FEATURES, PSCI_CPU_SUSPEND_64 as u64), Some(-1));
        assert_eq!(smccc(0, PSCI_FEATURES, 0x8400_00ff), Some(-1));
        assert_eq!(smccc(0, PSCI_MIGRATE_INFO_TYPE, 0), Some(2));
        assert_eq!(smccc(0, 0x8000_0001, 0x8000_8000), Some(-1), "SMCCC_ARCH_FEATURES");
        assert_eq!(smccc(0, 0x4b00_0000, 0), Some(-1), "micro-bench's hypercall");
        assert_eq!(smccc(0, 0xc300_0099, 0), Some(-1));
        assert_eq!(smccc(0, PSCI_CPU_SUSPEND_64, 0), Some(-1));
    }

    #[test]
    fn host_psci_goes_to_the_host() {
        for f in HOST_PSCI {
            assert_eq!(smccc(0, f, 0), None, "{f:#x}");
        }
        // Exactly those, of PSCI's whole range (SMC32 and SMC64 ids).
        for f in (0x8400_0000..0x8400_0020).chain(0xc400_0000..0xc400_0020) {
            assert_eq!(smccc(0, f, 0).is_none(), HOST_PSCI.contains(&f), "{f:#x}");
        }
    }

    #[test]
    fn calls_outside_psci_are_not_supported_but_the_version() {
        // DEN0028: SMCCC_ARCH_FEATURES, ARCH_SOC_ID, the workarounds, and
        // other owners' calls, SMC32 and SMC64.
        for f in [0x8000_0001, 0x8000_0002, 0x8000_7fff, 0x8000_8000, 0xc000_0000, 0x8200_0000, 0xc400_0020, 0x0] {
            assert_eq!(smccc(0, f, 0), Some(-1), "{f:#x}");
        }
        assert_eq!(smccc(1, SMCCC_VERSION, 0), Some(-1), "HVC #1 is not SMCCC's");
        assert_eq!(smccc(1, PSCI_CPU_ON_64, 0), Some(-1));
    }

    /// A data abort from a lower EL with this ISS (EC 0x24, IL).
    fn dabt(iss: u64) -> Esr {
        Esr(0x24 << 26 | 1 << 25 | iss)
    }
    const ISV: u64 = 1 << 24;
    /// DFSC: translation fault, level 3 and level 1.
    const L3: u64 = 0b00_0111;
    const L1: u64 = 0b00_0101;

    fn table() -> ConstRegs {
        let mut t = ConstRegs::default();
        assert!(t.push(0x0800_0008, 4, 0x4658, 1, 0));
        assert!(t.push(0x080a_0008, 8, 0x8000_0000_0000_0010, 1, 0));
        assert!(t.push(0x080a_ffe8, 4, 0x30, 2, 17));
        t
    }

    fn load(esr: Esr, ipa: u64, t: &ConstRegs) -> Option<(u8, u64)> {
        // FAR_EL2 is the guest's VA: only its low 12 bits are the IPA's.
        const_load(esr, (ipa >> 12) << 4, 0xffff_0000_0000_0000 | ipa & 0xfff, 0x3c5, t)
    }

    #[test]
    fn constant_loads_are_answered_as_the_instruction_asks() {
        let t = table();
        // ldr w3, [GICD_IIDR]: SAS 2 (word), SRT 3.
        assert_eq!(load(dabt(ISV | 2 << 22 | 3 << 16 | L3), 0x0800_0008, &t), Some((3, 0x4658)));
        // ldr x7 of the 64-bit GICR_TYPER: SAS 3, SF.
        let typer = dabt(ISV | 3 << 22 | 7 << 16 | 1 << 15 | L1);
        assert_eq!(load(typer, 0x080a_0008, &t), Some((7, 0x8000_0000_0000_0010)));
        // ldrsw x1 of a word whose bit 31 is set: sign-extended (SSE, SF).
        let mut t2 = t;
        assert!(t2.push(0x0800_0004, 4, 0x8000_0001, 1, 0));
        let ldrsw = dabt(ISV | 2 << 22 | 1 << 21 | 1 << 16 | 1 << 15 | L3);
        assert_eq!(load(ldrsw, 0x0800_0004, &t2), Some((1, 0xffff_ffff_8000_0001)));
        // ldr w1 of it: zero-extended.
        assert_eq!(load(dabt(ISV | 2 << 22 | 1 << 16 | L3), 0x0800_0004, &t2), Some((1, 0x8000_0001)));
        // ldr wzr: answered, the register is XZR (the world switch drops it).
        assert_eq!(load(dabt(ISV | 2 << 22 | 31 << 16 | L3), 0x0800_0008, &t), Some((31, 0x4658)));
        // The second redistributor's PIDR2.
        assert_eq!(load(dabt(ISV | 2 << 22 | L3), 0x080c_ffe8, &t), Some((0, 0x30)));
    }

    #[test]
    fn anything_but_a_plain_constant_load_goes_to_the_host() {
        let t = table();
        let word = ISV | 2 << 22 | 3 << 16 | L3;
        assert!(load(dabt(word), 0x0800_0008, &t).is_some());
        let refused: [(&str, Esr); 11] = [
            ("ISV = 0: no syndrome (ldp, writeback)", dabt(word & !ISV)),
            ("a store (WnR)", dabt(word | 1 << 6)),
            ("on a stage-1 walk (S1PTW)", dabt(word | 1 << 7)),
            ("cache maintenance (CM)", dabt(word | 1 << 8)),
            ("an external abort (EA)", dabt(word | 1 << 9)),
            ("FAR not valid (FnV)", dabt(word | 1 << 10)),
            ("VNCR", dabt(word | 1 << 13)),
            ("a permission fault", dabt(word & !0x3f | 0b00_1111)),
            ("an access flag fault", dabt(word & !0x3f | 0b00_1011)),
            ("a 16-bit instruction (IL = 0)", Esr(dabt(word).0 & !(1 << 25))),
            ("a byte load of a word register", dabt(word & !(3 << 22))),
        ];
        for (why, esr) in refused {
            assert_eq!(load(esr, 0x0800_0008, &t), None, "{why}");
        }
        assert_eq!(load(dabt(word), 0x0800_000c, &t), None, "a register not in the table");
        assert_eq!(load(dabt(ISV | 3 << 22 | 1 << 15 | L3), 0x0800_0008, &t), None, "a 64-bit load of a word");
        let aarch32 = const_load(dabt(word), (0x0800_0008 >> 12) << 4, 8, 0x10 | 0x3, &t);
        assert_eq!(aarch32, None, "an AArch32 context (PSTATE.nRW)");
        assert_eq!(load(dabt(word), 0x0800_0008, &ConstRegs::default()), None, "no table (fastpath=off)");
    }

    /// The GICv2 `GICD_SGIR` fast path takes only a plain word store.
    #[test]
    fn plain_stores_are_recognised() {
        const WNR: u64 = 1 << 6;
        let str_w5 = dabt(ISV | 2 << 22 | 5 << 16 | WNR | L3);
        let at = |esr: Esr, pstate: u64| plain_store(esr, (0x0800_0f00 >> 12) << 4, 0xffff_0000_0000_0f00, pstate);
        assert_eq!(at(str_w5, 0x3c5), Some((0x0800_0f00, 5, 4)));
        assert_eq!(at(dabt(ISV | 2 << 22 | 5 << 16 | L3), 0x3c5), None, "a load");
        assert_eq!(at(dabt(2 << 22 | 5 << 16 | WNR | L3), 0x3c5), None, "no syndrome");
        assert_eq!(at(Esr(str_w5.0 | 1 << 8), 0x3c5), None, "cache maintenance");
        assert_eq!(at(str_w5, 0x10), None, "AArch32");
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
        // WFxT (ISAR2 bits 3:0) and MOPS (19:16) gone, RPRES kept.
        assert_eq!(sanitize_id_reg(IdReg::Isar2, 0x0001_0012, V3), 0x0000_0010);
    }

    /// Every field a guest can see, register by register: a field added
    /// here is a feature the hypervisor must handle (its instructions run
    /// untrapped with no state el2 does not switch, or their traps are
    /// decoded and emulated). A real value of all ones shows exactly these.
    #[test]
    fn the_fields_guests_see_are_these() {
        let all = GuestFeatures { gicv3: true, pmu: true };
        // All ones, but a PMUv3p5: PMUVer 0xf is an IMPLEMENTATION DEFINED PMU.
        let real = |reg: IdReg| if reg == IdReg::Dfr0 { !field(8) | 6 << 8 } else { u64::MAX };
        let names = |reg: IdReg| -> std::vec::Vec<&str> {
            let v = sanitize_id_reg(reg, real(reg), all);
            shown_fields(reg).iter().filter(|f| (v >> f.shift) & 0xf != 0).map(|f| f.name).collect()
        };
        let expect: [(IdReg, &[&str]); 9] = [
            (IdReg::Pfr0, &["EL0", "EL1", "EL2", "EL3", "FP", "AdvSIMD", "GIC", "DIT", "CSV2", "CSV3"]),
            (IdReg::Pfr1, &["BT", "SSBS", "CSV2_frac"]),
            (IdReg::Dfr0, &["DebugVer", "PMUVer", "BRPs", "WRPs", "CTX_CMPs"]),
            (
                IdReg::Isar0,
                &[
                    "AES", "SHA1", "SHA2", "CRC32", "Atomic", "RDM", "SHA3", "SM3", "SM4", "DP", "FHM", "TS", "TLB",
                    "RNDR",
                ],
            ),
            (
                IdReg::Isar1,
                &[
                    "DPB", "APA", "API", "JSCVT", "FCMA", "LRCPC", "GPA", "GPI", "FRINTTS", "SB", "SPECRES", "BF16",
                    "DGH", "I8MM", "XS",
                ],
            ),
            (IdReg::Isar2, &["RPRES", "GPA3", "APA3", "BC", "PAC_frac", "CLRBHB", "PRFMSLC", "RPRFM", "CSSC", "LUT"]),
            (IdReg::Mmfr0, &["PARange", "ASIDBits", "SNSMem", "TGran16", "TGran64", "TGran4", "ExS"]),
            (IdReg::Mmfr1, &["HAFDBS", "HPDS", "PAN", "SpecSEI", "ETS", "AFP", "nTLBPA", "TIDCP1", "CMOW", "ECBHB"]),
            (IdReg::Mmfr2, &["CnP", "UAO", "IESB", "VARange", "CCIDX", "ST", "AT", "IDS", "TTL", "BBM", "E0PD"]),
        ];
        for (reg, want) in expect {
            assert_eq!(names(reg), want, "{reg:?}");
            // Nothing outside the listed fields, whatever the hardware says.
            let v = sanitize_id_reg(reg, real(reg), all);
            assert_eq!(v & !shown_mask(reg), 0, "{reg:?}");
            assert_eq!(shown_mask(reg), mask(shown_fields(reg)), "{reg:?}");
        }
        // Fields never overlap.
        for reg in [IdReg::Pfr0, IdReg::Pfr1, IdReg::Dfr0, IdReg::Isar0, IdReg::Isar1, IdReg::Isar2] {
            let fields = shown_fields(reg);
            for (i, a) in fields.iter().enumerate() {
                assert!(fields[i + 1..].iter().all(|b| b.shift != a.shift), "{reg:?} {}", a.name);
            }
        }
    }
}
