//! Which vCPU each CPU runs, and the work checked before entering a guest.
//!
//! For now every vCPU is pinned to a CPU of its own (time-slicing comes with
//! the interrupts work). A CPU with no vCPU, or whose vCPU waits, idles in
//! `WFI` inside an RCU extended quiescent state; a request to a vCPU is a
//! work bit set with release semantics followed by a kick: an SGI to the
//! vCPU's CPU, which ends its guest run or its wait.

pub mod doorbell;
pub mod slot;
pub mod wakeup;
pub mod work;

#[cfg(target_os = "none")]
mod cpu_loop;
#[cfg(target_os = "none")]
pub use cpu_loop::cpu_main;
#[cfg(target_os = "none")]
mod cpus;
#[cfg(target_os = "none")]
pub use cpus::*;
