//! The guest's timers as interrupts (docs/interrupts.md §6): the virtual timer runs in
//! hardware while the guest does and its physical PPI makes the guest exit;
//! the EL1 physical timer is emulated. At each exit the host samples both
//! into the vGIC as level-sensitive lines (INTIDs 27 and 30 in the guest's
//! device tree). The virtual timer's interrupt is hardware-linked to its
//! physical PPI, which the host leaves active for the guest to deactivate.

use super::linked::LinkedPpi;
use super::sysreg;
use crate::arch::aarch64::{cpu, timer};
use crate::vm::instance::{Vcpu, Vm};
use core::sync::atomic::Ordering;
use ferrovisor_shared::vcpu::{TimerState, VcpuContext, CONFIG_NO_FASTPATH};

/// The guest's virtual timer PPI (PPI 11).
pub const GUEST_VTIMER_INTID: u32 = 27;
/// The guest's EL1 physical timer PPI (PPI 14).
pub const GUEST_PTIMER_INTID: u32 = 30;

const VTIMER_LINE: u8 = 1 << 0;
const PTIMER_LINE: u8 = 1 << 1;
/// The PMU's overflow line, sampled by `vcpu::pmu` in the same byte.
pub const PMU_LINE: u8 = 1 << 2;

/// Sets the vGIC lines of `vcpu`'s two timers from their state now. Only the
/// vCPU's own loop drives these lines, so `vcpu.ppi_lines` knows their
/// levels and only a change costs a vGIC call.
pub fn sample(vm: &Vm, vcpu: &Vcpu, ctx: &VcpuContext) {
    let vcount = cpu::virtual_count().wrapping_sub(ctx.timer.cntvoff);
    let v = sysreg::vtimer_pending(&ctx.timer, vcount);
    let p = sysreg::ptimer_pending(&ctx.timer, timer::now());
    let now = if v { VTIMER_LINE } else { 0 } | if p { PTIMER_LINE } else { 0 };
    let was = vcpu.ppi_lines.load(Ordering::Relaxed);
    vcpu.ppi_lines.store((was & !(VTIMER_LINE | PTIMER_LINE)) | now, Ordering::Relaxed);
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
    super::dispatch::earlier(v, p)
}

/// Before entry: the emulated physical timer has no hardware behind it, so
/// the host's own timer is armed for its deadline (the guest exits then and
/// the next sample raises its interrupt).
pub fn arm_ptimer(t: &TimerState) {
    // A deadline already passed was sampled into the line at the last exit;
    // arming the host's timer for it would only bring the guest straight out.
    if t.cntp_ctl & 0b11 == 0b01 && t.cntp_cval > timer::now() {
        timer::arm_no_later_than(t.cntp_cval);
    }
}

/// The virtual timer's physical PPI, hardware-linked to the guest's.
static VTIMER: LinkedPpi = LinkedPpi::new();

/// From the IRQ handler: the virtual timer's PPI fired while a guest ran and
/// the host acknowledged it without deactivating it.
pub fn physical_fired() {
    VTIMER.fired();
}

/// The guest's virtual timer interrupt is hardware-linked (docs/interrupts.md §6): its
/// list register carries HW = 1 and the physical PPI, so the guest's
/// deactivation deactivates the physical interrupt, with no exit.
pub fn link(vm: &Vm) {
    for i in 0..vm.vcpus.len() {
        vm.vgic.set_hw(i, GUEST_VTIMER_INTID, Some(crate::irq::ids::vtimer_intid()));
    }
}

/// Before entry, after the vGIC flush: the physical PPI is active exactly
/// while this vCPU's virtual timer interrupt is pending or active; and the
/// list register el2 writes when it fires during the run (`vtimer_lr`),
/// worked out again only when the vGIC's configuration changed.
#[inline(always)]
pub fn load(vm: &Vm, vcpu: &Vcpu, ctx: &mut VcpuContext) {
    let line = vcpu.ppi_lines.load(Ordering::Relaxed) & VTIMER_LINE != 0;
    VTIMER.load(vm, vcpu, GUEST_VTIMER_INTID, crate::irq::ids::vtimer_intid, line);
    let gen = vm.vgic.config_gen();
    if ctx.vgic.host_gen != gen {
        refresh_vtimer_lr(vm, vcpu, ctx, gen);
    }
}

/// Out of line: the guest changed its GIC's configuration (or this is the
/// vCPU's first entry since a reset, `host_gen` 0).
#[cold]
#[inline(never)]
fn refresh_vtimer_lr(vm: &Vm, vcpu: &Vcpu, ctx: &mut VcpuContext, gen: u64) {
    ctx.vgic.vtimer_lr =
        if ctx.config.flags & CONFIG_NO_FASTPATH != 0 { 0 } else { vm.vgic.hw_lr(vcpu.index, GUEST_VTIMER_INTID) };
    ctx.vgic.host_gen = gen;
}

/// After exit, before the vGIC sync: el2 acknowledged the physical PPI for
/// the list register it wrote (`el2_lrs`), so it is active on this CPU as
/// if the host had acknowledged it.
pub fn note_el2_injection(ctx: &VcpuContext) {
    if ctx.vgic.el2_lrs != 0 {
        VTIMER.fired();
    }
}
