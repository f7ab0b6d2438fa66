//! The vCPU context that el2 switches in and out, and the exits it reports.
//!
//! The host owns each [`VcpuContext`] (in its identity-mapped heap) and hands
//! its physical address to el2 with [`crate::hypercall::HC_VCPU_RUN`]. While
//! the call runs, el2 owns it; when it returns, every field holds the guest's
//! state at the exit. Offsets that el2's assembly uses are checked below.

/// List registers a context can carry (GICv3 has at most 16, GICv2 64, of
/// which Ferrovisor uses 16).
pub const MAX_LIST_REGS: usize = 16;

/// Guest IPA space: 39 bits, so a stage-2 walk starts at level 1 with one
/// 4 KiB root table, and every CPU (PARange >= 40 bits) can hold it.
pub const STAGE2_IPA_BITS: u32 = 39;
/// The level the stage-2 walk starts at for [`STAGE2_IPA_BITS`].
pub const STAGE2_ROOT_LEVEL: usize = 1;

/// General registers, the PC and PSTATE, and `SP_EL0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub x: [u64; 31],
    /// `ELR_EL2` at the exit: where the guest resumes.
    pub pc: u64,
    /// `SPSR_EL2` at the exit: the guest's PSTATE.
    pub pstate: u64,
    pub sp_el0: u64,
}

/// The EL1 system registers a guest owns (the host's own are saved in the
/// same shape while a guest runs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El1SysRegs {
    pub sctlr: u64,
    pub actlr: u64,
    pub cpacr: u64,
    pub ttbr0: u64,
    pub ttbr1: u64,
    pub tcr: u64,
    pub mair: u64,
    pub amair: u64,
    pub vbar: u64,
    pub contextidr: u64,
    pub tpidr_el1: u64,
    pub tpidr_el0: u64,
    pub tpidrro_el0: u64,
    pub sp_el1: u64,
    pub elr_el1: u64,
    pub spsr_el1: u64,
    pub esr_el1: u64,
    pub far_el1: u64,
    pub afsr0: u64,
    pub afsr1: u64,
    pub par: u64,
    pub cntkctl: u64,
    pub csselr: u64,
    pub mdscr: u64,
}

/// FP/SIMD state: `q0..q31`, `FPSR`, `FPCR`.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpRegs {
    pub q: [u128; 32],
    pub fpsr: u64,
    pub fpcr: u64,
}

/// Pointer-authentication keys (lo, hi), switched when the CPU has PAuth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PauthKeys {
    pub apia: [u64; 2],
    pub apib: [u64; 2],
    pub apda: [u64; 2],
    pub apdb: [u64; 2],
    pub apga: [u64; 2],
}

/// The guest's timers: the virtual timer runs in hardware while the guest
/// does; the EL1 physical timer is trapped and emulated by the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerState {
    pub cntv_ctl: u64,
    pub cntv_cval: u64,
    /// The VM's `CNTVOFF_EL2`.
    pub cntvoff: u64,
    /// Emulated `CNTP_CTL_EL0` / `CNTP_CVAL_EL0` (in physical-counter ticks).
    pub cntp_ctl: u64,
    pub cntp_cval: u64,
}

/// The virtual CPU interface (GICv3 `ICH_*_EL2`, or GICv2 GICH in the same
/// shape). Loaded and saved by el2; filled and drained by the host's vGIC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgicCpuState {
    pub hcr: u64,
    pub vmcr: u64,
    /// Saved at exit: maintenance interrupt status and empty list registers.
    pub misr: u64,
    pub elrsr: u64,
    pub ap0r: [u64; 4],
    pub ap1r: [u64; 4],
    /// List registers `0..used_lrs` are loaded at entry and saved at exit.
    /// el2 raises it when it fills one more itself.
    pub used_lrs: u64,
    pub lr: [u64; MAX_LIST_REGS],
    /// The list register el2 writes when the guest's virtual timer fires
    /// while it runs (docs/interrupts.md §6): pending, HW = 1, the physical
    /// INTID, the guest's priority and group. The host writes it before
    /// entry; 0 (the guest cannot take it now, or `fastpath=off`) leaves
    /// the interrupt to the host.
    pub vtimer_lr: u64,
    /// List registers el2 filled beyond the host's (bit n: `lr[n]`). The
    /// host folds them back at exit and clears this.
    pub el2_lrs: u64,
    /// The host's alone: the vGIC configuration `vtimer_lr` was worked out
    /// from (0: never).
    pub host_gen: u64,
}

/// The guest's PMUv3 (Arm ARM D13, "The Performance Monitors Extension"):
/// the counters run in hardware while the guest does, and el2 switches this
/// state in and out around the guest (docs: the PMU is passed through, never
/// emulated, so the counts are the hardware's). Until the guest first
/// touches a PMU register (`active` = 0) nothing is switched: its accesses
/// trap, and el2 loads this (reset) state and lets the access run again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmuState {
    /// Non-zero once the guest has used its PMU: el2 switches the state.
    pub active: u64,
    /// `PMCR_EL0` as read back (the write-only `P` and `C` read as 0).
    pub pmcr: u64,
    pub pmselr: u64,
    pub pmccntr: u64,
    pub pmccfiltr: u64,
    /// `PMCNTENSET_EL0`, `PMINTENSET_EL1`, `PMOVSSET_EL0`.
    pub pmcnten: u64,
    pub pminten: u64,
    pub pmovs: u64,
    pub pmuserenr: u64,
    /// `PMEVCNTR<n>_EL0` / `PMEVTYPER<n>_EL0`; only the first `PMCR_EL0.N`
    /// are switched.
    pub evcntr: [u64; PMU_MAX_COUNTERS],
    pub evtyper: [u64; PMU_MAX_COUNTERS],
}

/// The guest's self-hosted debug registers (Arm ARM D2, "AArch64
/// Self-hosted Debug"), switched by el2 once the guest has touched one:
/// until then every access traps (`MDCR_EL2.TDA`, `TDOSA`, `TDRA`), so a
/// vCPU never sees another's breakpoints, watchpoints or OS lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugState {
    /// Non-zero once the guest has used a debug register: el2 switches them.
    pub active: u64,
    /// `DBGBCR<n>_EL1`, `DBGBVR<n>_EL1`, `DBGWCR<n>_EL1`, `DBGWVR<n>_EL1`;
    /// only the implemented ones (`ID_AA64DFR0_EL1.BRPs`, `WRPs`) are switched.
    pub bcr: [u64; DEBUG_MAX_POINTS],
    pub bvr: [u64; DEBUG_MAX_POINTS],
    pub wcr: [u64; DEBUG_MAX_POINTS],
    pub wvr: [u64; DEBUG_MAX_POINTS],
    /// `MDCCINT_EL1`, the claim tags (`DBGCLAIMCLR_EL1` as read), the OS
    /// lock (`OSLSR_EL1.OSLK`).
    pub mdccint: u64,
    pub claim: u64,
    pub oslk: u64,
    pub _pad: u64,
}

/// Breakpoints or watchpoints a PE can have (`BRPs`, `WRPs` + 1).
pub const DEBUG_MAX_POINTS: usize = 16;

/// Event counters PMUv3 can have (`PMCR_EL0.N` is at most 31).
pub const PMU_MAX_COUNTERS: usize = 31;

impl PmuState {
    /// `PMCR_EL0.E`: counters enabled.
    pub const PMCR_E: u64 = 1 << 0;

    /// The level of the guest's PMU overflow interrupt request: counting
    /// enabled and an overflow flag set whose interrupt is enabled (Arm ARM
    /// D13.3.3; QEMU's `pmu_update_irq` computes the same).
    pub fn overflow_irq(&self) -> bool {
        self.active != 0 && self.pmcr & Self::PMCR_E != 0 && self.pmovs & self.pminten != 0
    }
}

/// What the host asks of el2 for this vCPU; el2 turns it into `HCR_EL2`,
/// `VTTBR_EL2` and the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuConfig {
    /// Physical address of the stage-2 root table (4 KiB aligned).
    pub stage2_root: u64,
    pub vmid: u64,
    /// `VMPIDR_EL2`: the MPIDR the guest reads.
    pub mpidr: u64,
    /// `CONFIG_*` bits.
    pub flags: u64,
    /// Device registers whose value cannot change while the VM runs, which
    /// el2 answers plain loads of itself (empty: every access goes to the
    /// host).
    pub consts: ConstRegs,
    /// Physical address of the VM's [`crate::sgi::SgiTable`] (64-byte
    /// aligned), through which el2 delivers SGIs between resident vCPUs; 0:
    /// every SGI goes through the host.
    pub sgi_table: u64,
}

/// Most entries a [`ConstRegs`] holds: el2 scans them all on a load from
/// inside [`ConstRegs::hpfar_base`]'s range.
pub const MAX_CONST_REGS: usize = 16;

/// One constant register: `size` bytes at `ipa`, and when `frames` > 1 the
/// same register at every `1 << stride_shift` bytes after it, `frames`
/// times in all (one redistributor each).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConstReg {
    pub ipa: u64,
    /// What a load of exactly `size` bytes returns (zero-extended).
    pub value: u64,
    pub size: u16,
    pub frames: u16,
    pub stride_shift: u32,
}

/// A vCPU's table of constant device registers (the GIC's ID and type
/// registers), filled by the host before the vCPU first runs and read by
/// el2 on a stage-2 data abort. Nothing in it is trusted for el2's own
/// safety: `count` is clamped, and a wrong entry only gives the guest a
/// wrong value, as a wrong emulation would.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConstRegs {
    /// `HPFAR_EL2` of the first page holding an entry, and the distance
    /// past it of the last page + 1: a fault outside is not looked up.
    pub hpfar_base: u64,
    pub hpfar_span: u64,
    /// `hpfar_base + hpfar_span` (0: empty).
    pub hpfar_limit: u64,
    pub count: u64,
    pub regs: [ConstReg; MAX_CONST_REGS],
}

/// `HPFAR_EL2` for the page of `ipa` (FIPA, IPA bits 51:12, in bits 43:4).
pub const fn hpfar_of(ipa: u64) -> u64 {
    (ipa >> 12) << 4
}

impl ConstRegs {
    /// Adds `size` bytes at `ipa` reading `value`, repeated `frames` times
    /// `1 << stride_shift` apart. False (nothing added) when the table is full,
    /// `size` is not 1, 2, 4 or 8, `frames` is 0 or the stride is 64 bits or
    /// more.
    pub fn push(&mut self, ipa: u64, size: u8, value: u64, frames: u16, stride_shift: u32) -> bool {
        let n = self.count as usize;
        if n >= MAX_CONST_REGS || !matches!(size, 1 | 2 | 4 | 8) || frames == 0 || stride_shift >= 64 {
            return false;
        }
        let last = u64::from(frames - 1).checked_shl(stride_shift).and_then(|d| d.checked_add(ipa));
        let Some(last) = last.and_then(|l| l.checked_add(u64::from(size) - 1)) else { return false };
        self.regs[n] = ConstReg { ipa, value, size: size.into(), frames, stride_shift };
        self.count += 1;
        let (lo, hi) = (hpfar_of(ipa), hpfar_of(last) + 0x10);
        if n == 0 {
            self.hpfar_base = lo;
            self.hpfar_span = hi - lo;
        } else {
            let end = (self.hpfar_base + self.hpfar_span).max(hi);
            self.hpfar_base = self.hpfar_base.min(lo);
            self.hpfar_span = end - self.hpfar_base;
        }
        self.hpfar_limit = self.hpfar_base + self.hpfar_span;
        true
    }

    /// Whether a fault with this `HPFAR_EL2` may hit an entry.
    #[inline(always)]
    pub fn may_hold(&self, hpfar: u64) -> bool {
        hpfar.wrapping_sub(self.hpfar_base) < self.hpfar_span
    }

    /// Whether a fault with this `HPFAR_EL2` is below the last entry's
    /// page's end: el2's one-compare filter (a fault below the first
    /// entry's page is looked up and not found; nothing under QEMU virt's
    /// GIC frames is an emulated device).
    #[inline(always)]
    pub fn below_limit(&self, hpfar: u64) -> bool {
        hpfar < self.hpfar_limit
    }

    /// The value of a `size`-byte load at `ipa`, if an entry has it.
    #[inline]
    pub fn lookup(&self, ipa: u64, size: u8) -> Option<u64> {
        let n = (self.count as usize).min(MAX_CONST_REGS);
        self.regs[..n].iter().find(|r| r.matches(ipa, size)).map(|r| r.value)
    }

    /// Every register the table answers for: (IPA, size, value).
    pub fn each(&self) -> impl Iterator<Item = (u64, u8, u64)> + '_ {
        let n = (self.count as usize).min(MAX_CONST_REGS);
        self.regs[..n].iter().flat_map(|r| {
            (0..u64::from(r.frames))
                .map(move |f| (r.ipa.wrapping_add(f << (r.stride_shift & 63)), r.size as u8, r.value))
        })
    }
}

impl ConstReg {
    #[inline(always)]
    fn matches(&self, ipa: u64, size: u8) -> bool {
        let Some(d) = ipa.checked_sub(self.ipa) else { return false };
        let shift = self.stride_shift & 63;
        self.size == u16::from(size) && d >> shift < u64::from(self.frames) && d & ((1 << shift) - 1) == 0
    }
}

/// Trap guest `WFE` (when vCPUs share CPUs); `WFI` is always trapped.
pub const CONFIG_TRAP_WFE: u64 = 1 << 0;
/// The guest's GIC is a GICv3 (system-register CPU interface).
pub const CONFIG_GICV3: u64 = 1 << 1;
/// The guest has a PMUv3 (`ID_AA64DFR0_EL1.PMUVer`, [`PmuState`]); without
/// it every PMU access is UNDEFINED for the guest.
pub const CONFIG_PMU: u64 = 1 << 2;
/// `fastpath=off`: el2 finishes none of this vCPU's exits that the host
/// could (the figures of `scripts/bench --fastpath off` are the host's
/// paths). The host publishes no [`ConstRegs`] either; fast paths that
/// only el2 can take (a spurious IRQ, the ID registers, the SMCCC calls
/// el2 answers, the lazy PMU and debug switches) stay.
pub const CONFIG_NO_FASTPATH: u64 = 1 << 3;

/// The last exit, as el2 saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// An [`ExitReason`] as a number.
    pub reason: u64,
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
    /// An IRQ exit whose interrupt el2 acknowledged and could not finish:
    /// [`ACKED_VALID`] with the `ICC_IAR1_EL1` / `GICC_IAR` value. The host
    /// handles it as if it had acknowledged it itself (it is active, so it
    /// is not signalled again), and clears this: el2 only ever sets it.
    pub acked: u64,
    /// [`ExitReason::Kick`]: the vCPUs (bit n, vCPU n) el2 posted SGIs for
    /// that were not in guest mode.
    pub kick: u64,
}

/// [`ExitInfo::acked`] holds an acknowledged interrupt.
pub const ACKED_VALID: u64 = 1 << 63;

/// Counters el2 keeps for this vCPU; the host only reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El2Counters {
    /// `HC_VCPU_RUN` calls.
    pub runs: u64,
    /// Every exception taken from the guest.
    pub exits: u64,
    /// Exits finished in el2 without the host.
    pub fast_smccc: u64,
    pub fast_spurious: u64,
    pub fast_id_reg: u64,
    /// Loads of a [`ConstRegs`] register.
    pub fast_mmio_const: u64,
    /// `ICC_SGI1R_EL1` writes el2 delivered itself.
    pub fast_sgi: u64,
    /// The guest's virtual timer put in a list register by el2.
    pub fast_vtimer: u64,
}

/// Everything el2 switches for one vCPU.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuContext {
    pub regs: GuestRegs,
    pub el1: El1SysRegs,
    pub fp: FpRegs,
    pub pauth: PauthKeys,
    pub timer: TimerState,
    pub vgic: VgicCpuState,
    pub config: VcpuConfig,
    pub exit: ExitInfo,
    pub counters: El2Counters,
    pub pmu: PmuState,
    pub debug: DebugState,
}

/// Offsets el2's assembly uses.
pub const CTX_REGS_X: usize = core::mem::offset_of!(VcpuContext, regs) + core::mem::offset_of!(GuestRegs, x);
pub const CTX_FP: usize = core::mem::offset_of!(VcpuContext, fp);
pub const FP_FPSR: usize = core::mem::offset_of!(FpRegs, fpsr);
pub const FP_FPCR: usize = core::mem::offset_of!(FpRegs, fpcr);

const _: () = assert!(CTX_REGS_X == 0);
const _: () = assert!(core::mem::offset_of!(GuestRegs, pc) == 248);
const _: () = assert!(core::mem::offset_of!(GuestRegs, pstate) == 256);
const _: () = assert!(FP_FPSR == 512 && FP_FPCR == 520);
const _: () = assert!(CTX_FP.is_multiple_of(16));
const _: () = assert!(core::mem::size_of::<FpRegs>() == 528);
const _: () = assert!(core::mem::size_of::<VcpuContext>().is_multiple_of(16));

/// Why `HC_VCPU_RUN` returned.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// A synchronous exception from the guest: `exit.esr` says which.
    Sync = 1,
    /// A physical IRQ arrived while the guest ran; the host takes it once it
    /// unmasks interrupts.
    Irq = 2,
    Fiq = 3,
    /// An SError from the guest.
    SError = 4,
    /// el2 finished the exit (an SGI it posted) but its targets in
    /// `exit.kick` were outside guest mode: the host must kick them.
    Kick = 5,
}

impl ExitReason {
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::Sync,
            2 => Self::Irq,
            3 => Self::Fiq,
            4 => Self::SError,
            5 => Self::Kick,
            _ => return None,
        })
    }
}

/// `HC_VCPU_RUN` errors (negative in x0).
pub const RUN_ERROR_BAD_CONTEXT: i64 = -2;
pub const RUN_ERROR_BAD_STAGE2: i64 = -3;

/// PSTATE for a guest's first instruction: EL1h with D, A, I and F masked.
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;
/// `SCTLR_EL1` at reset as a guest sees it: MMU and caches off, RES1 bits set.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

impl VcpuContext {
    /// A vCPU about to run its first instruction at `pc` with `x0`, per the
    /// Linux arm64 boot protocol (MMU and caches off, everything masked).
    pub fn reset(pc: u64, x0: u64, config: VcpuConfig, cntvoff: u64) -> Self {
        let mut ctx = Self::default();
        ctx.regs.pc = pc;
        ctx.regs.x[0] = x0;
        ctx.regs.pstate = PSTATE_EL1H_MASKED;
        ctx.el1.sctlr = SCTLR_EL1_RESET;
        ctx.config = config;
        ctx.timer.cntvoff = cntvoff;
        ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_state_follows_the_boot_protocol() {
        let cfg = VcpuConfig {
            stage2_root: 0x4100_0000,
            vmid: 3,
            mpidr: 0x8000_0001,
            flags: 0,
            consts: ConstRegs::default(),
            sgi_table: 0,
        };
        let c = VcpuContext::reset(0x4008_0000, 0x4400_0000, cfg, 7);
        assert_eq!(c.regs.pc, 0x4008_0000);
        assert_eq!(c.regs.x[0], 0x4400_0000);
        assert!(c.regs.x[1..4].iter().all(|&r| r == 0));
        assert_eq!(c.regs.pstate & 0xf, 0b0101, "EL1h");
        assert_eq!(c.regs.pstate & 0x3c0, 0x3c0, "DAIF masked");
        assert_eq!(c.el1.sctlr & 1, 0, "MMU off");
        assert_eq!(c.el1.sctlr & (1 << 2), 0, "data cache off");
        assert_eq!(c.timer.cntvoff, 7);
        assert_eq!(c.config, cfg);
    }

    #[test]
    fn pmu_overflow_level_needs_enable_flag_and_interrupt_enable() {
        let mut p =
            PmuState { active: 1, pmcr: PmuState::PMCR_E, pmovs: 1 << 31, pminten: 1 << 31, ..Default::default() };
        assert!(p.overflow_irq());
        p.pminten = 1;
        assert!(!p.overflow_irq(), "the overflow's interrupt is not enabled");
        p.pminten = 1 << 31;
        p.pmcr = 0;
        assert!(!p.overflow_irq(), "PMCR_EL0.E clear");
        p.pmcr = PmuState::PMCR_E;
        p.active = 0;
        assert!(!p.overflow_irq(), "a PMU never used has no state in hardware");
        assert_eq!(VcpuContext::reset(0, 0, VcpuConfig::default(), 0).pmu, PmuState::default());
    }

    #[test]
    fn const_regs_answer_only_their_registers() {
        let mut t = ConstRegs::default();
        assert!(!t.may_hold(hpfar_of(0x0800_0000)), "an empty table holds nothing");
        assert!(!t.below_limit(0));
        assert_eq!(t.lookup(0, 4), None);
        assert!(t.push(0x0800_0008, 4, 0x4658, 1, 0));
        // Four redistributors 128 KiB apart.
        assert!(t.push(0x080a_0004, 4, 0x4658, 4, 17));
        assert!(t.push(0x080a_0008, 8, 0x1_0000_0010, 1, 0));
        assert_eq!(t.lookup(0x0800_0008, 4), Some(0x4658));
        assert_eq!(t.lookup(0x0800_0008, 2), None, "another size is another access");
        assert_eq!(t.lookup(0x0800_0008, 8), None);
        assert_eq!(t.lookup(0x0800_000c, 4), None);
        assert_eq!(t.lookup(0x0800_0004, 4), None);
        for f in 0..4 {
            assert_eq!(t.lookup(0x080a_0004 + f * 0x2_0000, 4), Some(0x4658), "frame {f}");
            assert_eq!(t.lookup(0x080a_0004 + f * 0x2_0000 + 0x1_0000, 4), None, "frame {f}'s SGI frame");
        }
        assert_eq!(t.lookup(0x080a_0004 + 4 * 0x2_0000, 4), None, "past the last frame");
        assert_eq!(t.lookup(0x080a_0008, 8), Some(0x1_0000_0010));
        assert_eq!(t.lookup(0x080c_0008, 8), None, "one frame only");
        // The range: from GICD's page to the last redistributor's page.
        assert!(t.may_hold(hpfar_of(0x0800_0000)));
        assert!(t.may_hold(hpfar_of(0x080a_0004 + 3 * 0x2_0000)));
        assert!(!t.may_hold(hpfar_of(0x080a_0004 + 3 * 0x2_0000 + 0x1000)));
        assert!(!t.may_hold(hpfar_of(0x07ff_f000)));
        assert!(!t.may_hold(hpfar_of(0x0a00_0000)), "virtio-mmio");
        assert!(!t.below_limit(hpfar_of(0x0a00_0000)));
        assert!(!t.below_limit(hpfar_of(0x080a_0004 + 3 * 0x2_0000 + 0x1000)));
        assert!(t.below_limit(hpfar_of(0x080a_0004 + 3 * 0x2_0000)));
        let all: std::vec::Vec<_> = t.each().collect();
        assert_eq!(all.len(), 6);
        assert!(all.contains(&(0x080a_0004 + 3 * 0x2_0000, 4, 0x4658)));
    }

    #[test]
    fn const_regs_refuse_what_they_cannot_hold() {
        let mut t = ConstRegs::default();
        assert!(!t.push(0x1000, 3, 0, 1, 0), "size 3");
        assert!(!t.push(0x1000, 4, 0, 0, 0), "no frames");
        assert!(!t.push(0x1000, 4, 0, 2, 64), "a 64-bit stride");
        assert!(!t.push(u64::MAX - 2, 4, 0, 1, 0), "past the end of the address space");
        assert!(!t.push(u64::MAX - 0x1_ffff, 4, 0, 2, 17));
        assert_eq!(t.count, 0);
        for i in 0..MAX_CONST_REGS as u64 {
            assert!(t.push(0x1000 + 8 * i, 4, i, 1, 0));
        }
        assert!(!t.push(0x2000, 4, 0, 1, 0), "full");
        assert_eq!(t.lookup(0x1000 + 8 * 15, 4), Some(15));
        // A count the host corrupted is clamped, never read past the table.
        t.count = u64::MAX;
        assert_eq!(t.lookup(0x1000 + 8 * 15, 4), Some(15));
        assert_eq!(t.lookup(0x3000, 4), None);
        assert_eq!(t.each().count(), MAX_CONST_REGS);
        // A corrupt stride is masked, not a shift overflow.
        t.regs[0].stride_shift = 200;
        let _ = t.lookup(0x1000, 4);
    }

    #[test]
    fn exit_reasons_round_trip() {
        for r in [ExitReason::Sync, ExitReason::Irq, ExitReason::Fiq, ExitReason::SError, ExitReason::Kick] {
            assert_eq!(ExitReason::from_u64(r as u64), Some(r));
        }
        assert_eq!(ExitReason::from_u64(0), None);
        assert_eq!(ExitReason::from_u64(99), None);
    }

    #[test]
    fn layout_is_what_the_assembly_expects() {
        assert_eq!(core::mem::align_of::<VcpuContext>(), 16);
        assert_eq!(core::mem::size_of::<GuestRegs>(), 272);
        assert_eq!(core::mem::size_of::<El1SysRegs>(), 24 * 8);
        assert_eq!(CTX_FP, 272 + 24 * 8);
    }
}
