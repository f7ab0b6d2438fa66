//! CPU bookkeeping that needs no hardware: finding a CPU by MPIDR, picking
//! an MPIDR no CPU has, judging a `CPU_ON` race, and counter arithmetic.

use ferrovisor_shared::dt::CpuDesc;
use smccc::psci::error::{ALREADY_ON, ON_PENDING, SUCCESS};

/// `MPIDR_EL1`'s affinity fields (Aff3, Aff2, Aff1, Aff0), as a device
/// tree's cpu `reg` and PSCI's target-CPU arguments hold them.
pub use ferrovisor_shared::gic::MPIDR_AFFINITY_MASK;

/// The device-tree index of the CPU whose `reg` is `mpidr`'s affinity.
pub fn index_of(cpus: &[CpuDesc], mpidr: u64) -> Option<usize> {
    cpus.iter().position(|c| c.mpidr & MPIDR_AFFINITY_MASK == mpidr & MPIDR_AFFINITY_MASK)
}

/// The smallest Aff0-only MPIDR that no CPU of `cpus` has.
pub fn unused_mpidr(cpus: &[CpuDesc]) -> u64 {
    (0..=0xff).find(|&m| index_of(cpus, m).is_none()).unwrap_or(0xff_0000_0000)
}

/// What a `CPU_ON` race for one CPU gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaceVerdict {
    /// Exactly one `SUCCESS`, every other call `ALREADY_ON` or `ON_PENDING`.
    Good,
    /// How many calls returned `SUCCESS`, when that is not one.
    Winners(usize),
    /// A call (by racer index) returned something else.
    Unexpected { racer: usize, code: i32 },
}

/// A call that loses the race finds the target on (`ALREADY_ON`) or still
/// powering on after the winner's call (`ON_PENDING`): PSCI (Arm DEN 0022)
/// allows either (its CPU_ON/CPU_OFF races section), as Trusted Firmware-A
/// answers.
pub fn race_verdict(results: &[i32]) -> RaceVerdict {
    let lost = |r: i32| r == ALREADY_ON || r == ON_PENDING;
    if let Some((racer, &code)) = results.iter().enumerate().find(|(_, &r)| r != SUCCESS && !lost(r)) {
        return RaceVerdict::Unexpected { racer, code };
    }
    match results.iter().filter(|&&r| r == SUCCESS).count() {
        1 => RaceVerdict::Good,
        n => RaceVerdict::Winners(n),
    }
}

/// Generic-timer ticks in `ms` milliseconds at `freq` Hz.
pub fn ms_to_ticks(ms: u64, freq: u64) -> u64 {
    (u128::from(ms) * u128::from(freq) / 1000).try_into().unwrap_or(u64::MAX)
}

/// Microseconds in `ticks` at `freq` Hz (0 Hz gives 0).
pub fn ticks_to_us(ticks: u64, freq: u64) -> u64 {
    if freq == 0 {
        return 0;
    }
    (u128::from(ticks) * 1_000_000 / u128::from(freq)).try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrovisor_shared::dt::EnableMethod;
    use smccc::psci::error::INVALID_PARAMETERS;

    fn cpus(mpidrs: &[u64]) -> Vec<CpuDesc> {
        mpidrs.iter().map(|&mpidr| CpuDesc { mpidr, enable_method: EnableMethod::Psci }).collect()
    }

    #[test]
    fn finds_cpus_by_affinity() {
        let c = cpus(&[0, 1, 0x100, 0x1_0000_0000]);
        assert_eq!(index_of(&c, 0x8000_0100), Some(2), "MPIDR_EL1 bit 31 (RES1) is not affinity");
        assert_eq!(index_of(&c, 0x1_0000_0000), Some(3));
        assert_eq!(index_of(&c, 2), None);
    }

    #[test]
    fn unused() {
        assert_eq!(unused_mpidr(&cpus(&[0, 1, 2, 3])), 4);
        assert_eq!(unused_mpidr(&cpus(&[1, 2])), 0);
        let all: Vec<u64> = (0..=0xff).collect();
        let m = unused_mpidr(&cpus(&all));
        assert_eq!(index_of(&cpus(&all), m), None);
    }

    #[test]
    fn race() {
        assert_eq!(race_verdict(&[ALREADY_ON, SUCCESS, ALREADY_ON]), RaceVerdict::Good);
        assert_eq!(race_verdict(&[SUCCESS, SUCCESS]), RaceVerdict::Winners(2));
        assert_eq!(race_verdict(&[ALREADY_ON, ALREADY_ON]), RaceVerdict::Winners(0));
        assert_eq!(race_verdict(&[ON_PENDING, SUCCESS, ALREADY_ON]), RaceVerdict::Good);
        assert_eq!(race_verdict(&[ON_PENDING, ON_PENDING]), RaceVerdict::Winners(0));
        assert_eq!(
            race_verdict(&[INVALID_PARAMETERS, SUCCESS]),
            RaceVerdict::Unexpected { racer: 0, code: INVALID_PARAMETERS }
        );
    }

    #[test]
    fn ticks() {
        assert_eq!(ms_to_ticks(1000, 62_500_000), 62_500_000);
        assert_eq!(ms_to_ticks(3, 1_000_000_000), 3_000_000);
        assert_eq!(ms_to_ticks(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(ticks_to_us(62_500, 62_500_000), 1000);
        assert_eq!(ticks_to_us(5, 0), 0);
    }
}
