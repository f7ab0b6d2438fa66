//! Per-VM statistics, printed when a VM ends: exits by reason, the exits el2
//! finished itself, interrupted runs, GICv4 doorbells, cache maintenance,
//! guest time.
#![cfg_attr(target_os = "none", allow(dead_code, reason = "per-reason reads used by the tests"))]

use super::ratelimit::LogLimiter;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use ferrovisor_shared::vcpu::El2Counters;

/// Exit reasons the host counts (el2 counts the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    Hvc,
    Smc,
    Mmio,
    /// MMIO to the emulated GIC.
    Gic,
    Abort,
    SysReg,
    Wfi,
    Wfe,
    Irq,
    SError,
    Other,
}

const KINDS: usize = 11;
const NAMES: [&str; KINDS] = ["hvc", "smc", "mmio", "gic", "abort", "sysreg", "wfi", "wfe", "irq", "serror", "other"];

#[derive(Default)]
pub struct VmStats {
    exits: [AtomicU64; KINDS],
    runs: AtomicU64,
    fast_smccc: AtomicU64,
    fast_spurious: AtomicU64,
    fast_id_reg: AtomicU64,
    fast_vtimer: AtomicU64,
    fast_mmio_const: AtomicU64,
    fast_sgi: AtomicU64,
    el2_exits: AtomicU64,
    pub interrupted: AtomicU64,
    /// Host ticks taken as guest exits (time-slicing only: a vCPU with a CPU
    /// to itself takes none, docs/run-loop.md §9).
    pub guest_ticks: AtomicU64,
    /// Guest time measured from the counter at each entry and exit.
    pub guest_time_us: AtomicU64,
    /// GICv4 doorbells rung for its vPEs.
    pub doorbells: AtomicU64,
    /// Its log lines, rate-limited, and what was left out.
    pub logs: LogLimiter,
}

/// Cache maintenance figures (from the VM's pending-operations record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmoFigures {
    pub epochs: u64,
    pub regions: u64,
    pub bytes: u64,
}

impl VmStats {
    pub fn count(&self, kind: ExitKind) {
        self.exits[kind as usize].fetch_add(1, Relaxed);
    }

    /// Adds what el2 counted for one vCPU (called when the vCPU stops).
    pub fn add_el2(&self, c: &El2Counters) {
        self.runs.fetch_add(c.runs, Relaxed);
        self.el2_exits.fetch_add(c.exits, Relaxed);
        self.fast_smccc.fetch_add(c.fast_smccc, Relaxed);
        self.fast_spurious.fetch_add(c.fast_spurious, Relaxed);
        self.fast_id_reg.fetch_add(c.fast_id_reg, Relaxed);
        self.fast_vtimer.fetch_add(c.fast_vtimer, Relaxed);
        self.fast_mmio_const.fetch_add(c.fast_mmio_const, Relaxed);
        self.fast_sgi.fetch_add(c.fast_sgi, Relaxed);
    }

    pub fn exits(&self, kind: ExitKind) -> u64 {
        self.exits[kind as usize].load(Relaxed)
    }

    pub fn fast_paths(&self) -> u64 {
        [
            &self.fast_smccc,
            &self.fast_spurious,
            &self.fast_id_reg,
            &self.fast_mmio_const,
            &self.fast_vtimer,
            &self.fast_sgi,
        ]
        .iter()
        .map(|c| c.load(Relaxed))
        .sum()
    }

    /// The lines printed at the end, without the VM's name.
    pub fn report(&self, cmo: CmoFigures) -> Report<'_> {
        Report { stats: self, cmo }
    }
}

pub struct Report<'a> {
    stats: &'a VmStats,
    cmo: CmoFigures,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats;
        let host: u64 = s.exits.iter().map(|e| e.load(Relaxed)).sum();
        write!(f, "exits {} (to the host {host}:", s.el2_exits.load(Relaxed))?;
        for (name, n) in NAMES.iter().zip(&s.exits) {
            write!(f, " {name} {}", n.load(Relaxed))?;
        }
        writeln!(f, ")")?;
        writeln!(
            f,
            "fast paths {} (smccc {}, id-reg {}, mmio-const {}, spurious {}, vtimer {}, sgi {}); runs {}, interrupted {}, doorbells {}",
            s.fast_paths(),
            s.fast_smccc.load(Relaxed),
            s.fast_id_reg.load(Relaxed),
            s.fast_mmio_const.load(Relaxed),
            s.fast_spurious.load(Relaxed),
            s.fast_vtimer.load(Relaxed),
            s.fast_sgi.load(Relaxed),
            s.runs.load(Relaxed),
            s.interrupted.load(Relaxed),
            s.doorbells.load(Relaxed)
        )?;
        writeln!(f, "{}", s.logs.report())?;
        write!(
            f,
            "cmo: {} epochs, {} regions, {} KiB cleaned; guest time {} ms ({} tick exits)",
            self.cmo.epochs,
            self.cmo.regions,
            self.cmo.bytes >> 10,
            s.guest_time_us.load(Relaxed) / 1000,
            s.guest_ticks.load(Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_every_figure() {
        let s = VmStats::default();
        s.count(ExitKind::Mmio);
        s.count(ExitKind::Mmio);
        s.count(ExitKind::Hvc);
        s.add_el2(&El2Counters {
            runs: 4,
            exits: 9,
            fast_smccc: 5,
            fast_spurious: 1,
            fast_id_reg: 0,
            fast_mmio_const: 2,
            fast_vtimer: 3,
            fast_sgi: 4,
        });
        s.interrupted.fetch_add(1, Relaxed);
        s.doorbells.fetch_add(3, Relaxed);
        s.guest_ticks.fetch_add(7, Relaxed);
        s.guest_time_us.fetch_add(12_345, Relaxed);
        let text = alloc::format!("{}", s.report(CmoFigures { epochs: 2, regions: 4, bytes: 8192 }));
        assert!(text.contains("exits 9 (to the host 3: hvc 1 smc 0 mmio 2"), "{text}");
        assert!(
            text.contains(
                "fast paths 15 (smccc 5, id-reg 0, mmio-const 2, spurious 1, vtimer 3, sgi 4); runs 4, interrupted 1, doorbells 3"
            ),
            "{text}"
        );
        assert!(text.contains("cmo: 2 epochs, 4 regions, 8 KiB cleaned; guest time 12 ms (7 tick exits)"), "{text}");
        assert!(text.contains("\nlog lines suppressed 0\n"), "{text}");
        assert_eq!(s.exits(ExitKind::Mmio), 2);
    }
}
