//! The guest's self-hosted debug registers (breakpoints, watchpoints, the OS
//! lock, the claim tags, `MDCCINT_EL1`). el2 does not pass them through
//! unswitched: a guest could then read another VM's breakpoint addresses,
//! take its breakpoints, or lock the OS lock for everyone on the CPU. A vCPU
//! that has not touched them traps every access (`MDCR_EL2.TDA`, `TDOSA`,
//! `TDRA`); the first one loads its (reset) state, lifts the traps and runs
//! again, as the PMU does (`pmu.rs`). From then on el2 saves them at every
//! exit, disarms every breakpoint and watchpoint and unlocks the OS lock for
//! the host and the other vCPUs, and loads them at entry.

use ferrovisor_shared::esr::SysReg;
use ferrovisor_shared::vcpu::{DebugState, DEBUG_MAX_POINTS};

/// `MDCR_EL2.TDA`, `TDOSA`, `TDRA`: debug register accesses trap to el2.
pub const MDCR_TRAP_DEBUG: u64 = (1 << 9) | (1 << 10) | (1 << 11);

/// Whether a trapped system register access is a debug register's: every
/// AArch64 debug register is in the op0 = 2 space (Arm ARM D23.1.2).
pub fn is_debug_reg(r: SysReg) -> bool {
    r.op0 == 2
}

/// The breakpoints and watchpoints this PE has (`ID_AA64DFR0_EL1.BRPs` and
/// `WRPs`, each the count less one).
pub fn points(dfr0: u64) -> (usize, usize) {
    let brps = ((dfr0 >> 12) & 0xf) as usize + 1;
    let wrps = ((dfr0 >> 20) & 0xf) as usize + 1;
    (brps.min(DEBUG_MAX_POINTS), wrps.min(DEBUG_MAX_POINTS))
}

macro_rules! indexed {
    ($read:ident, $write:ident, $prefix:literal) => {
        fn $read(n: usize) -> u64 {
            let mut v = 0u64;
            indexed!(@read n, v, $prefix, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
            v
        }

        fn $write(n: usize, v: u64) {
            indexed!(@write n, v, $prefix, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        }
    };
    (@read $n:ident, $v:ident, $prefix:literal, $($i:literal)*) => {
        match $n {
            $(
                // SAFETY: a debug register of an implemented breakpoint or
                // watchpoint (callers stay below `points`); reading it has
                // no side effects.
                $i => unsafe {
                    core::arch::asm!(
                        concat!("mrs {}, ", $prefix, stringify!($i), "_el1"),
                        out(reg) $v,
                        options(nomem, nostack, preserves_flags)
                    )
                },
            )*
            _ => {}
        }
    };
    (@write $n:ident, $v:ident, $prefix:literal, $($i:literal)*) => {
        match $n {
            $(
                // SAFETY: as for the read; el2 runs with debug exceptions
                // masked (MDCR_EL2.TDE clear, PSTATE.D set), so an armed
                // point cannot fire here.
                $i => unsafe {
                    core::arch::asm!(
                        concat!("msr ", $prefix, stringify!($i), "_el1, {}"),
                        in(reg) $v,
                        options(nomem, nostack, preserves_flags)
                    )
                },
            )*
            _ => {}
        }
    };
}

indexed!(read_bcr, write_bcr, "dbgbcr");
indexed!(read_bvr, write_bvr, "dbgbvr");
indexed!(read_wcr, write_wcr, "dbgwcr");
indexed!(read_wvr, write_wvr, "dbgwvr");

macro_rules! read_only {
    ($read:ident, $name:literal) => {
        fn $read() -> u64 {
            let v: u64;
            // SAFETY: a debug system register every Armv8 PE has; reading
            // it has no side effects.
            unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

macro_rules! write_only {
    ($write:ident, $name:literal) => {
        fn $write(v: u64) {
            // SAFETY: a debug system register every Armv8 PE has; debug
            // exceptions are masked in el2, so nothing it arms fires here.
            unsafe { core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
        }
    };
}

read_only!(read_mdccint, "mdccint_el1");
write_only!(write_mdccint, "mdccint_el1");
read_only!(read_claimclr, "dbgclaimclr_el1");
write_only!(write_claimclr, "dbgclaimclr_el1");
write_only!(write_claimset, "dbgclaimset_el1");
read_only!(read_oslsr, "oslsr_el1");
write_only!(write_oslar, "oslar_el1");

/// `OSLSR_EL1.OSLK`.
const OSLK: u64 = 1 << 1;

/// Loads `d` into the hardware (entry of a vCPU whose debug state is active).
pub fn restore(d: &DebugState, (brps, wrps): (usize, usize)) {
    for n in 0..brps {
        write_bvr(n, d.bvr[n]);
        write_bcr(n, d.bcr[n]);
    }
    for n in 0..wrps {
        write_wvr(n, d.wvr[n]);
        write_wcr(n, d.wcr[n]);
    }
    write_mdccint(d.mdccint);
    write_claimclr(0xff);
    write_claimset(d.claim);
    write_oslar(u64::from(d.oslk != 0));
}

/// Saves the hardware's debug state into `d`, then leaves every breakpoint
/// and watchpoint disarmed, the claim tags clear and the OS lock unlocked
/// for whoever runs next (the host, or a vCPU whose accesses trap).
pub fn save(d: &mut DebugState, (brps, wrps): (usize, usize)) {
    for n in 0..brps {
        d.bvr[n] = read_bvr(n);
        d.bcr[n] = read_bcr(n);
        write_bcr(n, 0);
    }
    for n in 0..wrps {
        d.wvr[n] = read_wvr(n);
        d.wcr[n] = read_wcr(n);
        write_wcr(n, 0);
    }
    d.mdccint = read_mdccint();
    write_mdccint(0);
    d.claim = read_claimclr() & 0xff;
    write_claimclr(0xff);
    d.oslk = u64::from(read_oslsr() & OSLK != 0);
    write_oslar(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_registers_are_op0_2() {
        // DBGBCR3_EL1, OSLAR_EL1, MDSCR_EL1, MDCCINT_EL1.
        for r in [
            SysReg::new(2, 0, 0, 3, 5),
            SysReg::new(2, 0, 1, 0, 4),
            SysReg::new(2, 0, 0, 2, 2),
            SysReg::new(2, 0, 0, 2, 0),
        ] {
            assert!(is_debug_reg(r), "{r}");
        }
        // PMCR_EL0 and ID_AA64DFR0_EL1 are not.
        assert!(!is_debug_reg(SysReg::new(3, 3, 9, 12, 0)));
        assert!(!is_debug_reg(SysReg::new(3, 0, 0, 5, 0)));
    }

    #[test]
    fn points_from_dfr0() {
        // QEMU -cpu max: 6 breakpoints, 4 watchpoints.
        assert_eq!(points(0x0000_0000_0f20_5009 | 3 << 20 | 5 << 12), (6, 4));
        assert_eq!(points(u64::MAX), (16, 16));
        assert_eq!(points(0), (1, 1));
    }
}
