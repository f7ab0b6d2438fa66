//! What the rest of the host asks of the schedulers, apart from their loop
//! (`cpu_loop`): requests and kicks, bringing vCPUs out of guest mode, which
//! vCPU a CPU runs, the count of live vCPUs and the earliest deadline of a
//! sleeping one, the tick's time-slicing, and idling. It depends on the
//! vCPU's state alone, never on the VMs or the run loop.

use crate::arch::aarch64::{cpu, timer};
use crate::rcu::RCU;
use crate::sched::work::{VcpuEntry, WORK_RESCHED};
use crate::vcpu::state::Vcpu;
use crate::{gic, irq::ids, smp};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Records which vCPU this CPU runs (`None`: none).
pub fn set_current(entry: Option<&VcpuEntry>) {
    let p = entry.map_or(core::ptr::null_mut(), |e| e as *const VcpuEntry as *mut VcpuEntry);
    smp::this_cpu().current_vcpu.store(p, Ordering::Release);
}

/// `n` vCPUs join the schedulers' lists.
pub fn vcpus_added(n: usize) {
    LIVE_VCPUS.fetch_add(n, Ordering::AcqRel);
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

/// A sleeping vCPU must run again by physical count `deadline`.
pub fn note_deadline(deadline: u64) {
    NEXT_WAKE.fetch_min(deadline, Ordering::AcqRel);
}

/// From the tick handler: counts the tick as guest time if this CPU's vCPU
/// is in its guest-time window, and ends its time slice when others wait.
pub fn account_tick() {
    let p = smp::this_cpu().current_vcpu.load(Ordering::Acquire);
    // SAFETY: set by `set_current` from the vCPU's own loop on this CPU, which
    // clears it before the vCPU (and its VM) can go away; the tick runs on
    // the same CPU with that loop interrupted.
    if let Some(entry) = unsafe { p.as_ref() } {
        entry.account_tick();
        if oversubscribed() || NEXT_WAKE.load(Ordering::Acquire) <= timer::now() {
            // This CPU runs it: the run loop sees the bit before it enters.
            entry.raise(WORK_RESCHED);
        }
    }
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

fn wake_an_idle_cpu(affinity: Option<usize>) {
    let me = cpu::current();
    let target = match affinity {
        Some(c) => Some(c),
        None => (0..MAX_CPUS).find(|&c| smp::CPUS[c].idle.load(Ordering::Acquire)),
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

/// The earliest deadline noted since the last scan ([`u64::MAX`]: none).
pub fn next_wake() -> u64 {
    NEXT_WAKE.load(Ordering::Acquire)
}

/// A scheduler's scan starts: deadlines still ahead are noted again.
pub fn reset_next_wake() {
    NEXT_WAKE.store(u64::MAX, Ordering::Release);
}
