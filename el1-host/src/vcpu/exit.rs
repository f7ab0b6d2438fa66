//! Exits the host handles (docs/exit.md §7): SMCCC/PSCI, MMIO to the
//! emulated devices, trapped system registers, WFI/WFE, aborts outside the
//! guest's map, and everything else as an UNDEFINED exception for the guest.

use super::mmio::{self, Dispatch};
use super::{inject, psci, sysreg};
use crate::arch::aarch64::{cpu, timer};
use crate::vm::instance::{Vcpu, Vm};
use crate::vm::outcome::EndReason;
use crate::vm::stats::ExitKind;
use alloc::sync::Arc;
use ferrovisor_shared::esr::{Esr, ExceptionClass};
use ferrovisor_shared::vcpu::{ExitReason, VcpuContext};

/// What the run loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The vCPU called `CPU_OFF`: wait for a `CPU_ON`.
    PowerOff,
    /// The vCPU must stop (its VM is ending).
    Stop,
    /// `SYSTEM_RESET` from this vCPU.
    Reset,
    /// WFI with nothing to take while vCPUs wait for CPUs: give this one away.
    Block,
}

pub struct ExitHandler<'a> {
    pub vm: &'a Arc<Vm>,
    pub vcpu: &'a Vcpu,
}

impl ExitHandler<'_> {
    /// Handles one exit. Called with IRQs enabled.
    pub fn handle(&self, ctx: &mut VcpuContext, reason: ExitReason) -> Flow {
        let stats = &self.vm.stats;
        match reason {
            // Taken by the host in the run loop's IRQ window already.
            ExitReason::Irq | ExitReason::Fiq => {
                stats.count(ExitKind::Irq);
                Flow::Continue
            }
            ExitReason::SError => {
                stats.count(ExitKind::SError);
                self.stop(alloc::format!("SError from the guest (ESR {})", Esr(ctx.exit.esr)))
            }
            ExitReason::Sync => self.sync(ctx),
        }
    }

    fn sync(&self, ctx: &mut VcpuContext) -> Flow {
        let stats = &self.vm.stats;
        let esr = Esr(ctx.exit.esr);
        match esr.class() {
            ExceptionClass::Hvc64 => {
                stats.count(ExitKind::Hvc);
                self.smccc(ctx)
            }
            ExceptionClass::Smc64 => {
                stats.count(ExitKind::Smc);
                // A trapped SMC returns to itself.
                super::inject::skip_instruction(ctx);
                self.smccc(ctx)
            }
            ExceptionClass::DataAbortLowerEl => self.data_abort(ctx),
            ExceptionClass::InstAbortLowerEl => {
                stats.count(ExitKind::Abort);
                let ipa = mmio::fault_ipa(&ctx.exit);
                log::warn!(
                    "vm {} vcpu {}: instruction fetch from IPA {ipa:#x}, outside its RAM: external abort",
                    self.vm.name,
                    self.vcpu.index
                );
                inject::inject_instruction_abort(ctx, ctx.exit.far);
                Flow::Continue
            }
            ExceptionClass::SysRegTrap => {
                stats.count(ExitKind::SysReg);
                self.sys_reg(ctx, esr)
            }
            ExceptionClass::WfxTrap => {
                super::inject::skip_instruction(ctx);
                if esr.iss() & 1 == 0 {
                    stats.count(ExitKind::Wfi);
                    self.block_in_wfi(ctx)
                } else {
                    // WFE (trapped only with CONFIG_TRAP_WFE, which the host does not set yet): a hint to yield.
                    stats.count(ExitKind::Wfe);
                    if crate::sched::oversubscribed() {
                        crate::sched::request(self.vcpu, crate::sched::work::WORK_RESCHED);
                    }
                    Flow::Continue
                }
            }
            class => {
                stats.count(ExitKind::Other);
                if self.vm.first_unknown_class(esr.ec()) {
                    log::warn!(
                        "vm {} vcpu {}: {} at {:#x} (ESR {esr}): UNDEFINED for the guest",
                        self.vm.name,
                        self.vcpu.index,
                        class.name(),
                        ctx.regs.pc
                    );
                }
                inject::inject_undef(ctx);
                Flow::Continue
            }
        }
    }

    fn smccc(&self, ctx: &mut VcpuContext) -> Flow {
        let function = ctx.regs.x[0] as u32;
        let args = [ctx.regs.x[1], ctx.regs.x[2], ctx.regs.x[3]];
        match psci::handle(&VmPsci(self.vm), self.vcpu.index, function, args) {
            psci::Outcome::Return(v) => {
                ctx.regs.x[0] = v as u64;
                Flow::Continue
            }
            psci::Outcome::Started { target } => {
                ctx.regs.x[0] = 0;
                crate::sched::kick(&self.vm.vcpus[target]);
                Flow::Continue
            }
            psci::Outcome::CpuOff => Flow::PowerOff,
            psci::Outcome::SystemOff => {
                self.vm.request_end(EndReason::SystemOff);
                Flow::Stop
            }
            psci::Outcome::SystemReset => Flow::Reset,
        }
    }

    /// A stage-2 data abort: the device the VM's bus has at the address
    /// takes it, else the guest gets an external abort.
    fn data_abort(&self, ctx: &mut VcpuContext) -> Flow {
        let vm: &Vm = self.vm;
        match mmio::dispatch(&vm.bus, vm, self.vcpu.index, ctx, &vm.stats) {
            Dispatch::Done { kicks } => {
                if !kicks.is_empty() {
                    vm.kick(kicks);
                }
            }
            Dispatch::NoSyndrome { ipa, pc } => {
                log::warn!(
                    "vm {} vcpu {}: access to IPA {ipa:#x} at {pc:#x} has no syndrome (ISV=0) to emulate: external abort",
                    vm.name,
                    self.vcpu.index,
                );
            }
            Dispatch::Unmapped { ipa, write, pc } => {
                log::warn!(
                    "vm {} vcpu {}: {} IPA {ipa:#x} at {pc:#x}: outside its memory map, external abort",
                    vm.name,
                    self.vcpu.index,
                    if write { "write to" } else { "read from" },
                );
            }
        }
        Flow::Continue
    }

    fn sys_reg(&self, ctx: &mut VcpuContext, esr: Esr) -> Flow {
        let access = esr.sys_reg();
        let value = match access.register {
            31 => 0,
            r => ctx.regs.x[r as usize],
        };
        match sysreg::emulate(&access, value, &mut ctx.timer, timer::now()) {
            sysreg::Outcome::Done(v) => {
                if access.read && access.register != 31 {
                    ctx.regs.x[access.register as usize] = v;
                }
                super::inject::skip_instruction(ctx);
            }
            sysreg::Outcome::Sgi { value, group } if self.vm.gicv3 => {
                let kicks = self.vm.vgic.sgi_write(self.vcpu.index, value, group);
                super::inject::skip_instruction(ctx);
                self.vm.kick(kicks);
            }
            sysreg::Outcome::Sgi { .. } => inject::inject_undef(ctx),
            sysreg::Outcome::Undefined => {
                if self.vm.first_unknown(access.reg) {
                    log::warn!(
                        "vm {} vcpu {}: {} of unknown system register {} at {:#x}: UNDEFINED for the guest \
                         (logged once)",
                        self.vm.name,
                        self.vcpu.index,
                        if access.read { "read" } else { "write" },
                        access.reg,
                        ctx.regs.pc
                    );
                }
                inject::inject_undef(ctx);
            }
        }
        Flow::Continue
    }

    /// WFI: the vCPU waits until it has an interrupt to take (one made
    /// pending, or a timer of its due) or is asked for something. While other
    /// vCPUs wait for a CPU it gives this one away ([`Flow::Block`]).
    fn block_in_wfi(&self, ctx: &mut VcpuContext) -> Flow {
        loop {
            if crate::sched::oversubscribed() {
                return Flow::Block;
            }
            cpu::irq_disable();
            // Non-resident before the check: a vLPI from now on rings the
            // doorbell (which ends the WFI below), and one before shows in
            // PendingLast.
            put_vpe(self.vm, self.vcpu);
            super::timers::sample(self.vm, self.vcpu, ctx);
            if self.wake_from_wfi(ctx) {
                cpu::irq_enable();
                return Flow::Continue;
            }
            if let Some(deadline) = super::timers::next_deadline(&ctx.timer) {
                timer::arm_no_later_than(deadline);
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
        // covers; this is `VpeDoorbell::runnable` with every request bit.
        self.vcpu.entry.pending() != 0
            || self.vcpu.power.is_off()
            || self.vm.vgic.has_pending(self.vcpu.index, &ctx.vgic)
            || self.vcpu.doorbell.pending_last()
    }

    fn stop(&self, why: alloc::string::String) -> Flow {
        log::error!("vm {} vcpu {}: {why}: stopping the VM", self.vm.name, self.vcpu.index);
        self.vm.request_end(EndReason::Stopped(why));
        Flow::Stop
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
