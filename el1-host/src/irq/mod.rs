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
        let intid = ack.intid;
        if (SPECIAL_BASE..LPI_BASE).contains(&intid) {
            break;
        }
        let me = smp::this_cpu();
        if intid == SGI_PING {
            me.sgis.fetch_add(1, Ordering::Relaxed);
            crate::sched::sgi_taken();
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
            continue;
        } else if Some(intid) == pmu_intid() {
            // A guest's PMU overflow, hardware-linked like the timer's.
            crate::vcpu::pmu::physical_fired();
            gic::drop_priority(ack);
            continue;
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
    }
}
