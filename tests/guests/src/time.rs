//! Time from the generic timer's virtual counter, for timeouts.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTVCT_EL0};

use crate::cpus::{ms_to_ticks, ticks_to_us};

/// Used when firmware left `CNTFRQ_EL0` at 0 (QEMU's default frequency).
const FALLBACK_FREQ: u64 = 62_500_000;

pub fn counter() -> u64 {
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

pub fn freq() -> u64 {
    match CNTFRQ_EL0.get() {
        0 => FALLBACK_FREQ,
        f => f,
    }
}

/// Polls `done` until it holds or `ms` milliseconds pass; returns the
/// microseconds it took, or `None` on timeout.
pub fn wait_for(ms: u64, mut done: impl FnMut() -> bool) -> Option<u64> {
    let start = counter();
    let limit = ms_to_ticks(ms, freq());
    loop {
        if done() {
            return Some(ticks_to_us(counter() - start, freq()));
        }
        if counter() - start > limit {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// Microseconds since `start` (a [`counter`] value).
pub fn us_since(start: u64) -> u64 {
    ticks_to_us(counter().wrapping_sub(start), freq())
}
