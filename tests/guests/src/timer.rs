//! The EL1 generic timers a guest has: the virtual timer (`CNTV_*`, counting
//! `CNTVCT_EL0`) and the EL1 physical timer (`CNTP_*`, counting `CNTPCT_EL0`).

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    Readable, Writeable, CNTPCT_EL0, CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTVCT_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0,
};

use crate::rt;

/// `CNT*_CTL_EL0.ENABLE`.
pub const CTL_ENABLE: u64 = 1 << 0;
/// `CNT*_CTL_EL0.IMASK`: the condition does not assert the interrupt.
pub const CTL_IMASK: u64 = 1 << 1;
/// `CNT*_CTL_EL0.ISTATUS` (read-only): the condition is met.
pub const CTL_ISTATUS: u64 = 1 << 2;

/// The virtual timer's PPI when the device tree does not say (PPI 11).
pub const DEFAULT_VIRT_INTID: u32 = 27;
/// The EL1 physical timer's PPI when the device tree does not say (PPI 14).
pub const DEFAULT_PHYS_INTID: u32 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    Virt,
    Phys,
}

impl Timer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Virt => "vtimer",
            Self::Phys => "ptimer",
        }
    }

    /// The timer's INTID: the device tree's `arm,armv8-timer` node, else 27 or 30.
    pub fn intid(self) -> u32 {
        let desc = rt::env().board.timer();
        match self {
            Self::Virt => desc.map_or(DEFAULT_VIRT_INTID, |t| t.virt),
            Self::Phys => desc.map_or(DEFAULT_PHYS_INTID, |t| t.nonsecure_phys),
        }
    }

    /// The counter the timer compares with (after an `isb`, so the read is not early).
    pub fn counter(self) -> u64 {
        barrier::isb(barrier::SY);
        match self {
            Self::Virt => CNTVCT_EL0.get(),
            Self::Phys => CNTPCT_EL0.get(),
        }
    }

    pub fn cval(self) -> u64 {
        match self {
            Self::Virt => CNTV_CVAL_EL0.get(),
            Self::Phys => CNTP_CVAL_EL0.get(),
        }
    }

    pub fn set_cval(self, value: u64) {
        match self {
            Self::Virt => CNTV_CVAL_EL0.set(value),
            Self::Phys => CNTP_CVAL_EL0.set(value),
        }
    }

    pub fn ctl(self) -> u64 {
        match self {
            Self::Virt => CNTV_CTL_EL0.get(),
            Self::Phys => CNTP_CTL_EL0.get(),
        }
    }

    /// Writes `CNT*_CTL_EL0` and synchronizes, so the new state holds from the next instruction.
    pub fn set_ctl(self, value: u64) {
        match self {
            Self::Virt => CNTV_CTL_EL0.set(value),
            Self::Phys => CNTP_CTL_EL0.set(value),
        }
        barrier::isb(barrier::SY);
    }

    /// Sets the deadline to `cval` and enables the timer, unmasked.
    pub fn arm_at(self, cval: u64) {
        self.set_cval(cval);
        self.set_ctl(CTL_ENABLE);
    }

    /// Disables the timer (its interrupt stops being asserted).
    pub fn stop(self) {
        self.set_ctl(0);
    }
}
