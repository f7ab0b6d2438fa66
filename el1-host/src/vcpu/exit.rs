//! The board's side of the exit table (`vcpu::dispatch`): the VM and vCPU
//! an exit happened on, and WFI's wait with IRQs masked.

use super::dispatch::{self, earlier, ExitVm, Flow};
use super::mmio::{self, Dispatch};
use super::psci;
use crate::arch::aarch64::{cpu, timer};
use crate::gic::vgic::Kicks;
use crate::vm::instance::{Vcpu, Vm};
use crate::vm::outcome::EndReason;
use crate::vm::ratelimit::{GuestEvent, Suppressed};
use crate::vm::stats::VmStats;
use alloc::sync::Arc;
use core::num::NonZeroU64;
use ferrovisor_shared::vcpu::{ExitReason, VcpuContext};

pub struct ExitHandler<'a> {
    pub vm: &'a Arc<Vm>,
    pub vcpu: &'a Vcpu,
}

impl ExitHandler<'_> {
    /// Handles one exit. Called with IRQs enabled.
    #[inline]
    pub fn handle(&self, ctx: &mut VcpuContext, reason: ExitReason) -> Flow {
        dispatch::handle(self, ctx, reason)
    }

    /// WFI (and WFIT until `deadline`): the vCPU waits until it has an
    /// interrupt to take (one made pending, or a timer of its due) or is
    /// asked for something. While other vCPUs wait for a CPU it gives this
    /// one away ([`Flow::Block`]).
    #[inline(always)]
    fn block_in_wfi(&self, ctx: &mut VcpuContext, deadline: Option<u64>) -> Flow {
        loop {
            if crate::sched::oversubscribed() {
                return Flow::Block { deadline: deadline.and_then(NonZeroU64::new) };
            }
            cpu::irq_disable();
            // Non-resident before the check: a vLPI from now on rings the
            // doorbell (which ends the WFI below), and one before shows in
            // PendingLast.
            put_vpe(self.vm, self.vcpu);
            super::timers::sample(self.vm, self.vcpu, ctx);
            if self.wake_from_wfi(ctx) || deadline.is_some_and(|d| timer::now() >= d) {
                cpu::irq_enable();
                return Flow::Continue;
            }
            if let Some(wake) = earlier(super::timers::next_deadline(&ctx.timer), deadline) {
                timer::arm_no_later_than(wake);
            }
            // A wake-up between the check and here leaves its IRQ pending,
            // which ends the WFI even with IRQs masked.
            crate::sched::idle_wait();
            cpu::irq_enable();
        }
    }

    /// Whether a vCPU in WFI must go back to the guest.
    pub fn wake_from_wfi(&self, ctx: &VcpuContext) -> bool {
        // The requests first, with acquire: a doorbell's `pending_last` is
        // published by its request (docs/interrupts.md §11), which `pending()` already
        // covers; this is `VpeDoorbell::runnable` with the request bits
        // that are wake-up events (`ends_wfi`).
        crate::sched::work::ends_wfi(self.vcpu.entry.pending())
            || self.vcpu.power.is_off()
            || self.vm.vgic.has_pending(self.vcpu.index, &ctx.vgic)
            || self.vm.vgic.has_posted(self.vcpu.index)
            || self.vcpu.doorbell.pending_last()
    }
}

impl ExitVm for ExitHandler<'_> {
    fn name(&self) -> &str {
        &self.vm.name
    }

    #[inline]
    fn vcpu_index(&self) -> usize {
        self.vcpu.index
    }

    #[inline]
    fn stats(&self) -> &VmStats {
        &self.vm.stats
    }

    fn psci(&self, function: u32, args: [u64; 3]) -> psci::Outcome {
        psci::handle(&VmPsci(self.vm), self.vcpu.index, function, args)
    }

    #[inline]
    fn mmio(&self, ctx: &mut VcpuContext) -> Dispatch {
        let vm: &Vm = self.vm;
        mmio::dispatch(&vm.bus, vm, self.vcpu.index, ctx, &vm.stats)
    }

    fn gicv3(&self) -> bool {
        self.vm.gicv3
    }

    fn sgi_write(&self, value: u64, group: u8) -> Kicks {
        self.vm.vgic.sgi_write(self.vcpu.index, value, group)
    }

    #[inline]
    fn kick(&self, kicks: Kicks) {
        self.vm.kick(kicks);
    }

    fn kick_vcpu(&self, index: usize) {
        if let Some(v) = self.vm.vcpus.get(index) {
            crate::sched::kick(v);
        }
    }

    fn request_end(&self, reason: EndReason) {
        self.vm.request_end(reason);
    }

    fn may_log(&self, event: GuestEvent) -> Option<Suppressed> {
        self.vm.may_log(event)
    }

    fn now(&self) -> u64 {
        timer::now()
    }

    #[inline(always)]
    fn wait(&self, ctx: &mut VcpuContext, deadline: Option<u64>) -> Flow {
        self.block_in_wfi(ctx, deadline)
    }

    fn spinning(&self) {
        if crate::sched::oversubscribed() {
            crate::sched::request(self.vcpu, crate::sched::work::WORK_RESCHED);
        }
    }
}

/// The VM as PSCI sees it.
struct VmPsci<'a>(&'a Vm);

impl psci::PsciVm for VmPsci<'_> {
    fn vcpu_count(&self) -> usize {
        self.0.vcpus.len()
    }

    fn mpidr(&self, index: usize) -> u64 {
        self.0.vcpus[index].mpidr
    }

    fn power(&self, index: usize) -> &psci::VcpuPower {
        &self.0.vcpus[index].power
    }

    fn ram_contains(&self, ipa: u64) -> bool {
        self.0.ram.contains(ipa, 4)
    }
}

/// Makes `vcpu`'s vPE non-resident on this CPU (GICv4), keeping the GIC's
/// word on whether a vLPI is pending.
#[inline(always)]
pub(super) fn put_vpe(vm: &Vm, vcpu: &Vcpu) {
    if let Some(direct) = &vm.direct {
        put_vpe_direct(direct, vcpu);
    }
}

/// Out of line: most boards have no GICv4, and the WFI and entry paths
/// should not pay for it.
#[inline(never)]
fn put_vpe_direct(direct: &crate::gic::vlpi::DirectVm, vcpu: &Vcpu) {
    if direct.put(vcpu.index, cpu::current()) {
        vcpu.doorbell.note_pending_last(true);
    }
}

/// Makes `vcpu`'s vPE resident on this CPU (GICv4): from then on the GIC
/// delivers its vLPIs itself, so a `pending_last` is consumed.
#[inline(never)]
pub(super) fn load_vpe(direct: &crate::gic::vlpi::DirectVm, vcpu: &Vcpu) {
    direct.load(vcpu.index, cpu::current());
    if vcpu.doorbell.pending_last() {
        vcpu.doorbell.take_pending_last();
    }
}
