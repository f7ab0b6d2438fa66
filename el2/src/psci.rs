//! PSCI for the host: every board offers the host the same interface, by `hvc`
//! or by a trapped `smc`. `CPU_ON` of a parked CPU, `AFFINITY_INFO`, `VERSION`
//! and `FEATURES` are answered by el2; `CPU_OFF`, `SYSTEM_OFF` and
//! `SYSTEM_RESET` go to firmware where it has PSCI and are emulated where the
//! board has a spin table.

use crate::cpus::{CpuTable, Wake};
use smccc::psci::error as psci;
use smccc::psci::*;

/// PSCI 1.1, the version el2 implements towards the host.
pub const VERSION_1_1: u64 = 0x1_0001;

/// What the trap handler must do after a PSCI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value in `x0`.
    Return(i64),
    /// Start the claimed CPU `index`, then return `SUCCESS` (or the error
    /// starting it gave).
    StartCpu {
        index: usize,
        wake: Wake,
    },
    /// Power the calling CPU off.
    CpuOff,
    SystemOff,
    SystemReset,
}

/// Decides what a PSCI call from the host means.
///
/// `entry_ok` says whether an entry point lies in memory the host may run.
pub fn decide(table: &CpuTable, function: u32, args: [u64; 3], entry_ok: impl Fn(u64) -> bool) -> Outcome {
    let err = |e: i32| Outcome::Return(e.into());
    // SMC32 calls pass 32-bit arguments; the upper halves are not theirs.
    let arg = |i: usize| if function & 0x4000_0000 == 0 { args[i] & 0xffff_ffff } else { args[i] };
    match function {
        PSCI_VERSION => Outcome::Return(VERSION_1_1 as i64),
        PSCI_FEATURES => Outcome::Return(match arg(0) as u32 {
            PSCI_VERSION
            | PSCI_FEATURES
            | PSCI_CPU_ON_32
            | PSCI_CPU_ON_64
            | PSCI_CPU_OFF
            | PSCI_AFFINITY_INFO_32
            | PSCI_AFFINITY_INFO_64
            | PSCI_SYSTEM_OFF
            | PSCI_SYSTEM_RESET => 0,
            _ => psci::NOT_SUPPORTED.into(),
        }),
        PSCI_CPU_ON_32 | PSCI_CPU_ON_64 => {
            let (target, entry, context) = (arg(0), arg(1), arg(2));
            if table.index_of(target).is_none() || target & !crate::cpus::MPIDR_AFFINITY_MASK != 0 {
                return err(psci::INVALID_PARAMETERS);
            }
            if entry % 4 != 0 || !entry_ok(entry) {
                return err(psci::INVALID_ADDRESS);
            }
            match table.claim(target, entry, context) {
                Ok((index, wake)) => Outcome::StartCpu { index, wake },
                Err(e) => err(e),
            }
        }
        PSCI_CPU_OFF => Outcome::CpuOff,
        PSCI_AFFINITY_INFO_32 | PSCI_AFFINITY_INFO_64 => match table.affinity_info(arg(0), arg(1)) {
            Ok(v) | Err(v) => Outcome::Return(v.into()),
        },
        PSCI_SYSTEM_OFF => Outcome::SystemOff,
        PSCI_SYSTEM_RESET => Outcome::SystemReset,
        _ => err(psci::NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpus::PowerState;

    fn table() -> CpuTable {
        let t = CpuTable::new();
        t.add(0, 0);
        t.add(1, 1);
        t.set(0, PowerState::On);
        t.set(1, PowerState::Parked);
        t
    }

    fn ram(addr: u64) -> bool {
        (0x4000_0000..0x8000_0000).contains(&addr)
    }

    #[test]
    fn version_and_features() {
        let t = table();
        assert_eq!(decide(&t, PSCI_VERSION, [0; 3], ram), Outcome::Return(0x1_0001));
        assert_eq!(decide(&t, PSCI_FEATURES, [PSCI_CPU_ON_64.into(), 0, 0], ram), Outcome::Return(0));
        assert_eq!(decide(&t, PSCI_FEATURES, [PSCI_CPU_SUSPEND_64.into(), 0, 0], ram), Outcome::Return(-1));
        assert_eq!(decide(&t, 0x8400_001f, [0; 3], ram), Outcome::Return(-1));
    }

    #[test]
    fn cpu_on_checks_target_and_entry() {
        let t = table();
        assert_eq!(decide(&t, PSCI_CPU_ON_64, [5, 0x4000_0000, 0], ram), Outcome::Return(-2));
        assert_eq!(decide(&t, PSCI_CPU_ON_64, [1, 0x1000, 0], ram), Outcome::Return(-9));
        assert_eq!(decide(&t, PSCI_CPU_ON_64, [1, 0x4000_0002, 0], ram), Outcome::Return(-9));
        assert_eq!(decide(&t, PSCI_CPU_ON_64, [0, 0x4000_0000, 0], ram), Outcome::Return(-4));
        assert_eq!(
            decide(&t, PSCI_CPU_ON_64, [1, 0x4000_0000, 9], ram),
            Outcome::StartCpu { index: 1, wake: Wake::Parked }
        );
        assert_eq!(decide(&t, PSCI_CPU_ON_64, [1, 0x4000_0000, 9], ram), Outcome::Return(-5));
        assert_eq!(t.take_entry(1), Some((0x4000_0000, 9)));
    }

    #[test]
    fn smc32_calls_drop_upper_argument_bits() {
        let t = table();
        assert_eq!(
            decide(&t, PSCI_CPU_ON_32, [0xdead_0000_0000_0001, 0x4000_1000, 0], ram),
            Outcome::StartCpu { index: 1, wake: Wake::Parked }
        );
        assert_eq!(decide(&t, PSCI_AFFINITY_INFO_32, [0xff_0000_0000, 0, 0], ram), Outcome::Return(0));
    }

    #[test]
    fn power_calls() {
        let t = table();
        assert_eq!(decide(&t, PSCI_CPU_OFF, [0; 3], ram), Outcome::CpuOff);
        assert_eq!(decide(&t, PSCI_SYSTEM_OFF, [0; 3], ram), Outcome::SystemOff);
        assert_eq!(decide(&t, PSCI_SYSTEM_RESET, [0; 3], ram), Outcome::SystemReset);
        assert_eq!(decide(&t, PSCI_AFFINITY_INFO_64, [1, 0, 0], ram), Outcome::Return(1));
    }
}
