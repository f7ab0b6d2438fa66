//! The guest's GIC driver, GICv2 (distributor and CPU interface in MMIO) and
//! GICv3 (distributor and redistributors in MMIO, the CPU interface in the
//! `ICC_*` system registers), with register names from the GIC architecture
//! specification.
//!
//! This file holds the register map and the encodings, built on the
//! development host too so they carry unit tests; the driver that touches
//! the hardware is [`driver`] (re-exported here on the bare-metal target).
//!
//! Set-up follows Linux's: every interrupt in Group 1 on GICv3 (`IGROUPR` all
//! ones, `ICC_IGRPEN1_EL1` = 1), Group 0 on GICv2 (its reset value, with
//! `GICD_CTLR` and `GICC_CTLR` bit 0 set), priority 0xa0, `PMR` 0xff,
//! EOImode 0, SPIs routed to the boot CPU and disabled.

#[cfg(target_os = "none")]
pub mod driver;
#[cfg(target_os = "none")]
pub use driver::*;

pub use ferrovisor_shared::gic::*;

/// The priority every interrupt gets (Linux's default).
pub const DEFAULT_PRIORITY: u8 = 0xa0;

/// The architecture version the driver programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V2,
    V3,
}

/// `GICR_TYPER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedistTyper(pub u64);

impl RedistTyper {
    /// The last redistributor of a contiguous region.
    pub fn last(self) -> bool {
        self.0 & GICR_TYPER_LAST != 0
    }

    /// GICv4 virtual LPIs: the redistributor has four 64 KiB frames.
    pub fn vlpis(self) -> bool {
        self.0 & GICR_TYPER_VLPIS != 0
    }

    pub fn processor_number(self) -> u32 {
        ((self.0 >> GICR_TYPER_PROCESSOR_NUMBER_SHIFT) & 0xffff) as u32
    }

    /// `Affinity_Value` (bits [63:32], Aff3.Aff2.Aff1.Aff0) in `MPIDR_EL1`'s layout.
    pub fn mpidr(self) -> u64 {
        gicr_typer_mpidr(self.0)
    }

    /// The distance to the next redistributor.
    pub fn frame_size(self) -> usize {
        if self.vlpis() {
            GICR_FRAME_SIZE_VLPIS
        } else {
            GICR_FRAME_SIZE
        }
    }
}

/// `ICC_SGI1R_EL1` for SGI `intid` to the one PE whose affinity is `mpidr`
/// (`MPIDR_EL1` layout): `TargetList` holds bit Aff0 % 16, `RS` = Aff0 / 16.
pub fn sgi1r_to(intid: u32, mpidr: u64) -> u64 {
    let aff = |level| u64::from(affinity_level(mpidr, level));
    (aff(3) << ICC_SGI1R_EL1_AFF3_SHIFT)
        | ((aff(0) >> 4) << ICC_SGI1R_EL1_RS_SHIFT)
        | (aff(2) << ICC_SGI1R_EL1_AFF2_SHIFT)
        | (u64::from(intid & 0xf) << ICC_SGI1R_EL1_INTID_SHIFT)
        | (aff(1) << ICC_SGI1R_EL1_AFF1_SHIFT)
        | (1 << (aff(0) & 0xf))
}

/// `ICC_SGI1R_EL1` for SGI `intid` to every PE but the sender.
pub fn sgi1r_others(intid: u32) -> u64 {
    ICC_SGI1R_EL1_IRM | (u64::from(intid & 0xf) << ICC_SGI1R_EL1_INTID_SHIFT)
}

/// `GICD_SGIR` for SGI `intid` with `TargetListFilter` `filter` and
/// `CPUTargetList` `targets` (one bit per CPU interface).
pub fn sgir(intid: u32, filter: u32, targets: u8) -> u32 {
    ((filter & 3) << GICD_SGIR_FILTER_SHIFT)
        | (u32::from(targets) << GICD_SGIR_TARGET_LIST_SHIFT)
        | (intid & GICD_SGIR_INTID)
}

/// A value read from `IAR` (`GICC_IAR` or `ICC_IAR1_EL1`). `EOIR` and `DIR`
/// take it back whole (GICv2 needs the source CPU of an SGI in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iar {
    pub raw: u32,
    pub version: Version,
}

impl Iar {
    pub fn intid(self) -> u32 {
        match self.version {
            Version::V2 => self.raw & GICC_IAR_INTID,
            Version::V3 => self.raw & 0xff_ffff,
        }
    }

    /// GICv2 `CPUID`: the CPU interface that sent an SGI (0 otherwise and on GICv3).
    pub fn source_cpu(self) -> u32 {
        match self.version {
            Version::V2 => (self.raw >> 10) & 7,
            Version::V3 => 0,
        }
    }

    pub fn is_spurious(self) -> bool {
        matches!(self.intid(), 1020..=1023)
    }
}

/// The implemented priority bits a write of 0xff to an `IPRIORITYR` byte
/// reads back as: the count, when they are the top bits (at least four, as
/// the architecture requires) and the rest read as zero.
pub fn priority_bits(readback: u8) -> Option<u32> {
    let bits = readback.leading_ones();
    let mask = (0xff_u32 << (8 - bits)) as u8;
    (bits >= 4 && readback == mask).then_some(bits)
}

/// A register bank's word and bit for `intid` in a one-bit-per-interrupt array.
pub fn bit_reg(base: usize, intid: u32) -> (usize, u32) {
    (base + 4 * (intid / 32) as usize, 1 << (intid % 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redist_typer() {
        // Aff3 = 0x12, Aff2 = 0x34, Aff1 = 0x56, Aff0 = 0x78, Processor_Number 5, Last.
        let t = RedistTyper(0x1234_5678_0000_0510);
        assert_eq!(t.mpidr(), 0x12_0034_5678);
        assert_eq!(t.processor_number(), 5);
        assert!(t.last());
        assert!(!t.vlpis());
        assert_eq!(t.frame_size(), GICR_FRAME_SIZE);
        let v4 = RedistTyper(0x2);
        assert!(!v4.last());
        assert_eq!(v4.frame_size(), GICR_FRAME_SIZE_VLPIS);
    }

    #[test]
    fn sgi1r() {
        assert_eq!(sgi1r_to(3, 0), (3 << 24) | 1);
        assert_eq!(sgi1r_to(1, 0x2), (1 << 24) | (1 << 2));
        // Aff0 = 0x13: RS = 1, TargetList bit 3; Aff1 = 1, Aff2 = 2, Aff3 = 3.
        assert_eq!(sgi1r_to(15, 0x3_0002_0113), (3 << 48) | (1 << 44) | (2 << 32) | (15 << 24) | (1 << 16) | (1 << 3));
        assert_eq!(sgi1r_others(2), (1 << 40) | (2 << 24));
    }

    #[test]
    fn gicd_sgir() {
        assert_eq!(sgir(1, GICD_SGIR_FILTER_LIST, 0b100), 0x0004_0001);
        assert_eq!(sgir(2, GICD_SGIR_FILTER_OTHERS, 0), 0x0100_0002);
        assert_eq!(sgir(3, GICD_SGIR_FILTER_SELF, 0), 0x0200_0003);
    }

    #[test]
    fn iar() {
        let v2 = Iar { raw: (2 << 10) | 5, version: Version::V2 };
        assert_eq!((v2.intid(), v2.source_cpu()), (5, 2));
        assert!(!v2.is_spurious());
        assert!(Iar { raw: 1023, version: Version::V2 }.is_spurious());
        let v3 = Iar { raw: 8192, version: Version::V3 };
        assert_eq!((v3.intid(), v3.source_cpu()), (8192, 0));
        assert!(!v3.is_spurious());
    }

    #[test]
    fn priorities() {
        assert_eq!(priority_bits(0xff), Some(8));
        assert_eq!(priority_bits(0xf8), Some(5));
        assert_eq!(priority_bits(0xf0), Some(4));
        assert_eq!(priority_bits(0xe0), None, "fewer than four bits");
        assert_eq!(priority_bits(0xf4), None, "a hole below the implemented bits");
        assert_eq!(priority_bits(0), None);
    }

    #[test]
    fn bits() {
        assert_eq!(bit_reg(GICD_ISENABLER, 0), (0x100, 1));
        assert_eq!(bit_reg(GICD_ISENABLER, 33), (0x104, 2));
        assert_eq!(bit_reg(GICD_ISACTIVER, 95), (0x308, 1 << 31));
    }
}
