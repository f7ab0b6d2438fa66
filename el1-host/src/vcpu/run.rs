//! A vCPU's host thread: the run loop of `sched::work` (docs/run-loop.md) with the
//! real world switch, exit handling, power states and VM-wide operations.

use super::dispatch::{earlier, Flow as ExitFlow};
use super::exit::{load_vpe, put_vpe, ExitHandler};
use crate::arch::aarch64::{cpu, hyp, timer};
use crate::rcu::RCU;
use crate::sched::work::{self, EntryHw, Flow, GuestVcpu, RunOutcome};
use crate::vm::instance::{Vcpu, Vm};
use crate::vm::outcome::EndReason;
use crate::vm::registry;
use alloc::sync::Arc;
use core::num::NonZeroU64;
use core::sync::atomic::Ordering;
use ferrovisor_shared::vcpu::{ExitReason, VcpuContext, ACKED_VALID};

/// IRQ masking and the clock of the CPU the loop runs on.
struct Hw;

impl EntryHw for Hw {
    fn irqs_disabled(&self) -> bool {
        !cpu::irqs_enabled()
    }

    fn disable_irqs(&self) {
        cpu::irq_disable();
    }

    fn enable_irqs(&self) {
        cpu::irq_enable();
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    }

    fn now(&self) -> u64 {
        timer::now()
    }
}

/// Why a run ends other than a stop request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Done {
    Stop,
    /// Blocked with nothing to do: the CPU goes to another vCPU.
    Block,
    /// Time slice over: the CPU goes to another vCPU if one waits.
    Yield,
}

/// How a vCPU's turn on a CPU ended, for the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// The vCPU stopped for good.
    Stopped,
    /// It blocked (WFI or powered off) and went to sleep; a wake-up makes it
    /// runnable again.
    Slept,
    /// It can run again at once (time slice over).
    Preempted,
}

/// List registers of this machine's GIC virtual CPU interface.
static NR_LRS: spin::Once<usize> = spin::Once::new();

fn nr_lrs() -> usize {
    *NR_LRS.call_once(hyp::vgic_list_regs)
}

struct Runner<'a> {
    vm: &'a Arc<Vm>,
    vcpu: &'a Vcpu,
}

impl Runner<'_> {
    fn ctx(&mut self) -> &mut VcpuContext {
        // SAFETY: this CPU claimed the vCPU (see `sched::cpu_main`); nobody
        // else touches its context while the claim holds.
        unsafe { &mut *self.vcpu.ctx.get() }
    }

    /// Waits with IRQs on until `CPU_ON` gives this vCPU an entry point, or
    /// it is asked to stop.
    fn wait_for_power_on(&mut self) -> Flow<Done> {
        loop {
            if self.take_start() {
                return Flow::Continue;
            }
            if self.vcpu.entry.pending() != 0 {
                // Work only the loop consumes (a stop, a reschedule, a
                // notification): spinning here until it goes away would never
                // end, and would hold up RCU grace periods meanwhile.
                return Flow::Continue;
            }
            if crate::sched::oversubscribed() {
                let vcpu = self.vcpu;
                if sleep(vcpu, || !vcpu.power.is_off() || vcpu.entry.pending() != 0, None) {
                    return Flow::Done(Done::Block);
                }
                continue;
            }
            cpu::irq_disable();
            if self.vcpu.power.is_off() && self.vcpu.entry.pending() == 0 {
                crate::sched::idle_wait();
            }
            cpu::irq_enable();
        }
    }

    /// Resets the context to the entry point of a `CPU_ON` that started this
    /// vCPU, if one did since it last looked.
    #[inline(always)]
    fn take_start(&mut self) -> bool {
        let Some((pc, context_id)) = self.vcpu.power.take_start() else { return false };
        self.start_at(pc, context_id);
        true
    }

    /// The reset itself, out of line: `prepare` looks for a start at every
    /// entry, and inlined or called whole the context's reset made each
    /// look pay for its stack frame.
    #[cold]
    #[inline(never)]
    fn start_at(&mut self, pc: u64, context_id: u64) {
        let vm = self.vm;
        let ctx = self.ctx();
        let config = ctx.config;
        let counters = ctx.counters;
        *ctx = VcpuContext::reset(pc, context_id, config, vm.cntvoff);
        ctx.counters = counters;
    }

    /// WFI with nothing to take while other vCPUs want CPUs: sleep until an
    /// interrupt or a timer of this vCPU (or any request) needs it, or a
    /// WFIT's `timeout` (physical count) passes.
    fn block_in_wfi(&mut self, timeout: Option<u64>) -> Flow<Done> {
        let (vm, vcpu) = (self.vm, self.vcpu);
        // Non-resident before the check: a vLPI from now on rings the
        // doorbell, and one before shows in PendingLast.
        put_vpe(vm, vcpu);
        let ctx: &VcpuContext = self.ctx();
        super::timers::sample(vm, vcpu, ctx);
        let deadline = earlier(super::timers::next_deadline(&ctx.timer), timeout);
        let handler = ExitHandler { vm, vcpu };
        if sleep(vcpu, || handler.wake_from_wfi(ctx), deadline) {
            Flow::Done(Done::Block)
        } else {
            Flow::Continue
        }
    }

    /// `SYSTEM_RESET`: park the other vCPUs, reload the images (which raises
    /// the deferred cache maintenance again), restart at the entry point.
    fn reset(&mut self) {
        let me = self.vcpu.index;
        // Each sees it is off at its next pass through `prepare`.
        crate::sched::pause_all(self.vm.vcpus.iter(), Some(self.vcpu), |v| v.power.force_off());
        self.vm.reload();
        let (entry, dtb) = self.vm.boot_entry();
        let vm = self.vm;
        let ctx = self.ctx();
        let (config, counters) = (ctx.config, ctx.counters);
        *ctx = VcpuContext::reset(entry, dtb, config, vm.cntvoff);
        ctx.counters = counters;
        log::info!("vm {}: reset by vcpu {me}", vm.name);
    }
}

impl GuestVcpu for Runner<'_> {
    type Exit = Result<ExitReason, i64>;
    type Done = Done;

    fn handle_work(&mut self, bits: u32) -> Flow<Done> {
        // NOTIFY: the loop's next pass through `prepare` looks at what changed
        // (interrupts made pending are flushed into the list registers there).
        if bits & work::WORK_RESCHED != 0 {
            return Flow::Done(Done::Yield);
        }
        Flow::Continue
    }

    fn prepare(&mut self) -> Flow<Done> {
        // A CPU_ON that arrived while this vCPU slept elsewhere: start it.
        self.take_start();
        if self.vcpu.power.is_off() {
            if let Flow::Done(d) = self.wait_for_power_on() {
                return Flow::Done(d);
            }
            if self.vcpu.power.is_off() {
                return Flow::Continue;
            }
        }
        self.vm.perform_pending_cmo();
        let refresh = crate::vm::vmid::vmids().refresh(&self.vm.vmid, force_all_out_and_flush);
        let (vm, vcpu) = (self.vm, self.vcpu);
        let ctx = self.ctx();
        ctx.config.vmid = refresh.vmid.into();
        // (List registers filled on an earlier pass that did not enter are
        // folded back by the flush itself.)
        vm.vgic.flush(vcpu.index, &mut ctx.vgic, nr_lrs());
        super::timers::load(vm, vcpu, ctx);
        super::pmu::load(vm, vcpu, ctx);
        super::timers::arm_ptimer(&ctx.timer);
        if let Some(direct) = &vm.direct {
            load_vpe(direct, vcpu);
        }
        Flow::Continue
    }

    fn requests_pending(&self) -> bool {
        self.vcpu.power.is_off() || self.vm.cmo.is_pending() || !crate::vm::vmid::vmids().is_current(&self.vm.vmid)
    }

    fn enter(&mut self) -> Self::Exit {
        // SAFETY: IRQs are masked (the loop's contract), the context is ours,
        // and its stage-2 root is this VM's live table.
        unsafe { hyp::vcpu_run(self.ctx()) }
    }

    fn handle_exit(&mut self, exit: Self::Exit) -> Flow<Done> {
        let reason = match exit {
            Ok(r) => r,
            Err(code) => {
                log::error!("vm {} vcpu {}: el2 refused to run it ({code})", self.vm.name, self.vcpu.index);
                self.vm.request_end(EndReason::Stopped(alloc::format!("el2 refused to run vcpu ({code})")));
                return Flow::Done(Done::Stop);
            }
        };
        let vm = self.vm;
        let vcpu = self.vcpu;
        let ctx = self.ctx();
        if ctx.exit.acked | ctx.vgic.el2_lrs != 0 {
            el2_delivered(ctx);
        }
        vm.vgic.sync(vcpu.index, &mut ctx.vgic);
        vm.vgic.take_posted(vcpu.index);
        vm.kick(vm.vgic.take_kicks());
        super::timers::sample(vm, vcpu, ctx);
        super::pmu::sample(vm, vcpu, ctx);
        let handler = ExitHandler { vm, vcpu };
        match handler.handle(ctx, reason) {
            ExitFlow::Continue => Flow::Continue,
            ExitFlow::PowerOff => Flow::Continue,
            ExitFlow::Stop => Flow::Done(Done::Stop),
            ExitFlow::Block { deadline } => self.block_in_wfi(deadline.map(NonZeroU64::get)),
            ExitFlow::Reset => {
                self.reset();
                Flow::Continue
            }
        }
    }
}

/// After an exit in a run in which el2 acknowledged an interrupt itself:
/// one it left to the host, or the virtual timer's PPI it delivered.
#[cold]
#[inline(never)]
fn el2_delivered(ctx: &mut VcpuContext) {
    if ctx.exit.acked & ACKED_VALID != 0 {
        let iar = core::mem::take(&mut ctx.exit.acked) as u32;
        // As from the IRQ vector: masked, the handlers are not re-entrant.
        cpu::irq_disable();
        crate::irq::handle_acked(iar);
        cpu::irq_enable();
    }
    super::timers::note_el2_injection(ctx);
}

/// Gives `vcpu`'s CPU away unless `runnable` (checked after announcing the
/// block, so a concurrent wake-up is never lost: `sched::wakeup`).
/// `deadline` is when a scheduler must wake it anyway (its timers). Returns
/// true if the vCPU is to sleep.
fn sleep(vcpu: &Vcpu, runnable: impl FnOnce() -> bool, deadline: Option<u64>) -> bool {
    vcpu.slot.sleep(deadline, crate::sched::note_deadline, runnable)
}

/// VMID roll-over: every vCPU of every VM leaves guest mode (a kick, then
/// waiting until it is outside), then every guest TLB entry goes, before any
/// VMID of the new generation is handed out (see `vm::vmid`).
fn force_all_out_and_flush() {
    let me = cpu::current();
    let guard = RCU.read_lock(me);
    let vms: alloc::vec::Vec<Arc<Vm>> = registry::list().read(&guard).to_vec();
    drop(guard);
    // The vCPU calling this is outside guest mode already (in `prepare`):
    // its own request only makes it look again.
    for vm in &vms {
        crate::sched::pause_all(vm.vcpus.iter(), None, |_| {});
    }
    drop(vms);
    hyp::tlb_flush_all();
}

/// Runs vCPU `index` of `vm` on this CPU (which claimed it) until it stops,
/// sleeps or is preempted; the last vCPU of a VM to stop ends it.
pub fn run(vm: Arc<Vm>, index: usize) -> Turn {
    let vcpu = &vm.vcpus[index];
    let me = cpu::current();
    crate::sched::set_current(Some(&vcpu.entry));
    let outcome = {
        let mut runner = Runner { vm: &vm, vcpu };
        work::run(&mut runner, &vcpu.entry, &Hw, &RCU, me)
    };
    crate::sched::set_current(None);
    put_vpe(&vm, vcpu);
    match outcome {
        RunOutcome::Done(Done::Block) => return Turn::Slept,
        RunOutcome::Done(Done::Yield) => return Turn::Preempted,
        RunOutcome::Interrupted => {
            vm.stats.interrupted.fetch_add(1, Ordering::Relaxed);
        }
        RunOutcome::Done(Done::Stop) => {}
    }
    let s = vcpu.entry.stats();
    vm.stats.guest_ticks.fetch_add(s.guest_ticks, Ordering::Relaxed);
    vm.stats.guest_time_us.fetch_add(s.guest_time * 1_000_000 / timer::frequency().max(1), Ordering::Relaxed);
    if !vm.ending() {
        vm.request_end(EndReason::Stopped(alloc::format!("vcpu {index} stopped")));
    }
    vcpu.slot.stop();
    crate::sched::vcpu_gone();
    if vm.vcpu_stopped(vcpu) {
        registry::finish(vm);
    }
    Turn::Stopped
}
