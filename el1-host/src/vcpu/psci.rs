//! PSCI 1.1 for guests (docs/guests.md §4), generic over the VM.
//!
//! # API
//!
//! - [`handle`]`(vm, caller, function, [x1, x2, x3]) -> `[`Outcome`]: the
//!   call's result. `Return(v)`: put `v` in x0 and resume. `Started { target }`:
//!   x0 = SUCCESS, and the caller kicks vCPU `target` (it may be blocked
//!   waiting for power). `CpuOff`: the caller powered itself off; it blocks
//!   until a new `CPU_ON` ([`VcpuPower::take_start`]). `SystemOff`,
//!   `SystemReset`: for the whole VM.
//! - [`PsciVm`]: what `handle` needs of the VM (vCPU count, MPIDRs, power
//!   states, whether an IPA is RAM).
//! - [`VcpuPower`]: one vCPU's power state. `new_on` (the boot vCPU) /
//!   `new_off` (secondaries), [`VcpuPower::is_off`],
//!   [`VcpuPower::take_start`] (for the target's run loop: the entry PC and
//!   context id of the `CPU_ON` that started it, once),
//!   [`VcpuPower::force_off`] (a VM reset).
//!
//! # Functions
//!
//! `PSCI_VERSION` (1.1), `PSCI_FEATURES` (0 for each function here, else
//! NOT_SUPPORTED), `CPU_ON` and `AFFINITY_INFO` (SMC32 and SMC64; SMC32
//! arguments are the low 32 bits of the registers), `CPU_OFF`,
//! `SYSTEM_OFF`, `SYSTEM_RESET`, `MIGRATE_INFO_TYPE` (2: no trusted OS that
//! needs migration). Also `SMCCC_VERSION` (1.1), as el2 answers it. Anything
//! else, `CPU_SUSPEND` included, is NOT_SUPPORTED.
//!
//! `CPU_ON`: a target MPIDR with bits outside the affinity fields, or that
//! names no vCPU of the VM, is INVALID_PARAMETERS; an entry point outside
//! guest RAM is INVALID_ADDRESS; a target that is not off is ALREADY_ON. Of
//! racing `CPU_ON`s for one target exactly one gets SUCCESS and the others
//! ALREADY_ON (kvm-unit-tests' psci test requires ALREADY_ON, not ON_PENDING,
//! for the losers): the winner claims the target with a compare-and-swap.
//!
//! `AFFINITY_INFO(target, level)`: level > 3 is INVALID_PARAMETERS; the
//! affinity fields below `level` are ignored; ON (0) if any matching vCPU is
//! on (a started vCPU that has not run yet counts), OFF (1) if all matching
//! are off, INVALID_PARAMETERS if none matches.

use crate::rcu::sync::{const_unless_loom, AtomicU32, AtomicU64, Ordering};
use ferrovisor_shared::hypercall::{PSCI_VERSION_1_1, SMCCC_VERSION, SMCCC_VERSION_1_1};
use smccc::psci::error;
use smccc::psci::{
    PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_32, PSCI_CPU_ON_64, PSCI_FEATURES,
    PSCI_MIGRATE_INFO_TYPE, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};

/// What the caller does after a PSCI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Put this in x0 and resume.
    Return(i64),
    /// `CPU_ON` succeeded: x0 = SUCCESS, and vCPU `target` must be kicked.
    Started {
        target: usize,
    },
    /// The caller powered itself off: it waits for a `CPU_ON`.
    CpuOff,
    SystemOff,
    SystemReset,
}

pub use ferrovisor_shared::gic::MPIDR_AFFINITY_MASK;
/// `AFFINITY_INFO` results.
pub const AFFINITY_ON: i64 = 0;
pub const AFFINITY_OFF: i64 = 1;
/// `MIGRATE_INFO_TYPE`: no trusted OS that needs migration.
pub const MIGRATE_INFO_NOT_PRESENT: i64 = 2;

const KIND_MASK: u32 = 0b11;
/// Off: a `CPU_ON` may claim it.
const KIND_OFF: u32 = 0;
/// A `CPU_ON` won and is writing the start request: still off to everyone
/// else, but no other `CPU_ON` can claim it.
const KIND_CLAIMED: u32 = 1;
/// On, with a start request the vCPU's loop has not taken yet.
const KIND_STARTING: u32 = 2;
const KIND_ON: u32 = 3;
/// Each claim bumps a generation in the upper bits, so a state word is never
/// reused (no ABA between a reader and a reset).
const GENERATION: u32 = 1 << 2;

/// A vCPU's power state: its state word, and the start request of the last
/// `CPU_ON` (written only by the `CPU_ON` that claimed the vCPU, published by
/// its release of the state word).
#[derive(Debug)]
pub struct VcpuPower {
    state: AtomicU32,
    pc: AtomicU64,
    context_id: AtomicU64,
}

impl VcpuPower {
    const_unless_loom! {
        /// On, with no start request: the boot vCPU.
        pub fn new_on() -> Self {
            Self { state: AtomicU32::new(KIND_ON), pc: AtomicU64::new(0), context_id: AtomicU64::new(0) }
        }
    }

    const_unless_loom! {
        /// Off: a secondary vCPU, waiting for `CPU_ON`.
        pub fn new_off() -> Self {
            Self { state: AtomicU32::new(KIND_OFF), pc: AtomicU64::new(0), context_id: AtomicU64::new(0) }
        }
    }

    /// Whether the vCPU is off. A `CPU_ON` that has claimed it but not yet
    /// returned still counts as off; once it returns, the vCPU is on.
    pub fn is_off(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire) & KIND_MASK, KIND_OFF | KIND_CLAIMED)
    }

    /// For the vCPU's run loop: the entry PC and context id of the `CPU_ON`
    /// that started it, once.
    pub fn take_start(&self) -> Option<(u64, u64)> {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & KIND_MASK != KIND_STARTING {
                return None;
            }
            // Read before the swap: the generation in `s` says these belong to it.
            let start = (self.pc.load(Ordering::Relaxed), self.context_id.load(Ordering::Relaxed));
            let on = (s & !KIND_MASK) | KIND_ON;
            match self.state.compare_exchange(s, on, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(start),
                Err(now) => s = now,
            }
        }
    }

    /// Powers the vCPU off without asking it (a VM reset). A start request
    /// not yet taken is dropped.
    pub fn force_off(&self) {
        self.power_off();
    }

    fn power_off(&self) {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let off = (s & !KIND_MASK) | KIND_OFF;
            match self.state.compare_exchange_weak(s, off, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => s = now,
            }
        }
    }

    /// Off → on with a start request; `Err(ALREADY_ON)` if it is not off.
    fn start(&self, pc: u64, context_id: u64) -> Result<(), i32> {
        let mut s = self.state.load(Ordering::Relaxed);
        let claimed = loop {
            if s & KIND_MASK != KIND_OFF {
                return Err(error::ALREADY_ON);
            }
            let claimed = ((s & !KIND_MASK).wrapping_add(GENERATION)) | KIND_CLAIMED;
            match self.state.compare_exchange_weak(s, claimed, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break claimed,
                Err(now) => s = now,
            }
        };
        self.pc.store(pc, Ordering::Relaxed);
        self.context_id.store(context_id, Ordering::Relaxed);
        // Publishes pc and context id to `take_start`. Nobody else changes a
        // claimed state except `force_off`, which wins if it comes first.
        let starting = (claimed & !KIND_MASK) | KIND_STARTING;
        let _ = self.state.compare_exchange(claimed, starting, Ordering::Release, Ordering::Relaxed);
        Ok(())
    }
}

/// The VM as PSCI needs it.
pub trait PsciVm {
    fn vcpu_count(&self) -> usize;
    /// vCPU `index`'s MPIDR (only its affinity fields are compared).
    fn mpidr(&self, index: usize) -> u64;
    fn power(&self, index: usize) -> &VcpuPower;
    /// Whether `ipa` lies in the guest's RAM.
    fn ram_contains(&self, ipa: u64) -> bool;
}

fn ret(code: i32) -> Outcome {
    Outcome::Return(code.into())
}

/// SMC32 calls take the low 32 bits of each argument register.
fn narrow(args: [u64; 3], smc32: bool) -> [u64; 3] {
    if smc32 {
        args.map(|a| a & 0xffff_ffff)
    } else {
        args
    }
}

fn cpu_on(vm: &impl PsciVm, args: [u64; 3]) -> Outcome {
    let [target_mpidr, pc, context_id] = args;
    if target_mpidr & !MPIDR_AFFINITY_MASK != 0 {
        return ret(error::INVALID_PARAMETERS);
    }
    let Some(target) = (0..vm.vcpu_count()).find(|&i| vm.mpidr(i) & MPIDR_AFFINITY_MASK == target_mpidr) else {
        return ret(error::INVALID_PARAMETERS);
    };
    if !vm.ram_contains(pc) {
        return ret(error::INVALID_ADDRESS);
    }
    match vm.power(target).start(pc, context_id) {
        Ok(()) => Outcome::Started { target },
        Err(e) => ret(e),
    }
}

fn affinity_info(vm: &impl PsciVm, args: [u64; 3]) -> Outcome {
    let [target, level, _] = args;
    // Level n compares the affinity fields from Aff(n) up.
    let mask = match level {
        0 => MPIDR_AFFINITY_MASK,
        1 => MPIDR_AFFINITY_MASK & !0xff,
        2 => MPIDR_AFFINITY_MASK & !0xffff,
        3 => MPIDR_AFFINITY_MASK & !0xff_ffff,
        _ => return ret(error::INVALID_PARAMETERS),
    };
    let mut matched = false;
    for i in (0..vm.vcpu_count()).filter(|&i| vm.mpidr(i) & mask == target & mask) {
        if !vm.power(i).is_off() {
            return Outcome::Return(AFFINITY_ON);
        }
        matched = true;
    }
    if matched {
        Outcome::Return(AFFINITY_OFF)
    } else {
        ret(error::INVALID_PARAMETERS)
    }
}

fn features(function: u32) -> Outcome {
    Outcome::Return(ferrovisor_shared::hypercall::guest_psci_features(function))
}

/// Handles PSCI (or SMCCC) `function` (w0) with arguments x1..x3 from vCPU
/// `caller`. Never panics on guest input.
pub fn handle(vm: &impl PsciVm, caller: usize, function: u32, args: [u64; 3]) -> Outcome {
    match function {
        PSCI_VERSION => Outcome::Return(PSCI_VERSION_1_1),
        PSCI_FEATURES => features(args[0] as u32),
        PSCI_CPU_ON_32 | PSCI_CPU_ON_64 => cpu_on(vm, narrow(args, function == PSCI_CPU_ON_32)),
        PSCI_CPU_OFF => {
            if caller < vm.vcpu_count() {
                vm.power(caller).power_off();
            }
            Outcome::CpuOff
        }
        PSCI_AFFINITY_INFO_32 | PSCI_AFFINITY_INFO_64 => {
            affinity_info(vm, narrow(args, function == PSCI_AFFINITY_INFO_32))
        }
        PSCI_SYSTEM_OFF => Outcome::SystemOff,
        PSCI_SYSTEM_RESET => Outcome::SystemReset,
        PSCI_MIGRATE_INFO_TYPE => Outcome::Return(MIGRATE_INFO_NOT_PRESENT),
        SMCCC_VERSION => Outcome::Return(SMCCC_VERSION_1_1),
        _ => ret(error::NOT_SUPPORTED),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use smccc::psci::{
        PSCI_CPU_SUSPEND_32, PSCI_CPU_SUSPEND_64, PSCI_MIGRATE_32, PSCI_MIGRATE_INFO_UP_CPU_64, PSCI_SYSTEM_RESET2_64,
    };
    use std::vec::Vec;

    /// vCPUs in clusters of `per_cluster` (Aff1 = cluster, Aff0 = core), with
    /// bit 31 (RES1) set as real MPIDRs have.
    struct Vm {
        power: Vec<VcpuPower>,
        per_cluster: u64,
    }

    impl Vm {
        fn new(n: usize, per_cluster: u64) -> Self {
            let power = (0..n).map(|i| if i == 0 { VcpuPower::new_on() } else { VcpuPower::new_off() }).collect();
            Self { power, per_cluster }
        }
    }

    impl PsciVm for Vm {
        fn vcpu_count(&self) -> usize {
            self.power.len()
        }
        fn mpidr(&self, i: usize) -> u64 {
            let i = i as u64;
            (1 << 31) | ((i / self.per_cluster) << 8) | (i % self.per_cluster)
        }
        fn power(&self, i: usize) -> &VcpuPower {
            &self.power[i]
        }
        fn ram_contains(&self, ipa: u64) -> bool {
            (0x4000_0000..0x4800_0000).contains(&ipa)
        }
    }

    const PC: u64 = 0x4008_0000;
    const NOT_SUPPORTED: Outcome = Outcome::Return(-1);
    const INVALID_PARAMETERS: Outcome = Outcome::Return(-2);
    const ALREADY_ON: Outcome = Outcome::Return(-4);
    const INVALID_ADDRESS: Outcome = Outcome::Return(-9);

    #[test]
    fn version_features_migrate_info_and_unknown_functions() {
        let vm = Vm::new(1, 4);
        assert_eq!(handle(&vm, 0, PSCI_VERSION, [0; 3]), Outcome::Return(0x1_0001));
        assert_eq!(handle(&vm, 0, PSCI_MIGRATE_INFO_TYPE, [0; 3]), Outcome::Return(2));
        assert_eq!(handle(&vm, 0, SMCCC_VERSION, [0; 3]), Outcome::Return(0x1_0001));
        for f in [
            PSCI_VERSION,
            PSCI_FEATURES,
            PSCI_CPU_ON_32,
            PSCI_CPU_ON_64,
            PSCI_CPU_OFF,
            PSCI_AFFINITY_INFO_32,
            PSCI_AFFINITY_INFO_64,
            PSCI_SYSTEM_OFF,
            PSCI_SYSTEM_RESET,
            PSCI_MIGRATE_INFO_TYPE,
        ] {
            assert_eq!(handle(&vm, 0, PSCI_FEATURES, [f.into(), 0, 0]), Outcome::Return(0), "{f:#x}");
        }
        for f in [PSCI_CPU_SUSPEND_32, PSCI_CPU_SUSPEND_64, PSCI_SYSTEM_RESET2_64, 0x4b00_0000, 0] {
            assert_eq!(handle(&vm, 0, PSCI_FEATURES, [f.into(), 0, 0]), NOT_SUPPORTED, "{f:#x}");
        }
        // The upper half of x1 is not part of the function id.
        assert_eq!(handle(&vm, 0, PSCI_FEATURES, [(7 << 32) | u64::from(PSCI_CPU_ON_64), 0, 0]), Outcome::Return(0));
        for f in [
            PSCI_CPU_SUSPEND_64,
            PSCI_MIGRATE_32,
            PSCI_MIGRATE_INFO_UP_CPU_64,
            PSCI_SYSTEM_RESET2_64,
            0x4b00_0000,
            0x8400_00ff,
            u32::MAX,
        ] {
            assert_eq!(handle(&vm, 0, f, [1, 2, 3]), NOT_SUPPORTED, "{f:#x}");
        }
    }

    #[test]
    fn system_off_and_reset() {
        let vm = Vm::new(2, 4);
        assert_eq!(handle(&vm, 1, PSCI_SYSTEM_OFF, [0; 3]), Outcome::SystemOff);
        assert_eq!(handle(&vm, 0, PSCI_SYSTEM_RESET, [0; 3]), Outcome::SystemReset);
    }

    #[test]
    fn cpu_on_starts_an_off_vcpu_once() {
        let vm = Vm::new(3, 4);
        assert!(vm.power(1).is_off());
        assert_eq!(vm.power(1).take_start(), None, "nothing to take while off");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 0x1234_5678_9abc]), Outcome::Started { target: 1 });
        assert!(!vm.power(1).is_off(), "on as soon as CPU_ON returns");
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [1, 0, 0]), Outcome::Return(AFFINITY_ON));
        assert_eq!(vm.power(1).take_start(), Some((PC, 0x1234_5678_9abc)));
        assert_eq!(vm.power(1).take_start(), None, "taken once");
        assert!(!vm.power(1).is_off());
    }

    #[test]
    fn cpu_on_errors() {
        let vm = Vm::new(3, 4);
        assert_eq!(handle(&vm, 2, PSCI_CPU_ON_64, [0, PC, 0]), ALREADY_ON, "the boot vCPU is on");
        handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 0]);
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 0]), ALREADY_ON, "started, not yet running");
        vm.power(1).take_start();
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 0]), ALREADY_ON, "running");
        assert_eq!(handle(&vm, 1, PSCI_CPU_ON_64, [1, PC, 0]), ALREADY_ON, "itself");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [3, PC, 0]), INVALID_PARAMETERS, "no such vCPU");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [0x100, PC, 0]), INVALID_PARAMETERS, "no cluster 1");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1 << 40 | 2, PC, 0]), INVALID_PARAMETERS, "bits above Aff3");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1 << 24 | 2, PC, 0]), INVALID_PARAMETERS, "bits between Aff2, Aff3");
        assert_eq!(
            handle(&vm, 0, PSCI_CPU_ON_64, [1 << 31 | 2, PC, 0]),
            INVALID_PARAMETERS,
            "MPIDR bit 31 is no affinity"
        );
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [2, 0x1000, 0]), INVALID_ADDRESS);
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [2, 0x4800_0000, 0]), INVALID_ADDRESS, "just past RAM");
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [2, u64::MAX, 0]), INVALID_ADDRESS);
        assert!(vm.power(2).is_off(), "refused calls leave it off");
        assert_eq!(vm.power(2).take_start(), None);
    }

    #[test]
    fn smc32_calls_use_the_low_halves_of_their_arguments() {
        let vm = Vm::new(3, 4);
        let out = handle(&vm, 0, PSCI_CPU_ON_32, [0xdead_0000_0000_0002, 0xffff_ffff_0000_0000 | PC, 0x1_0000_0007]);
        assert_eq!(out, Outcome::Started { target: 2 });
        assert_eq!(vm.power(2).take_start(), Some((PC, 7)));
        // The same garbage is refused by the SMC64 call.
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [0xdead_0000_0000_0001, PC, 0]), INVALID_PARAMETERS);
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_32, [0xdead_0000_0000_0001, 0, 0]), Outcome::Return(AFFINITY_OFF));
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_32, [1, 0xdead_0000_0000_0000, 0]), Outcome::Return(AFFINITY_OFF));
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [1, 0xdead_0000_0000_0000, 0]), INVALID_PARAMETERS);
    }

    #[test]
    fn cpu_off_then_on_again() {
        let vm = Vm::new(2, 4);
        handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 1]);
        assert_eq!(vm.power(1).take_start(), Some((PC, 1)));
        assert_eq!(handle(&vm, 1, PSCI_CPU_OFF, [0; 3]), Outcome::CpuOff);
        assert!(vm.power(1).is_off());
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_64, [1, 0, 0]), Outcome::Return(AFFINITY_OFF));
        assert_eq!(vm.power(1).take_start(), None);
        assert_eq!(handle(&vm, 0, PSCI_CPU_ON_64, [1, PC + 8, 2]), Outcome::Started { target: 1 });
        assert_eq!(vm.power(1).take_start(), Some((PC + 8, 2)), "the new request, not the old");
        // The boot vCPU can power off too.
        assert_eq!(handle(&vm, 0, PSCI_CPU_OFF, [0; 3]), Outcome::CpuOff);
        assert!(vm.power(0).is_off());
        // An out-of-range caller (a host bug) is not a panic.
        assert_eq!(handle(&vm, 9, PSCI_CPU_OFF, [0; 3]), Outcome::CpuOff);
    }

    #[test]
    fn force_off_drops_a_pending_start() {
        let vm = Vm::new(2, 4);
        handle(&vm, 0, PSCI_CPU_ON_64, [1, PC, 1]);
        vm.power(1).force_off();
        assert!(vm.power(1).is_off());
        assert_eq!(vm.power(1).take_start(), None);
        vm.power(0).force_off();
        assert!(vm.power(0).is_off());
        assert_eq!(handle(&vm, 1, PSCI_CPU_ON_64, [0, PC, 3]), Outcome::Started { target: 0 });
        assert_eq!(vm.power(0).take_start(), Some((PC, 3)));
    }

    #[test]
    fn affinity_info_levels() {
        // Two clusters of two: MPIDRs 0x0, 0x1, 0x100, 0x101 (+ bit 31).
        let vm = Vm::new(4, 2);
        let info = |target: u64, level: u64| handle(&vm, 0, PSCI_AFFINITY_INFO_64, [target, level, 0]);
        assert_eq!(info(0x0, 0), Outcome::Return(AFFINITY_ON));
        assert_eq!(info(0x1, 0), Outcome::Return(AFFINITY_OFF));
        assert_eq!(info(0x100, 0), Outcome::Return(AFFINITY_OFF));
        assert_eq!(info(0x102, 0), INVALID_PARAMETERS, "no such core");
        // Level 1: the cluster; Aff0 is ignored.
        assert_eq!(info(0x1, 1), Outcome::Return(AFFINITY_ON), "cluster 0 has vCPU 0 on");
        assert_eq!(info(0x1ff, 1), Outcome::Return(AFFINITY_OFF), "cluster 1 is all off");
        assert_eq!(info(0x200, 1), INVALID_PARAMETERS, "no cluster 2");
        // Levels 2 and 3 take in everything here.
        assert_eq!(info(0x101, 2), Outcome::Return(AFFINITY_ON));
        assert_eq!(info(0xff_ffff, 3), Outcome::Return(AFFINITY_ON));
        assert_eq!(info(0x1_0000, 2), INVALID_PARAMETERS, "Aff2 = 1 matches nothing");
        assert_eq!(info(0x1_0000_0000, 3), INVALID_PARAMETERS, "Aff3 = 1 matches nothing");
        for level in [4, 5, u64::MAX] {
            assert_eq!(info(0, level), INVALID_PARAMETERS);
        }
        handle(&vm, 0, PSCI_CPU_ON_64, [0x101, PC, 0]);
        assert_eq!(info(0x100, 1), Outcome::Return(AFFINITY_ON), "a started vCPU counts as on");
        assert_eq!(handle(&vm, 0, PSCI_AFFINITY_INFO_32, [0x101, 0, 0]), Outcome::Return(AFFINITY_ON));
    }

    #[test]
    fn racing_cpu_ons_give_exactly_one_success() {
        const CALLERS: usize = 4;
        for round in 0..500u64 {
            let vm = Vm::new(CALLERS + 1, 8);
            let target = CALLERS as u64;
            let results: Vec<Outcome> = std::thread::scope(|s| {
                let vm = &vm;
                let callers: Vec<_> = (0..CALLERS)
                    .map(|c| {
                        s.spawn(move || handle(vm, c, PSCI_CPU_ON_64, [target, PC + 4 * c as u64, round + c as u64]))
                    })
                    .collect();
                // The target's loop polls for its start meanwhile.
                let taker = s.spawn(move || loop {
                    if let Some(start) = vm.power(CALLERS).take_start() {
                        break start;
                    }
                    std::hint::spin_loop();
                });
                let results = callers.into_iter().map(|h| h.join().unwrap()).collect();
                let (pc, context_id) = taker.join().unwrap();
                let winner = ((pc - PC) / 4) as usize;
                assert_eq!(context_id, round + winner as u64, "pc and context id of the same call");
                results
            });
            let wins = results.iter().filter(|r| **r == Outcome::Started { target: CALLERS }).count();
            assert_eq!(wins, 1, "round {round}: {results:?}");
            assert_eq!(results.iter().filter(|r| **r == ALREADY_ON).count(), CALLERS - 1);
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::rcu::sync::thread;
    use loom::sync::Arc;
    use std::vec::Vec;

    struct Vm([VcpuPower; 2]);

    impl PsciVm for Vm {
        fn vcpu_count(&self) -> usize {
            2
        }
        fn mpidr(&self, i: usize) -> u64 {
            i as u64
        }
        fn power(&self, i: usize) -> &VcpuPower {
            &self.0[i]
        }
        fn ram_contains(&self, _ipa: u64) -> bool {
            true
        }
    }

    /// Two vCPUs race `CPU_ON` for vCPU 1 while vCPU 1's loop takes its start
    /// request: exactly one SUCCESS, one ALREADY_ON, and the request taken is
    /// the winner's, whole. (Every actor is a spawned thread: loom explores
    /// stale reads less for the thread that created the atomics.)
    #[test]
    fn loom_psci_racing_cpu_ons_give_exactly_one_success() {
        loom::model(|| {
            let vm = Arc::new(Vm([VcpuPower::new_on(), VcpuPower::new_off()]));
            let callers: Vec<_> = (0..2u64)
                .map(|c| {
                    let vm = vm.clone();
                    thread::spawn(move || handle(&*vm, 0, PSCI_CPU_ON_64, [1, 0x1000 * (c + 1), c + 1]))
                })
                .collect();
            let taker = {
                let vm = vm.clone();
                thread::spawn(move || vm.power(1).take_start())
            };
            let taken = taker.join().unwrap();
            let results: Vec<Outcome> = callers.into_iter().map(|h| h.join().unwrap()).collect();
            let winners: Vec<u64> =
                (0..2u64).filter(|&c| results[c as usize] == Outcome::Started { target: 1 }).collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            assert!(results.contains(&Outcome::Return(error::ALREADY_ON.into())), "{results:?}");
            let w = winners[0] + 1;
            let taken = taken.or_else(|| vm.power(1).take_start());
            assert_eq!(taken, Some((0x1000 * w, w)));
            assert_eq!(vm.power(1).take_start(), None);
        });
    }
}
