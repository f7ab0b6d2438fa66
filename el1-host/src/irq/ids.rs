//! The INTIDs the host's interrupts have (from the device tree at boot) and
//! the host's own SGI and tick: what the rest of the host needs to know of
//! interrupts without the dispatch in `irq`.

use core::sync::atomic::{AtomicU32, Ordering};

/// SGI the self-check and the kick protocol send between CPUs.
pub const SGI_PING: u32 = 1;
/// SGI a CPU sends the tickless ones when what their timers must do may
/// have changed (`sched::cpus`: vCPUs came to outnumber CPUs, a sleeper's
/// deadline came earlier): they settle their timers again. A kick
/// (`SGI_PING`) does not, so an IPI to a vCPU pays nothing for the tick.
pub const SGI_TICK: u32 = 3;
/// SGI el2 sends a CPU when it posted a guest SGI for the vCPU running
/// there (`ferrovisor_shared::sgi`); el2 ends it, or the host when the vCPU
/// had left.
pub use ferrovisor_shared::sgi::SGI_EL2_POST;
/// The host's tick.
pub const TICK_US: u64 = 10_000;

/// The non-secure EL1 physical timer's INTID (PPI 14 unless the device tree
/// says otherwise).
static TIMER_INTID: AtomicU32 = AtomicU32::new(30);

pub fn set_timer_intid(intid: u32) {
    TIMER_INTID.store(intid, Ordering::Relaxed);
}

pub fn timer_intid() -> u32 {
    TIMER_INTID.load(Ordering::Relaxed)
}

/// The virtual timer's INTID (PPI 11 unless the device tree says otherwise):
/// guests own that timer; its interrupt only makes them exit.
static VTIMER_INTID: AtomicU32 = AtomicU32::new(27);

pub fn set_vtimer_intid(intid: u32) {
    VTIMER_INTID.store(intid, Ordering::Relaxed);
}

pub fn vtimer_intid() -> u32 {
    VTIMER_INTID.load(Ordering::Relaxed)
}

/// The PMU overflow interrupt when it is a PPI the host knows (QEMU virt's
/// INTID 23), 0 otherwise: guests' PMU interrupts are linked to it.
static PMU_INTID: AtomicU32 = AtomicU32::new(0);

pub fn set_pmu_intid(intid: Option<u32>) {
    PMU_INTID.store(intid.filter(|i| (16..32).contains(i)).unwrap_or(0), Ordering::Relaxed);
}

pub fn pmu_intid() -> Option<u32> {
    Some(PMU_INTID.load(Ordering::Relaxed)).filter(|&i| i != 0)
}
