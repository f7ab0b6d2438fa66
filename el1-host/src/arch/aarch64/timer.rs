//! The EL1 physical timer (`CNTP_*`), which el2 leaves to the host; guests get
//! the virtual timer.

use aarch64_cpu::registers::{Readable, Writeable, CNTFRQ_EL0, CNTPCT_EL0, CNTP_CTL_EL0, CNTP_TVAL_EL0};

pub fn frequency() -> u64 {
    CNTFRQ_EL0.get().max(1)
}

pub fn now() -> u64 {
    CNTPCT_EL0.get()
}

pub fn ticks_from_us(us: u64) -> u64 {
    frequency() * us / 1_000_000
}

/// Fires the timer's interrupt once, `us` microseconds from now.
pub fn arm_in_us(us: u64) {
    CNTP_TVAL_EL0.set(ticks_from_us(us).min(u32::MAX as u64));
    CNTP_CTL_EL0.write(CNTP_CTL_EL0::ENABLE::SET + CNTP_CTL_EL0::IMASK::CLEAR);
}
