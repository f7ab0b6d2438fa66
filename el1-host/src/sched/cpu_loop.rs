//! The loop every CPU runs once the host is up: find the vCPU pinned here,
//! run it until it stops, idle otherwise.

use crate::arch::aarch64::cpu;
use crate::sched::work::VcpuEntry;
use crate::vm::instance::{self, Vcpu, RCU};
use crate::{gic, irq};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicPtr, Ordering};
use ferrovisor_shared::boot::MAX_CPUS;

/// Sets `bits` in the vCPU's work word (release) and kicks it.
pub fn request(vcpu: &Vcpu, bits: u32) {
    vcpu.entry.raise(bits);
    kick(vcpu);
}

/// The run-loop state of the vCPU each CPU runs, for the tick handler.
static CURRENT: [AtomicPtr<VcpuEntry>; MAX_CPUS] = [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// Records which vCPU this CPU runs (`None`: none).
pub fn set_current(entry: Option<&VcpuEntry>) {
    let p = entry.map_or(core::ptr::null_mut(), |e| e as *const VcpuEntry as *mut VcpuEntry);
    CURRENT[cpu::current() % MAX_CPUS].store(p, Ordering::Release);
}

/// From the tick handler: counts the tick as guest time if this CPU's vCPU
/// is in its guest-time window.
pub fn account_tick() {
    let p = CURRENT[cpu::current() % MAX_CPUS].load(Ordering::Acquire);
    // SAFETY: set by `set_current` from the vCPU's own loop on this CPU, which
    // clears it before the vCPU (and its VM) can go away; the tick runs on
    // the same CPU with that loop interrupted.
    if let Some(entry) = unsafe { p.as_ref() } {
        entry.account_tick();
    }
}

/// Makes the vCPU look at its work: an SGI to its CPU ends its guest run or
/// its wait. Sent whatever mode the vCPU is in, so a vCPU between its last
/// check (IRQs masked) and guest entry still leaves at once: the SGI stays
/// pending and exits the guest. The fence orders the request before the SGI.
pub fn kick(vcpu: &Vcpu) {
    core::sync::atomic::fence(Ordering::SeqCst);
    if vcpu.cpu != cpu::current() {
        gic::send_sgi(irq::SGI_PING, vcpu.cpu);
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

/// Every CPU's last stop: runs the vCPUs pinned here as they come.
pub fn cpu_main() -> ! {
    let me = cpu::current();
    RCU.online(me);
    loop {
        let next = {
            let guard = RCU.read_lock(me);
            let vms = instance::list().read(&guard);
            vms.iter().find_map(|vm| {
                let i = vm.vcpus.iter().position(|v| {
                    v.cpu == me
                        && !v.stopped.load(Ordering::Acquire)
                        && v.claimed.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()
                })?;
                Some((Arc::clone(vm), i))
            })
        };
        match next {
            Some((vm, index)) => crate::vcpu::run::run(vm, index),
            None => {
                RCU.note_quiescent(me);
                cpu::irq_disable();
                idle_wait();
                cpu::irq_enable();
            }
        }
    }
}
