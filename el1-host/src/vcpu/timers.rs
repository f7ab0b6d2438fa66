//! The guest's timers as interrupts (DESIGN §3): the virtual timer runs in
//! hardware while the guest does and its physical PPI makes the guest exit;
//! the EL1 physical timer is emulated. At each exit the host samples both
//! into the vGIC as level-sensitive lines (INTIDs 27 and 30 in the guest's
//! device tree), so a guest that deactivates the interrupt with the timer
//! still firing gets it again.

use super::sysreg;
use crate::arch::aarch64::{cpu, timer};
use crate::vm::instance::{Vcpu, Vm};
use core::sync::atomic::{AtomicU8, Ordering};
use ferrovisor_shared::boot::MAX_CPUS;
use ferrovisor_shared::vcpu::{TimerState, VcpuContext};

/// The guest's virtual timer PPI (PPI 11).
pub const GUEST_VTIMER_INTID: u32 = 27;
/// The guest's EL1 physical timer PPI (PPI 14).
pub const GUEST_PTIMER_INTID: u32 = 30;

const VTIMER_LINE: u8 = 1 << 0;
const PTIMER_LINE: u8 = 1 << 1;

/// Sets the vGIC lines of `vcpu`'s two timers from their state now. Only the
/// vCPU's own loop drives these lines, so `vcpu.timer_lines` knows their
/// levels and only a change costs a vGIC call.
pub fn sample(vm: &Vm, vcpu: &Vcpu, ctx: &VcpuContext) {
    let vcount = cpu::virtual_count().wrapping_sub(ctx.timer.cntvoff);
    let v = sysreg::vtimer_pending(&ctx.timer, vcount);
    let p = sysreg::ptimer_pending(&ctx.timer, timer::now());
    let now = if v { VTIMER_LINE } else { 0 } | if p { PTIMER_LINE } else { 0 };
    let was = vcpu.timer_lines.swap(now, Ordering::Relaxed);
    if (was ^ now) & VTIMER_LINE != 0 {
        // A private interrupt of this vCPU: nobody else to kick.
        let _ = vm.vgic.set_line(vcpu.index, GUEST_VTIMER_INTID, v);
    }
    if (was ^ now) & PTIMER_LINE != 0 {
        let _ = vm.vgic.set_line(vcpu.index, GUEST_PTIMER_INTID, p);
    }
}

/// The physical count at which the earlier of the guest's enabled, unmasked
/// timers fires.
pub fn next_deadline(t: &TimerState) -> Option<u64> {
    let armed = |ctl: u64| ctl & 0b11 == 0b01;
    let v = armed(t.cntv_ctl).then(|| t.cntv_cval.saturating_add(t.cntvoff));
    let p = armed(t.cntp_ctl).then_some(t.cntp_cval);
    match (v, p) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Before entry: the emulated physical timer has no hardware behind it, so
/// the host's own timer is armed for its deadline (the guest exits then and
/// the next sample raises its interrupt).
pub fn arm_ptimer(t: &TimerState) {
    if t.cntp_ctl & 0b11 == 0b01 {
        timer::arm_no_later_than(t.cntp_cval);
    }
}

const PPI_UNKNOWN: u8 = 0;
const PPI_ON: u8 = 1;
const PPI_OFF: u8 = 2;
/// Whether each CPU has the virtual timer's physical PPI enabled.
static VTIMER_PPI: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(PPI_UNKNOWN) }; MAX_CPUS];

/// Before entry: the virtual timer's physical PPI may make the guest exit only
/// while its virtual interrupt is neither pending nor active; otherwise a
/// guest with the timer still firing would exit again at once.
pub fn load(vm: &Vm, vcpu: &Vcpu) {
    let slot = &VTIMER_PPI[cpu::current() % MAX_CPUS];
    let line = vcpu.timer_lines.load(Ordering::Relaxed) & VTIMER_LINE != 0;
    let want = if line {
        PPI_OFF
    } else if slot.load(Ordering::Relaxed) == PPI_ON {
        // The line is low, so the timer cannot fire before the guest exits
        // anyway; an interrupt still active then is caught at that exit.
        return;
    } else if vm.vgic.is_pending_or_active(vcpu.index, GUEST_VTIMER_INTID) {
        PPI_OFF
    } else {
        PPI_ON
    };
    if slot.load(Ordering::Relaxed) != want {
        crate::gic::set_private_enabled(crate::irq::vtimer_intid(), want == PPI_ON);
        slot.store(want, Ordering::Relaxed);
    }
}
