//! Which vCPU each CPU runs, and the work checked before entering a guest.
//!
//! Any CPU may run any vCPU, unless its VM asks for pinning
//! (`ferrovisor,pinned`); while vCPUs outnumber CPUs they are time-sliced by
//! the host tick and a blocked vCPU gives its CPU away (docs/run-loop.md §9).
//! A CPU with nothing to run idles in `WFI` inside an RCU extended quiescent
//! state; a request to a vCPU is a work bit set with release semantics
//! followed by a kick: an SGI to the vCPU's CPU, which ends its guest run or
//! its wait, and a wake-up if it sleeps (docs/run-loop.md §3, §4).

pub mod doorbell;
pub mod slot;
pub mod tick;
pub mod wakeup;
pub mod work;

#[cfg(target_os = "none")]
mod cpu_loop;
#[cfg(target_os = "none")]
pub use cpu_loop::{cpu_main, wake_due_sleepers};
#[cfg(target_os = "none")]
mod cpus;
#[cfg(target_os = "none")]
pub use cpus::*;
