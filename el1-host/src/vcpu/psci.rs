//! PSCI for guests (DESIGN §4, §8): the calls that need the host —
//! `CPU_ON`, `CPU_OFF`, `AFFINITY_INFO`, `SYSTEM_OFF`, `SYSTEM_RESET` — with
//! the architected error codes. (el2 answers `PSCI_VERSION`, `PSCI_FEATURES`,
//! `MIGRATE_INFO_TYPE`, `SMCCC_VERSION` and unknown ids itself; the host
//! answers them the same way should one reach it.)
//!
//! Each vCPU has a power state, `Off` or `On`. Secondary vCPUs start `Off`.
//! `CPU_ON` moves its target from `Off` to `On` under the target's lock and
//! leaves the entry point there for the target's run loop
//! ([`VcpuPower::take_start`]): of two racing `CPU_ON`s exactly one finds it
//! `Off` and succeeds, the other gets `ALREADY_ON` (kvm-unit-tests' psci test
//! insists on `ALREADY_ON`, not `ON_PENDING`, for the loser).

use ferrovisor_shared::hypercall::{PSCI_VERSION_1_1, SMCCC_NOT_SUPPORTED, SMCCC_VERSION, SMCCC_VERSION_1_1};
use smccc::psci::error;
use smccc::psci::*;

/// What the caller does after a PSCI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Put this in x0 and resume.
    Return(i64),
    /// `CPU_ON` succeeded: x0 = SUCCESS, and the target must be kicked.
    Started {
        target: usize,
    },
    /// The caller powered itself off: wait for a `CPU_ON`.
    CpuOff,
    SystemOff,
    SystemReset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Off,
    /// On, with a start request not yet taken by the vCPU's loop.
    Starting {
        pc: u64,
        context_id: u64,
    },
    On,
}

/// A vCPU's power state.
pub struct VcpuPower(spin::Mutex<State>);

impl VcpuPower {
    pub const fn new_on() -> Self {
        Self(spin::Mutex::new(State::On))
    }

    pub const fn new_off() -> Self {
        Self(spin::Mutex::new(State::Off))
    }

    /// Whether the vCPU is off (a start request pending counts as on).
    pub fn is_off(&self) -> bool {
        *self.0.lock() == State::Off
    }

    /// For the vCPU's run loop: the entry point and context id of a
    /// `CPU_ON` that started it, once.
    pub fn take_start(&self) -> Option<(u64, u64)> {
        let mut s = self.0.lock();
        match *s {
            State::Starting { pc, context_id } => {
                *s = State::On;
                Some((pc, context_id))
            }
            _ => None,
        }
    }

    /// Powers the vCPU off without asking it (a VM reset).
    pub fn force_off(&self) {
        *self.0.lock() = State::Off;
    }

    fn cpu_off(&self) {
        *self.0.lock() = State::Off;
    }

    /// `Off` → `Starting`; `Err(ALREADY_ON)` otherwise.
    fn start(&self, pc: u64, context_id: u64) -> Result<(), i32> {
        let mut s = self.0.lock();
        if *s != State::Off {
            return Err(error::ALREADY_ON);
        }
        *s = State::Starting { pc, context_id };
        Ok(())
    }
}

/// The VM as PSCI needs it.
pub trait PsciVm {
    fn vcpu_count(&self) -> usize;
    /// vCPU `index`'s MPIDR (affinity fields).
    fn mpidr(&self, index: usize) -> u64;
    fn power(&self, index: usize) -> &VcpuPower;
    fn ram_contains(&self, ipa: u64) -> bool;
}

const AFFINITY_MASK: u64 = 0xff_00ff_ffff;
const AFFINITY_ON: i64 = 0;
const AFFINITY_OFF: i64 = 1;
const MIGRATE_INFO_NOT_PRESENT: i64 = 2;

fn find(vm: &impl PsciVm, mpidr: u64) -> Option<usize> {
    (0..vm.vcpu_count()).find(|&i| vm.mpidr(i) & AFFINITY_MASK == mpidr & AFFINITY_MASK)
}

/// Handles `function` with arguments x1..x3 from vCPU `caller`.
pub fn handle(vm: &impl PsciVm, caller: usize, function: u32, args: [u64; 3]) -> Outcome {
    let ret = |e: i32| Outcome::Return(e.into());
    match function {
        PSCI_CPU_ON_32 | PSCI_CPU_ON_64 => {
            let (mpidr, pc, context_id) = if function == PSCI_CPU_ON_32 {
                (args[0] & 0xffff_ffff, args[1] & 0xffff_ffff, args[2] & 0xffff_ffff)
            } else {
                (args[0], args[1], args[2])
            };
            let Some(target) = find(vm, mpidr) else { return ret(error::INVALID_PARAMETERS) };
            if !vm.ram_contains(pc) {
                return ret(error::INVALID_ADDRESS);
            }
            match vm.power(target).start(pc, context_id) {
                Ok(()) => Outcome::Started { target },
                Err(e) => ret(e),
            }
        }
        PSCI_CPU_OFF => {
            vm.power(caller).cpu_off();
            Outcome::CpuOff
        }
        PSCI_AFFINITY_INFO_32 | PSCI_AFFINITY_INFO_64 => {
            let (mpidr, level) = (args[0], args[1]);
            if level > 3 {
                return ret(error::INVALID_PARAMETERS);
            }
            // Level n: the affinity fields above Aff(n-1) must match.
            let mask = match level {
                0 => AFFINITY_MASK,
                1 => AFFINITY_MASK & !0xff,
                2 => AFFINITY_MASK & !0xffff,
                _ => AFFINITY_MASK & !0xff_ffff,
            };
            let mut found = false;
            for i in 0..vm.vcpu_count() {
                if vm.mpidr(i) & mask == mpidr & mask {
                    found = true;
                    if !vm.power(i).is_off() {
                        return Outcome::Return(AFFINITY_ON);
                    }
                }
            }
            if found {
                Outcome::Return(AFFINITY_OFF)
            } else {
                ret(error::INVALID_PARAMETERS)
            }
        }
        PSCI_SYSTEM_OFF => Outcome::SystemOff,
        PSCI_SYSTEM_RESET => Outcome::SystemReset,
        PSCI_VERSION => Outcome::Return(PSCI_VERSION_1_1),
        PSCI_MIGRATE_INFO_TYPE => Outcome::Return(MIGRATE_INFO_NOT_PRESENT),
        PSCI_FEATURES => Outcome::Return(match args[0] as u32 {
            PSCI_VERSION
            | PSCI_FEATURES
            | PSCI_CPU_ON_32
            | PSCI_CPU_ON_64
            | PSCI_CPU_OFF
            | PSCI_AFFINITY_INFO_32
            | PSCI_AFFINITY_INFO_64
            | PSCI_SYSTEM_OFF
            | PSCI_SYSTEM_RESET
            | PSCI_MIGRATE_INFO_TYPE
            | SMCCC_VERSION => 0,
            _ => SMCCC_NOT_SUPPORTED,
        }),
        SMCCC_VERSION => Outcome::Return(SMCCC_VERSION_1_1),
        _ => Outcome::Return(SMCCC_NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vm {
        power: Vec<VcpuPower>,
    }

    impl Vm {
        fn new(n: usize) -> Self {
            Self { power: (0..n).map(|i| if i == 0 { VcpuPower::new_on() } else { VcpuPower::new_off() }).collect() }
        }
    }

    impl PsciVm for Vm {
        fn vcpu_count(&self) -> usize {
            self.power.len()
        }
        fn mpidr(&self, i: usize) -> u64 {
            (1 << 31) | ((i as u64 / 16) << 8) | (i as u64 % 16)
        }
        fn power(&self, i: usize) -> &VcpuPower {
            &self.power[i]
        }
        fn ram_contains(&self, ipa: u64) -> bool {
            (0x4000_0000..0x5000_0000).contains(&ipa)
        }
    }

    const PC: u64 = 0x4008_0000;

    #[test]
    fn cpu_on_and_its_errors() {
        let vm = Vm::new(3);
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 7]), Outcome::Started { target: 1 });
        assert_eq!(vm.power(1).take_start(), Some((PC, 7)));
        assert_eq!(vm.power(1).take_start(), None);
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 0]), Outcome::Return(-4), "ALREADY_ON");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [0, PC, 0]), Outcome::Return(-4), "the caller is on");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [9, PC, 0]), Outcome::Return(-2), "no such MPIDR");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [2, 0x1000, 0]), Outcome::Return(-9), "entry outside RAM");
        assert!(vm.power(2).is_off(), "a refused CPU_ON leaves it off");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_32, [(1 << 32) | 2, PC, 0]), Outcome::Started { target: 2 });
    }

    #[test]
    fn cpu_off_and_affinity_info() {
        let vm = Vm::new(2);
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [0, 0, 0]), Outcome::Return(0));
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [1, 0, 0]), Outcome::Return(1));
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [1, 1, 0]), Outcome::Return(0), "cluster 0 has CPU 0 on");
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [1, 4, 0]), Outcome::Return(-2));
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [5, 0, 0]), Outcome::Return(-2));
        handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 0]);
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [1, 0, 0]), Outcome::Return(0), "a pending start is on");
        assert_eq!(handle(&vm, 1, PSCI_CPU_OFF, [0; 3]), Outcome::CpuOff);
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_32, [1, 0, 0]), Outcome::Return(1));
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 0]), Outcome::Started { target: 1 }, "on again");
    }

    #[test]
    fn system_calls_and_unknown_ids() {
        let vm = Vm::new(1);
        assert_eq!(handle(&vm, 0, PSCI_SYSTEM_OFF, [0; 3]), Outcome::SystemOff);
        assert_eq!(handle(&vm, 0, PSCI_SYSTEM_RESET, [0; 3]), Outcome::SystemReset);
        assert_eq!(handle(&vm, 0, PSCI_VERSION, [0; 3]), Outcome::Return(0x1_0001));
        assert_eq!(handle(&vm, 0, PSCI_FEATURES, [PSCI_CPU_ON_64 as u64, 0, 0]), Outcome::Return(0));
        assert_eq!(handle(&vm, 0, PSCI_FEATURES, [PSCI_CPU_SUSPEND_64 as u64, 0, 0]), Outcome::Return(-1));
        assert_eq!(handle(&vm, 0, 0x4b00_0000, [0; 3]), Outcome::Return(-1));
        assert_eq!(handle(&vm, 0, PSCI_CPU_SUSPEND_64, [0; 3]), Outcome::Return(-1));
    }

    #[test]
    fn racing_cpu_on_gives_one_success() {
        for _ in 0..200 {
            let vm = Vm::new(4);
            let results: Vec<Outcome> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..4)
                    .map(|c| {
                        s.spawn({
                            let vm = &vm;
                            move || handle(vm, c, PSCI_CPU_ON_64, [1, PC, c as u64])
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(results.iter().filter(|r| matches!(r, Outcome::Started { target: 1 })).count(), 1);
            assert_eq!(results.iter().filter(|r| **r == Outcome::Return(-4)).count(), 3);
        }
    }
}
