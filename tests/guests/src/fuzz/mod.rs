//! The `fuzz` guest's pure logic, built on the development host too: the
//! random number generator, the instructions it writes at run time
//! ([`insn`]), the operations it draws ([`ops`]) and what it leaves out
//! (the lists below). The guest itself, which executes the operations and
//! checks what the hypervisor answers, is `src/bin/fuzz.rs`.
//!
//! Every operation has its own random stream, [`Rng::for_op`]: operation N
//! of seed S is the same whatever ran before it, so a run can start at any
//! operation (`start=N`) and a failing one can be replayed alone.

pub mod insn;
pub mod ops;

use ferrovisor_shared::esr::SysReg;

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014): one 64-bit word of state, good enough
/// statistics for a fuzzer, and trivially seeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng(u64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The stream of operation `op` of the run with `seed`, as drawn by CPU
    /// `cpu` (the boot CPU's and each secondary's differ).
    pub const fn for_op(seed: u64, op: u64, cpu: u64) -> Self {
        Self(mix(mix(seed ^ GOLDEN) ^ op.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ cpu.wrapping_mul(0xa076_1d64_78bd_642f)))
    }

    pub fn word(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 for `n` = 0), by Lemire's multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.word()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// One of `items` with probability proportional to its weight.
    pub fn weighted<T: Copy>(&mut self, items: &[(u32, T)]) -> T {
        let total: u64 = items.iter().map(|&(w, _)| u64::from(w)).sum();
        let mut at = self.below(total);
        for &(w, item) in items {
            if at < u64::from(w) {
                return item;
            }
            at -= u64::from(w);
        }
        items[items.len() - 1].1
    }

    /// A value for a register or a write: the edges (0, 1, all ones, the
    /// sign bits), small numbers, single bits, and plain random words.
    pub fn value(&mut self) -> u64 {
        match self.below(10) {
            0 => 0,
            1 => u64::MAX,
            2 => self.pick(&[1, 0x8000_0000, 0xffff_ffff, 1 << 63, 0x7fff_ffff_ffff_ffff, 0x1_0000_0000]),
            3 => self.below(64),
            4 => 1 << self.below(64),
            5 => self.word() & 0xffff_ffff,
            6 => !(1 << self.below(64)),
            _ => self.word(),
        }
    }
}

/// Why a system register write is left out.
pub struct ExcludedWrite {
    pub reg: SysReg,
    pub name: &'static str,
    pub why: &'static str,
}

const fn ex(op1: u8, crn: u8, crm: u8, op2: u8, name: &'static str, why: &'static str) -> ExcludedWrite {
    ExcludedWrite { reg: SysReg::new(3, op1, crn, crm, op2), name, why }
}

const OWN_MMU: &str = "the guest's own translation regime (it runs with the MMU off and must stay so)";
const OWN_ABORTS: &str = "the guest's own handling of external aborts and SErrors";
const OWN_VECTORS: &str = "the guest's own exception handling";

/// System registers the guest never writes, because the write would break
/// the guest itself rather than test the hypervisor: each entry says what it
/// would break. Reads of them are fuzzed like any other. The translation
/// registers (`TTBR0/1_EL1`, `TCR_EL1`, `TCR2_EL1`, `MAIR_EL1`,
/// `AMAIR_EL1`, `PIR_EL1`, `PIRE0_EL1`, `POR_EL1`) and `SP_EL0` are not
/// here: with the MMU off (`SCTLR_EL1` is excluded) and no EL0 code they do
/// nothing to the guest, and the hypervisor must switch them.
pub const EXCLUDED_WRITES: &[ExcludedWrite] = &[
    ex(0, 1, 0, 0, "SCTLR_EL1", OWN_MMU),
    ex(0, 1, 0, 1, "ACTLR_EL1", "IMPLEMENTATION DEFINED controls of the guest's own CPU"),
    ex(0, 1, 0, 2, "CPACR_EL1", "the guest's own FP/SIMD access (it is built hard-float)"),
    ex(0, 1, 0, 3, "SCTLR2_EL1", OWN_ABORTS),
    ex(0, 2, 5, 0, "GCSCR_EL1", "a guarded control stack would fault the guest's own RETs"),
    ex(0, 2, 5, 1, "GCSPR_EL1", "a guarded control stack would fault the guest's own RETs"),
    ex(0, 2, 5, 2, "GCSCRE0_EL1", "a guarded control stack would fault the guest's own RETs"),
    ex(3, 2, 5, 1, "GCSPR_EL0", "a guarded control stack would fault the guest's own RETs"),
    ex(0, 4, 2, 0, "SPSel", "the guest's own stack pointer"),
    ex(3, 4, 2, 1, "DAIF", "the guest keeps every exception masked; an unmasked IRQ with no handler ends it"),
    ex(3, 4, 2, 2, "SVCR", "streaming SVE mode makes the guest's own Advanced SIMD code illegal"),
    ex(3, 4, 4, 0, "FPCR", "the rounding and flush modes of the guest's own floating-point code"),
    ex(0, 9, 10, 0, "PMBLIMITR_EL1", "statistical profiling would write samples into the guest's memory"),
    ex(0, 9, 10, 1, "PMBPTR_EL1", "statistical profiling would write samples into the guest's memory"),
    ex(0, 9, 11, 0, "TRBLIMITR_EL1", "the trace buffer would write into the guest's memory"),
    ex(0, 9, 11, 1, "TRBPTR_EL1", "the trace buffer would write into the guest's memory"),
    ex(0, 12, 0, 0, "VBAR_EL1", OWN_VECTORS),
    ex(0, 12, 12, 5, "ICC_SRE_EL1", "the guest's own GIC CPU interface (clearing SRE disables its ICC_* registers)"),
    ex(0, 13, 0, 4, "TPIDR_EL1", "the guest's runtime keeps the CPU's index there"),
];

/// The excluded write to `reg`, if it is one.
pub fn excluded_write(reg: SysReg) -> Option<&'static ExcludedWrite> {
    EXCLUDED_WRITES.iter().find(|e| e.reg == reg)
}

pub const ICC_BPR0_EL1: SysReg = SysReg::new(3, 0, 12, 8, 3);
pub const ICC_BPR1_EL1: SysReg = SysReg::new(3, 0, 12, 12, 3);

/// The value a system register write may carry. QEMU 10.0's GICv3 CPU
/// interface (hw/intc/arm_gicv3_cpuif.c) trips an assertion, and QEMU
/// aborts, when a guest writes `ICC_BPR1_EL1` (its `ICV_BPR1_EL1` under a
/// hypervisor) with bits above [2:0] set: a QEMU bug, not one a guest should
/// be able to find in the hypervisor, so BPR writes keep bits [2:0] only
/// (the field is 3 bits wide, the rest RES0). `ICC_BPR0_EL1` is treated the
/// same way.
pub fn write_value(reg: SysReg, value: u64) -> u64 {
    if reg == ICC_BPR0_EL1 || reg == ICC_BPR1_EL1 {
        value & 7
    } else {
        value
    }
}

/// SMCCC function IDs (Arm DEN 0028) the guest never calls, because they
/// would end it or start code it does not control, with why. Compared with
/// bit 30 (SMC64) cleared, so both conventions are covered. `CPU_ON` is
/// left to the PSCI operations, which give it entry points that are safe.
pub const EXCLUDED_CALLS: &[(u32, &str)] = &[
    (0x8400_0001, "PSCI CPU_SUSPEND: a power-down state resumes at the call's entry point"),
    (0x8400_0002, "PSCI CPU_OFF"),
    (0x8400_0003, "PSCI CPU_ON: a random entry point in RAM would run whatever is there"),
    (0x8400_0008, "PSCI SYSTEM_OFF ends the VM"),
    (0x8400_0009, "PSCI SYSTEM_RESET (reset is a scheduled operation, resets=N)"),
    (0x8400_000b, "PSCI CPU_FREEZE: only a reset leaves it"),
    (0x8400_000c, "PSCI CPU_DEFAULT_SUSPEND: resumes at the call's entry point"),
    (0x8400_000e, "PSCI SYSTEM_SUSPEND: resumes at the call's entry point"),
    (0x8400_0012, "PSCI SYSTEM_RESET2"),
    (0x8400_0013, "PSCI MEM_PROTECT: RAM would be wiped at the next reset, losing the resume record"),
];

/// Whether a call of `function` is left out.
pub fn excluded_call(function: u32) -> Option<&'static str> {
    let f = function & !(1 << 30);
    EXCLUDED_CALLS.iter().find(|&&(id, _)| id == f).map(|&(_, why)| why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_op(7, 100, 0).word()).collect();
        assert!(a.iter().all(|&v| v == a[0]), "the same op gives the same stream");
        let mut r = Rng::for_op(7, 100, 0);
        let first: Vec<u64> = (0..8).map(|_| r.word()).collect();
        let mut r = Rng::for_op(7, 100, 0);
        assert_eq!(first, (0..8).map(|_| r.word()).collect::<Vec<_>>());
        assert_ne!(Rng::for_op(7, 101, 0).word(), first[0]);
        assert_ne!(Rng::for_op(8, 100, 0).word(), first[0]);
        assert_ne!(Rng::for_op(7, 100, 1).word(), first[0]);
        // SplitMix64's first output for seed 0 (the reference implementation's).
        assert_eq!(Rng::new(0).word(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn ranges_and_weights() {
        let mut r = Rng::new(1);
        let mut seen = [0u32; 5];
        for _ in 0..5000 {
            let v = r.below(5);
            seen[v as usize] += 1;
            assert!((3..=6).contains(&r.range(3, 6)));
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
        assert_eq!(r.below(0), 0);
        let mut counts = [0u32; 2];
        for _ in 0..10_000 {
            counts[r.weighted(&[(9, 0usize), (1, 1)])] += 1;
        }
        assert!(counts[1] > 700 && counts[1] < 1300, "{counts:?}");
        assert_eq!(r.weighted(&[(0, 'a'), (5, 'b')]), 'b');
    }

    #[test]
    fn exclusions() {
        assert!(excluded_write(SysReg::new(3, 0, 12, 0, 0)).is_some(), "VBAR_EL1");
        assert!(excluded_write(SysReg::new(3, 3, 13, 0, 2)).is_none(), "TPIDR_EL0 is fuzzed");
        for (i, e) in EXCLUDED_WRITES.iter().enumerate() {
            assert!(!e.why.is_empty() && !e.name.is_empty());
            assert!(!EXCLUDED_WRITES[..i].iter().any(|o| o.reg == e.reg), "{} twice", e.name);
        }
        assert_eq!(write_value(ICC_BPR1_EL1, 0xff), 7);
        assert_eq!(write_value(SysReg::new(3, 3, 13, 0, 2), 0xff), 0xff);
        assert!(excluded_call(0x8400_0008).is_some());
        assert!(excluded_call(0xc400_0003).is_some(), "CPU_ON SMC64");
        assert!(excluded_call(0x8400_0000).is_none(), "PSCI_VERSION is fuzzed");
        assert!(excluded_call(0xc400_0004).is_none(), "AFFINITY_INFO is fuzzed");
    }
}
