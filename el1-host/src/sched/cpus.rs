//! What the rest of the host asks of the schedulers, apart from their loop
//! (`cpu_loop`): requests and kicks, bringing vCPUs out of guest mode, which
//! vCPU a CPU runs, the count of live vCPUs and the earliest deadline of a
//! sleeping one, the host timer (a tick only where time-slicing needs one,
//! `sched::tick`), and idling. It depends on the vCPU's state alone, never
//! on the VMs or the run loop.

use super::tick::{self, CpuTick};
use crate::arch::aarch64::{cpu, timer};
use crate::rcu::RCU;
use crate::sched::wakeup::take_idle_cpu;
use crate::sched::work::{VcpuEntry, WORK_RESCHED};
use crate::vcpu::state::Vcpu;
use crate::{gic, irq::ids, smp};
use core::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use ferrovisor_shared::boot::MAX_CPUS;

/// Sets `bits` in the vCPU's work word (release) and kicks it.
pub fn request(vcpu: &Vcpu, bits: u32) {
    vcpu.entry.raise(bits);
    kick(vcpu);
}

/// Brings every vCPU of `vcpus` but `except` out of guest mode and waits
/// until each is outside it (or has stopped for good): what a guest reset and
/// a VMID roll-over need before they change what those vCPUs run with.
/// `prepare` runs on each first (a reset powers them off); each then gets
/// [`work::WORK_NOTIFY`], so its next pass through the run loop's `prepare`
/// sees the change. The caller holds no RCU read guard, and reports
/// quiescent states while it waits: a vCPU it waits for may itself be
/// waiting for a grace period on its way out (docs/run-loop.md).
pub fn pause_all<'a>(vcpus: impl Iterator<Item = &'a Vcpu> + Clone, except: Option<&Vcpu>, prepare: impl Fn(&Vcpu)) {
    let others = vcpus.filter(|v| !except.is_some_and(|e| core::ptr::eq(*v, e)));
    for v in others.clone() {
        prepare(v);
        request(v, super::work::WORK_NOTIFY);
    }
    let me = cpu::current();
    for v in others {
        while v.entry.mode() != super::work::Mode::Outside && !v.slot.is_stopped() {
            RCU.note_quiescent(me);
            core::hint::spin_loop();
        }
    }
}

/// vCPUs that have not stopped, across all VMs.
static LIVE_VCPUS: AtomicUsize = AtomicUsize::new(0);
/// The earliest deadline of a sleeping vCPU's timers (physical count).
static NEXT_WAKE: AtomicU64 = AtomicU64::new(u64::MAX);

/// Counts wake-ups that found a vCPU a CPU (docs/run-loop.md §9): an idle
/// CPU that sees it change after marking itself idle scans again.
static WAKE_SEQ: AtomicU64 = AtomicU64::new(0);

/// One CPU's host timer: its side of the tick's kick pairing, and the tick
/// it armed ([`u64::MAX`]: none). Only the CPU itself writes `tick_at`, with
/// IRQs masked.
struct CpuTimer {
    tick: CpuTick,
    tick_at: AtomicU64,
    /// The vCPU this CPU runs needs the tick to exit ([`poll_exits`]).
    poll: AtomicBool,
}

static TIMERS: [CpuTimer; MAX_CPUS] =
    [const { CpuTimer { tick: CpuTick::new(), tick_at: AtomicU64::new(u64::MAX), poll: AtomicBool::new(false) } };
        MAX_CPUS];

/// Records which vCPU this CPU runs (`None`: none). A turn that starts
/// settles the CPU's timer: under oversubscription it needs the tick.
pub fn set_current(entry: Option<&VcpuEntry>) {
    let p = entry.map_or(core::ptr::null_mut(), |e| e as *const VcpuEntry as *mut VcpuEntry);
    smp::this_cpu().current_vcpu.store(p, Ordering::Release);
    if entry.is_some() {
        settle_here();
    } else {
        // The next vCPU asks again; the tick goes at the next one taken.
        this_timer().poll.store(false, Ordering::Relaxed);
    }
}

/// From the run loop before each entry (IRQs masked): whether the vCPU it
/// runs needs a tick to exit at all (a PMU overflow the host sees only at
/// an exit, `vcpu::pmu`). Turning it on arms the tick now; it stays on for
/// the rest of the turn.
pub fn poll_exits(on: bool) {
    let t = this_timer();
    if on && !t.poll.swap(true, Ordering::Relaxed) {
        settle_here();
    }
}

fn this_timer() -> &'static CpuTimer {
    &TIMERS[cpu::current() % MAX_CPUS]
}

/// The tick's inputs on this CPU now.
fn tick_inputs(t: &CpuTimer) -> tick::Inputs {
    tick::Inputs {
        now: timer::now(),
        period: timer::ticks_from_us(ids::TICK_US),
        oversubscribed: oversubscribed(),
        running: !smp::this_cpu().current_vcpu.load(Ordering::Acquire).is_null(),
        poll: t.poll.load(Ordering::Relaxed),
        sleeper: next_wake(),
        armed_tick: Some(t.tick_at.load(Ordering::Relaxed)).filter(|&t| t != u64::MAX),
    }
}

/// Outside the timer's handler (at an SGI, at a turn's start): the timer
/// may be armed for a deadline of the run loop's, so it is only brought
/// forward, never put back or off.
fn settle_here() {
    let masked = !cpu::irqs_enabled();
    cpu::irq_disable();
    let t = this_timer();
    let plan = t.tick.settle(|| tick_inputs(t));
    if let Some(at) = plan.tick {
        t.tick_at.store(at, Ordering::Relaxed);
    }
    if let Some(at) = plan.at {
        timer::arm_no_later_than(at);
    }
    if !masked {
        cpu::irq_enable();
    }
}

/// The global state changed in a way a tickless CPU must see (vCPUs now
/// outnumber CPUs, a sleeper's deadline came earlier): every other tickless
/// CPU gets an SGI and settles again there (`sched::tick`'s kick pairing),
/// and this one settles now.
fn tickless_cpus_look_again() {
    tick::changed();
    let me = cpu::current();
    for (c, t) in TIMERS.iter().enumerate() {
        if c != me && smp::CPUS[c].online.load(Ordering::Acquire) && t.tick.tickless() {
            gic::send_sgi(ids::SGI_TICK, c);
        }
    }
    settle_here();
}

/// From the `SGI_TICK` handler: whoever sent it may have changed what this
/// CPU's timer must do.
pub fn sgi_taken() {
    settle_here();
}

/// `n` vCPUs join the schedulers' lists.
pub fn vcpus_added(n: usize) {
    LIVE_VCPUS.fetch_add(n, Ordering::AcqRel);
    if oversubscribed() {
        tickless_cpus_look_again();
    }
}

/// A vCPU stopped for good.
pub fn vcpu_gone() {
    LIVE_VCPUS.fetch_sub(1, Ordering::AcqRel);
}

/// Whether vCPUs outnumber the online CPUs: then blocked vCPUs give their
/// CPUs away and running ones are time-sliced.
pub fn oversubscribed() -> bool {
    LIVE_VCPUS.load(Ordering::Acquire) > smp::online_count()
}

/// A sleeping vCPU must run again by physical count `deadline`. An earlier
/// deadline than any noted reaches the tickless CPUs (one of them, idle or
/// not, then arms its timer for it).
pub fn note_deadline(deadline: u64) {
    if NEXT_WAKE.fetch_min(deadline, Ordering::AcqRel) > deadline {
        tickless_cpus_look_again();
    }
}

/// From the host timer's interrupt handler (IRQs masked). If it was the
/// tick, it counts as one taken by this CPU's vCPU if that is in its
/// guest-time window, and ends its time slice when others wait (as a
/// sleeper's deadline passed does then, so the sleeper runs soon). Sleepers
/// whose deadline passed are woken by the handler and idle CPUs told: a CPU
/// whose vCPU has it to itself, or waits in `WFI` on it, does not go back to
/// the schedulers' scan. Then the timer is armed for the next tick or deadline
/// ([`tick::plan`]), or turned off: a CPU that runs one vCPU with nobody
/// waiting takes no tick (the run loop arms its own deadlines again before
/// the next entry or wait). True if a sleeper's deadline has passed: the
/// caller then wakes the sleepers due (`sched::wake_due_sleepers`), whose
/// later deadlines are armed again as they are noted.
#[must_use = "true: the sleepers due must be woken"]
pub fn timer_fired() -> bool {
    let t = this_timer();
    let now = timer::now();
    let was_tick = tick::is_tick(Some(t.tick_at.load(Ordering::Relaxed)).filter(|&t| t != u64::MAX), now);
    let p = smp::this_cpu().current_vcpu.load(Ordering::Acquire);
    // SAFETY: set by `set_current` from the vCPU's own loop on this CPU, which
    // clears it before the vCPU (and its VM) can go away; the handler runs on
    // the same CPU with that loop interrupted.
    if let Some(entry) = unsafe { p.as_ref() } {
        if was_tick {
            entry.account_tick();
        }
        if (was_tick || next_wake() <= now) && oversubscribed() {
            // This CPU runs it: the run loop sees the bit before it enters.
            entry.raise(WORK_RESCHED);
        }
    }
    let sleepers_due = next_wake() <= now;
    let plan = t.tick.settle(|| tick_inputs(t));
    t.tick_at.store(plan.tick.unwrap_or(u64::MAX), Ordering::Relaxed);
    match plan.at {
        Some(at) => timer::arm_at(at),
        None => timer::disarm(),
    }
    sleepers_due
}

/// Makes the vCPU look at its work: an SGI to the CPU running it ends its
/// guest run or its wait (sent whatever mode the vCPU is in, so a vCPU
/// between its last check and guest entry still leaves at once: the SGI
/// stays pending and exits the guest); a sleeping vCPU is woken and an idle
/// CPU told to pick it up. The fence orders the request before both.
pub fn kick(vcpu: &Vcpu) {
    core::sync::atomic::fence(Ordering::SeqCst);
    let me = cpu::current();
    if let Some(on) = vcpu.slot.running_on().filter(|&c| c != me) {
        gic::send_sgi(ids::SGI_PING, on);
    }
    if vcpu.slot.wake() {
        wake_an_idle_cpu(vcpu.slot.affinity());
    }
}

/// A CPU released `vcpu` while it can run (preempted, or woken before it
/// left): an idle CPU is told, as for a wake-up. The fence orders the
/// release before the look at its state, against a waker's fence after its
/// wake-up: one of them tells an idle CPU. Without it the vCPU would wait
/// for a scan that no tick brings any more.
pub fn offer(vcpu: &Vcpu) {
    core::sync::atomic::fence(Ordering::SeqCst);
    if vcpu.slot.claimable() {
        wake_an_idle_cpu(vcpu.slot.affinity());
    }
}

/// Tells an idle CPU (or the one `affinity` pins the vCPU to) that a vCPU
/// can run.
pub(super) fn wake_an_idle_cpu(affinity: Option<usize>) {
    WAKE_SEQ.fetch_add(1, Ordering::AcqRel);
    // Pairs with the idle CPU's fence after it marks itself idle: it sees
    // the count change and scans again, or this sees it idle.
    fence(Ordering::SeqCst);
    let me = cpu::current();
    let target = match affinity {
        Some(c) => Some(c),
        None => take_idle_cpu(smp::CPUS.iter().map(|c| &c.idle).enumerate().filter(|&(c, _)| c != me)),
    };
    if let Some(c) = target.filter(|&c| c != me && c < MAX_CPUS) {
        gic::send_sgi(ids::SGI_PING, c);
    }
}

/// Waits for an interrupt with IRQs masked (a pending one ends the wait),
/// in an extended quiescent state so grace periods need not wait for us.
pub fn idle_wait() {
    let me = cpu::current();
    RCU.eqs_enter(me);
    cpu::wait_for_interrupt();
    RCU.eqs_exit(me);
}

/// Wake-ups so far; see [`wake_an_idle_cpu`].
pub fn wake_seq() -> u64 {
    WAKE_SEQ.load(Ordering::Acquire)
}

/// The earliest deadline noted since the last scan ([`u64::MAX`]: none).
pub fn next_wake() -> u64 {
    NEXT_WAKE.load(Ordering::Acquire)
}

/// A scheduler's scan starts: deadlines still ahead are noted again.
pub fn reset_next_wake() {
    NEXT_WAKE.store(u64::MAX, Ordering::Release);
}
