//! The guest's PMUv3 (docs/pmu.md): el2 passes the hardware PMU through and
//! switches its state with the vCPU (`el2/src/pmu.rs`); here the host turns
//! the saved state into the guest's overflow interrupt, virtual PPI 7
//! (INTID 23, `arm,armv8-pmuv3` in its device tree). The line is sampled at
//! every exit, as the timers' are. Where the board's PMU interrupt is a PPI
//! the host knows (QEMU virt: INTID 23), the guest's is hardware-linked to
//! it, so an overflow while the guest runs brings it out at once and the
//! guest's deactivation re-arms the physical one; elsewhere (the Pi 4's PMU
//! interrupts are SPIs) the overflow shows at the next exit.

use super::linked::LinkedPpi;
use super::timers::PMU_LINE;
use crate::vm::instance::{Vcpu, Vm};
use core::sync::atomic::Ordering;
use ferrovisor_shared::vcpu::VcpuContext;

/// The guest's PMU overflow interrupt (PPI 7).
pub const GUEST_PMU_INTID: u32 = 16 + crate::vm::fdt::PMU_PPI;

static PHYS: LinkedPpi = LinkedPpi::new();

/// From the IRQ handler: the PMU's PPI fired while a guest ran; the host
/// acknowledged it and leaves it active for the guest to deactivate.
pub fn physical_fired() {
    PHYS.fired();
}

/// At VM creation: hardware-links each vCPU's PMU interrupt where the
/// board's is a known PPI.
pub fn link(vm: &Vm) {
    if let Some(p) = crate::irq::ids::pmu_intid() {
        for i in 0..vm.vcpus.len() {
            vm.vgic.set_hw(i, GUEST_PMU_INTID, Some(p));
        }
    }
}

/// At an exit: the guest's overflow interrupt request from the state el2
/// saved.
/// A PMU the guest never touched (most guests) costs a test of its state.
#[inline]
pub fn sample(vm: &Vm, vcpu: &Vcpu, ctx: &VcpuContext) {
    let was = vcpu.ppi_lines.load(Ordering::Relaxed);
    if ctx.pmu.active == 0 && was & PMU_LINE == 0 {
        return;
    }
    let level = ctx.pmu.overflow_irq();
    if (was & PMU_LINE != 0) != level {
        vcpu.ppi_lines.store(if level { was | PMU_LINE } else { was & !PMU_LINE }, Ordering::Relaxed);
        let _ = vm.vgic.set_line(vcpu.index, GUEST_PMU_INTID, level);
    }
}

/// Before entry, after the vGIC flush: the physical PPI's active state
/// follows this vCPU's interrupt.
/// The physical PPI another vCPU left active here is harmless to a vCPU
/// whose PMU is not active (its counters are stopped and its line low), and
/// is put right when a vCPU that uses its PMU comes back.
#[inline]
pub fn load(vm: &Vm, vcpu: &Vcpu, ctx: &VcpuContext) {
    if ctx.pmu.active == 0 {
        return;
    }
    // Without a linked PPI an overflow shows only at an exit: the host tick
    // makes one on a CPU that would otherwise take none.
    crate::sched::poll_exits(crate::irq::ids::pmu_intid().is_none());
    if let Some(p) = crate::irq::ids::pmu_intid() {
        let line = vcpu.ppi_lines.load(Ordering::Relaxed) & PMU_LINE != 0;
        PHYS.load(vm, vcpu, GUEST_PMU_INTID, || p, line);
    }
}
