//! The EL1 physical timer (`CNTP_*`), which el2 leaves to the host; guests get
//! the virtual timer.

use aarch64_cpu::registers::{
    Readable, Writeable, CNTFRQ_EL0, CNTPCT_EL0, CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTP_TVAL_EL0, CNTV_CTL_EL0,
};

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

/// Makes the timer fire at physical count `deadline` if that is sooner than
/// it would anyway, or if it is off (the timer's interrupt handler arms
/// the next tick or deadline after it, `sched::timer_fired`).
pub fn arm_no_later_than(deadline: u64) {
    let armed = CNTP_CTL_EL0.matches_all(CNTP_CTL_EL0::ENABLE::SET + CNTP_CTL_EL0::IMASK::CLEAR);
    if !armed || deadline < CNTP_CVAL_EL0.get() {
        CNTP_CVAL_EL0.set(deadline);
        CNTP_CTL_EL0.write(CNTP_CTL_EL0::ENABLE::SET + CNTP_CTL_EL0::IMASK::CLEAR);
    }
}

/// Turns the virtual timer off (its state belongs to guests, which el2 loads).
pub fn vtimer_off() {
    CNTV_CTL_EL0.set(0);
}

/// Makes the timer fire at physical count `deadline`, whatever it was armed
/// for (the host's timer interrupt handler, which knows every deadline).
pub fn arm_at(deadline: u64) {
    CNTP_CVAL_EL0.set(deadline);
    CNTP_CTL_EL0.write(CNTP_CTL_EL0::ENABLE::SET + CNTP_CTL_EL0::IMASK::CLEAR);
}

/// Turns the timer off: nothing is due (its interrupt is level-sensitive, so
/// a fired timer must be moved or turned off before the handler returns).
pub fn disarm() {
    CNTP_CTL_EL0.write(CNTP_CTL_EL0::ENABLE::CLEAR);
}
