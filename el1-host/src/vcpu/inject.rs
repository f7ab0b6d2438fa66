//! Injecting synchronous exceptions into a guest, by editing its saved
//! [`VcpuContext`] between runs (the host owns the context then), as the Arm
//! ARM's `AArch64.TakeException` would take them to EL1.
//!
//! # API
//!
//! - [`inject_undef`]`(ctx)`: the instruction at `ctx.regs.pc` is UNDEFINED
//!   (ESR_EL1: EC 0x00, IL = 1).
//! - [`inject_data_abort`]`(ctx, far)`: a synchronous external abort on a data
//!   access to virtual address `far` (EC 0x24 from EL0, 0x25 from EL1; DFSC
//!   0x10; IL = 1; FAR_EL1 = `far`).
//! - [`inject_instruction_abort`]`(ctx, far)`: the same for an instruction fetch
//!   (EC 0x20 / 0x21, IFSC 0x10).
//! - [`skip_instruction`]`(ctx)`: the host emulated the instruction at the PC;
//!   the guest resumes after it.
//!
//! # What taking the exception does
//!
//! `ELR_EL1` = the faulting PC, `SPSR_EL1` = the old PSTATE, and the new PSTATE
//! is EL1h, AArch64, with D, A, I, F set, IL, SS, BTYPE and UAO clear, N, Z, C,
//! V kept, PAN kept and set if `SCTLR_EL1.SPAN` is 0, DIT kept, SSBS =
//! `SCTLR_EL1.DSSBS`. The PC is `VBAR_EL1` plus 0x000 (from EL1t), 0x200
//! (EL1h), 0x400 (AArch64 EL0) or 0x600 (AArch32 EL0). Guests are not given MTE
//! or NMI, so TCO and ALLINT stay clear. A PSTATE that no guest can have (EL2
//! or EL3 in M) is taken as EL1h: no panic on any input.

use ferrovisor_shared::vcpu::VcpuContext;

/// Exception classes (ESR_ELx.EC).
pub const EC_UNKNOWN: u64 = 0x00;
pub const EC_IABT_LOWER: u64 = 0x20;
pub const EC_IABT_CURRENT: u64 = 0x21;
pub const EC_DABT_LOWER: u64 = 0x24;
pub const EC_DABT_CURRENT: u64 = 0x25;
const ESR_EC_SHIFT: u64 = 26;
/// ESR_ELx.IL: a 32-bit instruction.
pub const ESR_IL: u64 = 1 << 25;
/// DFSC / IFSC: synchronous external abort, not on a translation table walk.
pub const FSC_SYNC_EXTERNAL: u64 = 0x10;

/// PSTATE (SPSR format) fields.
pub const PSTATE_M_MASK: u64 = 0xf;
pub const PSTATE_M_EL0T: u64 = 0b0000;
pub const PSTATE_M_EL1T: u64 = 0b0100;
pub const PSTATE_M_EL1H: u64 = 0b0101;
/// M[4]: the exception came from AArch32.
pub const PSTATE_NRW: u64 = 1 << 4;
pub const PSTATE_DAIF: u64 = 0xf << 6;
pub const PSTATE_BTYPE: u64 = 0b11 << 10;
pub const PSTATE_SSBS: u64 = 1 << 12;
pub const PSTATE_PAN: u64 = 1 << 22;
pub const PSTATE_DIT: u64 = 1 << 24;
pub const PSTATE_NZCV: u64 = 0xf << 28;

const SCTLR_SPAN: u64 = 1 << 23;
const SCTLR_DSSBS: u64 = 1 << 44;
/// VBAR_EL1 bits 10:0 are RES0.
const VBAR_MASK: u64 = !0x7ff;

/// Where the guest was when the exception happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    El1t,
    El1h,
    El0Aarch64,
    El0Aarch32,
}

impl Origin {
    fn of(pstate: u64) -> Self {
        if pstate & PSTATE_NRW != 0 {
            // AArch32 at EL1 cannot happen in a guest whose EL1 is AArch64;
            // the architecture routes anything from AArch32 here as EL0.
            return Self::El0Aarch32;
        }
        match pstate & PSTATE_M_MASK {
            PSTATE_M_EL0T => Self::El0Aarch64,
            PSTATE_M_EL1T => Self::El1t,
            _ => Self::El1h,
        }
    }

    fn vector_offset(self) -> u64 {
        match self {
            Self::El1t => 0x000,
            Self::El1h => 0x200,
            Self::El0Aarch64 => 0x400,
            Self::El0Aarch32 => 0x600,
        }
    }

    fn is_el0(self) -> bool {
        matches!(self, Self::El0Aarch64 | Self::El0Aarch32)
    }
}

/// `AArch64.TakeException` to EL1 with syndrome `esr` (and `far`, for
/// aborts).
fn take_exception(ctx: &mut VcpuContext, esr: u64, far: Option<u64>) {
    let old = ctx.regs.pstate;
    let origin = Origin::of(old);
    ctx.el1.elr_el1 = ctx.regs.pc;
    ctx.el1.spsr_el1 = old;
    ctx.el1.esr_el1 = esr;
    if let Some(far) = far {
        ctx.el1.far_el1 = far;
    }

    // SPSR_EL1 holds NZCV, PAN and DIT at the same bits for AArch32 as for
    // AArch64.
    let mut new = (old & (PSTATE_NZCV | PSTATE_PAN | PSTATE_DIT)) | PSTATE_M_EL1H | PSTATE_DAIF;
    if ctx.el1.sctlr & SCTLR_SPAN == 0 {
        new |= PSTATE_PAN;
    }
    if ctx.el1.sctlr & SCTLR_DSSBS != 0 {
        new |= PSTATE_SSBS;
    }
    ctx.regs.pstate = new;
    ctx.regs.pc = (ctx.el1.vbar & VBAR_MASK).wrapping_add(origin.vector_offset());
}

fn abort_esr(ctx: &VcpuContext, ec_lower: u64, ec_current: u64) -> u64 {
    let ec = if Origin::of(ctx.regs.pstate).is_el0() { ec_lower } else { ec_current };
    (ec << ESR_EC_SHIFT) | ESR_IL | FSC_SYNC_EXTERNAL
}

/// The instruction at `ctx.regs.pc` is UNDEFINED for the guest.
pub fn inject_undef(ctx: &mut VcpuContext) {
    take_exception(ctx, (EC_UNKNOWN << ESR_EC_SHIFT) | ESR_IL, None);
}

/// A synchronous external abort on a data access to virtual address `far`
/// by the instruction at `ctx.regs.pc`.
pub fn inject_data_abort(ctx: &mut VcpuContext, far: u64) {
    let esr = abort_esr(ctx, EC_DABT_LOWER, EC_DABT_CURRENT);
    take_exception(ctx, esr, Some(far));
}

/// A synchronous external abort on an instruction fetch from virtual address
/// `far`.
pub fn inject_instruction_abort(ctx: &mut VcpuContext, far: u64) {
    let esr = abort_esr(ctx, EC_IABT_LOWER, EC_IABT_CURRENT);
    take_exception(ctx, esr, Some(far));
}

/// The host emulated the (32-bit) instruction at the PC: the guest resumes at
/// the next one. BTYPE is cleared, as after any instruction that is not a
/// branch.
pub fn skip_instruction(ctx: &mut VcpuContext) {
    ctx.regs.pc = ctx.regs.pc.wrapping_add(4);
    if ctx.regs.pstate & PSTATE_NRW == 0 {
        ctx.regs.pstate &= !PSTATE_BTYPE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrovisor_shared::esr::{Esr, ExceptionClass, FaultStatus};

    const PSTATE_IL: u64 = 1 << 20;
    const PSTATE_SS: u64 = 1 << 21;
    const PSTATE_UAO: u64 = 1 << 23;

    const PC: u64 = 0x4008_1000;
    const VBAR: u64 = 0x4009_0000;
    /// SCTLR_EL1 with SPAN set (PAN left alone on exception entry).
    const SCTLR_SPAN_SET: u64 = ferrovisor_shared::vcpu::SCTLR_EL1_RESET;

    fn ctx(pstate: u64) -> VcpuContext {
        let mut c = VcpuContext::default();
        c.regs.pc = PC;
        c.regs.pstate = pstate;
        c.regs.x[5] = 0x55;
        c.el1.vbar = VBAR;
        c.el1.sctlr = SCTLR_SPAN_SET;
        c
    }

    /// The four places a guest can be, with the vector each one uses.
    const ORIGINS: [(u64, u64, bool); 4] = [
        (PSTATE_M_EL1T, 0x000, false),
        (PSTATE_M_EL1H, 0x200, false),
        (PSTATE_M_EL0T, 0x400, true),
        (PSTATE_NRW, 0x600, true), // AArch32 User (M = 0b10000)
    ];

    /// What every injection must do, whatever the kind.
    fn check_entry(before: &VcpuContext, after: &VcpuContext, vector: u64) {
        assert_eq!(after.el1.elr_el1, before.regs.pc, "ELR_EL1 = the faulting PC");
        assert_eq!(after.el1.spsr_el1, before.regs.pstate, "SPSR_EL1 = the old PSTATE");
        assert_eq!(after.regs.pc, VBAR + vector);
        assert_eq!(after.regs.pstate & (PSTATE_M_MASK | PSTATE_NRW), PSTATE_M_EL1H, "AArch64 EL1h");
        assert_eq!(after.regs.pstate & PSTATE_DAIF, PSTATE_DAIF, "D, A, I, F masked");
        assert_eq!(after.regs.pstate & (PSTATE_IL | PSTATE_SS | PSTATE_BTYPE | PSTATE_UAO), 0);
        assert_eq!(after.regs.x, before.regs.x, "general registers untouched");
        assert_eq!(after.el1.vbar, before.el1.vbar);
        assert_eq!(after.el1.sctlr, before.el1.sctlr);
    }

    #[test]
    fn undef_from_each_origin() {
        for (pstate, vector, _) in ORIGINS {
            let before = ctx(pstate);
            let mut c = before;
            inject_undef(&mut c);
            check_entry(&before, &c, vector);
            let esr = Esr(c.el1.esr_el1);
            assert_eq!(esr.class(), ExceptionClass::Unknown);
            assert!(esr.il());
            assert_eq!(c.el1.esr_el1, 1 << 25, "EC 0, IL, no ISS");
            assert_eq!(c.el1.far_el1, 0, "FAR untouched");
        }
    }

    #[test]
    fn data_abort_from_each_origin() {
        for (pstate, vector, el0) in ORIGINS {
            let before = ctx(pstate);
            let mut c = before;
            inject_data_abort(&mut c, 0x20_0000_0000);
            check_entry(&before, &c, vector);
            assert_eq!(c.el1.far_el1, 0x20_0000_0000);
            let ec = if el0 { 0x24 } else { 0x25 };
            assert_eq!(c.el1.esr_el1, (ec << 26) | (1 << 25) | 0x10, "pstate {pstate:#x}");
            let esr = Esr(c.el1.esr_el1);
            let class = if el0 { ExceptionClass::DataAbortLowerEl } else { ExceptionClass::DataAbortSameEl };
            assert_eq!(esr.class(), class);
            assert_eq!(esr.fault_status(), FaultStatus::SyncExternal);
            assert!(!esr.is_write(), "WnR not claimed");
        }
    }

    #[test]
    fn instruction_abort_from_each_origin() {
        for (pstate, vector, el0) in ORIGINS {
            let before = ctx(pstate);
            let mut c = before;
            inject_instruction_abort(&mut c, PC);
            check_entry(&before, &c, vector);
            assert_eq!(c.el1.far_el1, PC);
            let ec = if el0 { 0x20 } else { 0x21 };
            assert_eq!(c.el1.esr_el1, (ec << 26) | (1 << 25) | 0x10, "pstate {pstate:#x}");
            assert_eq!(Esr(c.el1.esr_el1).fault_status(), FaultStatus::SyncExternal);
        }
    }

    #[test]
    fn pan_follows_span() {
        // SPAN set: PAN keeps its old value.
        for old_pan in [0, PSTATE_PAN] {
            let mut c = ctx(PSTATE_M_EL0T | old_pan);
            inject_undef(&mut c);
            assert_eq!(c.regs.pstate & PSTATE_PAN, old_pan);
        }
        // SPAN clear: PAN is set.
        let mut c = ctx(PSTATE_M_EL0T);
        c.el1.sctlr &= !SCTLR_SPAN;
        inject_data_abort(&mut c, 0);
        assert_eq!(c.regs.pstate & PSTATE_PAN, PSTATE_PAN);
    }

    #[test]
    fn flags_dit_and_ssbs() {
        let old = PSTATE_M_EL1H | PSTATE_NZCV | PSTATE_DIT | PSTATE_SSBS | PSTATE_SS | PSTATE_IL | PSTATE_BTYPE;
        let mut c = ctx(old | PSTATE_UAO);
        inject_undef(&mut c);
        assert_eq!(c.regs.pstate & PSTATE_NZCV, PSTATE_NZCV, "flags kept");
        assert_eq!(c.regs.pstate & PSTATE_DIT, PSTATE_DIT, "DIT kept");
        assert_eq!(c.regs.pstate & PSTATE_SSBS, 0, "SSBS = DSSBS = 0");
        assert_eq!(c.regs.pstate & (PSTATE_SS | PSTATE_IL | PSTATE_BTYPE | PSTATE_UAO), 0);
        assert_eq!(c.el1.spsr_el1, old | PSTATE_UAO, "the old PSTATE whole");
        let mut c = ctx(PSTATE_M_EL0T);
        c.el1.sctlr |= SCTLR_DSSBS;
        inject_undef(&mut c);
        assert_eq!(c.regs.pstate & PSTATE_SSBS, PSTATE_SSBS, "SSBS = DSSBS = 1");
        // From AArch32: the IT, T, E and GE bits do not leak into AArch64's
        // PSTATE (where they would be BTYPE, SSBS...).
        let mut c = ctx(PSTATE_NRW | PSTATE_DIT | (0b1010 << 28) | (0x3f << 10) | (1 << 5) | (1 << 9) | (0xf << 16));
        inject_undef(&mut c);
        assert_eq!(c.regs.pstate, PSTATE_M_EL1H | PSTATE_DAIF | PSTATE_DIT | (0b1010 << 28));
    }

    #[test]
    fn nested_exceptions_and_odd_inputs_do_not_panic() {
        // An exception taken from the EL1h vector itself: a second injection
        // uses the new state.
        let mut c = ctx(PSTATE_M_EL0T);
        inject_data_abort(&mut c, 0x1000);
        inject_undef(&mut c);
        assert_eq!(c.el1.elr_el1, VBAR + 0x400);
        assert_eq!(c.regs.pc, VBAR + 0x200);
        assert_eq!(c.el1.spsr_el1 & PSTATE_M_MASK, PSTATE_M_EL1H);
        // A PSTATE no guest has (EL2h), an unaligned VBAR, a VBAR at the top.
        let mut c = ctx(0b1001);
        c.el1.vbar = u64::MAX;
        inject_undef(&mut c);
        assert_eq!(c.regs.pc, (!0x7ff_u64).wrapping_add(0x200));
    }

    #[test]
    fn skip_instruction_advances_the_pc() {
        let mut c = ctx(PSTATE_M_EL1H | PSTATE_BTYPE | PSTATE_NZCV);
        skip_instruction(&mut c);
        assert_eq!(c.regs.pc, PC + 4);
        assert_eq!(c.regs.pstate, PSTATE_M_EL1H | PSTATE_NZCV, "BTYPE cleared, the rest kept");
        c.regs.pc = u64::MAX - 3;
        skip_instruction(&mut c);
        assert_eq!(c.regs.pc, 0);
        // AArch32: bits 11:10 are IT bits there, left alone.
        let mut c = ctx(PSTATE_NRW | PSTATE_BTYPE);
        skip_instruction(&mut c);
        assert_eq!(c.regs.pstate, PSTATE_NRW | PSTATE_BTYPE);
    }
}
