//! The GIC as the architecture defines it, as plain values: INTID ranges, MPIDR affinity, the
//! distributor (`GICD_*`), the redistributors' RD_base and SGI_base frames (`GICR_*`), the GICv2 CPU
//! interface (`GICC_*`) and the fields of the `ICC_*` system registers the drivers use. Offsets are
//! from the frame's base. Arm IHI 0069 (GICv3/v4) chapter 12, IHI 0048 (GICv2) chapter 4; the ITS
//! and the redistributors' LPI registers are in [`crate::its`].
//!
//! The host's physical driver, its vGIC and the test guests' driver all use these names.

// ---- INTIDs (IHI 0069 §2.2) --------------------------------------------------------------------

/// SGIs are INTIDs 0-15.
pub const SGI_COUNT: u32 = 16;
/// PPIs are INTIDs 16-31.
pub const PPI_BASE: u32 = 16;
/// SPIs start at 32, after the private interrupts (SGIs and PPIs).
pub const SPI_BASE: u32 = 32;
/// SGIs and PPIs: banked per CPU.
pub const PRIVATE_COUNT: u32 = 32;
/// INTIDs 1020-1023 are special (IHI 0069 §2.2.1); SPIs end below them.
pub const SPECIAL_BASE: u32 = 1020;
/// The INTID an acknowledge returns when nothing can be acknowledged.
pub const SPURIOUS: u32 = 1023;
/// The first LPI.
pub const LPI_BASE: u32 = 8192;

// ---- MPIDR affinity (Arm ARM, MPIDR_EL1) -------------------------------------------------------

/// `MPIDR_EL1`'s affinity fields: Aff3 [39:32], Aff2 [23:16], Aff1 [15:8], Aff0 [7:0].
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// The affinity fields of `mpidr`, everything else (U, MT, RES1 bit 31) cleared.
pub const fn mpidr_affinity(mpidr: u64) -> u64 {
    mpidr & MPIDR_AFFINITY_MASK
}

/// `Aff<level>` (0 to 3) of `mpidr`.
pub const fn affinity_level(mpidr: u64, level: u32) -> u8 {
    let shift = if level >= 3 { 32 } else { 8 * level };
    (mpidr >> shift) as u8
}

/// The affinity as `GICR_TYPER.Affinity_Value` and `GICD_IROUTER` hold it (IHI 0069 §12.11.35,
/// §12.9.22): Aff3.Aff2.Aff1.Aff0 packed into 32 bits.
pub const fn affinity_value(mpidr: u64) -> u32 {
    (affinity_level(mpidr, 3) as u32) << 24 | (mpidr & 0xff_ffff) as u32
}

// ---- Distributor (IHI 0069 §12.9, IHI 0048 §4.3) -----------------------------------------------

pub const GICD_CTLR: usize = 0x0000;
pub const GICD_TYPER: usize = 0x0004;
pub const GICD_IIDR: usize = 0x0008;
/// GICv3.1 and later; RES0 before.
pub const GICD_TYPER2: usize = 0x000c;
/// A reserved distributor word in both versions (RAZ/WI).
pub const GICD_RESERVED: usize = 0x0070;
pub const GICD_IGROUPR: usize = 0x0080;
pub const GICD_ISENABLER: usize = 0x0100;
pub const GICD_ICENABLER: usize = 0x0180;
pub const GICD_ISPENDR: usize = 0x0200;
pub const GICD_ICPENDR: usize = 0x0280;
pub const GICD_ISACTIVER: usize = 0x0300;
pub const GICD_ICACTIVER: usize = 0x0380;
pub const GICD_IPRIORITYR: usize = 0x0400;
/// GICv2 only (GICv3 with affinity routing uses `GICD_IROUTER`).
pub const GICD_ITARGETSR: usize = 0x0800;
pub const GICD_ICFGR: usize = 0x0c00;
/// GICv2 only: software-generated interrupts.
pub const GICD_SGIR: usize = 0x0f00;
/// GICv2 only: `GICD_CPENDSGIR<n>`, four words.
pub const GICD_CPENDSGIR: usize = 0x0f10;
/// GICv2 only: `GICD_SPENDSGIR<n>`, four words.
pub const GICD_SPENDSGIR: usize = 0x0f20;
/// GICv3: `GICD_IROUTER<n>` at `GICD_IROUTER + 8 * n` for SPI n.
pub const GICD_IROUTER: usize = 0x6000;
pub const GICD_PIDR2_V2: usize = 0x0fe8;
pub const GICD_PIDR2_V3: usize = 0xffe8;

/// GICv2 `Enable` (Group 0 without the Security Extensions, Group 1 in the
/// Non-secure view); GICv3 `EnableGrp0` (DS = 1) or `EnableGrp1` (Non-secure view).
pub const GICD_CTLR_ENABLE_GRP0: u32 = 1 << 0;
/// GICv3 `EnableGrp1` (DS = 1) or `EnableGrp1A` (Non-secure view).
pub const GICD_CTLR_ENABLE_GRP1: u32 = 1 << 1;
/// GICv3 `ARE` / `ARE_NS`: affinity routing.
pub const GICD_CTLR_ARE: u32 = 1 << 4;
/// GICv3 `DS`: a single security state.
pub const GICD_CTLR_DS: u32 = 1 << 6;
/// GICv3 `RWP`: a register write is still taking effect.
pub const GICD_CTLR_RWP: u32 = 1 << 31;

/// `GICD_TYPER.ITLinesNumber` [4:0]: 32 * (N + 1) INTIDs below 1020.
pub const GICD_TYPER_IT_LINES: u32 = 0x1f;
/// `GICD_TYPER.CPUNumber` [7:5] (GICv2, and GICv3 with ARE off): CPUs - 1.
pub const GICD_TYPER_CPU_NUMBER_SHIFT: u32 = 5;
/// `GICD_TYPER.LPIS`.
pub const GICD_TYPER_LPIS: u32 = 1 << 17;
/// `GICD_TYPER.IDbits` [23:19]: INTID bits - 1.
pub const GICD_TYPER_ID_BITS_SHIFT: u32 = 19;
/// `GICD_TYPER.A3V`: Aff3 is supported.
pub const GICD_TYPER_A3V: u32 = 1 << 24;
/// `GICD_TYPER.RSS`: SGIs can target Aff0 values 0-255.
pub const GICD_TYPER_RSS: u32 = 1 << 26;

/// `GICD_IROUTER.Interrupt_Routing_Mode`: any participating PE.
pub const GICD_IROUTER_IRM: u64 = 1 << 31;

/// `GICD_SGIR.TargetListFilter` [25:24].
pub const GICD_SGIR_FILTER_SHIFT: u32 = 24;
pub const GICD_SGIR_FILTER_LIST: u32 = 0;
pub const GICD_SGIR_FILTER_OTHERS: u32 = 1;
pub const GICD_SGIR_FILTER_SELF: u32 = 2;
/// `GICD_SGIR.CPUTargetList` [23:16].
pub const GICD_SGIR_TARGET_LIST_SHIFT: u32 = 16;
/// `GICD_SGIR.SGIINTID` [3:0].
pub const GICD_SGIR_INTID: u32 = 0xf;

/// `ArchRev` in bits [7:4] of `GICD_PIDR2`, `GICR_PIDR2` and `GITS_PIDR2` (2, 3 or 4).
pub const PIDR2_ARCHREV_SHIFT: u32 = 4;

// ---- Redistributor (GICv3, IHI 0069 §12.10, §12.11) --------------------------------------------

/// RD_base frame.
pub const GICR_CTLR: usize = 0x0000;
pub const GICR_IIDR: usize = 0x0004;
pub const GICR_TYPER: usize = 0x0008;
pub const GICR_WAKER: usize = 0x0014;
pub const GICR_PROPBASER: usize = 0x0070;
pub const GICR_PENDBASER: usize = 0x0078;
pub const GICR_PIDR2: usize = 0xffe8;
/// The SGI_base frame, 64 KiB above RD_base.
pub const GICR_SGI_BASE: usize = 0x1_0000;
/// In the SGI_base frame: the same offsets as the distributor's first words.
pub const GICR_IGROUPR0: usize = 0x0080;
pub const GICR_ISENABLER0: usize = 0x0100;
pub const GICR_ICENABLER0: usize = 0x0180;
pub const GICR_ISPENDR0: usize = 0x0200;
pub const GICR_ICPENDR0: usize = 0x0280;
pub const GICR_ISACTIVER0: usize = 0x0300;
pub const GICR_ICACTIVER0: usize = 0x0380;
/// `GICR_IPRIORITYR<n>`: eight words, the 32 private interrupts.
pub const GICR_IPRIORITYR: usize = 0x0400;
pub const GICR_ICFGR0: usize = 0x0c00;
pub const GICR_ICFGR1: usize = 0x0c04;
/// A redistributor's frames: RD_base and SGI_base (GICv3), plus VLPI_base
/// and a reserved frame when `GICR_TYPER.VLPIS` is set (GICv4).
pub const GICR_FRAME_SIZE: usize = 0x2_0000;
pub const GICR_FRAME_SIZE_VLPIS: usize = 0x4_0000;

/// `GICR_CTLR.EnableLPIs`.
pub const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
/// `GICR_CTLR.RWP`.
pub const GICR_CTLR_RWP: u32 = 1 << 3;
/// `GICR_TYPER.PLPIS`: physical LPIs supported.
pub const GICR_TYPER_PLPIS: u64 = 1 << 0;
/// `GICR_TYPER.VLPIS`: virtual LPIs and the VLPI frame (GICv4).
pub const GICR_TYPER_VLPIS: u64 = 1 << 1;
/// `GICR_TYPER.Last`: the last redistributor of a region.
pub const GICR_TYPER_LAST: u64 = 1 << 4;
/// `GICR_TYPER.RVPEID` (GICv4.1): `GICR_VPENDBASER` holds a vPE ID.
pub const GICR_TYPER_RVPEID: u64 = 1 << 7;
/// `GICR_TYPER.Processor_Number` [23:8].
pub const GICR_TYPER_PROCESSOR_NUMBER_SHIFT: u32 = 8;
/// `GICR_TYPER.Affinity_Value` [63:32] (see [`affinity_value`]).
pub const GICR_TYPER_AFFINITY_SHIFT: u32 = 32;
/// `GICR_WAKER.ProcessorSleep`.
pub const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
/// `GICR_WAKER.ChildrenAsleep`.
pub const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// `GICR_TYPER.Affinity_Value` as an MPIDR's affinity fields.
pub const fn gicr_typer_mpidr(typer: u64) -> u64 {
    let aff = typer >> GICR_TYPER_AFFINITY_SHIFT;
    (aff & 0xff00_0000) << 8 | aff & 0xff_ffff
}

// ---- CPU interface, GICv2 (IHI 0048 §4.4) ------------------------------------------------------

pub const GICC_CTLR: usize = 0x0000;
pub const GICC_PMR: usize = 0x0004;
pub const GICC_BPR: usize = 0x0008;
pub const GICC_IAR: usize = 0x000c;
pub const GICC_EOIR: usize = 0x0010;
pub const GICC_RPR: usize = 0x0014;
pub const GICC_IIDR: usize = 0x00fc;
/// In the second 4 KiB page.
pub const GICC_DIR: usize = 0x1000;
/// `EnableGrp0` without the Security Extensions, `EnableGrp1` in the Non-secure view.
pub const GICC_CTLR_ENABLE: u32 = 1 << 0;
/// `EOImodeS` without the Security Extensions, `EOImodeNS` in the Non-secure view.
pub const GICC_CTLR_EOIMODE: u32 = 1 << 9;
/// `GICC_IAR.InterruptID` [9:0] (the CPUID of an SGI's source is in [12:10]).
pub const GICC_IAR_INTID: u32 = 0x3ff;

// ---- CPU interface, GICv3 system registers (IHI 0069 §12.2) ------------------------------------

/// `ICC_CTLR_EL1.EOImode`: `ICC_EOIR1_EL1` only drops priority; `ICC_DIR_EL1` deactivates.
pub const ICC_CTLR_EL1_EOIMODE: u64 = 1 << 1;
/// `ICC_SRE_EL1.SRE`: the system register interface is used.
pub const ICC_SRE_EL1_SRE: u64 = 1 << 0;

// ICC_SGI1R_EL1 / ICC_SGI0R_EL1 / ICC_ASGI1R_EL1: TargetList [15:0], Aff1 [23:16], INTID [27:24],
// Aff2 [39:32], IRM 40, RS [47:44], Aff3 [55:48].
pub const ICC_SGI1R_EL1_TARGET_LIST: u64 = 0xffff;
pub const ICC_SGI1R_EL1_AFF1_SHIFT: u32 = 16;
pub const ICC_SGI1R_EL1_INTID_SHIFT: u32 = 24;
pub const ICC_SGI1R_EL1_AFF2_SHIFT: u32 = 32;
/// `IRM`: to every PE but the sender.
pub const ICC_SGI1R_EL1_IRM: u64 = 1 << 40;
pub const ICC_SGI1R_EL1_RS_SHIFT: u32 = 44;
pub const ICC_SGI1R_EL1_AFF3_SHIFT: u32 = 48;

/// GICv3 `ICH_LR<n>_EL2` fields (IHI 0069 §12.4.8).
pub mod lr_v3 {
    pub const VINTID_MASK: u64 = 0xffff_ffff;
    pub const PINTID_SHIFT: u32 = 32;
    pub const PINTID_MASK: u64 = 0x1fff;
    /// With HW == 0: maintenance interrupt when the guest deactivates it.
    pub const EOI: u64 = 1 << 41;
    pub const PRIORITY_SHIFT: u32 = 48;
    pub const GROUP: u64 = 1 << 60;
    pub const HW: u64 = 1 << 61;
    pub const STATE_SHIFT: u32 = 62;
}

/// GICv2 `GICH_LR<n>` fields (IHI 0048 §5.3.9).
pub mod lr_v2 {
    pub const VINTID_MASK: u64 = 0x3ff;
    pub const PINTID_SHIFT: u32 = 10;
    pub const PINTID_MASK: u64 = 0x3ff;
    /// With HW == 0: the SGI's source CPU.
    pub const CPUID_SHIFT: u32 = 10;
    pub const CPUID_MASK: u64 = 0x7;
    /// With HW == 0: maintenance interrupt when the guest deactivates it.
    pub const EOI: u64 = 1 << 19;
    /// Priority [27:23]: the top five bits of the 8-bit priority.
    pub const PRIORITY_SHIFT: u32 = 23;
    pub const STATE_SHIFT: u32 = 28;
    pub const GROUP1: u64 = 1 << 30;
    pub const HW: u64 = 1 << 31;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_fields() {
        // MPIDR_EL1 with U (30), MT (24) and RES1 (31) set: none of them is affinity.
        let mpidr = 0x12_c134_5678;
        assert_eq!(mpidr_affinity(mpidr), 0x12_0034_5678);
        assert_eq!([0, 1, 2, 3].map(|l| affinity_level(mpidr, l)), [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(affinity_value(mpidr), 0x1234_5678);
        // GICR_TYPER of the redistributor of that PE, Processor_Number 5 and Last.
        let typer = u64::from(affinity_value(mpidr)) << GICR_TYPER_AFFINITY_SHIFT
            | 5 << GICR_TYPER_PROCESSOR_NUMBER_SHIFT
            | GICR_TYPER_LAST;
        assert_eq!(typer, 0x1234_5678_0000_0510);
        assert_eq!(gicr_typer_mpidr(typer), mpidr_affinity(mpidr));
    }

    /// IHI 0069 §12.10: the SGI_base frame keeps the distributor's layout for the private interrupts.
    #[test]
    fn sgi_frame_mirrors_the_distributor() {
        let pairs = [
            (GICR_IGROUPR0, GICD_IGROUPR),
            (GICR_ISENABLER0, GICD_ISENABLER),
            (GICR_ICENABLER0, GICD_ICENABLER),
            (GICR_ISPENDR0, GICD_ISPENDR),
            (GICR_ICPENDR0, GICD_ICPENDR),
            (GICR_ISACTIVER0, GICD_ISACTIVER),
            (GICR_ICACTIVER0, GICD_ICACTIVER),
            (GICR_IPRIORITYR, GICD_IPRIORITYR),
            (GICR_ICFGR0, GICD_ICFGR),
        ];
        for (r, d) in pairs {
            assert_eq!(r, d);
        }
        assert_eq!(GICR_ICFGR1, GICD_ICFGR + 4);
        assert_eq!(GICR_SGI_BASE + GICR_SGI_BASE, GICR_FRAME_SIZE);
        assert_eq!(GICR_PIDR2, GICD_PIDR2_V3);
    }

    /// An `ICC_SGI1R_EL1` value spelled out: SGI 9 to Aff3.Aff2.Aff1 = 1.2.3, RS 4, targets 0 and 5.
    #[test]
    fn sgi1r_layout() {
        let v = 9 << ICC_SGI1R_EL1_INTID_SHIFT
            | 1 << ICC_SGI1R_EL1_AFF3_SHIFT
            | 2 << ICC_SGI1R_EL1_AFF2_SHIFT
            | 3 << ICC_SGI1R_EL1_AFF1_SHIFT
            | 4 << ICC_SGI1R_EL1_RS_SHIFT
            | 0b10_0001;
        assert_eq!(v, 0x0001_4002_0903_0021);
        assert_eq!(v & ICC_SGI1R_EL1_TARGET_LIST, 0x21);
        assert_eq!(v & ICC_SGI1R_EL1_IRM, 0);
    }

    #[test]
    fn intid_ranges() {
        assert_eq!(SGI_COUNT, PPI_BASE);
        assert_eq!(PRIVATE_COUNT, SPI_BASE);
        // ITLinesNumber 31 is the largest distributor: 1024 INTIDs, SPIs up to 1019.
        assert_eq!(32 * (GICD_TYPER_IT_LINES + 1), SPECIAL_BASE + 4);
        const { assert!(SPURIOUS >= SPECIAL_BASE && SPURIOUS < 1024) };
        assert_eq!(LPI_BASE, 1 << 13);
    }
}
