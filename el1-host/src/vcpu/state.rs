//! A virtual CPU: its identity, its scheduling state (`sched::slot`), its
//! run-loop work (`sched::work`), its PSCI power state, its context for el2,
//! and what its interrupts need (the sampled PPI lines, the GICv4 doorbell).
//! The VM that owns it is `vm::instance`'s.

use crate::sched::work::VcpuEntry;
use crate::vcpu::psci::VcpuPower;
use alloc::boxed::Box;
use core::cell::UnsafeCell;
use ferrovisor_shared::vcpu::VcpuContext;

/// One virtual CPU of a VM.
pub struct Vcpu {
    pub index: usize,
    pub mpidr: u64,
    /// Its claim, pinning, sleep and stop (`sched::slot`).
    pub slot: crate::sched::slot::VcpuSlot,
    /// The levels of its timers' vGIC lines (`vcpu::timers`).
    pub ppi_lines: core::sync::atomic::AtomicU8,
    pub power: VcpuPower,
    /// Work bits, guest mode and run-loop counters (`sched::work`).
    pub entry: VcpuEntry,
    pub(crate) ctx: UnsafeCell<Box<VcpuContext>>,
    /// Its vPE's `pending_last` and doorbell count (GICv4 direct injection).
    pub doorbell: crate::sched::doorbell::VpeDoorbell,
}

// SAFETY: `ctx` is only touched by the one CPU that claimed the vCPU (the
// claim is a CAS in `VcpuSlot::try_claim`), or before any CPU has.
unsafe impl Sync for Vcpu {}
