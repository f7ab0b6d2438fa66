//! Guest PPIs hardware-linked to a physical PPI (the virtual timer's, the
//! PMU's): the list register carries HW = 1 and the physical INTID, so the
//! guest's deactivation deactivates the physical interrupt with no exit
//! (IHI 0069 §4.2.3 / IHI 0048 §5.4.2). The host acknowledges the physical
//! PPI when it fires for a guest and leaves it active; while it is active it
//! cannot fire again, so a level that stays high does not bring the guest
//! straight back out before it has handled its copy.

use crate::arch::aarch64::cpu;
use crate::vm::instance::{Vcpu, Vm};
use core::sync::atomic::{AtomicBool, Ordering};
use ferrovisor_shared::boot::MAX_CPUS;

/// Whether each CPU's physical PPI is active, as far as the host knows: set
/// when the host acknowledges it for a guest, and by [`LinkedPpi::load`]. A
/// guest's deactivation clears the hardware state behind the host's back;
/// `load` then writes the state again, which is harmless.
pub struct LinkedPpi {
    active: [AtomicBool; MAX_CPUS],
}

impl LinkedPpi {
    pub const fn new() -> Self {
        Self { active: [const { AtomicBool::new(false) }; MAX_CPUS] }
    }

    /// From the IRQ handler: the physical PPI fired while a guest ran and
    /// the host acknowledged it without deactivating it.
    #[inline]
    pub fn fired(&self) {
        self.active[cpu::current() % MAX_CPUS].store(true, Ordering::Relaxed);
    }

    /// Before entry, after the vGIC flush: the physical PPI `pintid()` is
    /// active exactly while `vcpu`'s `intid` is pending or active, so a level
    /// still high does not bring the guest straight back out, and the state
    /// another vCPU left on this CPU does not leak into this one. `line` is
    /// the level the host last sampled for `intid`.
    #[inline]
    pub fn load(&self, vm: &Vm, vcpu: &Vcpu, intid: u32, pintid: impl FnOnce() -> u32, line: bool) {
        let slot = &self.active[cpu::current() % MAX_CPUS];
        let was = slot.load(Ordering::Relaxed);
        if !line && !was {
            // Nothing pending (the line is low) and nothing left active here:
            // an interrupt still active in the guest is caught at the next exit.
            return;
        }
        let want = vm.vgic.is_pending_or_active(vcpu.index, intid);
        if want != was || want {
            crate::gic::set_private_active(pintid(), want);
            slot.store(want, Ordering::Relaxed);
        }
    }
}
