//! Interrupt dispatch on the host: acknowledge, handle, end, until nothing is
//! pending. The INTIDs it dispatches on are in [`ids`].

use crate::{gic, smp};
use core::sync::atomic::Ordering;
use ferrovisor_shared::gic::{LPI_BASE, SPECIAL_BASE};

pub mod ids;
use ids::*;

/// Called from the IRQ vector with IRQs masked.
pub fn handle() {
    let cpu = crate::arch::aarch64::cpu::current();
    if !crate::rcu::RCU.irq_entry_check(cpu) {
        // An IRQ taken in an extended quiescent state: RCU is not watching
        // this CPU, so nothing below may read RCU-protected data (docs/run-loop.md §5).
        debug_assert!(false, "cpu{cpu}: IRQ taken in an RCU extended quiescent state");
    }
    while let Some(ack) = gic::acknowledge() {
        if !dispatch(ack) {
            break;
        }
    }
}

/// An interrupt el2 acknowledged while a guest ran and left to the host
/// (`ExitInfo::acked`), handled as if the host had acknowledged it.
pub fn handle_acked(iar: u32) {
    dispatch(gic::Ack::acked_by_el2(iar));
}

/// Handles and ends one acknowledged interrupt; false for a special INTID
/// (nothing more is pending).
fn dispatch(ack: gic::Ack) -> bool {
    let intid = ack.intid;
    if (SPECIAL_BASE..LPI_BASE).contains(&intid) {
        return false;
    }
    let me = smp::this_cpu();
    if intid == SGI_PING {
        me.sgis.fetch_add(1, Ordering::Relaxed);
    } else if intid == SGI_TICK {
        crate::sched::sgi_taken();
    } else if intid == SGI_EL2_POST {
        // For a vCPU that left guest mode before it came: the host takes
        // the SGIs posted for it at that exit (`Vgic::take_posted`).
    } else if intid == timer_intid() {
        me.ticks.fetch_add(1, Ordering::Relaxed);
        if crate::sched::timer_fired() {
            crate::sched::wake_due_sleepers();
        }
    } else if intid == vtimer_intid() {
        // A guest's timer, hardware-linked: it stays active until the
        // guest deactivates its virtual copy (`vcpu::timers`).
        crate::vcpu::timers::physical_fired();
        gic::drop_priority(ack);
        return true;
    } else if Some(intid) == pmu_intid() {
        // A guest's PMU overflow, hardware-linked like the timer's.
        crate::vcpu::pmu::physical_fired();
        gic::drop_priority(ack);
        return true;
    } else if intid >= LPI_BASE {
        if !gic::vlpi::handle_lpi(intid) {
            log::warn!("unexpected LPI {intid}");
        }
    } else if intid == gic::maintenance_intid() {
        // The exit it caused was the point: the run loop reads the list
        // registers.
    } else {
        log::warn!("unexpected interrupt {intid}");
    }
    gic::end_of_interrupt(ack);
    true
}
