//! The register dump both el2 and the host print for an exception they did not
//! expect.

use crate::esr::Esr;
use core::fmt;

/// General registers as the exception vectors save them: `x0..x30`, then the
/// interrupted stack pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GeneralRegs {
    pub x: [u64; 31],
    pub sp: u64,
}

/// The names of the 16 entries of an EL1 vector table, by entry number.
pub const EL1_VECTOR_NAMES: [&str; 16] = [
    "synchronous from EL1 with SP_EL0",
    "IRQ from EL1 with SP_EL0",
    "FIQ from EL1 with SP_EL0",
    "SError from EL1 with SP_EL0",
    "synchronous from EL1 with SP_EL1",
    "IRQ from EL1 with SP_EL1",
    "FIQ from EL1 with SP_EL1",
    "SError from EL1 with SP_EL1",
    "synchronous from EL0 (AArch64)",
    "IRQ from EL0 (AArch64)",
    "FIQ from EL0 (AArch64)",
    "SError from EL0 (AArch64)",
    "synchronous from EL0 (AArch32)",
    "IRQ from EL0 (AArch32)",
    "FIQ from EL0 (AArch32)",
    "SError from EL0 (AArch32)",
];

/// Everything a dump shows.
pub struct ExceptionReport<'a> {
    /// Which vector: for example "synchronous from current EL with SP_ELx".
    pub kind: &'a str,
    /// "EL2" or "EL1", the level that took it.
    pub el: &'a str,
    pub esr: u64,
    pub far: u64,
    pub elr: u64,
    pub spsr: u64,
    pub regs: &'a GeneralRegs,
}

impl fmt::Display for ExceptionReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let el = self.el;
        writeln!(f, "unexpected exception at {el}: {}", self.kind)?;
        writeln!(f, "  ESR_{el}  = {}", Esr(self.esr))?;
        writeln!(f, "  FAR_{el}  = {:#018x}", self.far)?;
        writeln!(f, "  ELR_{el}  = {:#018x}", self.elr)?;
        writeln!(
            f,
            "  SPSR_{el} = {:#018x} (from EL{}{})",
            self.spsr,
            (self.spsr >> 2) & 3,
            if self.spsr & 1 != 0 { "h" } else { "t" }
        )?;
        for row in 0..8 {
            write!(f, " ")?;
            for col in 0..4 {
                let i = row * 4 + col;
                if i < 31 {
                    write!(f, " x{i:<2}={:#018x}", self.regs.x[i])?;
                } else {
                    write!(f, " sp ={:#018x}", self.regs.sp)?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_names_every_register() {
        let mut regs = GeneralRegs::default();
        regs.x[30] = 0xdead;
        regs.sp = 0xbeef;
        let text = format!(
            "{}",
            ExceptionReport {
                kind: "synchronous",
                el: "EL2",
                esr: 0x9600_0046,
                far: 0x10,
                elr: 0x4008_1000,
                spsr: 0x3c9,
                regs: &regs
            }
        );
        assert!(text.contains("ESR_EL2  = 0x96000046 (EC=0x25 data abort from the same EL"));
        assert!(text.contains("FAR_EL2  = 0x0000000000000010"));
        assert!(text.contains("x30=0x000000000000dead"));
        assert!(text.contains("sp =0x000000000000beef"));
        assert!(text.contains("(from EL2h)"));
        assert_eq!(text.lines().count(), 13);
    }
}
