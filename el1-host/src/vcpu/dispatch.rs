//! The exit table (docs/exit.md §7): an exit's exception class picks its
//! handler, and every syndrome field the architecture defines for that class
//! is decoded here. What the handlers need of the VM and the vCPU is
//! [`ExitVm`]; the board's is `vcpu::exit`, the tests' a fake, so the table
//! runs on the development host.

use super::mmio::Dispatch;
use super::{inject, psci, sysreg};
use crate::gic::vgic::Kicks;
use crate::vm::outcome::EndReason;
use crate::vm::ratelimit::{GuestEvent, Suppressed};
use crate::vm::stats::{ExitKind, VmStats};
use alloc::string::String;
use core::num::NonZeroU64;
use ferrovisor_shared::esr::{Esr, ExceptionClass, Wfx};
use ferrovisor_shared::hypercall::SMCCC_NOT_SUPPORTED;
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
    /// WFI or WFIT with nothing to take while vCPUs wait for CPUs: give this
    /// one away until it has something to take or the physical count reaches
    /// `deadline` (a WFIT's timeout). Non-zero, so that the whole `Flow`
    /// fits in two registers: a zero deadline has passed already.
    Block {
        deadline: Option<NonZeroU64>,
    },
}

/// The earlier of two optional deadlines.
#[inline]
pub fn earlier(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The VM and vCPU an exit happened on, as the exit table needs them.
pub trait ExitVm {
    fn name(&self) -> &str;
    fn vcpu_index(&self) -> usize;
    fn stats(&self) -> &VmStats;
    /// A PSCI or other SMCCC call from this vCPU.
    fn psci(&self, function: u32, args: [u64; 3]) -> psci::Outcome;
    /// A stage-2 data abort, through the VM's MMIO bus (`mmio::dispatch`).
    fn mmio(&self, ctx: &mut VcpuContext) -> Dispatch;
    /// The VM has a GICv3, whose CPU interface generates SGIs by system register.
    fn gicv3(&self) -> bool;
    /// An `ICC_SGI*R_EL1` write: the vCPUs to kick.
    fn sgi_write(&self, value: u64, group: u8) -> Kicks;
    /// Makes the vCPUs in `kicks` look at their interrupts.
    fn kick(&self, kicks: Kicks);
    /// Makes vCPU `index` look at its power state (a `CPU_ON` started it).
    fn kick_vcpu(&self, index: usize);
    fn request_end(&self, reason: EndReason);
    /// Whether a line about `event` may be printed now (per VM and kind,
    /// `vm::ratelimit`), and how many like it were left out before.
    fn may_log(&self, event: GuestEvent) -> Option<Suppressed>;
    /// The physical count.
    fn now(&self) -> u64;
    /// WFI or WFIT (stepped past already): returns when the vCPU has an
    /// interrupt to take, is asked for something, or the physical count
    /// reaches `deadline`; or says [`Flow::Block`].
    fn wait(&self, ctx: &mut VcpuContext, deadline: Option<u64>) -> Flow;
    /// WFE (stepped past already): a hint that the vCPU spins on a lock.
    fn spinning(&self);
}

/// Handles one exit of `vm`'s vCPU. Called with IRQs enabled.
#[inline]
pub fn handle(vm: &impl ExitVm, ctx: &mut VcpuContext, reason: ExitReason) -> Flow {
    match reason {
        // Taken by the host in the run loop's IRQ window already.
        ExitReason::Irq | ExitReason::Fiq => {
            vm.stats().count(ExitKind::Irq);
            Flow::Continue
        }
        ExitReason::SError => {
            vm.stats().count(ExitKind::SError);
            stop(vm, alloc::format!("SError from the guest (ESR {})", Esr(ctx.exit.esr)))
        }
        ExitReason::Sync => sync(vm, ctx),
        // An ICC_SGI1R_EL1 write el2 delivered, some of whose targets had
        // left guest mode: their SGIs wait in their mailboxes for them.
        ExitReason::Kick => kick_targets(vm, ctx),
    }
}

/// Rare (a target left guest mode while el2 posted to it), so out of the
/// common exits' line.
#[cold]
#[inline(never)]
fn kick_targets(vm: &impl ExitVm, ctx: &mut VcpuContext) -> Flow {
    vm.stats().count(ExitKind::Gic);
    let mut bits = core::mem::take(&mut ctx.exit.kick);
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        vm.kick_vcpu(i);
    }
    Flow::Continue
}

#[inline]
fn sync(vm: &impl ExitVm, ctx: &mut VcpuContext) -> Flow {
    let stats = vm.stats();
    let esr = Esr(ctx.exit.esr);
    match esr.class() {
        ExceptionClass::Hvc64 => {
            stats.count(ExitKind::Hvc);
            smccc(vm, ctx)
        }
        ExceptionClass::Smc64 => {
            stats.count(ExitKind::Smc);
            // A trapped SMC returns to itself.
            inject::skip_instruction(ctx);
            smccc(vm, ctx)
        }
        ExceptionClass::DataAbortLowerEl => data_abort(vm, ctx),
        ExceptionClass::InstAbortLowerEl => {
            stats.count(ExitKind::Abort);
            let ipa = super::mmio::fault_ipa(&ctx.exit);
            if let Some(left_out) = vm.may_log(GuestEvent::InstAbort) {
                log::warn!(
                    "vm {} vcpu {}: instruction fetch from IPA {ipa:#x}, outside its RAM: external abort{left_out}",
                    vm.name(),
                    vm.vcpu_index()
                );
            }
            inject::inject_instruction_abort(ctx, ctx.exit.far);
            Flow::Continue
        }
        ExceptionClass::SysRegTrap => {
            stats.count(ExitKind::SysReg);
            sys_reg(vm, ctx, esr)
        }
        ExceptionClass::WfxTrap => {
            inject::skip_instruction(ctx);
            wfx(vm, ctx, esr.wfx())
        }
        class => {
            stats.count(ExitKind::Other);
            if let Some(left_out) = vm.may_log(GuestEvent::UnknownClass) {
                log::warn!(
                    "vm {} vcpu {}: {} at {:#x} (ESR {esr}): UNDEFINED for the guest{left_out}",
                    vm.name(),
                    vm.vcpu_index(),
                    class.name(),
                    ctx.regs.pc
                );
            }
            inject::inject_undef(ctx);
            Flow::Continue
        }
    }
}

/// WFI and WFIT wait for an interrupt, WFIT no later than its timeout: the
/// virtual count (`CNTVCT_EL0`) reaching the register's value (Arm ARM C6.2,
/// WFIT). A WFIT whose syndrome names no register completes at once, which
/// the architecture allows any wait to do. WFE and WFET are hints; the host
/// does not trap them unless asked to (`CONFIG_TRAP_WFE`).
#[inline]
fn wfx(vm: &impl ExitVm, ctx: &mut VcpuContext, wfx: Wfx) -> Flow {
    let stats = vm.stats();
    match wfx {
        Wfx::Wfi => {
            stats.count(ExitKind::Wfi);
            vm.wait(ctx, None)
        }
        Wfx::Wfit { timeout: Some(rt) } => {
            stats.count(ExitKind::Wfi);
            let timeout = match rt {
                31 => 0,
                r => ctx.regs.x[r as usize],
            };
            // In physical count: the guest's virtual count is behind it by CNTVOFF.
            let deadline = timeout.saturating_add(ctx.timer.cntvoff);
            if vm.now() >= deadline {
                return Flow::Continue;
            }
            vm.wait(ctx, Some(deadline))
        }
        Wfx::Wfit { timeout: None } => {
            stats.count(ExitKind::Wfi);
            Flow::Continue
        }
        Wfx::Wfe | Wfx::Wfet { .. } => {
            stats.count(ExitKind::Wfe);
            vm.spinning();
            Flow::Continue
        }
    }
}

fn smccc(vm: &impl ExitVm, ctx: &mut VcpuContext) -> Flow {
    // SMCCC calls are `HVC #0` and `SMC #0`; other immediates are not
    // SMCCC's (DEN0028 §2.5): NOT_SUPPORTED, as KVM answers.
    if Esr(ctx.exit.esr).imm16() != 0 {
        ctx.regs.x[0] = SMCCC_NOT_SUPPORTED as u64;
        return Flow::Continue;
    }
    let function = ctx.regs.x[0] as u32;
    let args = [ctx.regs.x[1], ctx.regs.x[2], ctx.regs.x[3]];
    match vm.psci(function, args) {
        psci::Outcome::Return(v) => {
            ctx.regs.x[0] = v as u64;
            Flow::Continue
        }
        psci::Outcome::Started { target } => {
            ctx.regs.x[0] = 0;
            vm.kick_vcpu(target);
            Flow::Continue
        }
        psci::Outcome::CpuOff => Flow::PowerOff,
        psci::Outcome::SystemOff => {
            vm.request_end(EndReason::SystemOff);
            Flow::Stop
        }
        psci::Outcome::SystemReset => Flow::Reset,
    }
}

/// A stage-2 data abort: the device the VM's bus has at the address takes
/// it, else the guest gets an external abort.
fn data_abort(vm: &impl ExitVm, ctx: &mut VcpuContext) -> Flow {
    match vm.mmio(ctx) {
        Dispatch::Done { kicks } => {
            if !kicks.is_empty() {
                vm.kick(kicks);
            }
        }
        Dispatch::NoSyndrome { ipa, pc } => {
            if let Some(left_out) = vm.may_log(GuestEvent::NoSyndrome) {
                log::warn!(
                    "vm {} vcpu {}: access to IPA {ipa:#x} at {pc:#x} has no syndrome (ISV=0) to emulate: external abort{left_out}",
                    vm.name(),
                    vm.vcpu_index(),
                );
            }
        }
        Dispatch::CacheMaintenance { .. } => {}
        Dispatch::Unmapped { ipa, write, pc } => {
            if let Some(left_out) = vm.may_log(GuestEvent::Unmapped) {
                log::warn!(
                    "vm {} vcpu {}: {} IPA {ipa:#x} at {pc:#x}: outside its memory map, external abort{left_out}",
                    vm.name(),
                    vm.vcpu_index(),
                    if write { "write to" } else { "read from" },
                );
            }
        }
    }
    Flow::Continue
}

fn sys_reg(vm: &impl ExitVm, ctx: &mut VcpuContext, esr: Esr) -> Flow {
    let access = esr.sys_reg();
    let value = match access.register {
        31 => 0,
        r => ctx.regs.x[r as usize],
    };
    match sysreg::emulate(&access, value, &mut ctx.timer, vm.now()) {
        sysreg::Outcome::Done(v) => {
            if access.read && access.register != 31 {
                ctx.regs.x[access.register as usize] = v;
            }
            inject::skip_instruction(ctx);
        }
        sysreg::Outcome::Sgi { value, group } if vm.gicv3() => {
            let kicks = vm.sgi_write(value, group);
            inject::skip_instruction(ctx);
            vm.kick(kicks);
        }
        sysreg::Outcome::Sgi { .. } => inject::inject_undef(ctx),
        sysreg::Outcome::Undefined => {
            if let Some(left_out) = vm.may_log(GuestEvent::UnknownSysReg) {
                log::warn!(
                    "vm {} vcpu {}: {} of unknown system register {} at {:#x}: UNDEFINED for the guest{left_out}",
                    vm.name(),
                    vm.vcpu_index(),
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

fn stop(vm: &impl ExitVm, why: String) -> Flow {
    log::error!("vm {} vcpu {}: {why}: stopping the VM", vm.name(), vm.vcpu_index());
    vm.request_end(EndReason::Stopped(why));
    Flow::Stop
}

#[cfg(test)]
mod tests;
