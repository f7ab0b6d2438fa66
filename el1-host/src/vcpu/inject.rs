//! Injecting synchronous exceptions into a guest by editing its saved
//! context between runs, as `AArch64.TakeException` would at EL1: the
//! faulting PC goes to `ELR_EL1`, PSTATE to `SPSR_EL1`, the syndrome to
//! `ESR_EL1` (and the address to `FAR_EL1`), and the guest resumes at its
//! vector for where it was, in EL1h with D, A, I and F masked.

use ferrovisor_shared::vcpu::VcpuContext;

const EC_UNKNOWN: u64 = 0x00;
const EC_IABT_LOWER: u64 = 0x20;
const EC_IABT_CURRENT: u64 = 0x21;
const EC_DABT_LOWER: u64 = 0x24;
const EC_DABT_CURRENT: u64 = 0x25;
/// ESR.IL: a 32-bit instruction.
const ESR_IL: u64 = 1 << 25;
/// DFSC/IFSC: synchronous external abort, not on a translation table walk.
const FSC_EXTERNAL: u64 = 0x10;

const PSTATE_M_MASK: u64 = 0xf;
const PSTATE_M_EL1H: u64 = 0b0101;
const PSTATE_NRW: u64 = 1 << 4;
const PSTATE_DAIF: u64 = 0xf << 6;
const PSTATE_IL: u64 = 1 << 20;
const PSTATE_SS: u64 = 1 << 21;
const PSTATE_PAN: u64 = 1 << 22;
const SCTLR_SPAN: u64 = 1 << 23;

/// Where the guest was when the exception happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    El1t,
    El1h,
    El0Aarch64,
    El0Aarch32,
}

fn origin(pstate: u64) -> Origin {
    if pstate & PSTATE_NRW != 0 {
        return Origin::El0Aarch32;
    }
    match pstate & PSTATE_M_MASK {
        0b0000 => Origin::El0Aarch64,
        0b0100 => Origin::El1t,
        _ => Origin::El1h,
    }
}

fn vector_offset(o: Origin) -> u64 {
    match o {
        Origin::El1t => 0x000,
        Origin::El1h => 0x200,
        Origin::El0Aarch64 => 0x400,
        Origin::El0Aarch32 => 0x600,
    }
}

fn take_exception(ctx: &mut VcpuContext, esr: u64, far: Option<u64>) {
    let old = ctx.regs.pstate;
    ctx.el1.elr_el1 = ctx.regs.pc;
    ctx.el1.spsr_el1 = old;
    ctx.el1.esr_el1 = esr;
    if let Some(far) = far {
        ctx.el1.far_el1 = far;
    }
    let mut pstate = (old & !(PSTATE_M_MASK | PSTATE_NRW | PSTATE_IL | PSTATE_SS)) | PSTATE_M_EL1H | PSTATE_DAIF;
    if ctx.el1.sctlr & SCTLR_SPAN == 0 {
        pstate |= PSTATE_PAN;
    }
    ctx.regs.pstate = pstate;
    ctx.regs.pc = ctx.el1.vbar.wrapping_add(vector_offset(origin(old)));
}

fn from_el0(ctx: &VcpuContext) -> bool {
    matches!(origin(ctx.regs.pstate), Origin::El0Aarch64 | Origin::El0Aarch32)
}

/// The instruction at `ctx.regs.pc` is UNDEFINED for the guest.
pub fn inject_undef(ctx: &mut VcpuContext) {
    take_exception(ctx, (EC_UNKNOWN << 26) | ESR_IL, None);
}

/// A synchronous external abort on a data access to virtual address `far`.
pub fn inject_data_abort(ctx: &mut VcpuContext, far: u64) {
    let ec = if from_el0(ctx) { EC_DABT_LOWER } else { EC_DABT_CURRENT };
    take_exception(ctx, (ec << 26) | ESR_IL | FSC_EXTERNAL, Some(far));
}

/// A synchronous external abort on an instruction fetch from `far`.
pub fn inject_instruction_abort(ctx: &mut VcpuContext, far: u64) {
    let ec = if from_el0(ctx) { EC_IABT_LOWER } else { EC_IABT_CURRENT };
    take_exception(ctx, (ec << 26) | ESR_IL | FSC_EXTERNAL, Some(far));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pstate: u64) -> VcpuContext {
        let mut c = VcpuContext::default();
        c.regs.pc = 0x4008_1000;
        c.regs.pstate = pstate;
        c.el1.vbar = 0x4009_0000;
        c
    }

    #[test]
    fn undefined_from_el1h() {
        let mut c = ctx(0x0000_0005 | (1 << 29));
        inject_undef(&mut c);
        assert_eq!(c.el1.elr_el1, 0x4008_1000);
        assert_eq!(c.el1.spsr_el1, 0x2000_0005);
        assert_eq!(c.el1.esr_el1, 1 << 25);
        assert_eq!(c.regs.pc, 0x4009_0200);
        assert_eq!(c.regs.pstate & 0xf, 0b0101);
        assert_eq!(c.regs.pstate & 0x3c0, 0x3c0);
        assert_ne!(c.regs.pstate & PSTATE_PAN, 0, "SPAN clear sets PAN");
        assert_eq!(c.regs.pstate & (1 << 29), 1 << 29, "flags kept");
    }

    #[test]
    fn vectors_by_origin() {
        for (pstate, vector) in [(0b0100, 0x000), (0b0101, 0x200), (0b0000, 0x400), (0b10000, 0x600)] {
            let mut c = ctx(pstate);
            inject_undef(&mut c);
            assert_eq!(c.regs.pc - c.el1.vbar, vector, "pstate {pstate:#x}");
        }
    }

    #[test]
    fn data_abort_class_depends_on_origin() {
        let mut c = ctx(0b0101);
        inject_data_abort(&mut c, 0x20_0000_0000);
        assert_eq!(c.el1.esr_el1, (0x25 << 26) | (1 << 25) | 0x10);
        assert_eq!(c.el1.far_el1, 0x20_0000_0000);
        let mut c = ctx(0b0000);
        inject_data_abort(&mut c, 0x1234);
        assert_eq!(c.el1.esr_el1 >> 26, 0x24);
        assert_eq!(c.regs.pc, 0x4009_0400);
    }

    #[test]
    fn instruction_abort_and_span() {
        let mut c = ctx(0b0101 | PSTATE_SS | PSTATE_IL);
        c.el1.sctlr = SCTLR_SPAN;
        inject_instruction_abort(&mut c, 0x5000);
        assert_eq!(c.el1.esr_el1, (0x21 << 26) | (1 << 25) | 0x10);
        assert_eq!(c.regs.pstate & (PSTATE_SS | PSTATE_IL | PSTATE_PAN), 0);
        assert_eq!(c.el1.far_el1, 0x5000);
    }
}
