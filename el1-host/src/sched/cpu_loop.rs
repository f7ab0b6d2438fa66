//! The loop every CPU runs once the host is up: a round-robin scheduler over
//! every runnable vCPU (pinned ones only on their CPU), time-sliced by the
//! host tick while vCPUs outnumber CPUs.
//!
//! A vCPU is claimed by one CPU at a time (a CAS). While there are more live
//! vCPUs than CPUs, each tick raises `WORK_RESCHED` on the vCPU the CPU runs,
//! which its run loop honours at the pending-work check (docs/run-loop.md §2, §9), and a vCPU
//! in WFI (or powered off) gives its CPU away and sleeps (`wakeup`); a
//! request wakes it, and so does its timer, through [`note_deadline`] and the
//! schedulers' scan. Otherwise a blocked vCPU waits on its own CPU in `WFI`.

use super::cpus::{idle_wait, next_wake, note_deadline, reset_next_wake, wake_an_idle_cpu, wake_seq};
use super::slot::Due;
use crate::arch::aarch64::{cpu, timer};
use crate::rcu::RCU;
use crate::smp;
use crate::vcpu::run::Turn;
use crate::vm::instance;
use crate::vm::registry;
use alloc::sync::Arc;
use core::sync::atomic::{fence, Ordering};
use ferrovisor_shared::boot::MAX_CPUS;

/// Wakes the sleeping vCPUs whose deadline has passed and recomputes the
/// earliest deadline left.
fn wake_due(vms: &[Arc<instance::Vm>], now: u64) {
    if next_wake() > now {
        return;
    }
    reset_next_wake();
    for v in vms.iter().flat_map(|vm| vm.vcpus.iter()) {
        match v.slot.wake_if_due(now) {
            // An idle CPU is told, as for any wake-up: this scan claims at
            // most one of several woken at once, and no tick brings the
            // scan that would find the others.
            Due::Woken => wake_an_idle_cpu(v.slot.affinity()),
            Due::At(at) => note_deadline(at),
            Due::No => {}
        }
    }
}

/// From the host timer's interrupt handler, when a sleeper's deadline has
/// passed: the sleepers due are woken here, whatever this CPU was doing (a
/// dedicated vCPU's guest, its `WFI` wait on this CPU, idle), since no CPU
/// may be ticking to scan for them.
pub fn wake_due_sleepers() {
    let me = cpu::current();
    let guard = RCU.read_lock(me);
    wake_due(registry::list().read(&guard), timer::now());
}

/// Every CPU's last stop: runs runnable vCPUs in turn, idles otherwise.
pub fn cpu_main() -> ! {
    let me = cpu::current();
    RCU.online(me);
    // Where this CPU's round-robin scan starts (a position in the flattened
    // list of every VM's vCPUs).
    let mut cursor = 0usize;
    loop {
        // Read before the scan: a wake-up after it changes the count.
        let seq = wake_seq();
        let next = {
            let guard = RCU.read_lock(me);
            let vms = registry::list().read(&guard);
            wake_due(vms, timer::now());
            let total: usize = vms.iter().map(|vm| vm.vcpus.len()).sum();
            let mut found = None;
            for step in 0..total {
                let pos = (cursor + step) % total;
                let (mut vm_i, mut i) = (0, pos);
                while i >= vms[vm_i].vcpus.len() {
                    i -= vms[vm_i].vcpus.len();
                    vm_i += 1;
                }
                let v = &vms[vm_i].vcpus[i];
                if v.slot.try_claim(me) {
                    cursor = pos + 1;
                    found = Some((Arc::clone(&vms[vm_i]), i));
                    break;
                }
            }
            found
        };
        match next {
            Some((vm, index)) => {
                let vcpu = &vm.vcpus[index];
                vcpu.slot.resume();
                let turn = crate::vcpu::run::run(Arc::clone(&vm), index);
                if turn != Turn::Stopped {
                    vcpu.slot.release();
                    super::cpus::offer(vcpu);
                }
            }
            None => {
                RCU.note_quiescent(me);
                cpu::irq_disable();
                smp::CPUS[me % MAX_CPUS].idle.store(true, Ordering::SeqCst);
                // Pairs with the waker's fence (`wake_an_idle_cpu`): a vCPU
                // woken after the scan is seen here, or the waker sees this
                // CPU idle and its SGI ends the wait. No tick comes to rescue
                // a wait that missed it.
                fence(Ordering::SeqCst);
                if wake_seq() == seq {
                    let deadline = next_wake();
                    if deadline != u64::MAX {
                        timer::arm_no_later_than(deadline);
                    }
                    idle_wait();
                }
                smp::CPUS[me % MAX_CPUS].idle.store(false, Ordering::Relaxed);
                cpu::irq_enable();
            }
        }
    }
}
